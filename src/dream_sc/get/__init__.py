"""Tidy tables of results."""

from ._tables import cis_dosage, trans_curves, trans_results

__all__ = ["cis_dosage", "trans_curves", "trans_results"]
