"""Cell Ranger's guide calls: ``crispr_analysis/protospacer_calls_per_cell.csv``.

One row per cell with at least one call: ``cell_barcode``, ``num_features`` (number of guides
called), ``feature_call`` (guide names joined by ``|``) and ``num_umis`` (their UMI counts,
joined by ``|`` in the same order). Per-guide UMI thresholds are in
``protospacer_umi_thresholds_json.json`` next to it (``{"guide": threshold, ...}``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ._files import as_file, check_unique_header, file_error, header_fields, reading

CALL_COLUMNS: tuple[str, ...] = ("cell_barcode", "num_features", "feature_call", "num_umis")
THRESHOLDS_FILE = "protospacer_umi_thresholds_json.json"


def read_protospacer_calls(
    source: str | Path | pd.DataFrame, guide_names: pd.Index
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse the calls into cells × guides tables of calls (0/1) and called UMIs.

    Parameters
    ----------
    source
        Path to ``protospacer_calls_per_cell.csv`` or the table itself.
    guide_names
        Guide names of the guide-count modality (columns of the outputs).

    Returns
    -------
    ``(called, umis)``: int8 and int64 DataFrames indexed by ``cell_barcode``.

    Raises
    ------
    ValueError
        Wrong columns, duplicated barcodes, guides absent from ``guide_names``, or
        ``num_features``/``num_umis`` inconsistent with ``feature_call``.
    """
    if isinstance(source, pd.DataFrame):
        table, where = source.copy(), "the guide-call table"
    else:
        path = as_file(source, "calls")
        fix = f"Cell Ranger's header is {','.join(CALL_COLUMNS)}, each name once"
        check_unique_header(header_fields(path, ","), repr(str(path)), fix)
        with reading(path, "Cell Ranger's protospacer_calls_per_cell.csv"):
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        where = f"guide calls {str(path)!r}"
    check_unique_header(table.columns, where, f"name each of {list(CALL_COLUMNS)} once")
    missing = [c for c in CALL_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{where} lacks column(s) {missing} (has {list(table.columns)}); Cell Ranger's "
            f"protospacer_calls_per_cell.csv has {','.join(CALL_COLUMNS)}."
        )
    if table.empty:
        raise ValueError(
            f"{where} has a header but no rows: no cell has a guide call; fix: use "
            "method='mixture' (or guide_calls='mixture' in read_cellranger) to call guides from "
            "the UMI counts, or check that the file comes from a run whose guides were detected."
        )
    barcodes = table["cell_barcode"].astype(str)
    dup = barcodes[barcodes.duplicated()].unique()
    if len(dup):
        raise ValueError(
            f"{where} lists barcode(s) {list(dup[:3])} more than once; each cell must have one "
            "row (several guides are joined by '|' in one row)."
        )
    calls = table["feature_call"].astype(str).str.split("|")
    umis = table["num_umis"].astype(str).str.split("|")
    n_listed = calls.map(len).to_numpy()
    bad_umis = umis.map(len).to_numpy() != n_listed
    declared = pd.to_numeric(table["num_features"], errors="coerce").to_numpy()
    bad_n = declared != n_listed
    if bad_umis.any() or bad_n.any():
        row = int(np.flatnonzero(bad_umis | bad_n)[0])
        raise ValueError(
            f"{where}, cell {barcodes.iloc[row]!r}: num_features={table['num_features'].iloc[row]!r}, "
            f"feature_call={table['feature_call'].iloc[row]!r}, num_umis="
            f"{table['num_umis'].iloc[row]!r} disagree; each must list the same number of guides."
        )
    flat_guides = (
        np.concatenate([np.asarray(c, dtype=object) for c in calls])
        if len(calls)
        else np.array([], dtype=object)
    )
    flat_umis = (
        np.concatenate([np.asarray(u, dtype=object) for u in umis])
        if len(umis)
        else np.array([], dtype=object)
    )
    known = pd.Index(guide_names.astype(str))
    unknown = sorted(set(flat_guides) - set(known))
    if unknown:
        raise ValueError(
            f"{where} calls guide(s) {unknown[:5]} that are not guide features of the matrix "
            f"(e.g. {known[:3].tolist()}); use the calls and the matrix of the same Cell Ranger "
            "run, or the feature reference that names the guides alike."
        )
    umi_values = pd.to_numeric(pd.Series(flat_umis), errors="coerce").to_numpy(float)
    bad = ~np.isfinite(umi_values) | (umi_values < 0) | (umi_values != np.floor(umi_values))
    if np.any(bad | (umi_values > 2.0**53)):
        raise ValueError(
            f"{where}: 'num_umis' must hold non-negative integers (below 2^53) joined by '|'; "
            f"got {flat_umis[np.flatnonzero(bad | (umi_values > 2.0**53))[0]]!r}; fix: use the "
            "protospacer_calls_per_cell.csv written by Cell Ranger, unedited."
        )
    rows = np.repeat(np.arange(len(table)), n_listed)
    cols = known.get_indexer(flat_guides)
    called = np.zeros((len(table), len(known)), dtype=np.int8)
    counts = np.zeros((len(table), len(known)), dtype=np.int64)
    called[rows, cols] = 1
    counts[rows, cols] = umi_values.astype(np.int64)
    index = pd.Index(barcodes.to_numpy(), name=None)
    return (
        pd.DataFrame(called, index=index, columns=known.copy()),
        pd.DataFrame(counts, index=index, columns=known.copy()),
    )


def read_umi_thresholds(calls_path: Path, guide_names: pd.Index) -> pd.Series | None:
    """Cell Ranger's per-guide UMI thresholds next to the calls file, if present."""
    path = calls_path.parent / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        with (
            reading(path, "a JSON object guide → UMI threshold"),
            open(path, encoding="utf-8") as f,
        ):
            values = json.load(f)
        if not isinstance(values, dict):
            raise TypeError(f"a JSON {type(values).__name__}, not an object")
        return pd.Series(
            {g: float(values[g]) if g in values else np.nan for g in guide_names.astype(str)},
            dtype=float,
        )
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(repr(str(path))):
            raise
        raise file_error(
            path,
            f"not a JSON object of guide → UMI threshold ({err})",
            "copy it again from Cell Ranger's crispr_analysis/ folder, or delete it (the "
            "smallest called UMI count per guide is then shown as the threshold)",
        ) from err
