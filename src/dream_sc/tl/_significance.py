"""Calibrated significance of trans fits: q-values from the conditional-randomisation null, shape calls."""

from __future__ import annotations

import logging

import numpy as np

from ..models.significance import decoy_qvalues, shape_calls

logger = logging.getLogger("dream_sc")

#: Without a null (``test=False``) a feature is called from its posterior alone.
POSTERIOR_CALL = {"prob_dose_dependent": 0.95, "lfsr": 0.05}


def significance_columns(
    columns: dict[str, np.ndarray],
    score: np.ndarray,
    null: np.ndarray | None,
    *,
    alpha: float,
) -> dict[str, np.ndarray]:
    """Scores, q-values, significance and shape calls.

    ``score`` is the dose-association score of every feature (see
    :mod:`dream_sc.models.null`); it replaces the posterior ratio ``|mean| / sd`` of the
    response (kept as ``posterior_score``) in the ``score`` column. With a null (``[P, T]``
    scores of the permuted dosages) ``qvalue`` is the target-decoy q-value of ``score``
    (:func:`~dream_sc.models.significance.decoy_qvalues`). Without a null, q-values are NaN and
    a feature is significant when ``prob_dose_dependent >= 0.95`` and ``lfsr < 0.05``.

    Shapes: ``flat`` unless significant; ``non_monotonic`` when significant and
    ``prob_non_monotonic >= 0.95`` (a question about the curve's shape, which the posterior
    answers; the permutation null only tests dose dependence); else ``increasing`` / ``decreasing`` by the sign of the response;
    ``no_curve`` when significant without a fitted curve (see
    :func:`~dream_sc.models.significance.shape_calls`).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}.")
    n = len(columns["prob_dose_dependent"])
    posterior_score = columns.get("posterior_score", columns["score"])
    if null is not None:
        q = decoy_qvalues(score, np.asarray(null).ravel(), int(np.asarray(null).shape[0]))
        significant = q < alpha
    else:
        q = np.full(n, np.nan)
        significant = (columns["prob_dose_dependent"] >= POSTERIOR_CALL["prob_dose_dependent"]) & (
            columns["lfsr"] < POSTERIOR_CALL["lfsr"]
        )
    shape = shape_calls(columns["response_mean"], columns["prob_non_monotonic"], significant)
    return {
        "score": np.asarray(score, dtype=np.float64),
        "posterior_score": np.asarray(posterior_score, dtype=np.float64),
        "qvalue": q,
        "significant": significant.astype(bool),
        "shape": shape,
    }
