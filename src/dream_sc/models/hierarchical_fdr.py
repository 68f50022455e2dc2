"""Hierarchical (selective) FDR over a screen: which targets act, then which features respond.

A screen is read in two steps: first which targets change anything, then which features
respond to each of them. Pooling every (target, feature) pair into one FDR estimate controls
the share of false pairs overall, but a target without any effect can still collect many of
the screen's false calls (its best null features pass the screen-wide threshold that the real
effects of other targets lowered). The procedure here follows that reading (Benjamini and
Bogomolov 2014):

1. **Target p-value**: one p-value per target for "the target changes no feature", from its
   features' permutation p-values (:func:`simes_pvalue`, or the exact joint-permutation
   version :func:`joint_permutation_pvalue`).
2. **Targets**: Benjamini-Hochberg (BH) over the ``m`` target p-values at level ``q``; ``R``
   targets are selected.
3. **Features**: within every selected target, BH over its features at level ``q R / m``.
   Unselected targets get no calls at all.

Guarantees (assumptions below):

- the expected share of selected targets that have no effect is at most ``q m0 / m``
  (``m0`` targets without effect) - so no-effect targets collect few calls;
- the expected average, over the selected targets, of the within-target false discovery
  proportion is at most ``q`` (Benjamini and Bogomolov 2014, Theorems 1-2; the
  selection-adjusted level ``q R / m`` is what pays for having chosen the targets on the same
  data).

Assumptions: every feature p-value is valid (super-uniform for a feature without response);
p-values are independent or positively regression dependent (PRDS) within a target - the
condition of Simes' test and of BH (Sarkar 2008) - and target p-values are independent or
PRDS across targets. Screens share control cells between targets and cells between features,
a dependence that is positive in practice; the package checks the resulting error rates by
simulation (``tests/test_hierarchical_fdr.py``, ``benchmarks/bench_hierarchical_fdr.py``).
The pooled FDR over all pairs is not bounded by these theorems; the benchmark reports it.

References
----------
Benjamini, Y. and Bogomolov, M. (2014). Selective inference on multiple families of
hypotheses. *J. R. Stat. Soc. B* 76, 297-318.

Peterson, C. B., Bogomolov, M., Benjamini, Y. and Sabatti, C. (2016). Many phenotypes without
many false discoveries: error controlling strategies for multitrait association studies.
*Genet. Epidemiol.* 40, 45-56.

Simes, R. J. (1986). An improved Bonferroni procedure for multiple tests of significance.
*Biometrika* 73, 751-754.

Sarkar, S. K. (2008). On the Simes inequality and its generalization. *IMS Collections* 1,
231-242.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def permutation_pvalues(
    scores: np.ndarray, null_scores: np.ndarray, *, pooled: bool = True
) -> np.ndarray:
    """Permutation p-values of observed scores (larger = more evidence).

    ``pooled=True``: against every null score of the fit,
    ``p_t = (1 + #{null >= s_t}) / (1 + n_null)``, ``n_null`` the number of finite null
    scores (``P x T`` for ``P`` permutations of ``T`` features). Valid when the null scores
    of all features are distributed like the score of a feature without response (the
    assumption of the target-decoy q-values too; checked by
    :func:`dream_sc.models.null.exchangeability`). Its resolution ``1 / (1 + P T)`` is what
    BH over thousands of features needs.

    ``pooled=False``: against the feature's own column, ``(1 + #{null_t >= s_t}) / (1 + P)``:
    exact under conditional randomisation but never below ``1 / (1 + P)``.

    Non-finite scores get p = 1.

    Parameters
    ----------
    scores
        Observed scores ``[T]``.
    null_scores
        Null scores ``[P, T]`` (feature ``t`` in column ``t``); any shape when ``pooled``.
    pooled
        See above.

    Returns
    -------
    p-value per feature ``[T]``.

    Examples
    --------
    >>> permutation_pvalues(np.array([3.0, 0.5]), np.array([[1.0, 0.2], [0.6, 2.0]])).tolist()
    [0.2, 0.8]
    """
    scores = np.asarray(scores, dtype=np.float64)
    null = np.asarray(null_scores, dtype=np.float64)
    p = np.ones_like(scores)
    finite = np.isfinite(scores)
    if pooled:
        values = np.sort(null[np.isfinite(null)])
        n_ge = len(values) - np.searchsorted(values, scores[finite], side="left")
        p[finite] = (1.0 + n_ge) / (1.0 + len(values))
        return p
    if null.ndim != 2 or null.shape[1] != len(scores):
        raise ValueError(
            f"pooled=False needs null_scores of shape [P, {len(scores)}]; got {null.shape}."
        )
    ok = np.isfinite(null)
    n_ge = (ok & (null >= scores[None, :])).sum(0)
    per = (1.0 + n_ge) / (1.0 + ok.sum(0))
    p[finite] = per[finite]
    return p


def simes_pvalue(pvalues: np.ndarray) -> float:
    """Simes' combination ``min_k T p_(k) / k`` of ``T`` p-values (1 for none).

    A valid p-value of "no feature responds" when the p-values are independent or PRDS
    (Simes 1986; Sarkar 2008). NaN counts as 1.

    Examples
    --------
    >>> simes_pvalue(np.array([0.01, 0.04, 0.5]))
    0.03
    """
    p = np.sort(np.nan_to_num(np.asarray(pvalues, dtype=np.float64).ravel(), nan=1.0))
    if not len(p):
        return 1.0
    return float(min(1.0, np.min(len(p) * p / np.arange(1, len(p) + 1))))


def joint_permutation_pvalue(scores: np.ndarray, null_scores: np.ndarray) -> float:
    """Exact permutation p-value of "the target changes no feature" (Simes statistic).

    The ``P`` null rows permute the cells' dosages jointly for all features, so under the
    target's global null the real row and the null rows are exchangeable. Every row gets the
    Simes combination of its features' p-values against the pooled scores of all ``P + 1``
    rows (a reference symmetric in the rows), and the p-value is
    ``(1 + #{null rows with Simes <= real Simes}) / (1 + P)``. Valid with no assumption on the
    dependence between features, but never below ``1 / (1 + P)``: with the default 50
    permutations BH over ``m`` targets at level ``q`` can select a target only when at least
    ``m / (51 q)`` targets act.

    Parameters
    ----------
    scores
        Observed scores ``[T]``.
    null_scores
        Null scores ``[P, T]`` of the same features under ``P`` joint permutations.

    Returns
    -------
    The target's p-value.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> joint_permutation_pvalue(np.full(20, 9.0), rng.random((9, 20)))
    0.1
    """
    scores = np.asarray(scores, dtype=np.float64)
    null = np.asarray(null_scores, dtype=np.float64)
    if null.ndim != 2 or null.shape[1] != len(scores) or not len(null):
        raise ValueError(f"null_scores must have shape [P >= 1, {len(scores)}]; got {null.shape}.")
    rows = np.vstack([scores[None, :], null])
    rows = np.where(np.isfinite(rows), rows, -np.inf)
    reference = np.sort(rows[np.isfinite(rows)])
    n_ref = max(len(reference), 1)
    n_ge = len(reference) - np.searchsorted(reference, rows, side="left")
    pvals = np.where(np.isfinite(rows), np.maximum(n_ge, 1) / n_ref, 1.0)
    k = np.arange(1, rows.shape[1] + 1)
    simes = (rows.shape[1] * np.sort(pvals, axis=1) / k).min(1)
    return float((1 + np.sum(simes[1:] <= simes[0])) / len(rows))


def bh_qvalues(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): ``q <= a`` is BH at level ``a``.

    ``q_(i) = min_{j >= i} min(1, T p_(j) / j)``; NaN counts as 1.

    Examples
    --------
    >>> bh_qvalues(np.array([0.01, 0.04, 0.03, 0.5])).round(3).tolist()
    [0.04, 0.053, 0.053, 0.5]
    """
    p = np.nan_to_num(np.asarray(pvalues, dtype=np.float64).ravel(), nan=1.0)
    n = len(p)
    if not n:
        return p
    order = np.argsort(p, kind="stable")
    raw = n * p[order] / np.arange(1, n + 1)
    q_sorted = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)
    out = np.empty(n)
    out[order] = q_sorted
    return out


@dataclass
class HierarchicalFDR:
    """Result of :func:`hierarchical_fdr` (targets in input order)."""

    alpha: float
    target_pvalue: np.ndarray  # [m]
    target_qvalue: np.ndarray  # [m] BH over targets
    target_selected: np.ndarray  # [m] target_qvalue <= alpha
    n_selected: int  # R
    feature_level: float  # alpha R / m: the BH level within every selected target
    feature_qvalue: list[np.ndarray]  # BH within each target (not selection-adjusted)
    screen_qvalue: list[np.ndarray]  # min(1, feature_qvalue m / R) if selected, else 1
    significant: list[np.ndarray]  # screen_qvalue <= alpha


def hierarchical_fdr(
    pvalues: Sequence[np.ndarray],
    *,
    alpha: float = 0.1,
    target_pvalues: Sequence[float] | np.ndarray | None = None,
) -> HierarchicalFDR:
    """Benjamini-Bogomolov selective FDR: BH over targets, then BH at ``alpha R / m`` within.

    See the module docstring for what it guarantees and under which assumptions.

    Parameters
    ----------
    pvalues
        Feature p-values, one array per target (``m`` targets; NaN counts as 1).
    alpha
        FDR level ``q`` of both stages.
    target_pvalues
        One p-value per target; default: :func:`simes_pvalue` of each target's features.

    Returns
    -------
    A :class:`HierarchicalFDR`. ``screen_qvalue`` of a selected target's feature is
    ``min(1, q m / R)`` with ``q`` its within-target BH q-value, so ``screen_qvalue <= alpha``
    exactly when BH at level ``alpha R / m`` calls it; features of unselected targets get 1.
    The screen q-values depend on ``alpha`` through the selection.

    Examples
    --------
    >>> out = hierarchical_fdr([np.array([0.001, 0.02, 0.8]), np.array([0.3, 0.9])], alpha=0.1)
    >>> out.target_pvalue.tolist(), out.target_selected.tolist(), out.feature_level
    ([0.003, 0.6], [True, False], 0.05)
    >>> [s.tolist() for s in out.significant]
    [[True, True, False], [False, False]]
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}.")
    pvals = [np.asarray(p, dtype=np.float64).ravel() for p in pvalues]
    m = len(pvals)
    if not m:
        raise ValueError("hierarchical_fdr needs at least one target.")
    for i, p in enumerate(pvals):
        bad = p[np.isfinite(p) & ((p < 0) | (p > 1))]
        if len(bad):
            raise ValueError(f"p-values of target {i} must lie in [0, 1]; got {bad[:3]}.")
    if target_pvalues is None:
        tp = np.array([simes_pvalue(p) for p in pvals])
    else:
        tp = np.nan_to_num(np.asarray(target_pvalues, dtype=np.float64).ravel(), nan=1.0)
        if len(tp) != m or ((tp < 0) | (tp > 1)).any():
            raise ValueError(f"target_pvalues needs {m} values in [0, 1]; got {tp}.")
    tq = bh_qvalues(tp)
    selected = tq <= alpha
    r = int(selected.sum())
    feature_q = [bh_qvalues(p) for p in pvals]
    screen_q = [
        np.minimum(q * m / r, 1.0) if sel else np.ones_like(q)
        for q, sel in zip(feature_q, selected, strict=True)
    ]
    return HierarchicalFDR(
        alpha=float(alpha),
        target_pvalue=tp,
        target_qvalue=tq,
        target_selected=selected,
        n_selected=r,
        feature_level=float(alpha * r / m),
        feature_qvalue=feature_q,
        screen_qvalue=screen_q,
        significant=[s <= alpha for s in screen_q],
    )
