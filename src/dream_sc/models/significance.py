"""Calibrated multiplicity control from a data-derived null (target-decoy FDR)."""

from __future__ import annotations

import numpy as np

from .streams import keyed_rng

#: Pseudo-count of the target-decoy FDR estimate (see :func:`decoy_qvalues`).
DECOY_PSEUDOCOUNT = 1.0
#: A significant feature is called non-monotonic at this posterior probability.
NON_MONOTONIC_CALL = 0.95
#: Default number of permutations of the null of a trans fit (see :mod:`dream_sc.models.null`).
DEFAULT_N_PERMUTATIONS = 50


def decoy_qvalues(
    scores: np.ndarray,
    null_scores: np.ndarray,
    n_null_sets: int,
    pseudocount: float = DECOY_PSEUDOCOUNT,
) -> np.ndarray:
    """q-values of observed scores against null (decoy) scores.

    For a threshold ``s`` the FDR is estimated as

    ``FDR(s) = (c + #{null >= s}) / (n_null_sets * max(1, #{observed >= s}))``

    The pseudo-count ``c`` is the target-decoy (knockoff+) correction that keeps the estimate
    conservative when few features score above the null: without it, a screen with no effect
    makes a "discovery" whenever its best score beats every null score. With ``c = 1`` and
    ``n_null_sets`` null sets the estimate among the top ``k`` features is at least
    ``1 / (n_null_sets k)``, the bound of multiple-knockoff filters. With exchangeable scores
    (300 features, the default 50 null sets) a screen without effects gets any discovery at
    ``q < 0.1`` in about 9% of cases - the FDR of a screen without effects is exactly the
    probability of any discovery, so this is the level - and more than two in under 1%
    (two null sets: 0.1% / 0%; the q-values are then much coarser). q-values are the running
    minimum of the FDR over all thresholds at or below the feature's score. Features with a
    non-finite score get q = 1.

    Parameters
    ----------
    scores
        Observed score per feature (larger = more evidence).
    null_scores
        Scores of the null fits, pooled (``n_null_sets`` x features, flattened).
    n_null_sets
        Number of null fits pooled in ``null_scores``.
    pseudocount
        ``c`` above.

    Returns
    -------
    q-value per feature.

    Examples
    --------
    >>> decoy_qvalues(np.array([10.0, 9.0, 0.1]), np.array([0.5, 0.2, 0.3]), 1).round(3).tolist()
    [0.25, 0.25, 1.0]
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    null = np.sort(np.asarray(null_scores, dtype=np.float64)[np.isfinite(null_scores)])
    q = np.ones_like(scores)
    if not finite.any():
        return q
    obs = scores[finite]
    order = np.argsort(-obs, kind="stable")
    sorted_obs = obs[order]
    n_obs_ge = np.arange(1, len(sorted_obs) + 1)
    # ties: every feature with the same score shares the count of the last one
    _, first = np.unique(-sorted_obs, return_index=True)
    last = np.append(first[1:], len(sorted_obs)) - 1
    tie_count = np.empty_like(n_obs_ge)
    for f, lst in zip(first, last, strict=True):
        tie_count[f : lst + 1] = lst + 1
    n_null_ge = len(null) - np.searchsorted(null, sorted_obs, side="left")
    fdr = (pseudocount + n_null_ge) / (n_null_sets * np.maximum(tie_count, 1))
    fdr = np.minimum(fdr, 1.0)
    q_sorted = np.minimum.accumulate(fdr[::-1])[::-1]
    out = np.empty_like(obs)
    out[order] = q_sorted
    q[finite] = out
    return q


def permute_within_groups(
    groups: np.ndarray, root: np.random.SeedSequence, number: int
) -> np.ndarray:
    """A permutation of cells that only swaps cells of the same technical group.

    Permutation ``number`` draws from the stream ``(number, 31)`` of the run's root sequence
    ``root`` (:func:`~dream_sc.models.streams.keyed_rng`), so it is the same whichever other
    permutations are drawn.
    """
    rng = keyed_rng(root, number, 31)
    perm = np.arange(len(groups))
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        perm[members] = rng.permutation(members)
    return perm
