"""Target-decoy q-values pooled over the fits of a screen."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..models.significance import DECOY_PSEUDOCOUNT

_BLOCK = 1 << 18  # null scores counted, and running sums built, this many at a time


def pooled_decoy_qvalues(
    scores: Sequence[np.ndarray],
    null_scores: Sequence[np.ndarray],
    n_null_sets: Sequence[int],
    pseudocount: float = DECOY_PSEUDOCOUNT,
) -> list[np.ndarray]:
    """Target-decoy q-values over several fits pooled into one FDR estimate.

    Fit ``t`` contributes its observed scores and its null (decoy) scores from
    ``n_null_sets[t]`` null fits; each null score of fit ``t`` counts ``1 / n_null_sets[t]``
    expected false discoveries, so fits with different numbers of permutations are pooled on
    one scale. For a threshold ``s`` the screen-wide FDR is estimated as

    ``FDR(s) = (c / m_min + sum_t #{null_t >= s} / m_t) / max(1, #{observed >= s})``

    with observed scores counted over all fits, ``m_t = n_null_sets[t]`` and
    ``m_min = min_t m_t`` (the pseudo-count ``c`` of
    :func:`~dream_sc.models.significance.decoy_qvalues`, on the scale of the fit with the fewest
    null sets: the conservative choice). With a single fit, or equal ``m_t``, this is exactly
    ``decoy_qvalues`` of the pooled scores. q-values are the running minimum of the FDR over all
    thresholds at or below a score, capped at 1; non-finite scores get q = 1.

    Memory: when every fit has the same number of null sets (the usual case) the null scores
    are never concatenated or sorted together; each fit's are counted against the observed
    scores in turn (a few bytes per observed score beyond the inputs). Different numbers of
    null sets need the null scores of all fits sorted together (about 56 bytes per null
    score). Both give the same q-values to the last bit.

    Parameters
    ----------
    scores
        Observed scores, one array per fit.
    null_scores
        Null scores of each fit (any shape; flattened).
    n_null_sets
        Number of null fits behind each entry of ``null_scores``.
    pseudocount
        ``c`` above.

    Returns
    -------
    q-values, one array per fit (shapes of ``scores``).

    Examples
    --------
    >>> q = pooled_decoy_qvalues(
    ...     [np.array([10.0, 0.1]), np.array([9.0])], [np.array([0.5]), np.array([0.2, 0.3])], [1, 2]
    ... )
    >>> [x.round(3).tolist() for x in q]
    [[0.5, 1.0], [0.5]]
    """
    if not (len(scores) == len(null_scores) == len(n_null_sets)) or not len(scores):
        raise ValueError("scores, null_scores and n_null_sets need one entry per fit.")
    m = np.asarray(n_null_sets, dtype=np.float64)
    if (m < 1).any():
        raise ValueError(f"n_null_sets must be >= 1; got {list(n_null_sets)}.")
    obs = [np.asarray(s, dtype=np.float64) for s in scores]
    flat = np.concatenate([o.ravel() for o in obs])
    q = np.ones_like(flat)
    finite = np.isfinite(flat)
    if finite.any():
        values = flat[finite]
        order = np.argsort(-values, kind="stable")
        s = values[order]
        del values
        # observed scores >= s, ties sharing the count of the last one
        n_ge = np.searchsorted(-s, -s, side="right")
        if (m == m[0]).all():
            null_ge = _equal_weight_tail(s, null_scores, 1.0 / m[0])
        else:
            null_ge = _weighted_tail(s, null_scores, m)
        fdr = np.minimum((pseudocount / m.min() + null_ge) / np.maximum(n_ge, 1), 1.0)
        del n_ge, null_ge
        q_sorted = np.minimum.accumulate(fdr[::-1])[::-1]
        out = np.empty_like(s)
        out[order] = q_sorted
        q[finite] = out
    bounds = np.cumsum([0] + [o.size for o in obs])
    return [q[a:b].reshape(o.shape) for a, b, o in zip(bounds[:-1], bounds[1:], obs, strict=True)]


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def _equal_weight_tail(s: np.ndarray, null_scores: Sequence, weight: float) -> np.ndarray:
    """``w + w + ...`` (left to right) over the null scores ``>= s``, every null weighing ``w``.

    ``s`` descending. What the weighted path gives for equal weights, without putting the
    null scores of all fits together: each fit's null scores are counted against the
    observed scores, and the running sum of ``k`` weights is taken as ``numpy.cumsum``
    takes it (one addition after the other), in blocks.
    """
    grid = s[::-1]  # ascending
    counts = np.zeros(len(grid) + 1, dtype=np.int64)
    for values in null_scores:
        values = np.asarray(values, dtype=np.float64).ravel()
        for start in range(0, values.size, _BLOCK):
            block = _finite(values[start : start + _BLOCK])
            block.sort()  # sorted keys: a faster search, and equal positions side by side
            at = np.searchsorted(grid, block, side="right")
            first = np.flatnonzero(np.r_[True, at[1:] != at[:-1]]) if at.size else at
            counts[at[first]] += np.diff(np.r_[first, at.size])
    # n_null[i] = #{null >= grid[i]} = counts[i + 1] + ... + counts[-1]
    n_null = np.cumsum(counts[::-1])[::-1][1:][::-1]  # for s (descending): non-decreasing
    del counts
    sums = np.zeros(len(n_null))
    carry, lo, top = 0.0, 1, int(n_null[-1]) if len(n_null) else 0
    while lo <= top:
        hi = min(lo + _BLOCK, top + 1)
        block = np.full(hi - lo + 1, weight)
        block[0] = carry
        running = np.cumsum(block)  # running[i]: the sum of lo - 1 + i weights
        a, b = np.searchsorted(n_null, [lo, hi])
        sums[a:b] = running[n_null[a:b] - lo + 1]
        carry, lo = running[-1], hi
    return sums


def _weighted_tail(s: np.ndarray, null_scores: Sequence, m: np.ndarray) -> np.ndarray:
    """Weight ``1 / m_t`` of the null scores ``>= s``, summed over all fits sorted together."""
    null_v, null_w = [], []
    for values, mt in zip(null_scores, m, strict=True):
        values = _finite(values)
        null_v.append(values)
        null_w.append(np.full(len(values), 1.0 / mt))
    null = np.concatenate(null_v)
    del null_v
    order = np.argsort(null, kind="stable")
    null, weight = null[order], np.concatenate(null_w)[order]
    del null_w, order
    tail = np.append(np.cumsum(weight[::-1])[::-1], 0.0)  # tail[i] = weight of null[i:]
    return tail[np.searchsorted(null, s, side="left")]
