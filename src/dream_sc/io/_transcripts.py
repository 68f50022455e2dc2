"""``io.read_transcript_counts``: cells × transcripts counts plus a transcript → gene map."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from ._barcodes import cell_names, match_barcodes
from ._files import as_file, find_file, mtx_shape, read_lines, read_mtx, read_table, read_tsv

logger = logging.getLogger("dream_sc")

_VERSION = r"\.\d+$"


def read_transcript_counts(
    matrix: str | Path | pd.DataFrame | AnnData,
    tx2gene: str | Path | pd.DataFrame | pd.Series | Mapping[str, str],
    *,
    cells: MuData | AnnData | Sequence[str] | None = None,
    barcode_suffix: str | None = "auto",
    sep: str | None = None,
) -> AnnData:
    """Read transcript counts and attach each transcript's gene, ready for ``pp.isoform_usage``.

    Parameters
    ----------
    matrix
        Transcript counts, cells × transcripts or transcripts × cells (the orientation is
        detected from which axis carries the ids of ``tx2gene``): a CSV/TSV file (gzipped or not;
        first column = row ids, header = column ids), a folder with ``matrix.mtx``,
        ``barcodes.tsv`` and ``features.tsv`` (first column = transcript id; the matrix
        transcripts × cells, as 10x-style tools write it), a DataFrame or an AnnData.
    tx2gene
        Transcript → gene: a two-column CSV/TSV (transcript, gene; a header line is skipped),
        a DataFrame (first two columns), a Series or a dict. Transcript versions
        (``ENST00000456328.2``) are ignored when the ids only match without them.
    cells, barcode_suffix
        Expression cells to match the barcodes to, as in
        :func:`~dream_sc.io.read_starsolo_junctions`.
    sep
        Separator of text files; default tab for ``.tsv``/``.txt``/``.tab``, else comma.

    Returns
    -------
    AnnData cells × transcripts (float32 CSR) with ``var["gene"]`` (missing for transcripts
    absent from ``tx2gene``; :func:`~dream_sc.pp.isoform_usage` drops them).

    Raises
    ------
    ValueError
        Fewer than half of the transcripts found in ``tx2gene`` (with examples of both), counts
        that are not non-negative integers, repeated transcript or cell ids.

    Examples
    --------
    >>> import pandas as pd
    >>> counts = pd.DataFrame({"A-201": [3, 0], "A-202": [1, 2]}, index=["AAAC-1", "TTTG-1"])
    >>> adata = read_transcript_counts(counts, {"A-201": "A", "A-202": "A"})
    >>> adata.var["gene"].tolist(), adata.X.toarray().tolist()
    (['A', 'A'], [[3.0, 1.0], [0.0, 2.0]])
    """
    mapping = _tx2gene(tx2gene, sep)
    x, rows, cols, what = _load_matrix(matrix, sep)
    if 0 in x.shape:
        raise ValueError(
            f"{what} holds no counts ({x.shape[0]} × {x.shape[1]}); fix: pass a "
            "table with at least one cell and one transcript."
        )
    transcripts, barcodes, x = _orient(x, rows, cols, mapping, what)
    gene, how = _genes(transcripts, mapping, what)
    for ids, name in ((transcripts, "transcript"), (barcodes, "cell")):
        if not ids.is_unique:
            dup = ids[ids.duplicated()].unique()[:3].tolist()
            raise ValueError(f"{what} repeats {name} id(s) {dup}; each must appear once.")
    values = x.data if sparse.issparse(x) else np.asarray(x).ravel()
    if values.size and (
        np.any(values < 0)
        or np.any(values != np.floor(values))
        or np.any(~np.isfinite(values))
        or np.any(values > 2.0**53)
    ):
        raise ValueError(
            f"{what}: counts must be non-negative integers (raw read or UMI counts); fix: pass "
            "raw counts, not normalised, estimated or missing values."
        )
    expression = cell_names(cells)
    barcodes = match_barcodes(barcodes, expression, suffix=barcode_suffix, what=what)
    x = sparse.csr_matrix(x, dtype=np.float32)
    if expression is not None:
        rows_ = barcodes.get_indexer(expression)
        found = rows_ >= 0
        x, barcodes = x[rows_[found]], expression[found]
    logger.info(
        "read_transcript_counts: %d cells, %d transcripts, %d without a gene (matched %s)",
        x.shape[0],
        x.shape[1],
        int(pd.isna(gene).sum()),
        how,
    )
    var = pd.DataFrame({"gene": pd.Categorical(gene)}, index=pd.Index(transcripts.astype(str)))
    return AnnData(X=x, obs=pd.DataFrame(index=pd.Index(barcodes.astype(str))), var=var)


def _text_sep(path: Path, sep: str | None) -> str:
    if sep is not None:
        return sep
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    return "\t" if stem.endswith((".tsv", ".txt", ".tab")) else ","


def _tx2gene(source, sep) -> pd.Series:
    if isinstance(source, Mapping):
        mapping = pd.Series(dict(source), dtype=object)
    elif isinstance(source, pd.Series):
        mapping = source.astype(object)
    elif isinstance(source, pd.DataFrame):
        if source.shape[1] < 2:
            raise ValueError("`tx2gene` needs two columns: transcript id, gene.")
        mapping = pd.Series(source.iloc[:, 1].to_numpy(object), index=source.iloc[:, 0].astype(str))
    else:
        path = as_file(source, "tx2gene")
        table = read_table(
            path,
            kind="a two-column table transcript id, gene",
            sep=_text_sep(path, sep),
            header=False,
            dtype=str,
            keep_default_na=False,
        )
        if table.shape[1] < 2:
            raise ValueError(
                f"`tx2gene` file {str(path)!r} has {table.shape[1]} column(s); it needs two: "
                "transcript id, gene (e.g. 'ENST00000456328,DDX11L1')."
            )
        mapping = pd.Series(table.iloc[:, 1].to_numpy(object), index=table.iloc[:, 0].astype(str))
    mapping.index = mapping.index.astype(str)
    return mapping[~mapping.index.duplicated()]


def _load_matrix(matrix, sep):
    if isinstance(matrix, AnnData):
        x = matrix.X if sparse.issparse(matrix.X) else np.asarray(matrix.X)
        return x, pd.Index(matrix.obs_names), pd.Index(matrix.var_names), "the transcript AnnData"
    if isinstance(matrix, pd.DataFrame):
        return (
            _numeric(matrix, "the transcript table"),
            pd.Index(matrix.index.astype(str)),
            pd.Index(matrix.columns.astype(str)),
            "the transcript table",
        )
    path = Path(matrix).expanduser()
    if path.is_dir():
        what = f"transcript matrix folder {str(path)!r}"
        files = [find_file(path, n) for n in ("matrix.mtx", "barcodes.tsv", "features.tsv")]
        if any(f is None for f in files):
            raise ValueError(f"{what} needs matrix.mtx, barcodes.tsv and features.tsv (gz or not).")
        features = read_tsv(files[2], kind="one transcript id per line").iloc[:, 0]
        barcodes = read_lines(files[1], what="one cell barcode per line")
        shape = mtx_shape(files[0])
        if shape != (len(features), len(barcodes)):
            raise ValueError(
                f"matrix.mtx of {what} is {shape[0]} × {shape[1]} but features.tsv has "
                f"{len(features)} transcripts and barcodes.tsv {len(barcodes)} barcodes; fix: "
                "the matrix must be transcripts × cells, with the three files of one run."
            )
        x = read_mtx(files[0])
        return x, pd.Index(features.astype(str)), pd.Index(barcodes), what
    if not path.is_file():
        raise ValueError(f"`matrix`: {str(path)!r} does not exist; check the path.")
    table = read_table(
        path,
        kind="a counts table (first column = row ids, header = column ids)",
        sep=_text_sep(path, sep),
        fix_header="give every cell (or transcript) column its own id",
        index_col=0,
    )
    what = f"transcript table {str(path)!r}"
    return (
        _numeric(table, what),
        pd.Index(table.index.astype(str)),
        pd.Index(table.columns.astype(str)),
        what,
    )


def _numeric(table: pd.DataFrame, what: str) -> np.ndarray:
    """The table's values as floats; raise naming the first non-numeric entry."""
    if table.shape[1] == 0:
        raise ValueError(
            f"{what} has a single column; fix: give row ids in the first column and one column "
            "per cell (or transcript), with the separator of the file (`sep=`)."
        )
    values = table.apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = np.isnan(values) & table.notna().to_numpy()
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(
            f"{what}: row {table.index[row]!r}, column {table.columns[col]!r} holds "
            f"{table.iat[row, col]!r}, not a number; fix: the table must hold counts only, with "
            "ids in the first column and the header."
        )
    return values


def _overlap(ids: pd.Index, mapping: pd.Series) -> float:
    direct = ids.isin(mapping.index).mean()
    stripped = (
        ids.str.replace(_VERSION, "", regex=True)
        .isin(mapping.index.str.replace(_VERSION, "", regex=True))
        .mean()
    )
    return max(direct, stripped)


def _orient(x, rows, cols, mapping, what):
    """``(transcripts, barcodes, cells × transcripts matrix)``."""
    if _overlap(rows, mapping) > _overlap(cols, mapping):
        x = x.T
        return rows, cols, (sparse.csr_matrix(x) if sparse.issparse(x) else np.asarray(x))
    return cols, rows, x


def _genes(transcripts: pd.Index, mapping: pd.Series, what: str):
    gene = transcripts.map(mapping)
    how = "as written"
    if pd.isna(gene).mean() > 0.5:
        stripped = mapping.copy()
        stripped.index = stripped.index.str.replace(_VERSION, "", regex=True)
        stripped = stripped[~stripped.index.duplicated()]
        alt = transcripts.str.replace(_VERSION, "", regex=True).map(stripped)
        if pd.isna(alt).mean() < pd.isna(gene).mean():
            gene, how = alt, "without version suffixes"
    gene = np.asarray(gene, dtype=object)
    if pd.isna(gene).mean() > 0.5:
        raise ValueError(
            f"Only {int(pd.notna(gene).sum())} of {len(transcripts)} transcripts of {what} are "
            f"in `tx2gene` (transcripts look like {transcripts[:3].tolist()}, tx2gene like "
            f"{mapping.index[:3].tolist()}); use the tx2gene of the annotation used for "
            "quantification."
        )
    return gene, how
