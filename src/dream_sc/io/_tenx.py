"""Read a 10x feature-barcode matrix: ``filtered_feature_bc_matrix.h5`` or its mtx folder.

Both hold a features × cells count matrix. The HDF5 file (Cell Ranger >= 3) has a group
``matrix`` with ``barcodes``, ``data``, ``indices``, ``indptr`` and ``shape`` (a compressed
sparse column matrix, one column per cell) and a group ``matrix/features`` with ``id``,
``name``, ``feature_type``, ``genome`` and further tags (for CRISPR Guide Capture features e.g.
``pattern``, ``read``, ``sequence``, ``target_gene_id``, ``target_gene_name``). The folder holds
``barcodes.tsv``, ``features.tsv`` (id, name, feature type; no header) and ``matrix.mtx``,
each optionally gzipped.

Why not ``scanpy.read_10x_h5`` / ``scanpy.read_10x_mtx``: they return an AnnData of the whole
matrix, keep only some feature tags of the h5 (not the guide-capture ``pattern``, ``sequence`` or
``target_gene_*``), and let gzip, UTF-8 and parser errors through without the file's name. Here
each file is checked before it is read (sizes, headers, encodings; see ``_files``), and the
guide-capture features stay with their tags for :func:`dream_sc.io.read_cellranger`. scanpy is
therefore not a dependency of dream_sc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import sparse

from ._files import file_error, mtx_shape, read_lines, read_mtx, read_tsv, reading, require_file


@dataclass
class TenxMatrix:
    """Counts (cells × features, CSR), barcodes and the feature table of a 10x matrix."""

    counts: sparse.csr_matrix
    barcodes: pd.Index
    features: pd.DataFrame  # columns id, name, feature_type (+ genome and tags from the h5)


def _decode(values: np.ndarray, path: Path) -> np.ndarray:
    with reading(path, "UTF-8 names in the HDF5 file"):
        return np.asarray(
            [v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object
        )


def read_tenx_h5(path: Path) -> TenxMatrix:
    """Read a Cell Ranger (>= 3) ``*_feature_bc_matrix.h5`` file, every feature type kept."""
    fix = (
        "copy filtered_feature_bc_matrix.h5 again from Cell Ranger's outs/ (`h5ls -r` lists a "
        "good file), or read the filtered_feature_bc_matrix/ folder instead"
    )
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise file_error(path, f"not a readable HDF5 file ({err})", fix) from err
    try:
        with handle:
            counts, barcodes, columns = _h5_contents(handle, path)
    except (
        OSError,
        RuntimeError,
        KeyError,
        ValueError,
        TypeError,
        IndexError,
        AttributeError,
    ) as err:
        if isinstance(err, ValueError) and str(path) in str(err):
            raise  # our own message
        raise file_error(
            path, f"the HDF5 file is damaged ({type(err).__name__}: {err})", fix
        ) from err
    for key in ("id", "name", "feature_type"):
        if key not in columns:
            raise ValueError(
                f"HDF5 group 'matrix/features' of {str(path)!r} lacks {key!r}; a Cell Ranger "
                "matrix has 'id', 'name' and 'feature_type'."
            )
    order = ["id", "name", "feature_type"] + [
        k for k in columns if k not in ("id", "name", "feature_type")
    ]
    features = pd.DataFrame({k: columns[k] for k in order})
    return TenxMatrix(counts, pd.Index(barcodes), features)


def _h5_contents(handle, path: Path) -> tuple[sparse.csr_matrix, np.ndarray, dict]:
    """Counts, barcodes and feature columns of the ``matrix`` group, sizes checked first."""
    fix = "copy filtered_feature_bc_matrix.h5 again from Cell Ranger's outs/"
    if "matrix" not in handle:
        raise ValueError(
            f"{str(path)!r} has no HDF5 group 'matrix' (groups: {list(handle)}); it is not a "
            "Cell Ranger >= 3 feature-barcode matrix. Files of Cell Ranger 2 (one group per "
            "genome) are not supported: re-run `cellranger count` >= 3 or use the mtx folder."
        )
    group = handle["matrix"]
    needed = ["barcodes", "data", "indices", "indptr", "shape", "features"]
    missing = [k for k in needed if k not in group]
    if missing:
        raise ValueError(
            f"HDF5 group 'matrix' of {str(path)!r} lacks {missing}; a Cell Ranger matrix has "
            f"{needed}."
        )
    shape = np.asarray(group["shape"][()]).ravel()
    if shape.size != 2 or not np.issubdtype(shape.dtype, np.integer) or np.any(shape < 0):
        raise file_error(path, f"'matrix/shape' is {shape.tolist()}, not two counts", fix)
    n_features, n_cells = (int(v) for v in shape)
    sizes = {k: group[k].shape for k in ("barcodes", "data", "indices", "indptr")}
    nnz = sizes["data"][0] if len(sizes["data"]) == 1 else -1
    if (
        sizes["barcodes"] != (n_cells,)
        or sizes["indptr"] != (n_cells + 1,)
        or sizes["indices"] != (nnz,)
    ):
        raise file_error(
            path,
            f"the sizes of 'matrix' disagree (shape {n_features} × {n_cells}, barcodes "
            f"{sizes['barcodes']}, indptr {sizes['indptr']}, indices {sizes['indices']}, data "
            f"{sizes['data']}; a CSC matrix has n_cells + 1 indptr and one index per value)",
            fix,
        )
    data, indices, indptr = group["data"][()], group["indices"][()], group["indptr"][()]
    if not np.issubdtype(data.dtype, np.number) or (
        data.size and (not np.all(np.isfinite(data)) or data.min() < 0)
    ):
        raise file_error(
            path, "'matrix/data' holds negative, non-finite or non-numeric values", fix
        )
    bad_ptr = indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0)
    if bad_ptr or (indices.size and (indices.min() < 0 or indices.max() >= n_features)):
        raise file_error(path, "'matrix/indptr' or 'matrix/indices' are out of range", fix)
    counts = sparse.csr_matrix((data, indices, indptr), shape=(n_cells, n_features))
    barcodes = _decode(group["barcodes"][()], path)
    feat = group["features"]
    columns = {}
    for key in feat:
        values = feat[key][()]
        if key.startswith("_") or np.ndim(values) != 1 or len(values) != n_features:
            continue
        columns[key] = _decode(values, path)
    return counts, barcodes, columns


def read_tenx_mtx(folder: Path) -> TenxMatrix:
    """Read a Cell Ranger (>= 3) matrix folder (``barcodes``/``features``/``matrix``, gz or not)."""
    what = f"10x matrix folder {str(folder)!r}"
    if (folder / "genes.tsv").is_file():
        raise ValueError(
            f"{what} has a Cell Ranger 2 'genes.tsv' (no feature types, so guides cannot be "
            "told from genes); use the output of Cell Ranger >= 3 (features.tsv.gz)."
        )
    barcodes = read_lines(
        require_file(folder, "barcodes.tsv", what), what="one cell barcode per line"
    )
    features = read_tsv(
        require_file(folder, "features.tsv", what),
        kind="feature id, name and feature type per line, tab-separated",
    )
    if features.shape[1] < 3:
        raise ValueError(
            f"features.tsv of {what} has {features.shape[1]} column(s); Cell Ranger writes 3 "
            "tab-separated columns without header: feature id, name, feature type (e.g. "
            "'ENSG00000165702<TAB>GFI1B<TAB>Gene Expression')."
        )
    features = features.iloc[:, :3].set_axis(["id", "name", "feature_type"], axis=1)
    matrix_path = require_file(folder, "matrix.mtx", what)
    shape = mtx_shape(matrix_path)
    if shape != (len(features), len(barcodes)):
        raise ValueError(
            f"matrix.mtx of {what} is {shape[0]} × {shape[1]} but features.tsv has "
            f"{len(features)} rows and barcodes.tsv {len(barcodes)}; the matrix must be features "
            "× cells as Cell Ranger writes it. Are the three files from the same run?"
        )
    matrix = read_mtx(matrix_path)
    counts = sparse.csr_matrix(matrix.T)
    return TenxMatrix(counts, pd.Index(barcodes), features)


def read_tenx(path: Path) -> TenxMatrix:
    """Dispatch on an ``.h5`` file or an mtx folder; check barcodes are unique."""
    matrix = read_tenx_h5(path) if path.is_file() else read_tenx_mtx(path)
    if not matrix.barcodes.is_unique:
        dup = matrix.barcodes[matrix.barcodes.duplicated()].unique()[:3].tolist()
        raise ValueError(
            f"Barcodes of {str(path)!r} are duplicated (e.g. {dup}); each cell barcode must "
            "appear once. Were matrices concatenated without `cellranger aggr` suffixes?"
        )
    matrix.counts.sum_duplicates()
    matrix.counts.sort_indices()
    return matrix
