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


#: Shape of a significant feature whose curve was not fitted (``curves="discoveries"``).
NO_CURVE = "no_curve"


def shape_calls(
    response_mean: np.ndarray,
    prob_non_monotonic: np.ndarray,
    significant: np.ndarray,
    tested: np.ndarray | None = None,
) -> np.ndarray:
    """Shape of every feature from its curve summaries and its significance call.

    ``flat`` unless significant; a significant feature is ``non_monotonic`` when
    ``prob_non_monotonic >= NON_MONOTONIC_CALL``, else ``increasing`` / ``decreasing`` by the
    sign of ``response_mean``; :data:`NO_CURVE` when it has no curve (``response_mean`` NaN:
    a stage-two fit that left it out); ``not_fitted`` where ``tested`` is False.

    Examples
    --------
    >>> shape_calls(
    ...     np.array([0.5, -0.5, np.nan, 0.1]),
    ...     np.array([0.0, 0.99, np.nan, 0.0]),
    ...     np.array([True, True, True, False]),
    ... ).tolist()
    ['increasing', 'non_monotonic', 'no_curve', 'flat']
    """
    response = np.asarray(response_mean, dtype=np.float64)
    significant = np.asarray(significant, dtype=bool)
    with np.errstate(invalid="ignore"):
        non_mono = significant & (np.asarray(prob_non_monotonic) >= NON_MONOTONIC_CALL)
    shape = np.where(response > 0, "increasing", "decreasing").astype(object)
    shape[non_mono] = "non_monotonic"
    shape[significant & ~np.isfinite(response)] = NO_CURVE
    shape[~significant] = "flat"
    if tested is not None:
        shape[~np.asarray(tested, dtype=bool)] = "not_fitted"
    return shape
