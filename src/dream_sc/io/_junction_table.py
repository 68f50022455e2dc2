"""``io.read_junction_table``: junction counts from a long or wide text table."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from ._barcodes import cell_names, match_barcodes
from ._chrom import harmonise
from ._files import as_file, check_unique_header, read_table
from ._junctions import junction_anndata

logger = logging.getLogger("dream_sc")

LONG_COLUMNS: tuple[str, ...] = ("barcode", "chrom", "start", "end", "strand", "count")
COORDINATES: tuple[str, ...] = ("1-based", "0-based")
#: Junction ids of wide tables: ``chr1:100:200``, ``chr1:100-200:+``, leafcutter ``chr1:100:200:clu_1_+``.
_ID = r"^(?P<chrom>[^:]+):(?P<start>\d+)[:-](?P<end>\d+)(?::(?:clu_\d+_)?(?P<strand>[+\-.]|NA|[012]))?$"
_STRANDS = {"+": "+", "-": "-", "1": "+", "2": "-"}


def read_junction_table(
    table: str | Path | pd.DataFrame,
    *,
    coordinates: Literal["1-based", "0-based"],
    layout: Literal["long", "wide"] = "long",
    columns: Mapping[str, str] | None = None,
    cells: MuData | AnnData | Sequence[str] | None = None,
    barcode_suffix: str | None = "auto",
    chrom_style: Literal["keep", "ucsc", "ensembl"] = "keep",
    sep: str | None = None,
) -> AnnData:
    """Read junction counts from a generic table (regtools / leafcutter style).

    ``layout="long"``: one row per cell and junction with columns ``barcode``, ``chrom``,
    ``start``, ``end``, ``strand``, ``count`` (junctions come out sorted by coordinates) (rename with ``columns``, e.g.
    ``columns={"barcode": "cell"}``). ``layout="wide"``: one row per junction, one column per
    cell; the junction is given either by ``chrom``, ``start``, ``end``, ``strand`` columns or
    by a first column (or index) of ids ``chr1:100:200:+``, ``chr1:100-200:+`` or leafcutter's
    ``chr1:100:200:clu_1_+``.

    Coordinates must be declared: ``"1-based"`` means ``start``/``end`` are the first and last
    intron base (STAR's ``SJ.out.tab``); ``"0-based"`` means BED-style half-open intervals
    (``start`` = first intron base − 1, ``end`` = last intron base; regtools ``junctions
    extract`` introns, leafcutter). Both are stored 1-based inclusive. Strand ``+``/``-`` or
    ``1``/``2``; junctions with unknown strand (``.``, ``NA``, ``0``, missing) are dropped (count
    logged) because their donor and acceptor cannot be told apart.

    Parameters
    ----------
    table
        Path of a CSV/TSV (gzipped or not) or a DataFrame.
    coordinates
        ``"1-based"`` or ``"0-based"`` (see above).
    layout
        ``"long"`` or ``"wide"``.
    columns
        Our column name → the table's column name, for columns named differently.
    cells, barcode_suffix
        Expression cells to match the barcodes to, as in
        :func:`~dream_sc.io.read_starsolo_junctions`.
    chrom_style
        ``"keep"``, ``"ucsc"`` or ``"ensembl"`` chromosome names.
    sep
        Field separator; default: tab for ``.tsv``/``.txt``/``.tab`` (and ``.gz`` of them),
        else comma.

    Returns
    -------
    AnnData cells × junctions (float32 CSR), ``var`` with ``chrom``, ``start``, ``end``,
    ``strand`` (``+``/``-``) and ``gene`` (missing; see :func:`~dream_sc.pp.annotate_junctions`),
    ``var_names`` ``"{chrom}:{start}-{end}:{strand}"``.

    Raises
    ------
    ValueError
        Undeclared coordinates, missing columns, unparsable junction ids, negative or
        non-integer counts, repeated barcode/junction rows or cell columns.

    Examples
    --------
    >>> import pandas as pd
    >>> long = pd.DataFrame(
    ...     {"barcode": ["AAAC", "AAAC", "TTTG"], "chrom": "chr1", "start": [99, 99, 299],
    ...      "end": [200, 400, 400], "strand": "+", "count": [3, 1, 2]}
    ... )
    >>> adata = read_junction_table(long, coordinates="0-based")
    >>> adata.var_names.tolist(), adata.X.toarray().tolist()
    (['chr1:100-200:+', 'chr1:100-400:+', 'chr1:300-400:+'], [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    """
    if coordinates not in COORDINATES:
        raise ValueError(
            f"`coordinates` must be declared as '1-based' (start/end = first/last intron base, "
            f"as STAR) or '0-based' (BED half-open, as regtools/leafcutter); got {coordinates!r}."
        )
    if layout not in ("long", "wide"):
        raise ValueError(f"`layout` must be 'long' or 'wide'; got {layout!r}.")
    frame, what = _load(table, sep)
    if frame.empty:
        raise ValueError(
            f"{what} has no rows; fix: pass a table with one row per junction (wide) or per "
            "cell and junction (long)."
        )
    rename = {v: k for k, v in (columns or {}).items()}
    frame = frame.rename(columns=rename)
    check_unique_header(
        frame.columns, what, "name each column once (and let `columns=` map to new names only)"
    )
    if layout == "long":
        var, x, barcodes = _long(frame, what)
    else:
        var, x, barcodes = _wide(frame, what)
    if coordinates == "0-based":
        var["start"] = var["start"] + 1
    if (var["start"] < 1).any() or (var["end"] < 1).any():
        row = var[(var["start"] < 1) | (var["end"] < 1)].iloc[0]
        given = row["start"] - 1 if coordinates == "0-based" else row["start"]
        raise ValueError(
            f"{what}: junction {row['chrom']}:{given}-{row['end']} lies before the chromosome "
            f"start when read as {coordinates} (smallest position: "
            f"{0 if coordinates == '0-based' else 1} for start, 1 for end); fix: check the "
            "`coordinates` declaration and remove junctions with negative or zero positions."
        )
    if (var["start"] > var["end"]).any():
        raise ValueError(
            f"{what}: some junctions have start > end after reading them as {coordinates}; "
            "check the `coordinates` declaration."
        )
    strand = var["strand"].astype(str).str.strip().map(_STRANDS)
    keep = strand.notna().to_numpy()
    logger.info(
        "read_junction_table: %d junctions, %d with unknown strand dropped",
        len(var),
        int((~keep).sum()),
    )
    var = var.assign(strand=strand, chrom=harmonise(var["chrom"], chrom_style))[keep]
    expression = cell_names(cells)
    barcodes = match_barcodes(barcodes, expression, suffix=barcode_suffix, what=what)
    return junction_anndata(x[:, np.flatnonzero(keep)], barcodes, var, expression, what)


def _load(table, sep) -> tuple[pd.DataFrame, str]:
    if isinstance(table, pd.DataFrame):
        return table.copy(), "the junction table"
    path = as_file(table, "table")
    if sep is None:
        stem = path.name[:-3] if path.name.endswith(".gz") else path.name
        sep = "\t" if stem.endswith((".tsv", ".txt", ".tab")) else ","
    frame = read_table(
        path,
        kind=f"a junction table separated by {sep!r}",
        sep=sep,
        fix_header="name each column once (long layout: barcode, chrom, start, end, strand, "
        "count; wide layout: one column per cell barcode, each barcode once)",
    )
    return frame, f"junction table {str(path)!r}"


def _counts(values: np.ndarray, what: str) -> np.ndarray:
    numeric = pd.to_numeric(pd.Series(values.ravel()), errors="coerce").to_numpy(float)
    bad = ~np.isfinite(numeric) | (numeric < 0) | (numeric != np.floor(numeric))
    if np.any(bad | (numeric > 2.0**53)):
        first = np.asarray(values, dtype=object).ravel()[
            np.flatnonzero(bad | (numeric > 2.0**53))[0]
        ]
        raise ValueError(
            f"{what}: counts must be non-negative integers without missing values; got "
            f"{first!r}; fix: give raw read counts (no text, NaN or normalised values)."
        )
    return numeric.reshape(values.shape)


def _check_columns(frame: pd.DataFrame, needed: Sequence[str], what: str, layout: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} lacks column(s) {missing} (has {list(frame.columns)[:10]}); the {layout} "
            f"layout needs {list(needed)}. Map differently named columns with `columns=`, e.g. "
            "columns={'barcode': 'cell'}."
        )


def _long(frame: pd.DataFrame, what: str):
    _check_columns(frame, LONG_COLUMNS, what, "long")
    key = ["barcode", "chrom", "start", "end", "strand"]
    frame = frame.assign(
        barcode=frame["barcode"].astype(str),
        chrom=frame["chrom"].astype(str),
        strand=frame["strand"].astype(str),
        start=_integers(frame["start"], "start", what),
        end=_integers(frame["end"], "end", what),
    )
    dup = frame.duplicated(subset=key)
    if dup.any():
        row = frame[dup].iloc[0]
        raise ValueError(
            f"{what} has several rows for barcode {row['barcode']!r} and junction "
            f"{row['chrom']}:{row['start']}-{row['end']}:{row['strand']}; sum them into one row."
        )
    counts = _counts(frame["count"].to_numpy(), what)
    cells, barcodes = pd.factorize(frame["barcode"])
    junction, junctions = pd.factorize(
        pd.MultiIndex.from_frame(frame[["chrom", "start", "end", "strand"]])
    )
    x = sparse.csr_matrix((counts, (cells, junction)), shape=(len(barcodes), len(junctions)))
    var = junctions.to_frame(index=False).set_axis(["chrom", "start", "end", "strand"], axis=1)
    order = var.sort_values(["chrom", "start", "end", "strand"], kind="stable").index.to_numpy()
    return var.iloc[order].reset_index(drop=True), x[:, order], pd.Index(barcodes.astype(str))


def _integers(values: pd.Series, name: str, what: str) -> np.ndarray:
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(float)
    bad = ~np.isfinite(numeric) | (numeric != np.floor(numeric)) | (np.abs(numeric) > 2.0**53)
    if np.any(bad):
        raise ValueError(
            f"{what}: column {name!r} must hold integer positions; got "
            f"{np.asarray(values, dtype=object)[np.flatnonzero(bad)[0]]!r}."
        )
    return numeric.astype(np.int64)


def _wide(frame: pd.DataFrame, what: str):
    coordinate_columns = ["chrom", "start", "end", "strand"]
    if all(c in frame.columns for c in coordinate_columns):
        var = frame[coordinate_columns].copy()
        cells = frame.drop(columns=coordinate_columns)
    else:
        id_column = frame.shape[1] > 0 and not pd.api.types.is_numeric_dtype(frame.iloc[:, 0])
        ids = np.asarray(frame.iloc[:, 0] if id_column else frame.index, dtype=object).astype(str)
        parsed = pd.Series(ids).str.extract(_ID)
        if parsed["chrom"].isna().any():
            bad = ids[parsed["chrom"].isna().to_numpy()][:3].tolist()
            raise ValueError(
                f"{what}: junction ids {bad} are not of the form 'chr1:100:200:+', "
                "'chr1:100-200:+' or leafcutter's 'chr1:100:200:clu_1_+'; or give columns "
                "chrom, start, end, strand."
            )
        var = parsed.assign(strand=parsed["strand"].fillna("."))
        cells = frame.iloc[:, 1:] if id_column else frame
    var = var.assign(
        chrom=var["chrom"].astype(str),
        start=_integers(var["start"], "start", what),
        end=_integers(var["end"], "end", what),
    ).reset_index(drop=True)
    barcodes = pd.Index(cells.columns.astype(str))
    if not barcodes.is_unique:
        dup = barcodes[barcodes.duplicated()].unique()[:3].tolist()
        raise ValueError(f"{what} has repeated cell columns {dup}; each cell must appear once.")
    x = sparse.csr_matrix(_counts(cells.to_numpy(), what).T)
    return var, x, barcodes
