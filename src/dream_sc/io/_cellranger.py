"""``io.read_cellranger``: a Cell Ranger run with CRISPR Guide Capture → MuData."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from ._feature_reference import (
    CONTROL_TARGETS,
    TARGET_COLUMNS,
    guide_targets_from_table,
    read_feature_reference,
)
from ._files import as_path, find_file
from ._tenx import TenxMatrix, read_tenx

logger = logging.getLogger("dream_sc")

GENE_EXPRESSION = "Gene Expression"
GUIDE_CAPTURE = "CRISPR Guide Capture"
#: Modality names of the other 10x feature types.
OTHER_TYPES = {"Antibody Capture": "prot", "Multiplexing Capture": "hashing", "Custom": "custom"}
MATRIX_NAMES = ("filtered_feature_bc_matrix", "sample_filtered_feature_bc_matrix")
CALLS_PATH = ("crispr_analysis", "protospacer_calls_per_cell.csv")


def read_cellranger(
    path: str | Path,
    *,
    feature_reference: str | Path | pd.DataFrame | None = None,
    guide_calls: Literal["auto", "cellranger", "mixture", "umi_threshold"] | None = "auto",
    moi: Literal["low", "high"] = "low",
    calls: str | Path | None = None,
    threshold: int = 5,
    control_targets: Sequence[str] = CONTROL_TARGETS,
    control_label: str = "ntc",
) -> MuData:
    """Read a Cell Ranger run with gene expression and CRISPR Guide Capture.

    Parameters
    ----------
    path
        One of: the ``outs/`` folder; ``filtered_feature_bc_matrix.h5``; the
        ``filtered_feature_bc_matrix/`` folder (``barcodes.tsv``, ``features.tsv``,
        ``matrix.mtx``, gzipped or not). Cell Ranger ``multi`` files named
        ``sample_filtered_feature_bc_matrix*`` work alike.
    feature_reference
        The feature reference CSV given to Cell Ranger (header
        ``id,name,read,pattern,sequence,feature_type,target_gene_id,target_gene_name``) or that
        table, for the guide → target mapping. Default: the ``target_gene_name`` /
        ``target_gene_id`` tags of the HDF5 file; the mtx folder does not hold targets, so it needs
        the feature reference.
    guide_calls
        How cells get their guide: ``"auto"`` uses Cell Ranger's calls
        (``crispr_analysis/protospacer_calls_per_cell.csv``) when found, else ``"mixture"``;
        ``"cellranger"``, ``"mixture"``, ``"umi_threshold"`` as in
        :func:`~dream_sc.pp.assign_guides`; ``None`` reads the counts only (no ``obs``
        labels; call :func:`~dream_sc.pp.assign_guides` yourself).
    moi
        ``"low"``: only cells with exactly one called guide are kept; ``"high"``: cells with at
        least one call, assignment table in ``obsm["guide_assignment"]``.
    calls
        Path of ``protospacer_calls_per_cell.csv`` when it is not in
        ``<outs>/crispr_analysis/``.
    threshold
        UMIs needed for a call with ``guide_calls="umi_threshold"``.
    control_targets
        Target names of non-targeting control guides (case-insensitive); they become
        ``control_label``.
    control_label
        Target label of control cells in ``obs["target"]``.

    Returns
    -------
    MuData with modalities ``rna`` (Gene Expression counts; var_names = gene names made unique,
    ``var["gene_ids"]``, ``var["feature_types"]``, ``var["genome"]`` when present), ``guides``
    (guide UMI counts; var_names = guide names, ``var["target"]`` with controls mapped to
    ``control_label``, ``var["gene_ids"]`` = feature ids) and one modality per other feature
    type (``prot`` for Antibody Capture, ...). ``obs_names`` are the barcodes. Unless
    ``guide_calls=None``, :func:`~dream_sc.pp.assign_guides` has set ``obs["guide"]``,
    ``obs["target"]``, ``obs["n_guides"]``, ``obsm["guide_assignment"]`` and
    ``uns["guide_assignment"]``.

    Raises
    ------
    ValueError
        Missing or malformed files, no guide features, guides without a target, duplicated
        barcodes, calls naming unknown guides; each message says what to fix.

    Examples
    --------
    >>> import dream_sc as ds  # doctest: +SKIP
    >>> mdata = ds.io.read_cellranger(  # doctest: +SKIP
    ...     "sample/outs", feature_reference="feature_reference.csv"
    ... )
    """
    from ..pp._assign_guides import METHODS, MOIS, assign_guides

    if guide_calls not in (None, "auto", *METHODS):
        raise ValueError(
            f"`guide_calls` must be None, 'auto' or one of {list(METHODS)}; got {guide_calls!r}."
        )
    if moi not in MOIS:
        raise ValueError(f"`moi` must be one of {list(MOIS)}; got {moi!r}.")
    path = as_path(path, "path")
    matrix_path, run_folder = _locate_matrix(path)
    matrix = read_tenx(matrix_path)
    types = matrix.features["feature_type"]
    if not (types == GUIDE_CAPTURE).any():
        raise ValueError(
            f"{str(matrix_path)!r} has no {GUIDE_CAPTURE!r} features (feature types: "
            f"{sorted(types.unique())}); was the run made with a feature reference of guides?"
        )
    if not (types == GENE_EXPRESSION).any():
        raise ValueError(f"{str(matrix_path)!r} has no {GENE_EXPRESSION!r} features.")
    calls_path = _locate_calls(calls, run_folder, guide_calls)
    guides = _guides_modality(
        matrix, feature_reference, control_targets, control_label, matrix_path
    )
    mods = {"rna": _rna_modality(matrix), "guides": guides}
    for kind in pd.unique(types):
        if kind not in (GENE_EXPRESSION, GUIDE_CAPTURE):
            name = OTHER_TYPES.get(kind, str(kind).lower().replace(" ", "_"))
            mods[name] = _subset(matrix, (types == kind).to_numpy(), ids_if_duplicated=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = MuData(mods)
    logger.info(
        "read_cellranger: %d cells, %d genes, %d guides from %s",
        mdata.n_obs,
        mods["rna"].n_vars,
        guides.n_vars,
        matrix_path,
    )
    if guide_calls is None:
        return mdata
    method = guide_calls
    if method == "auto":
        method = "cellranger" if calls_path is not None else "mixture"
    assign_guides(
        mdata,
        method=method,
        moi=moi,
        calls=calls_path if method == "cellranger" else None,
        threshold=threshold,
        control_label=control_label,
    )
    return mdata


def _locate_matrix(path: Path) -> tuple[Path, Path]:
    """The matrix (h5 file or mtx folder) and the run folder holding ``crispr_analysis/``."""
    if path.is_file():
        return path, path.parent
    if find_file(path, "matrix.mtx") is not None:
        return path, path.parent
    for name in MATRIX_NAMES:
        if (path / f"{name}.h5").is_file():
            return path / f"{name}.h5", path
    for name in MATRIX_NAMES:
        if (path / name).is_dir():
            return path / name, path
    raise ValueError(
        f"No Cell Ranger matrix in {str(path)!r}: expected filtered_feature_bc_matrix.h5, a "
        "filtered_feature_bc_matrix/ folder, or a folder with matrix.mtx(.gz); it holds "
        f"{sorted(p.name for p in path.iterdir())[:10]}."
    )


def _locate_calls(calls, run_folder: Path, guide_calls) -> Path | None:
    if calls is not None:
        return as_path(calls, "calls")
    found = run_folder.joinpath(*CALLS_PATH)
    if found.is_file():
        return found
    if guide_calls == "cellranger":
        raise ValueError(
            f"guide_calls='cellranger' but {str(found)!r} does not exist; pass `calls=` with the "
            "path of protospacer_calls_per_cell.csv, or use guide_calls='mixture'."
        )
    return None


def _subset(matrix: TenxMatrix, mask: np.ndarray, *, ids_if_duplicated: bool = False) -> AnnData:
    """Features ``mask`` as an AnnData named by feature name (by id if names repeat and asked)."""
    features = matrix.features.loc[mask]
    var = pd.DataFrame(
        {
            "gene_ids": features["id"].to_numpy(),
            "feature_types": features["feature_type"].to_numpy(),
        },
        index=pd.Index(features["name"].to_numpy(dtype=object)),
    )
    if "genome" in features.columns:
        var["genome"] = features["genome"].to_numpy()
    with warnings.catch_warnings():  # repeated gene names are made unique by the caller
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        adata = AnnData(
            X=matrix.counts[:, np.flatnonzero(mask)].astype(np.float32),
            obs=pd.DataFrame(index=matrix.barcodes.copy()),
            var=var,
        )
    if ids_if_duplicated and not adata.var_names.is_unique:
        adata.var_names = pd.Index(features["id"].to_numpy(dtype=object))
    return adata


def _rna_modality(matrix: TenxMatrix) -> AnnData:
    rna = _subset(matrix, (matrix.features["feature_type"] == GENE_EXPRESSION).to_numpy())
    if not rna.var_names.is_unique:
        n_dup = int(rna.var_names.duplicated().sum())
        rna.var_names_make_unique()
        logger.info(
            "read_cellranger: %d duplicated gene names made unique (suffix -1, -2, ...)", n_dup
        )
    return rna


def _guides_modality(matrix, feature_reference, control_targets, control_label, matrix_path):
    mask = (matrix.features["feature_type"] == GUIDE_CAPTURE).to_numpy()
    features = matrix.features.loc[mask].reset_index(drop=True)
    dup = features["name"][features["name"].duplicated()].unique()
    if len(dup):
        raise ValueError(
            f"Guide names {list(dup[:5])} appear more than once in {str(matrix_path)!r}; give "
            "every guide a unique name in the feature reference."
        )
    if feature_reference is not None:
        table = read_feature_reference(feature_reference)
        where = "the feature reference"
    elif any(c in features.columns for c in TARGET_COLUMNS):
        table = features.assign(read="", pattern="", sequence="")
        where = f"the target tags of {str(matrix_path)!r}"
    else:
        raise ValueError(
            f"No guide targets: {str(matrix_path)!r} carries no target_gene_name tags (mtx files "
            "never do); pass `feature_reference=` with the feature reference CSV of the run."
        )
    targets = guide_targets_from_table(
        table,
        features,
        control_targets=control_targets,
        control_label=control_label,
        where=where,
    )
    guides = _subset(matrix, mask)
    guides.var["target"] = targets.to_numpy(dtype=object)
    return guides
