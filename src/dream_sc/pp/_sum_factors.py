"""Size factors from library sizes."""

from __future__ import annotations

import logging

import numpy as np
from mudata import MuData
from scipy import sparse

from .. import _validation as V
from .._data import _matrix, positions_in
from ._feature_counts import copy_mudata

logger = logging.getLogger("dream_sc")


def sum_factors(
    mdata: MuData,
    modality: str = "rna",
    *,
    layer: str | None = None,
    key_added: str = "sum_factor",
    copy: bool = False,
) -> MuData | None:
    """Library-size factors scaled to mean 1.

    ``s_i = N_i / mean(N)`` where ``N_i`` is the total count of cell ``i`` in ``modality``.
    Cells absent from the modality get NaN; cells with zero counts raise (drop them first).

    Parameters
    ----------
    mdata
        The screen.
    modality
        Count modality used for library sizes.
    layer
        Layer with raw counts (default ``X``).
    key_added
        Column of ``mdata.obs`` to write.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    ``None`` (or a copy with ``copy=True``); writes ``mdata.obs[key_added]``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=200, n_genes=20, seed=0)
    >>> ds.pp.sum_factors(mdata, key_added="sf")
    >>> round(float(mdata.obs["sf"].mean()), 6)
    1.0
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, modality)
    adata = mdata[modality]
    X = _matrix(adata, layer, modality)
    V.check_counts(X, f"Modality {modality!r}")
    totals = np.asarray(X.sum(axis=1)).ravel() if sparse.issparse(X) else np.asarray(X).sum(1)
    if (totals <= 0).any():
        raise ValueError(
            f"{int((totals <= 0).sum())} cells have zero counts in {modality!r}; filter them "
            "before computing size factors (e.g. `sc.pp.filter_cells(adata, min_counts=1)`)."
        )
    factors = totals / totals.mean()
    pos = positions_in(adata, mdata.obs_names)
    values = np.full(mdata.n_obs, np.nan)
    values[pos >= 0] = factors[pos[pos >= 0]]
    target = copy_mudata(mdata) if copy else mdata
    target.obs[key_added] = values
    logger.info("size factors written to mdata.obs[%r] from %r", key_added, modality)
    return target if copy else None
