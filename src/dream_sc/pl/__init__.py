"""Plots of dose-response fits (scanpy conventions: ``ax=``, ``show=``, ``return_fig=``).

- :func:`dose_response`: fitted curves with the data summarised per guide, on the dose scale.
- :func:`gene_splicing_panel`: a gene's expression curve next to its junctions' PSI curves.
- :func:`cis_dosage`: per-guide dosage posteriors.
- :func:`screen_heatmap`: targets x features of a whole screen (:func:`screen_matrix` is its data).
- :func:`screen_cis_dosage`: every target's guide dosages in one grid.
- :func:`trans_summary`: volcano plot of a trans fit.
- :func:`calibration`: QQ plot of observed against permutation-null scores.
- :func:`loss`: ELBO traces with the convergence check.
- :func:`prior_posterior`: the prior used against the posterior of one parameter.
- :func:`guide_assignment`: guide UMI distributions with call thresholds, cells per guide.
"""

from __future__ import annotations

from ._cis import cis_dosage
from ._dose_response import dose_response
from ._guide_assignment import guide_assignment
from ._loss import loss
from ._panel import gene_splicing_panel
from ._prior_posterior import prior_posterior
from ._screen import screen_cis_dosage, screen_heatmap, screen_matrix
from ._summary import calibration, trans_summary

__all__ = [
    "calibration",
    "cis_dosage",
    "dose_response",
    "gene_splicing_panel",
    "guide_assignment",
    "loss",
    "prior_posterior",
    "screen_cis_dosage",
    "screen_heatmap",
    "screen_matrix",
    "trans_summary",
]
