"""Guide calls from guide UMI counts: low MOI labels, high MOI assignment tables."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from ..io._guide_calls import read_protospacer_calls, read_umi_thresholds
from ._feature_counts import read_counts
from ._guide_mixture import fit_guide_mixture

logger = logging.getLogger("dream_sc")

METHODS: tuple[str, ...] = ("umi_threshold", "mixture", "cellranger")
MOIS: tuple[str, ...] = ("low", "high")
#: Largest UMI count the mixture accepts (counts are exact integers in float64 up to 2^53).
MAX_UMIS = 2.0**53


def assign_guides(
    mdata: MuData,
    *,
    method: Literal["umi_threshold", "mixture", "cellranger"] = "umi_threshold",
    moi: Literal["low", "high"] = "low",
    guides: str = "guides",
    threshold: int | Mapping[str, int] = 5,
    min_umis: int = 3,
    calls: str | Path | pd.DataFrame | None = None,
    guide_targets: Mapping[str, str] | pd.Series | None = None,
    control_label: str = "ntc",
    guide_key: str = "guide",
    target_key: str = "target",
    key_added: str = "guide_assignment",
    copy: bool = False,
) -> MuData | None:
    """Call guides per cell from guide UMI counts and label the cells.

    A guide is called in a cell when its UMI count reaches the guide's threshold:

    ``"umi_threshold"``
        ``threshold`` UMIs (one number for all guides or one per guide).
    ``"mixture"``
        Per guide, a two-component mixture of the UMI counts over cells — Poisson background
        (ambient guide reads) and a discretised log-normal for cells carrying the guide — is
        fitted by EM, as Cell Ranger does; the threshold is the count from which on the guide
        component is more likely, and at least ``min_umis``. A guide without a component
        clearly above its background gets no threshold (no calls). Memory and time grow with
        the number of distinct counts, not with the largest one (counts above 2^53 are an
        error).
    ``"cellranger"``
        Cell Ranger's calls (``protospacer_calls_per_cell.csv``, argument ``calls``); the
        thresholds shown by :func:`~dream_sc.pl.guide_assignment` are read from
        ``protospacer_umi_thresholds_json.json`` next to it when present, else the smallest
        called UMI count per guide. A calls file with a header and no rows (no cell called) is
        an error that suggests ``method="mixture"``.

    Raw UMI counts are never used as assignments: only calls enter the table.

    ``moi="low"``: cells with exactly one called guide are kept and labelled; cells without a
    call and cells with several calls are removed from ``mdata`` (the counts per reason are
    logged and stored). ``moi="high"``: every cell with at least one call is kept (cells with
    none are removed); the calls form the assignment table used by
    :func:`~dream_sc.tl.fit_cis` with ``guide_targets=``.

    Parameters
    ----------
    mdata
        The screen, with a guide-count modality (cells × guides, raw UMI counts).
    method
        ``"umi_threshold"``, ``"mixture"`` or ``"cellranger"`` (see above).
    moi
        ``"low"`` (one guide per cell) or ``"high"`` (several).
    guides
        Name of the guide-count modality.
    threshold
        UMIs needed for a call with ``method="umi_threshold"``: an integer, or a mapping guide →
        integer covering every guide.
    min_umis
        Lowest threshold the mixture may give.
    calls
        ``method="cellranger"``: path to ``protospacer_calls_per_cell.csv`` or the table.
    guide_targets
        Guide → target mapping; default ``mdata[guides].var["target"]`` (as written by
        :func:`~dream_sc.io.read_cellranger`). Control guides must map to ``control_label``.
    control_label
        Target label of non-targeting controls.
    guide_key, target_key
        Global ``mdata.obs`` columns written with each cell's guide(s) and target.
    key_added
        Key of the assignment table in ``mdata.obsm`` and of the record in ``mdata.uns``.
    copy
        Return a modified copy instead of changing ``mdata``.

    Returns
    -------
    ``None`` (``copy=False``) or the new MuData. Writes:

    - ``mdata.obs[guide_key]``, ``mdata.obs[target_key]`` (categorical; low MOI: the called guide
      and its target; high MOI: the called guides joined by ``"|"``, and the control label for
      cells with only control guides, the target when all other guides share one, else the
      targets joined by ``"|"``), ``mdata.obs["n_guides"]`` (number of calls);
    - ``mdata.obsm[key_added]``: cells × guides int8 DataFrame of calls (0/1);
    - ``mdata[guides].var["umi_threshold"]`` (``inf``: guide never called) and
      ``var["n_cells_called"]`` (before cells are removed);
    - ``mdata.uns[key_added]``: ``method``, ``moi``, ``params``, ``n_cells_before``,
      ``n_cells_kept``, ``dropped`` (cells removed per reason), ``guide_targets``.

    Raises
    ------
    KeyError
        Missing guide modality or target mapping.
    ValueError
        Bad options, UMIs that are not integer counts, calls naming unknown guides, calls whose
        barcodes do not match the cells, a damaged, empty or header-only calls file (the
        message names the file and the fix), no cell left. Nothing is changed on error.

    Examples
    --------
    >>> import numpy as np, pandas as pd, mudata as md
    >>> from anndata import AnnData
    >>> var = pd.DataFrame({"target": ["A", "ntc"]}, index=["A_1", "NTC_1"])
    >>> umis = np.array([[40, 0], [1, 35], [0, 1], [30, 50]])
    >>> mdata = md.MuData({"guides": AnnData(umis, var=var)})
    >>> assign_guides(mdata, threshold=5)
    >>> mdata.obs["guide"].tolist(), mdata.uns["guide_assignment"]["dropped"]
    (['A_1', 'NTC_1'], {'no guide call': 1, 'several guides': 1})
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}; got {method!r}.")
    if moi not in MOIS:
        raise ValueError(f"`moi` must be one of {list(MOIS)}; got {moi!r}.")
    if not isinstance(key_added, str) or not key_added or ":" in key_added:
        raise ValueError(f"`key_added` must be a non-empty string without ':'; got {key_added!r}.")
    counts = read_counts(mdata, guides, None, f"Guide UMI counts of modality {guides!r}")
    names = pd.Index(mdata.mod[guides].var_names.astype(str))
    targets = _guide_targets(mdata, guides, names, guide_targets, control_label)
    called, thresholds = _call(method, counts, names, threshold, min_umis, calls, guides)
    table = _assignment_table(mdata, guides, called, names)
    n_guides = table.sum(axis=1).to_numpy()
    keep = n_guides == 1 if moi == "low" else n_guides >= 1
    dropped = {"no guide call": int((n_guides == 0).sum())}
    if moi == "low":
        dropped["several guides"] = int((n_guides > 1).sum())
    if not keep.any():
        raise ValueError(
            f"No cell keeps a guide call ({dropped}); with moi={moi!r} and method={method!r} "
            "every cell was removed. Check the thresholds (pl.guide_assignment shows them) or "
            "use moi='high' for cells with several guides."
        )
    labels = _labels(table, targets, moi, control_label)
    target = mdata.copy() if copy else mdata
    n_before = target.n_obs
    target.mod[guides].var["umi_threshold"] = thresholds.to_numpy(dtype=float)
    target.mod[guides].var["n_cells_called"] = np.asarray(table.sum(axis=0), dtype=np.int64)
    target.obs["n_guides"] = n_guides.astype(np.int64)
    target.obs[guide_key] = labels["guide"]
    target.obs[target_key] = labels["target"]
    target.obsm[key_added] = table
    if not keep.all():
        _subset_cells(target, keep)
    for key in (guide_key, target_key):
        target.obs[key] = target.obs[key].cat.remove_unused_categories()
    target.uns[key_added] = {
        "method": method,
        "moi": moi,
        "params": {
            "guides": guides,
            "threshold": threshold if not isinstance(threshold, Mapping) else dict(threshold),
            "min_umis": int(min_umis),
            "control_label": control_label,
        },
        "n_cells_before": int(n_before),
        "n_cells_kept": int(keep.sum()),
        "dropped": dropped,
        "guide_targets": {str(g): str(t) for g, t in targets.items()},
    }
    reasons = ", ".join(f"{n} with {why}" for why, n in dropped.items() if n) or "none"
    logger.info(
        "assign_guides (%s, %s MOI): kept %d of %d cells; removed: %s.",
        method,
        moi,
        int(keep.sum()),
        n_before,
        reasons,
    )
    return target if copy else None


def _guide_targets(mdata, guides, names, guide_targets, control_label) -> pd.Series:
    if guide_targets is None:
        var = mdata.mod[guides].var
        if "target" not in var.columns:
            raise KeyError(
                f"No guide → target mapping: mdata[{guides!r}].var has no 'target' column; pass "
                "`guide_targets=` (dict guide → target, control guides → control label)."
            )
        mapping = pd.Series(var["target"].astype(object).to_numpy(), index=names)
    else:
        mapping = pd.Series(
            dict(guide_targets) if isinstance(guide_targets, Mapping) else guide_targets
        )
        mapping.index = mapping.index.astype(str)
        missing = [g for g in names if g not in mapping.index]
        if missing:
            raise KeyError(
                f"`guide_targets` has no entry for guide(s) {missing[:5]}; give every guide of "
                f"modality {guides!r} its target (control guides: {control_label!r})."
            )
        mapping = mapping.reindex(names)
    if mapping.isna().any():
        raise ValueError(
            f"Guide(s) {mapping.index[mapping.isna().to_numpy()][:5].tolist()} have no target; "
            "every guide needs one (control guides: the control label)."
        )
    return mapping.astype(str)


def _call(method, counts, names, threshold, min_umis, calls, guides):
    """Calls (cells of the guide modality × guides, bool or a barcode-indexed DataFrame)."""
    if isinstance(min_umis, bool) or not isinstance(min_umis, int | np.integer) or min_umis < 1:
        raise ValueError(f"`min_umis` must be a positive integer; got {min_umis!r}.")
    if method == "cellranger":
        if calls is None:
            raise ValueError(
                "method='cellranger' needs `calls=`: the path to Cell Ranger's "
                "crispr_analysis/protospacer_calls_per_cell.csv (or the table)."
            )
        table, umis = read_protospacer_calls(calls, names)
        thresholds = None
        if not isinstance(calls, pd.DataFrame):
            thresholds = read_umi_thresholds(Path(calls).expanduser(), names)
        if thresholds is None:
            masked = umis.where(table.astype(bool))
            thresholds = masked.min(axis=0).astype(float)
        return table, thresholds.reindex(names)
    dense = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    if method == "mixture" and dense.size and dense.max() > MAX_UMIS:
        j = int(np.argmax(dense.max(axis=0)))
        raise ValueError(
            f"Guide {names[j]!r} of modality {guides!r} has a UMI count of {dense[:, j].max():.4g} "
            f"(above 2^53, not exactly representable); fix: check that mdata[{guides!r}].X holds "
            "raw guide UMI counts (the file may be damaged), or use method='umi_threshold'."
        )
    if method == "umi_threshold":
        values = _threshold_values(threshold, names, guides)
    else:
        values = np.array(
            [
                max(fit_guide_mixture(dense[:, j]).threshold, float(min_umis))
                for j in range(dense.shape[1])
            ]
        )
    return dense >= values[None, :], pd.Series(values, index=names, dtype=float)


def _threshold_values(threshold, names, guides) -> np.ndarray:
    def check(value, what):
        ok = not isinstance(value, bool) and isinstance(
            value, int | np.integer | float | np.floating
        )
        if not ok or not np.isfinite(value) or value < 1:
            raise ValueError(f"{what} must be a positive number of UMIs; got {value!r}.")
        return float(value)

    if isinstance(threshold, Mapping):
        missing = [g for g in names if g not in threshold]
        if missing:
            raise ValueError(
                f"`threshold` has no value for guide(s) {missing[:5]} of modality {guides!r}; "
                "give one per guide or a single number."
            )
        return np.array([check(threshold[g], f"`threshold[{g!r}]`") for g in names])
    return np.full(len(names), check(threshold, "`threshold`"))


def _assignment_table(mdata, guides, called, names) -> pd.DataFrame:
    """Calls aligned to ``mdata.obs_names`` (cells absent from the guide data: no call)."""
    if isinstance(called, pd.DataFrame):
        overlap = called.index.isin(mdata.obs_names)
        if len(called) and overlap.mean() < 0.5:
            raise ValueError(
                f"Only {int(overlap.sum())} of {len(called)} barcodes of the guide calls are cells "
                f"of mdata (calls: {called.index[:3].tolist()}; mdata: "
                f"{mdata.obs_names[:3].tolist()}); use the calls of the same Cell Ranger run."
            )
        table = called.reindex(mdata.obs_names, fill_value=0)
    else:
        cells = mdata.mod[guides].obs_names
        table = pd.DataFrame(called.astype(np.int8), index=cells, columns=names)
        table = table.reindex(mdata.obs_names, fill_value=0)
    table = table.astype(np.int8)
    table.columns = pd.Index(names.copy())
    return table


def _labels(table: pd.DataFrame, targets: pd.Series, moi: str, control_label: str) -> pd.DataFrame:
    guide_names = table.columns.to_numpy(dtype=object)
    target_of = targets.to_numpy(dtype=object)
    rows, cols = np.nonzero(table.to_numpy())
    per_cell = pd.Series(cols).groupby(rows).agg(list)
    guide = np.full(len(table), None, dtype=object)
    target = np.full(len(table), None, dtype=object)
    for row, members in per_cell.items():
        guide[row] = "|".join(guide_names[members])
        hit = [t for t in dict.fromkeys(target_of[members]) if t != control_label]
        target[row] = control_label if not hit else "|".join(hit)
    order = [g for g in guide_names]
    present_targets = list(dict.fromkeys(target_of))
    target_order = [control_label] + [t for t in present_targets if t != control_label]
    if moi == "high":
        order = order + sorted({g for g in guide if g is not None} - set(order))
        target_order = target_order + sorted(
            {t for t in target if t is not None} - set(target_order)
        )
    return pd.DataFrame(
        {
            "guide": pd.Categorical(guide, categories=order),
            "target": pd.Categorical(target, categories=target_order),
        },
        index=table.index,
    )


def _subset_cells(mdata: MuData, keep: np.ndarray) -> None:
    """Keep only the cells ``keep`` (aligned with ``mdata.obs_names``), in place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata 0.3 announces an update() change
        subset = mdata[keep].copy()
    mdata._init_as_actual(subset)
