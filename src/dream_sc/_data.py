"""MuData plumbing: align modalities to cells by ``obs_names`` and pull matrices out.

Nothing here imports torch; the model layer receives plain numpy / scipy objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from . import _validation as V
from ._lazy import LAZY_DISTRIBUTIONS, compute, is_lazy, lazy_modality_data, take_rows
from ._registration import get_registration


@dataclass
class ModalityData:
    """A modality's data for a chosen set of cells, aligned by ``obs_names``.

    Attributes
    ----------
    distribution
        Likelihood name.
    X
        Observations of the cells present in the modality (CSR sparse or dense float array).
    total
        Trials for binomial modalities (same layout as ``X``), else ``None``.
    group_index
        Multinomial only: group number of every feature (0..n_groups-1).
    group_names
        Multinomial only: names of the groups in ``group_index`` order.
    present
        Boolean mask over the requested cells: which ones the modality holds.
    var_names
        Feature names.
    """

    distribution: str
    X: sparse.csr_matrix | np.ndarray
    total: sparse.csr_matrix | np.ndarray | None
    group_index: np.ndarray | None
    group_names: np.ndarray | None
    present: np.ndarray
    var_names: pd.Index


def positions_in(adata: AnnData, obs_names: pd.Index) -> np.ndarray:
    """Row positions of ``obs_names`` in ``adata`` (-1 where the cell is absent)."""
    return adata.obs_names.get_indexer(obs_names)


def _matrix(adata: AnnData, layer: str | None, modality: str):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"Layer {layer!r} not found in modality {modality!r}; layers: {list(adata.layers)}."
        )
    return adata.layers[layer]


def _take_rows(matrix, rows: np.ndarray):
    if is_lazy(matrix):  # [dask hunk] Dask arrays stay lazy (see dream_sc._lazy)
        return take_rows(matrix, rows)
    # values beyond the float32 range become inf here and are rejected by the checks
    with np.errstate(over="ignore"):
        if sparse.issparse(matrix):
            return sparse.csr_matrix(matrix)[rows].astype(np.float32)
        return np.asarray(matrix)[rows].astype(np.float32)


def resolve_layer(adata: AnnData, modality: str, layer: str | None) -> str | None:
    """The layer holding a modality's observations: explicit argument, else registration."""
    if layer is not None:
        return layer
    return get_registration(adata, modality).get("layer")


def modality_data(
    mdata: MuData, modality: str, obs_names: pd.Index, *, layer: str | None = None
) -> ModalityData:
    """Validate a modality and return its observations for ``obs_names``.

    Raises
    ------
    KeyError, ValueError
        Unknown modality or layer, bad values for the registered distribution, or no requested
        cell present in the modality.
    """
    V.check_modality(mdata, modality)
    adata = mdata[modality]
    reg = get_registration(adata, modality)
    dist = reg["distribution"]
    layer = layer if layer is not None else reg.get("layer")
    pos = positions_in(adata, obs_names)
    present = pos >= 0
    if not present.any():
        raise ValueError(
            f"None of the cells used by this fit are present in modality {modality!r}; check that "
            "its obs_names match mdata.obs_names."
        )
    X = _take_rows(_matrix(adata, layer, modality), pos[present])
    what = f"Modality {modality!r}" + (f" layer {layer!r}" if layer else "")
    total = group_index = group_names = None
    if is_lazy(X):  # [dask hunk] out-of-core counts: validated and used block by block
        if dist in LAZY_DISTRIBUTIONS:
            if dist == "binomial":
                total_layer = reg.get("total_layer") or "total"
                total = _take_rows(_matrix(adata, total_layer, modality), pos[present])
            return lazy_modality_data(
                X, total, distribution=dist, present=present, var_names=adata.var_names, what=what
            )
        X = compute(X)
    if dist == "negbinom":
        V.check_counts(X, what)
    elif dist == "binomial":
        total_layer = reg.get("total_layer") or "total"
        total = _take_rows(_matrix(adata, total_layer, modality), pos[present])
        V.check_binomial(X, total, what)
    elif dist == "multinomial":
        V.check_counts(X, what)
        group_key = reg.get("group_key") or "group"
        if group_key not in adata.var.columns:
            raise KeyError(
                f"Multinomial modality {modality!r} needs var[{group_key!r}] naming each "
                "feature's group; register it with `group_key=`."
            )
        if adata.var[group_key].isna().any():
            raise ValueError(
                f"var[{group_key!r}] of multinomial modality {modality!r} has "
                f"{int(adata.var[group_key].isna().sum())} missing values; every feature needs "
                "its group (drop features without one)."
            )
        codes, uniques = pd.factorize(adata.var[group_key].astype(str), sort=False)
        group_index, group_names = codes.astype(np.int64), np.asarray(uniques, dtype=object)
    else:
        V.check_continuous(X, what)
    return ModalityData(dist, X, total, group_index, group_names, present, adata.var_names)


def obs_values(mdata: MuData, key: str, argument: str) -> pd.Series:
    """A global obs column, validated."""
    V.check_obs_column(mdata.obs, key, argument)
    return mdata.obs[key]
