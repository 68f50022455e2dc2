"""Out-of-core modalities: a Dask-array matrix is never loaded whole by the calling process.

A modality whose ``X`` (or layer) is a Dask array - e.g. from
``anndata.experimental.read_elem_lazy`` or ``dask.array.from_zarr`` - keeps its rows lazily.
Statistics over all features (validation, moment estimates of the technical fit, amplitude
priors of the trans fit) are computed one column block at a time, and every feature chunk of a
fit carries only its own lazy column slice, computed where the chunk runs (a Dask worker reads
its columns from the source directly). Column blocks give exactly the numbers of the in-memory
computation: every statistic here is per feature, and the few global ones (the group-effect
prior scale, the amplitude fallback) are recomputed from the assembled per-feature values.

Count distributions (``negbinom``, ``binomial``) stay lazy; other distributions are computed
into memory (their preparation needs all features at once).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

logger = logging.getLogger("dream_sc")

#: Distributions whose data stay lazy.
LAZY_DISTRIBUTIONS = ("negbinom", "binomial")
#: Bytes of one column block (float32 cells x features) for the statistics over all features.
BLOCK_BYTES = 256 * 2**20


def is_lazy(matrix) -> bool:
    """A Dask array (or any Dask collection)."""
    return hasattr(matrix, "__dask_graph__")


def take_rows(matrix, rows: np.ndarray):
    """Rows ``rows`` of a Dask array as float32, still lazy."""
    with np.errstate(over="ignore"):
        return matrix[np.asarray(rows)].astype(np.float32)


def compute(value):
    """Compute a Dask array here (default scheduler: a running distributed client reads it)."""
    return value.compute() if is_lazy(value) else value


def column_blocks(n_rows: int, columns: np.ndarray) -> list[np.ndarray]:
    """``columns`` in blocks of at most :data:`BLOCK_BYTES` of float32 data."""
    size = max(1, BLOCK_BYTES // max(4 * n_rows, 1))
    return [columns[i : i + size] for i in range(0, len(columns), size)]


def lazy_modality_data(X, total, *, distribution: str, present, var_names, what: str):
    """:class:`~dream_sc._data.ModalityData` of a lazy count modality, validated block by block."""
    from . import _validation as V
    from ._data import ModalityData

    for cols in column_blocks(X.shape[0], np.arange(X.shape[1])):
        block = compute(X[:, cols])
        if distribution == "negbinom":
            V.check_counts(block, what)
        else:
            V.check_binomial(block, compute(total[:, cols]), what)
    return ModalityData(distribution, X, total, None, None, present, var_names)


def _block_data(data, cols: np.ndarray):
    return replace(
        data,
        X=compute(data.X[:, cols]),
        total=None if data.total is None else compute(data.total[:, cols]),
        group_index=None if data.group_index is None else data.group_index[cols],
        var_names=data.var_names[cols],
    )


def blockwise_moment_init(distribution: str, X, **kwargs):
    """:func:`~dream_sc.models.technical.moment_init`, one column block at a time when lazy."""
    from .models.technical import _robust_scale, moment_init

    if not is_lazy(X):
        return moment_init(distribution, X, **kwargs)
    total = kwargs.pop("total", None)
    parts = [
        moment_init(
            distribution,
            compute(X[:, cols]),
            total=None if total is None else compute(total[:, cols]),
            **kwargs,
        )
        for cols in column_blocks(X.shape[0], np.arange(X.shape[1]))
    ]
    merged = {
        name: np.concatenate([getattr(p, name) for p in parts])
        if isinstance(getattr(parts[0], name), np.ndarray)
        else getattr(parts[0], name)
        for name in parts[0].__dataclass_fields__
    }
    # the one statistic over all features: the group-effect prior scale
    merged["delta_scale"] = _robust_scale(merged["effect_values"])
    return replace(parts[0], **merged)


def blockwise_link_means(fn, data, fitted, labels, group, sf, effects) -> np.ndarray:
    """Guide-level link means ``fn(data, fitted, labels, group, sf, effects)`` ``[guides, T]``.

    Lazy data go one column block at a time (each feature's means depend on its column only).
    """
    if not is_lazy(data.X):
        return fn(data, fitted, labels, group, sf, effects)
    out = []
    for block in column_blocks(data.X.shape[0], np.flatnonzero(fitted)):
        every = np.ones(len(block), bool)
        out.append(fn(_block_data(data, block), every, labels, group, sf, effects[block]))
    return np.concatenate(out, axis=1)
