"""Read a 10x feature-barcode matrix: ``filtered_feature_bc_matrix.h5`` or its mtx folder.

Both hold a features × cells count matrix. The HDF5 file (Cell Ranger >= 3) has a group
``matrix`` with ``barcodes``, ``data``, ``indices``, ``indptr`` and ``shape`` (a compressed
sparse column matrix, one column per cell) and a group ``matrix/features`` with ``id``,
``name``, ``feature_type``, ``genome`` and further tags (for CRISPR Guide Capture features e.g.
``pattern``, ``read``, ``sequence``, ``target_gene_id``, ``target_gene_name``). The folder holds
``barcodes.tsv``, ``features.tsv`` (id, name, feature type; no header) and ``matrix.mtx``,
each optionally gzipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import sparse

from ._files import read_lines, read_mtx, read_tsv, require_file


@dataclass
class TenxMatrix:
    """Counts (cells × features, CSR), barcodes and the feature table of a 10x matrix."""

    counts: sparse.csr_matrix
    barcodes: pd.Index
    features: pd.DataFrame  # columns id, name, feature_type (+ genome and tags from the h5)


def _decode(values: np.ndarray) -> np.ndarray:
    return np.asarray(
        [v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object
    )


def read_tenx_h5(path: Path) -> TenxMatrix:
    """Read a Cell Ranger (>= 3) ``*_feature_bc_matrix.h5`` file, every feature type kept."""
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{str(path)!r} is not a readable HDF5 file ({err}).") from err
    with handle:
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
        n_features, n_cells = (int(v) for v in group["shape"][()])
        counts = sparse.csr_matrix(
            (group["data"][()], group["indices"][()], group["indptr"][()]),
            shape=(n_cells, n_features),
        )
        barcodes = _decode(group["barcodes"][()])
        feat = group["features"]
        columns = {}
        for key in feat:
            values = feat[key][()]
            if key.startswith("_") or np.ndim(values) != 1 or len(values) != n_features:
                continue
            columns[key] = _decode(values)
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


def read_tenx_mtx(folder: Path) -> TenxMatrix:
    """Read a Cell Ranger (>= 3) matrix folder (``barcodes``/``features``/``matrix``, gz or not)."""
    what = f"10x matrix folder {str(folder)!r}"
    if (folder / "genes.tsv").is_file():
        raise ValueError(
            f"{what} has a Cell Ranger 2 'genes.tsv' (no feature types, so guides cannot be "
            "told from genes); use the output of Cell Ranger >= 3 (features.tsv.gz)."
        )
    barcodes = read_lines(require_file(folder, "barcodes.tsv", what))
    features = read_tsv(require_file(folder, "features.tsv", what))
    if features.shape[1] < 3:
        raise ValueError(
            f"features.tsv of {what} has {features.shape[1]} column(s); Cell Ranger writes 3 "
            "tab-separated columns without header: feature id, name, feature type (e.g. "
            "'ENSG00000165702<TAB>GFI1B<TAB>Gene Expression')."
        )
    features = features.iloc[:, :3].set_axis(["id", "name", "feature_type"], axis=1)
    matrix = read_mtx(require_file(folder, "matrix.mtx", what))
    if matrix.shape != (len(features), len(barcodes)):
        raise ValueError(
            f"matrix.mtx of {what} is {matrix.shape[0]} × {matrix.shape[1]} but features.tsv has "
            f"{len(features)} rows and barcodes.tsv {len(barcodes)}; the matrix must be features "
            "× cells as Cell Ranger writes it. Are the three files from the same run?"
        )
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
