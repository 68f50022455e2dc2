"""``get.screen_results``: one table over every target of a screen, FDR controlled screen-wide."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from mudata import MuData

from .. import _validation as V
from .._stores._keys import TransKeys
from .._stores.screen import read_screen
from .._stores.trans import checked_trans_record
from ..models.hierarchical_fdr import (
    hierarchical_fdr,
    joint_permutation_pvalue,
    permutation_pvalues,
    simes_pvalue,
)
from ..models.significance import shape_calls
from ._pooled import pooled_decoy_qvalues
from ._tables import CategoryColumn, feature_column, stored_column, target_column


def _n_null_sets(null: np.ndarray, record: Mapping) -> int:
    if null.ndim == 2:
        return int(null.shape[0])
    return int(record.get("params", {}).get("n_permutations", 1))


#: Columns every target's table gains, in the order the screen adds them: the per-target
#: calls kept under new names, the hierarchical columns. ``qvalue``, ``significant`` and
#: ``shape`` are replaced in place by their screen-wide values.
_ADDED = (
    "qvalue_target",
    "significant_target",
    "shape_target",
    "qvalue",
    "significant",
    "shape",
    "feature_pvalue",
    "screen_qvalue",
    "target_pvalue",
    "target_qvalue",
    "target_selected",
    "significant_screen",
    "shape_screen",
)
#: The per-target calls, kept under new names.
_KEPT = {f"{name}_target": name for name in ("qvalue", "significant", "shape")}
#: Computed here (everything else is read from the targets' trans tables).
_COMPUTED = frozenset(_ADDED) - set(_KEPT)
_POOLED = ("qvalue", "significant", "shape")  # need the pooled target-decoy q-values


def screen_results(
    mdata: MuData,
    *,
    modality: str = "rna",
    key: str = "dream_screen",
    alpha: float = 0.1,
    targets: Sequence[str] | None = None,
    target_test: Literal["simes", "permutation"] = "simes",
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Trans results of every target of a screen, with q-values controlling the screen's FDR.

    Each target's table is :func:`~dream_sc.get.trans_results` of its trans fit. The per-target
    q-values only control the FDR within a target; across a screen of many targets most calls
    would come from the targets with the most features above their nulls. Here the observed
    scores and the stored permutation null scores (``null_scores`` of each trans record) of
    all targets are pooled into one target-decoy estimate (see :func:`pooled_decoy_qvalues`;
    targets with different numbers of permutations are weighted per null fit), which controls
    the FDR over all (target, feature) pairs. The same is done for the non-monotonic evidence,
    and ``shape`` is called again from the screen-wide values.

    The **hierarchical** columns answer the screen's two questions in order (Benjamini and
    Bogomolov 2014; :func:`~dream_sc.models.hierarchical_fdr.hierarchical_fdr`): every
    feature gets a permutation p-value against its target's pooled null
    (``feature_pvalue``); every target a p-value
    for "changes no feature" (``target_pvalue``), BH over the targets (``target_qvalue``,
    ``target_selected = target_qvalue <= alpha``); within each of the ``R`` selected of ``m``
    targets BH at level ``alpha R / m`` (``screen_qvalue``, ``significant_screen``). This
    bounds the expected share of selected targets without effect by ``alpha`` and the
    average within-target FDR of the selected targets by ``alpha``, so targets without effect
    do not collect the screen's false calls (the pooled ``qvalue`` only bounds the share of
    false pairs overall). Read ``significant_screen``.

    **Memory.** The table is built column by column straight into its final arrays (no
    per-target copies, no concatenation), and the targets' null scores are counted, never
    gathered (:func:`pooled_decoy_qvalues`). String columns are :class:`pandas.Categorical`
    with the sorted distinct values as categories (sorting, ``pivot`` and ``groupby`` order
    rows as for strings; pass ``observed=True`` to ``groupby``): ``target``, ``feature``,
    ``distribution``, ``function``, ``shape``, ``shape_target`` and ``shape_screen``;
    numbers keep their stored dtype (float64). With the additive Hill curve the full table
    takes about 450 bytes per (target, feature) pair, 1.8 GB for 500 targets x 8,000 genes;
    ``columns=`` builds only what is asked for, e.g. ``["target", "feature",
    "screen_qvalue", "significant_screen", "ec50_mean"]`` at 22 bytes per pair.

    Parameters
    ----------
    mdata
        A screen fitted with :func:`dream_sc.tl.fit_screen` (with significance testing).
    modality
        The modality the screen was fitted on.
    key
        ``key_added`` of the screen.
    alpha
        ``significant = qvalue < alpha``.
    targets
        Subset of the screen's targets (the FDR is then controlled over those).
    target_test
        Target p-value of the hierarchical columns: ``"simes"`` (default; Simes' combination
        of the pooled-null feature p-values, resolution ``1 / (1 + P T)``) or
        ``"permutation"`` (exact: the Simes statistic of the real dosages ranked among those
        of the ``P`` stored joint permutations, never below ``1 / (1 + P)``; see
        :func:`~dream_sc.models.hierarchical_fdr.joint_permutation_pvalue`).
    columns
        Return only these columns, in this order (default: all). Values do not depend on the
        choice; columns not asked for are never built. An unknown name raises a
        :class:`ValueError` listing the valid ones before any work.

    Returns
    -------
    Long DataFrame, one row per (target, feature): ``target``, ``feature``, every
    ``trans_results`` column with ``qvalue``, ``significant`` and
    ``shape`` screen-wide, plus the per-target ``qvalue_target``,
    ``significant_target``, ``shape_target``, and the hierarchical ``feature_pvalue``,
    ``target_pvalue``, ``target_qvalue``, ``target_selected``, ``screen_qvalue``
    (depends on ``alpha`` through the selection; 1 for features of unselected targets),
    ``significant_screen`` (``screen_qvalue <= alpha``) and ``shape_screen``. Features a fit
    left out (``fitted`` False) keep NaN q-values and p-values. ``attrs["hierarchical_fdr"]``
    holds ``alpha``, ``target_test``, ``n_targets`` (``m``), ``n_selected`` (``R``) and
    ``feature_level`` (``alpha R / m``).

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=400, n_genes=20, n_targets=2, seed=0)
    >>> ds.tl.fit_screen(mdata, n_steps=30, progress=False)  # doctest: +SKIP
    >>> ds.get.screen_results(mdata).columns[:2].tolist()  # doctest: +SKIP
    ['target', 'feature']
    >>> ds.get.screen_results(mdata, columns=["target", "feature", "screen_qvalue"])  # doctest: +SKIP
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, modality)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}.")
    if target_test not in ("simes", "permutation"):
        raise ValueError(f"target_test must be 'simes' or 'permutation'; got {target_test!r}.")
    record = read_screen(mdata, modality, key)
    screen_targets = [str(t) for t in record["targets"]]
    keys = dict(zip(screen_targets, [str(k) for k in record["trans_keys"]], strict=True))
    if targets is None:
        chosen = screen_targets
    else:
        chosen = [str(t) for t in ([targets] if isinstance(targets, str) else targets)]
        unknown = [t for t in chosen if t not in keys]
        if unknown:
            raise ValueError(
                f"Target(s) {unknown} are not part of the screen {key!r}; its targets: "
                f"{screen_targets}."
            )
    if not chosen:
        raise ValueError(f"targets is empty; pass targets of the screen {key!r}: {screen_targets}.")
    adata = _Modality(mdata[modality])
    tables, nulls, untested = [], [], []
    for target in chosen:
        trans = checked_trans_record(adata, modality, keys[target])
        table = adata.varm[keys[target]]  # read only: never modified, never copied
        if "null_scores" not in trans:
            untested.append(target)
            continue
        tables.append(table)
        nulls.append(trans)
    names = _column_names([adata.varm[keys[t]].columns for t in chosen])
    wanted = names if columns is None else _check_columns(columns, names)
    if untested:
        raise ValueError(
            f"The trans fits of target(s) {untested} have no permutation null, so no "
            "screen-wide q-values can be computed; run `ds.tl.test_trans(mdata, "
            f"modality={modality!r}, key=...)` for each of "
            f"{[keys[t] for t in untested]}."
        )
    tested = [TransKeys.tested(t) for t in tables]
    null = [np.asarray(r["null_scores"], dtype=np.float64) for r in nulls]
    scores = [t["score"].to_numpy(dtype=np.float64)[f] for t, f in zip(tables, tested, strict=True)]
    q_screen = None
    if any(name in wanted for name in _POOLED):
        q_screen = pooled_decoy_qvalues(
            scores, null, [_n_null_sets(n, r) for n, r in zip(null, nulls, strict=True)]
        )
    hier = _hierarchical(chosen, scores, null, alpha, target_test)
    del scores, null
    out = _assemble(chosen, tables, tested, q_screen, hier, alpha, wanted)
    out.attrs["hierarchical_fdr"] = {
        "alpha": float(alpha),
        "target_test": target_test,
        "n_targets": len(chosen),
        "n_selected": int(hier["result"].n_selected),
        "feature_level": float(hier["result"].feature_level),
    }
    return out


class _Modality:
    """A modality's ``uns``, ``varm`` and ``n_vars``, each read once.

    Each read of ``AnnData.varm`` checks every entry against the modality (five per target
    of a screen), so reading it once per target grows with the square of the targets.
    """

    def __init__(self, adata) -> None:
        self.uns, self.varm, self.n_vars = adata.uns, adata.varm, adata.n_vars


def _column_names(stored: list[pd.Index]) -> list[str]:
    """Columns of the screen table: ``target``, ``feature``, each target's columns, the added.

    The union over the targets in order of first appearance (what concatenating the targets'
    tables would give).
    """
    names: dict[str, None] = {}
    for cols in stored:
        cols = [str(c) for c in cols]
        names.update(dict.fromkeys(["target", "feature", *cols]))
        names.update(dict.fromkeys(c for c in _ADDED if c not in cols))
    if not stored:
        names.update(dict.fromkeys(["target", "feature", *_ADDED]))
    return list(names)


def _check_columns(columns: Sequence[str], names: list[str]) -> list[str]:
    """``columns=`` as a list, checked against the table's column names."""
    chosen = [columns] if isinstance(columns, str) else list(columns)
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise ValueError(f"columns has unknown name(s) {unknown}; valid names: {names}.")
    if not chosen or len(set(chosen)) < len(chosen):
        raise ValueError(f"columns must name at least one column, each once; got {chosen}.")
    return chosen


def _assemble(
    targets: list[str],
    tables: list[pd.DataFrame],
    tested: list[np.ndarray],
    q_screen: list[np.ndarray] | None,
    hier: dict,
    alpha: float,
    wanted: list[str],
) -> pd.DataFrame:
    """The screen table: each wanted column allocated once and filled target by target."""
    bounds = np.cumsum([0, *(len(t) for t in tables)])
    n = int(bounds[-1])
    out: dict[str, object] = {}
    computed = [c for c in wanted if c in _COMPUTED]
    parts: dict[str, object] = {}
    for c in computed:
        parts[c] = CategoryColumn(n) if c.startswith("shape") else None
    for i, (table, f) in enumerate(zip(tables, tested, strict=True)):
        block = slice(bounds[i], bounds[i + 1])
        values = _target_values(table, f, None if q_screen is None else q_screen[i], hier, i, alpha)
        for c in computed:
            v = values[c]()
            if parts[c] is None:  # first target: allocate with the column's dtype
                parts[c] = np.empty(n, dtype=np.asarray(v).dtype)
            if isinstance(parts[c], CategoryColumn):
                parts[c].put(block, v)
            else:
                parts[c][block] = v
    for c in wanted:
        if c == "target":
            out[c] = target_column(targets, np.diff(bounds))
        elif c == "feature":
            out[c] = feature_column(tables, bounds)
        elif c in _COMPUTED:
            part = parts[c]
            out[c] = part.finish() if isinstance(part, CategoryColumn) else part
        else:
            out[c] = stored_column(tables, _KEPT.get(c, c), bounds)
    return pd.DataFrame(out, index=pd.RangeIndex(n), copy=False)


def _target_values(
    table: pd.DataFrame,
    tested: np.ndarray,
    q_screen: np.ndarray | None,
    hier: dict,
    i: int,
    alpha: float,
) -> dict:
    """Target ``i``'s computed columns, each a function (only the wanted ones are called)."""
    result = hier["result"]
    memo: dict[str, np.ndarray] = {}

    def spread(values) -> np.ndarray:
        col = np.full(len(tested), np.nan)
        col[tested] = values
        return col

    def significant() -> np.ndarray:
        if "significant" not in memo:
            memo["significant"] = tested & (spread(q_screen) < alpha)
        return memo["significant"]

    def significant_screen() -> np.ndarray:
        if "significant_screen" not in memo:
            calls = np.zeros(len(tested), dtype=bool)
            calls[tested] = result.significant[i]
            memo["significant_screen"] = calls
        return memo["significant_screen"]

    size = len(tested)
    return {
        "qvalue": lambda: spread(q_screen),
        "significant": significant,
        "shape": lambda: _shapes(table, tested, significant()),
        "feature_pvalue": lambda: spread(hier["pvalues"][i]),
        "screen_qvalue": lambda: spread(result.screen_qvalue[i]),
        "target_pvalue": lambda: np.full(size, float(result.target_pvalue[i])),
        "target_qvalue": lambda: np.full(size, float(result.target_qvalue[i])),
        "target_selected": lambda: np.full(size, bool(result.target_selected[i])),
        "significant_screen": significant_screen,
        "shape_screen": lambda: _shapes(table, tested, significant_screen()),
    }


def _shapes(frame: pd.DataFrame, tested: np.ndarray, significant: np.ndarray) -> np.ndarray:
    """Shape calls of a target's table for the given significance column."""
    return shape_calls(
        frame["response_mean"].to_numpy(dtype=np.float64),
        frame["prob_non_monotonic"].to_numpy(dtype=np.float64),
        significant,
        tested,
    )


def _hierarchical(
    targets: list[str],
    scores: list[np.ndarray],
    null: list[np.ndarray],
    alpha: float,
    target_test: str,
) -> dict:
    """Feature p-values and the Benjamini-Bogomolov result over the chosen targets."""
    pvalues = [permutation_pvalues(s, n) for s, n in zip(scores, null, strict=True)]
    if target_test == "simes":
        target_p = [simes_pvalue(p) for p in pvalues]
    else:
        target_p = []
        for target, s, n in zip(targets, scores, null, strict=True):
            if n.ndim != 2 or n.shape[1] != len(s):
                raise ValueError(
                    f"The null of target {target!r} is not stored per permutation "
                    f"(shape {n.shape}); rerun `ds.tl.test_trans` on its trans fit or use "
                    "target_test='simes'."
                )
            target_p.append(joint_permutation_pvalue(s, n) if len(s) else 1.0)
    return {
        "pvalues": pvalues,
        "result": hierarchical_fdr(pvalues, alpha=alpha, target_pvalues=target_p),
    }
