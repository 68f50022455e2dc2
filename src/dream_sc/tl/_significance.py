"""Calibrated significance of trans fits: permutation nulls, q-values, shape calls."""

from __future__ import annotations

import logging

import numpy as np

from ..models.significance import decoy_qvalues, permute_within_groups
from ._trans_job import TransJob

logger = logging.getLogger("dream_sc")

#: Without a null (``test=False``) a feature is called from its posterior alone.
POSTERIOR_CALL = {"prob_dose_dependent": 0.95, "lfsr": 0.05}


def null_fits(job: TransJob, n_permutations: int, start: int = 0) -> dict[str, np.ndarray]:
    """Refit the trans model on dosages permuted among cells of the same technical group.

    Permuting within groups keeps technical effects and the dosage distribution of every group
    intact and breaks only the link between a cell's dosage and its observations: the
    permuted fits are fits of the same features under "no dose-response". Priors, settings
    and seeds are those of the real fit.

    Returns
    -------
    dict with ``score`` and ``non_monotonic_score`` arrays ``[n_permutations, T]`` and the
    summed ``loss`` of every null fit.
    """
    scores, nm_scores, losses = [], [], []
    for number in range(start, start + n_permutations):
        perm = permute_within_groups(job.inputs.group, job.seed, number)
        priors = job.priors_for(perm)
        fit = job.fit(
            permutation=perm,
            description=f"null {number + 1}",
            tag=f"null{number}",
            priors=priors,
        )
        cols, _ = job.summarise(fit.loc, fit.scale, priors=priors, corr=fit.corr)
        scores.append(cols["score"])
        nm_scores.append(cols["non_monotonic_score"])
        losses.append(fit.loss[-1])
        logger.info("null fit %d finished", number + 1)
    return {
        "score": np.asarray(scores, dtype=np.float64),
        "non_monotonic_score": np.asarray(nm_scores, dtype=np.float64),
        "loss": np.asarray(losses, dtype=np.float64),
    }


def significance_columns(
    columns: dict[str, np.ndarray], null: dict | None, *, alpha: float, n_permutations: int
) -> dict[str, np.ndarray]:
    """q-values, significance and shape calls.

    With a null: ``qvalue`` from :func:`~dream_sc.models.significance.decoy_qvalues` of the
    score (|posterior mean response| / posterior sd) against the permutation scores;
    ``qvalue_non_monotonic`` likewise for the non-monotonic amplitude. Without a null,
    q-values are NaN and a feature is significant when ``prob_dose_dependent >= 0.95`` and
    ``lfsr < 0.05``.

    Shapes: ``flat`` unless significant; ``non_monotonic`` when the non-monotonic evidence is
    significant too (``qvalue_non_monotonic < alpha``; without a null
    ``prob_non_monotonic >= 0.95``); else ``increasing`` / ``decreasing`` by the sign of the
    response.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}.")
    n = len(columns["score"])
    if null is not None:
        q = decoy_qvalues(columns["score"], null["score"].ravel(), n_permutations)
        q_nm = decoy_qvalues(
            columns["non_monotonic_score"], null["non_monotonic_score"].ravel(), n_permutations
        )
        significant = q < alpha
        non_mono = significant & (q_nm < alpha) & (columns["prob_non_monotonic"] >= 0.5)
    else:
        q = q_nm = np.full(n, np.nan)
        significant = (columns["prob_dose_dependent"] >= POSTERIOR_CALL["prob_dose_dependent"]) & (
            columns["lfsr"] < POSTERIOR_CALL["lfsr"]
        )
        non_mono = significant & (columns["prob_non_monotonic"] >= 0.95)
    shape = np.where(columns["response_mean"] > 0, "increasing", "decreasing").astype(object)
    shape[non_mono] = "non_monotonic"
    shape[~significant] = "flat"
    return {
        "qvalue": q,
        "qvalue_non_monotonic": q_nm,
        "significant": significant.astype(bool),
        "shape": shape,
    }
