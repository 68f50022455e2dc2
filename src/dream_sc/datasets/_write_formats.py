"""Write a screen in the file formats of Cell Ranger and STARsolo (for tests and tutorials).

The writers produce exactly the files :mod:`dream_sc.io` reads: a Cell Ranger ``outs/`` folder
(``filtered_feature_bc_matrix.h5`` or ``filtered_feature_bc_matrix/``, gzipped or not, plus
``crispr_analysis/protospacer_calls_per_cell.csv``) with the feature reference CSV next to it,
and a STARsolo ``Solo.out/SJ/<raw|filtered>/`` folder. Guide UMI counts, which a simulated screen
does not have, are drawn around its guide assignment.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.io
from anndata import AnnData
from mudata import MuData
from scipy import sparse

_BASES = np.array(list("ACGT"))


def barcodes(n: int, *, suffix: str | Sequence[str] | None = "-1", seed: int = 0) -> pd.Index:
    """``n`` distinct 16-base 10x-like cell barcodes, with a GEM-well suffix (``"-1"``)."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(4**16, size=n, replace=False)
    digits = (codes[:, None] // 4 ** np.arange(15, -1, -1)) % 4
    stems = ["".join(row) for row in _BASES[digits]]
    if suffix is None:
        return pd.Index(stems)
    suffixes = [suffix] * n if isinstance(suffix, str) else list(suffix)
    return pd.Index([s + x for s, x in zip(stems, suffixes, strict=True)])


def guide_umis(
    mdata: MuData,
    *,
    guide_key: str = "guide",
    assignment_key: str = "guide_assignment",
    umi_median: float = 60.0,
    ambient: float = 0.2,
    seed: int = 0,
) -> pd.DataFrame:
    """Draw guide UMI counts (cells × guides) around a screen's guide assignment.

    A cell's own guide(s) get ``max(8, round(LogNormal(log(umi_median), 0.6)))`` UMIs, every
    guide gets ``Poisson(ambient)`` ambient UMIs on top. Guides come from
    ``obsm[assignment_key]`` (high MOI) or ``obs[guide_key]`` (low MOI), in the order of
    ``uns["truth"]["guides"]`` when present.
    """
    rng = np.random.default_rng(seed)
    if assignment_key in mdata.obsm:
        table = mdata.obsm[assignment_key]
        carried = np.asarray(table, dtype=float) > 0
        names = pd.Index(table.columns.astype(str))
    else:
        labels = mdata.obs[guide_key].astype(str)
        names = pd.Index(
            mdata.uns["truth"]["guides"].index.astype(str)
            if "truth" in mdata.uns
            else pd.unique(labels)
        )
        carried = labels.to_numpy()[:, None] == names.to_numpy()[None, :]
    signal = np.maximum(8, np.round(rng.lognormal(np.log(umi_median), 0.6, carried.shape)))
    umis = rng.poisson(ambient, carried.shape) + np.where(carried, signal, 0)
    return pd.DataFrame(umis.astype(np.int64), index=mdata.obs_names.copy(), columns=names)


def write_feature_reference(
    path: str | Path, guide_targets: pd.Series, *, control_label: str = "ntc", seed: int = 0
) -> Path:
    """Write a Cell Ranger feature reference CSV for guides (controls as ``Non-Targeting``)."""
    rng = np.random.default_rng(seed)
    names = guide_targets.index.astype(str)
    target = guide_targets.astype(str).replace({control_label: "Non-Targeting"})
    table = pd.DataFrame(
        {
            "id": names,
            "name": names,
            "read": "R2",
            "pattern": "(BC)GTTTAAGAGCTAAGCTGGAA",
            "sequence": ["".join(rng.choice(_BASES, 20)) for _ in names],
            "feature_type": "CRISPR Guide Capture",
            "target_gene_id": [
                "Non-Targeting" if t == "Non-Targeting" else f"ENSG_{t}" for t in target
            ],
            "target_gene_name": target.to_numpy(),
        }
    )
    path = Path(path)
    table.to_csv(path, index=False)
    return path


def _features(rna: AnnData, reference: pd.DataFrame) -> pd.DataFrame:
    genes = pd.DataFrame(
        {
            "id": [f"ENSG{i:011d}" for i in range(1, rna.n_vars + 1)],
            "name": rna.var_names.astype(str),
            "feature_type": "Gene Expression",
            "genome": "GRCh38",
            "read": "",
            "pattern": "",
            "sequence": "",
            "target_gene_id": "",
            "target_gene_name": "",
        }
    )
    guides = reference.assign(genome="")[genes.columns]
    return pd.concat([genes, guides], ignore_index=True)


def write_cellranger(
    mdata: MuData,
    directory: str | Path,
    *,
    modality: str = "rna",
    format: str = "h5",
    compress: bool = True,
    gem_well_key: str | None = None,
    umis: pd.DataFrame | None = None,
    control_label: str = "ntc",
    seed: int = 0,
) -> dict[str, Path]:
    """Write a screen as a Cell Ranger run with CRISPR Guide Capture.

    Parameters
    ----------
    mdata
        The screen: counts in ``mdata[modality].X``, guides in ``obs["guide"]`` (low MOI) or
        ``obsm["guide_assignment"]`` (high MOI), targets from ``uns["truth"]["guide_targets"]``
        or ``obs["target"]``.
    directory
        Created if needed; receives ``outs/`` and ``feature_reference.csv``.
    modality
        Gene-expression modality.
    format
        ``"h5"`` (``outs/filtered_feature_bc_matrix.h5``) or ``"mtx"``
        (``outs/filtered_feature_bc_matrix/``).
    compress
        Gzip the mtx files (``.gz``, as Cell Ranger does).
    gem_well_key
        obs column whose categories number the GEM wells (barcode suffixes ``-1``, ``-2``, ...,
        as after ``cellranger aggr``); ``None``: all ``-1``.
    umis
        Guide UMI counts (cells × guides); default :func:`guide_umis`.
    control_label
        Target label of control guides (written as ``Non-Targeting``).
    seed
        Seed of barcodes, UMIs and guide sequences.

    Returns
    -------
    Paths: ``outs``, ``matrix``, ``calls``, ``feature_reference``, and ``barcodes`` (an Index
    of the written barcodes, aligned with ``mdata.obs_names``) under key ``"barcodes"``.
    """
    if format not in ("h5", "mtx"):
        raise ValueError(f"`format` must be 'h5' or 'mtx'; got {format!r}.")
    directory = Path(directory)
    outs = directory / "outs"
    (outs / "crispr_analysis").mkdir(parents=True, exist_ok=True)
    umis = guide_umis(mdata, seed=seed) if umis is None else umis
    targets = _guide_targets(mdata, umis.columns, control_label)
    reference_path = write_feature_reference(
        directory / "feature_reference.csv", targets, control_label=control_label, seed=seed
    )
    reference = pd.read_csv(reference_path, dtype=str, keep_default_na=False)
    features = _features(mdata.mod[modality], reference)
    if gem_well_key is None:
        suffix: str | list[str] = "-1"
    else:
        codes = pd.Categorical(mdata.obs[gem_well_key]).codes
        suffix = [f"-{c + 1}" for c in codes]
    cells = barcodes(mdata.n_obs, suffix=suffix, seed=seed)
    rna = mdata.mod[modality]
    x = rna.X if sparse.issparse(rna.X) else sparse.csr_matrix(rna.X)
    x = sparse.csr_matrix(x)[rna.obs_names.get_indexer(mdata.obs_names)]
    counts = sparse.hstack([x, sparse.csr_matrix(umis.to_numpy())], format="csr")
    counts = sparse.csr_matrix(np.rint(counts.toarray()).astype(np.int32))
    if format == "h5":
        matrix_path = outs / "filtered_feature_bc_matrix.h5"
        _write_h5(matrix_path, counts, cells, features)
    else:
        matrix_path = outs / "filtered_feature_bc_matrix"
        _write_mtx(matrix_path, counts, cells, features, compress)
    calls_path = _write_calls(outs / "crispr_analysis", umis, cells, mdata)
    return {
        "outs": outs,
        "matrix": matrix_path,
        "calls": calls_path,
        "feature_reference": reference_path,
        "barcodes": cells,
    }


def _guide_targets(mdata: MuData, guides: pd.Index, control_label: str) -> pd.Series:
    if "truth" in mdata.uns and "guide_targets" in mdata.uns["truth"]:
        mapping = pd.Series(dict(mdata.uns["truth"]["guide_targets"]))
    else:
        pairs = mdata.obs[["guide", "target"]].astype(str).drop_duplicates()
        mapping = pd.Series(pairs["target"].to_numpy(), index=pairs["guide"].to_numpy())
    return mapping.reindex(guides.astype(str)).fillna(control_label)


def _write_h5(
    path: Path, counts: sparse.csr_matrix, cells: pd.Index, features: pd.DataFrame
) -> None:
    def strings(values) -> np.ndarray:
        return np.asarray([str(v).encode() for v in values], dtype="S")

    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group.create_dataset("barcodes", data=strings(cells))
        group.create_dataset("data", data=counts.data.astype(np.int32))
        group.create_dataset("indices", data=counts.indices.astype(np.int64))
        group.create_dataset("indptr", data=counts.indptr.astype(np.int64))
        group.create_dataset("shape", data=np.array([counts.shape[1], counts.shape[0]], np.int32))
        feat = group.create_group("features")
        for column in features.columns:
            feat.create_dataset(column, data=strings(features[column]))
        tags = [c for c in features.columns if c not in ("id", "name", "feature_type")]
        feat.create_dataset("_all_tag_keys", data=strings(tags))


def _write_text(path: Path, text: str, compress: bool) -> None:
    if compress:
        with gzip.open(f"{path}.gz", "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)


def _write_matrix_market(path: Path, matrix: sparse.spmatrix, compress: bool) -> None:
    scipy.io.mmwrite(str(path), sparse.coo_matrix(matrix), field="integer")
    if compress:
        with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        path.unlink()


def _write_mtx(folder, counts, cells, features, compress) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_text(folder / "barcodes.tsv", "".join(f"{b}\n" for b in cells), compress)
    rows = features[["id", "name", "feature_type"]].astype(str).agg("\t".join, axis=1)
    _write_text(folder / "features.tsv", "".join(f"{r}\n" for r in rows), compress)
    _write_matrix_market(folder / "matrix.mtx", counts.T, compress)


def _write_calls(folder: Path, umis: pd.DataFrame, cells: pd.Index, mdata: MuData) -> Path:
    names = umis.columns.astype(str).to_numpy()
    if "guide_assignment" in mdata.obsm:
        carried = np.asarray(mdata.obsm["guide_assignment"], dtype=float) > 0
    else:
        carried = mdata.obs["guide"].astype(str).to_numpy()[:, None] == names[None, :]
    values = umis.to_numpy()
    rows = []
    for i in np.flatnonzero(carried.any(axis=1)):
        hit = np.flatnonzero(carried[i])
        rows.append(
            (
                cells[i],
                len(hit),
                "|".join(names[hit]),
                "|".join(str(int(v)) for v in values[i, hit]),
            )
        )
    table = pd.DataFrame(rows, columns=["cell_barcode", "num_features", "feature_call", "num_umis"])
    path = folder / "protospacer_calls_per_cell.csv"
    table.to_csv(path, index=False)
    thresholds = {
        str(g): int(values[carried[:, j], j].min()) if carried[:, j].any() else 0
        for j, g in enumerate(names)
    }
    with open(folder / "protospacer_umi_thresholds_json.json", "w") as handle:
        json.dump(thresholds, handle)
    return path


def write_starsolo_junctions(
    junctions: AnnData,
    directory: str | Path,
    *,
    matrix: str = "raw",
    compress: bool = False,
    strip_suffix: bool = True,
) -> Path:
    """Write cells × junction counts as STARsolo's ``Solo.out/SJ/<matrix>/`` folder.

    ``features.tsv`` follows ``SJ.out.tab``: chrom, intron start and end (1-based, first and last
    intron base), strand (0 undefined, 1 +, 2 -), motif (0 non-canonical, 1 GT/AG, 2 CT/AC,
    3 GC/AG, 4 CT/GC, 5 AT/AC, 6 GT/AT), annotated (0/1), unique reads, multi-mapping reads,
    maximum overhang. ``barcodes.tsv`` holds the barcodes without Cell Ranger's ``-1`` suffix
    (``strip_suffix``); ``matrix.mtx`` is junctions × cells.

    Parameters
    ----------
    junctions
        Counts in ``X``; ``var`` with ``chrom``, ``start``, ``end``, ``strand`` (``+``/``-``,
        ``1``/``2`` or ``0``) and optionally ``motif`` (default 1 on ``+``, 2 on ``-``) and
        ``annotated`` (default 1).
    directory
        The ``Solo.out`` folder (created).
    matrix
        ``"raw"`` or ``"filtered"``.
    compress
        Gzip the three files.
    strip_suffix
        Remove a ``-<n>`` suffix from the barcodes.

    Returns
    -------
    The written folder ``<directory>/SJ/<matrix>``.
    """
    folder = Path(directory) / "SJ" / matrix
    folder.mkdir(parents=True, exist_ok=True)
    var = junctions.var
    strand = var["strand"].astype(str).replace({"+": "1", "-": "2"}).astype(int).to_numpy()
    motif = var["motif"].to_numpy() if "motif" in var else np.where(strand == 2, 2, 1)
    annotated = var["annotated"].to_numpy() if "annotated" in var else np.ones(len(var), int)
    x = sparse.csr_matrix(junctions.X)
    total = np.asarray(x.sum(axis=0)).ravel().astype(np.int64)
    table = pd.DataFrame(
        {
            "chrom": var["chrom"].astype(str).to_numpy(),
            "start": var["start"].astype(np.int64).to_numpy(),
            "end": var["end"].astype(np.int64).to_numpy(),
            "strand": strand,
            "motif": np.asarray(motif, dtype=np.int64),
            "annotated": np.asarray(annotated, dtype=np.int64),
            "unique": total,
            "multi": 0,
            "overhang": 50,
        }
    )
    rows = table.astype(str).agg("\t".join, axis=1)
    _write_text(folder / "features.tsv", "".join(f"{r}\n" for r in rows), compress)
    names = junctions.obs_names.astype(str)
    if strip_suffix:
        names = names.str.replace(r"-\d+$", "", regex=True)
    _write_text(folder / "barcodes.tsv", "".join(f"{b}\n" for b in names), compress)
    _write_matrix_market(
        folder / "matrix.mtx", sparse.csr_matrix(np.rint(x.toarray()).astype(np.int64)).T, compress
    )
    return folder


def binomial_to_junctions(
    mdata: MuData, modality: str = "splicing", *, cells: pd.Index | None = None
) -> tuple[AnnData, pd.DataFrame]:
    """Junction counts whose ``sj`` ratios (``sj_trials="site"``) are a binomial modality.

    Every binomial feature (successes ``X``, trials ``layers["total"]``) becomes two junctions
    sharing their donor site: the *inclusion* junction with the successes and an *alternative*
    junction with ``trials - successes``. Junction ``j`` lies on ``chr1``-``chr3`` at
    ``100,000 * (j + 1)``; strands alternate ``+``/``-`` so both orientations occur. With
    ``sj_trials="site"``, :func:`~dream_sc.pp.splicing_from_junctions` gives the inclusion
    junction exactly the successes and trials of the feature.

    Parameters
    ----------
    mdata
        The screen.
    modality
        Binomial modality (successes in ``X``, trials in ``layers["total"]``).
    cells
        Barcodes to use as obs_names (aligned with ``mdata.obs_names``); default the obs_names.

    Returns
    -------
    ``(junctions, genes)``: the AnnData (cells × 2 features; ``var`` with ``chrom``, ``start``,
    ``end``, ``strand``, ``motif``, ``annotated``, ``feature`` = source feature, ``role`` =
    ``inclusion``/``alternative``) and one gene per feature spanning its junctions (columns
    ``gene_id``, ``gene_name`` = the feature name, ``chrom``, ``start``, ``end``, ``strand``)
    for :func:`write_gtf`.
    """
    adata = mdata.mod[modality]
    order = adata.obs_names.get_indexer(mdata.obs_names)
    success = sparse.csr_matrix(adata.X)[order].toarray()
    trials = sparse.csr_matrix(adata.layers["total"])[order].toarray()
    rows, genes = [], []
    columns = []
    for j, name in enumerate(adata.var_names.astype(str)):
        chrom, base, plus = f"chr{1 + j % 3}", 100_000 * (j + 1), j % 2 == 0
        if plus:
            pair = [(base + 1001, base + 2000), (base + 1001, base + 3000)]
        else:
            pair = [(base + 1001, base + 3000), (base + 2001, base + 3000)]
        strand = "+" if plus else "-"
        for role, (start, end) in zip(("inclusion", "alternative"), pair, strict=True):
            rows.append((chrom, start, end, strand, 1 if plus else 2, 1, name, role))
        columns += [success[:, j], trials[:, j] - success[:, j]]
        genes.append((f"ENSG_{name}", name, chrom, base + 1, base + 4000, strand))
    var = pd.DataFrame(
        rows, columns=["chrom", "start", "end", "strand", "motif", "annotated", "feature", "role"]
    )
    var.index = [f"j{i}" for i in range(len(var))]
    names = mdata.obs_names if cells is None else pd.Index(cells)
    junctions = AnnData(
        X=sparse.csr_matrix(np.column_stack(columns).astype(np.float32)),
        obs=pd.DataFrame(index=names.copy()),
        var=var,
    )
    gene_table = pd.DataFrame(
        genes, columns=["gene_id", "gene_name", "chrom", "start", "end", "strand"]
    )
    return junctions, gene_table


def write_gtf(path: str | Path, genes: pd.DataFrame, *, chrom_style: str = "ensembl") -> Path:
    """Write a minimal GTF with one ``gene`` line per row of ``genes``.

    ``genes`` has ``gene_id``, ``gene_name``, ``chrom``, ``start``, ``end`` (1-based,
    inclusive) and ``strand``. ``chrom_style="ensembl"`` writes ``1`` for ``chr1`` (as Ensembl
    GTFs do), ``"ucsc"`` keeps ``chr1``.
    """
    from ..io._chrom import harmonise

    chrom = harmonise(genes["chrom"], chrom_style)
    lines = [
        "#!genome-build GRCh38",
        *(
            f"{c}\tdream_sc\tgene\t{s}\t{e}\t.\t{st}\t.\t"
            f'gene_id "{gid}"; gene_name "{gname}"; gene_biotype "protein_coding";'
            for c, s, e, st, gid, gname in zip(
                chrom,
                genes["start"],
                genes["end"],
                genes["strand"],
                genes["gene_id"],
                genes["gene_name"],
                strict=True,
            )
        ),
    ]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path
