"""Tidy tables of results."""

from ._screen import pooled_decoy_qvalues, screen_results
from ._tables import cis_dosage, trans_curves, trans_results

__all__ = [
    "cis_dosage",
    "pooled_decoy_qvalues",
    "screen_results",
    "trans_curves",
    "trans_results",
]
