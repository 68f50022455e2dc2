"""Tidy tables of results."""

from ._observed import guide_observed
from ._screen import pooled_decoy_qvalues, screen_results
from ._tables import cis_dosage, trans_curves, trans_results

__all__ = [
    "cis_dosage",
    "guide_observed",
    "pooled_decoy_qvalues",
    "screen_results",
    "trans_curves",
    "trans_results",
]
