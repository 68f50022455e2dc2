"""``io.read_starsolo_junctions``: STARsolo ``Solo.out/SJ`` → cells × junctions AnnData."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from ._barcodes import cell_names, match_barcodes
from ._chrom import harmonise
from ._files import as_path, find_file, mtx_shape, read_lines, read_mtx, read_tsv, require_file
from ._junctions import junction_anndata

logger = logging.getLogger("dream_sc")

#: Columns of STAR's SJ.out.tab (and of STARsolo's SJ features.tsv).
SJ_COLUMNS: tuple[str, ...] = (
    "chrom",
    "start",
    "end",
    "strand",
    "motif",
    "annotated",
    "unique_reads",
    "multi_reads",
    "max_overhang",
)


def read_starsolo_junctions(
    path: str | Path,
    *,
    cells: MuData | AnnData | Sequence[str] | None = None,
    barcode_suffix: str | None = "auto",
    matrix: Literal["auto", "filtered", "raw"] = "auto",
    chrom_style: Literal["keep", "ucsc", "ensembl"] = "keep",
) -> AnnData:
    """Read STARsolo splice-junction counts (``--soloFeatures SJ``).

    The folder ``Solo.out/SJ/<raw|filtered>/`` holds ``features.tsv`` in the layout of STAR's
    ``SJ.out.tab`` (tab-separated, no header: chrom, intron start, intron end — 1-based first
    and last intron base —, strand 0/1/2, motif 0-6, annotated 0/1, unique reads, multi-mapping
    reads, maximum overhang), ``barcodes.tsv`` (without Cell Ranger's ``-1`` suffix) and
    ``matrix.mtx`` (junctions × cells), each optionally gzipped.

    Strand ``0`` (undefined) is resolved from the motif — odd motifs (1 GT/AG, 3 GC/AG, 5 AT/AC)
    are ``+``, even non-zero motifs (2 CT/AC, 4 CT/GC, 6 GT/AT) are ``-`` — and junctions with
    a non-canonical motif (0) and undefined strand are dropped; both counts are logged.

    Parameters
    ----------
    path
        ``Solo.out``, ``Solo.out/SJ``, or the ``raw``/``filtered`` folder itself.
    cells
        The expression cells (a MuData such as the one of
        :func:`~dream_sc.io.read_cellranger`, an AnnData or barcodes). When given, barcodes are
        matched to them (see ``barcode_suffix``) and only matching cells are kept, in the order
        of ``cells``; at least half of the cells must be found.
    barcode_suffix
        ``"auto"``: detect whether a suffix such as ``-1`` must be appended (or removed) for the
        barcodes to match ``cells``; a string: append it; ``None``: use the barcodes as written.
        After ``cellranger aggr`` give the GEM well of this STARsolo run, e.g. ``"-2"``.
    matrix
        ``"filtered"``, ``"raw"`` or ``"auto"`` (filtered when present).
    chrom_style
        ``"keep"`` the chromosome names, or convert them to ``"ucsc"`` (``chr1``, ``chrM``) or
        ``"ensembl"`` (``1``, ``MT``) style, e.g. to match your GTF.

    Returns
    -------
    AnnData, cells × junctions, raw counts as float32 CSR. ``var_names`` are
    ``"{chrom}:{start}-{end}:{strand}"``; ``var`` has ``chrom``, ``start``, ``end`` (1-based first
    and last intron base), ``strand`` (``+``/``-``), ``motif``, ``annotated``, ``strand_from_motif``
    (strand resolved from the motif) and ``gene`` (missing; fill it with
    :func:`~dream_sc.pp.annotate_junctions`). Add it to the screen as ``junctions`` and call
    :func:`~dream_sc.pp.splicing_from_junctions`.

    Raises
    ------
    ValueError
        Missing files, a ``features.tsv`` not in SJ.out.tab layout, shapes that disagree,
        duplicated barcodes, or fewer than half of ``cells`` found.

    Examples
    --------
    >>> import dream_sc as ds  # doctest: +SKIP
    >>> mdata = ds.io.read_cellranger("sample/outs")  # doctest: +SKIP
    >>> junctions = ds.io.read_starsolo_junctions("Solo.out", cells=mdata)  # doctest: +SKIP
    """
    if matrix not in ("auto", "filtered", "raw"):
        raise ValueError(f"`matrix` must be 'auto', 'filtered' or 'raw'; got {matrix!r}.")
    folder = _locate(as_path(path, "path"), matrix)
    what = f"STARsolo folder {str(folder)!r}"
    features = _read_features(require_file(folder, "features.tsv", what), what)
    barcodes = pd.Index(
        read_lines(require_file(folder, "barcodes.tsv", what), what="one cell barcode per line")
    )
    if not barcodes.is_unique:
        dup = barcodes[barcodes.duplicated()].unique()[:3].tolist()
        raise ValueError(f"barcodes.tsv of {what} repeats barcode(s) {dup}; each must appear once.")
    matrix_path = require_file(folder, "matrix.mtx", what)
    shape = mtx_shape(matrix_path)
    if shape != (len(features), len(barcodes)):
        raise ValueError(
            f"matrix.mtx of {what} is {shape[0]} × {shape[1]} but features.tsv has "
            f"{len(features)} junctions and barcodes.tsv {len(barcodes)} barcodes; STARsolo writes "
            "junctions × cells. Are the files from the same run?"
        )
    counts = read_mtx(matrix_path)
    expression = cell_names(cells)
    barcodes = match_barcodes(barcodes, expression, suffix=barcode_suffix, what=what)
    strand, from_motif = _resolve_strand(features)
    keep = strand != ""
    n_dropped = int((~keep).sum())
    logger.info(
        "read_starsolo_junctions: %d junctions; strand resolved from the motif for %d, %d with "
        "undefined strand and non-canonical motif dropped",
        len(features),
        int((from_motif & keep).sum()),
        n_dropped,
    )
    var = pd.DataFrame(
        {
            "chrom": harmonise(features["chrom"], chrom_style),
            "start": features["start"].to_numpy(np.int64),
            "end": features["end"].to_numpy(np.int64),
            "strand": strand,
            "motif": features["motif"].to_numpy(np.int64),
            "annotated": features["annotated"].to_numpy(np.int64),
            "strand_from_motif": from_motif,
        }
    )[keep]
    x = counts.T.tocsr()[:, np.flatnonzero(keep)]
    return junction_anndata(x, barcodes, var, expression, what)


def _locate(path: Path, matrix: str) -> Path:
    if find_file(path, "matrix.mtx") is not None:
        return path
    for base in (path / "SJ", path):
        order = ["filtered", "raw"] if matrix == "auto" else [matrix]
        for name in order:
            if find_file(base / name, "matrix.mtx") is not None:
                return base / name
    raise ValueError(
        f"No STARsolo junction matrix under {str(path)!r}: expected Solo.out/SJ/"
        f"{'raw|filtered' if matrix == 'auto' else matrix}/matrix.mtx (run STARsolo with "
        "`--soloFeatures SJ`) or a folder with matrix.mtx, features.tsv and barcodes.tsv."
    )


def _read_features(path: Path, what: str) -> pd.DataFrame:
    table = read_tsv(path, kind="STARsolo SJ features (SJ.out.tab layout, tab-separated)")
    layout = "SJ.out.tab layout: chrom, intron start, intron end, strand (0/1/2), motif (0-6), annotated (0/1), ..."
    if table.shape[1] < 6:
        raise ValueError(
            f"features.tsv of {what} has {table.shape[1]} column(s); STARsolo's SJ features are in "
            f"{layout} (e.g. 'chr1<TAB>999526<TAB>999612<TAB>2<TAB>2<TAB>1<TAB>13590<TAB>24<TAB>62')."
        )
    table = table.iloc[:, : len(SJ_COLUMNS)]
    table.columns = list(SJ_COLUMNS[: table.shape[1]])
    for column in ("start", "end", "strand", "motif", "annotated"):
        values = pd.to_numeric(table[column], errors="coerce").astype(float)
        bad = ~np.isfinite(values) | (values != np.floor(values)) | (values.abs() > 2.0**53)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"features.tsv of {what}, line {row + 1}: column {column!r} must be an integer, "
                f"got {table[column].iloc[row]!r}; the file must be in {layout}"
            )
        table[column] = values.astype(np.int64)
    bad = ~table["strand"].isin([0, 1, 2]) | ~table["motif"].between(0, 6)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"features.tsv of {what}, line {row + 1}: strand {table['strand'].iloc[row]} / motif "
            f"{table['motif'].iloc[row]} outside 0-2 / 0-6; the file must be in {layout}"
        )
    bad = (table["start"] < 1) | (table["end"] < 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"features.tsv of {what}, line {row + 1}: intron {table['start'].iloc[row]}-"
            f"{table['end'].iloc[row]} has a coordinate below 1; fix: STAR writes 1-based "
            "positions (first and last intron base), so the file is damaged or not from STAR."
        )
    if (table["start"] > table["end"]).any():
        row = int(np.flatnonzero(table["start"] > table["end"])[0])
        raise ValueError(
            f"features.tsv of {what}, line {row + 1}: intron start > end; fix: STAR writes the "
            "first and last intron base, start <= end on both strands."
        )
    return table


def _resolve_strand(features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``+``/``-`` per junction (``""`` = undefined), and whether it came from the motif."""
    strand = features["strand"].to_numpy()
    motif = features["motif"].to_numpy()
    out = np.where(strand == 1, "+", np.where(strand == 2, "-", "")).astype(object)
    undefined = strand == 0
    from_motif = undefined & (motif > 0)
    out[from_motif & (motif % 2 == 1)] = "+"
    out[from_motif & (motif % 2 == 0)] = "-"
    return out, from_motif
