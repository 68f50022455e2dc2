"""MuData plumbing: align modalities to cells by ``obs_names`` and pull matrices out.

The model layer receives plain numpy / scipy objects; the modality's likelihood family
(:mod:`dream_sc.models.families`) checks them and reads what else it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from . import _lazy as L
from . import _validation as V
from ._registration import get_registration
from .models.families import FAMILIES, get_family


@dataclass
class ModalityData:
    """A modality's data for a chosen set of cells, aligned by ``obs_names``.

    Attributes
    ----------
    distribution
        Likelihood name.
    X
        Observations of the cells present in the modality (CSR sparse or dense float array),
        or a :class:`~dream_sc._lazy.LazyMatrix` when the modality is out of core (Dask array
        or backed h5mu): read its columns with :meth:`columns`.
    total
        Trials for binomial modalities (same layout as ``X``, lazy too), else ``None``.
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

    @property
    def lazy(self) -> bool:
        """Whether the data are read from disk / Dask column block by column block."""
        return L.is_lazy(self.X) or L.is_lazy(self.total)

    def density(self) -> float:
        """Fraction of stored entries of ``X`` (counted block by block when lazy)."""
        return L.density(self.X)

    def columns(self, start: int, stop: int) -> tuple:
        """``(X, total)`` of the features ``start:stop`` in memory (``total`` may be None)."""
        cols = np.arange(start, stop)
        return L.columns(self.X, cols), L.columns(self.total, cols)


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
    # values beyond the float32 range become inf here and are rejected by the checks
    with np.errstate(over="ignore"):
        if sparse.issparse(matrix):
            return sparse.csr_matrix(matrix)[rows].astype(np.float32)
        return np.asarray(matrix)[rows].astype(np.float32)


def out_of_core_refusal(modality: str, distribution: str) -> str:
    """The error message of a family that needs its whole matrix in memory."""
    supported = " and ".join(repr(name) for name, f in FAMILIES.items() if f.lazy_input)
    return (
        f"Modality {modality!r} is out of core (a Dask array or a backed h5mu) but its "
        f"{distribution!r} likelihood needs the whole matrix in memory; out-of-core input is "
        f"supported for {supported} modalities. Load it into memory first: "
        f"`mdata[{modality!r}].X = mdata[{modality!r}].X.compute()` for a Dask array (the same "
        "for its layers), or read the file without `backed=True`."
    )


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
    rows = pos[present]
    family = get_family(dist)

    def load(name: str | None):
        matrix = _matrix(adata, name, modality)
        source = L.source_of(adata, name)
        if source is None:
            return _take_rows(matrix, rows)
        if not family.lazy_input:
            raise ValueError(out_of_core_refusal(modality, dist))
        return L.LazyMatrix(source, rows)

    X = load(layer)
    what = f"Modality {modality!r}" + (f" layer {layer!r}" if layer else "")
    extra = family.read(
        X, registration=reg, var=adata.var, load_layer=load, modality=modality, what=what
    )
    return ModalityData(
        dist, X, extra.total, extra.group_index, extra.group_names, present, adata.var_names
    )
