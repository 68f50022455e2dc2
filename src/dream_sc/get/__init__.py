"""Tidy tables of results."""

from ._observed import guide_observed
from ._tables import cis_dosage, trans_curves, trans_results

__all__ = ["cis_dosage", "guide_observed", "trans_curves", "trans_results"]
