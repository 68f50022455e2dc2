"""Store of cis fits (step 2): ``mdata.uns[key]``, per-cell dosage columns and samples."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from .. import _record_checks as C
from ._common import stamp
from ._keys import CIS_STATS, CisKeys

__all__ = [
    "CIS_STATS",
    "CisKeys",
    "read_cis",
    "has_cis_doses",
    "read_cis_dose",
    "read_cis_samples",
    "write_cis",
]


def write_cis(
    mdata: MuData,
    key: str,
    record: dict,
    columns: Mapping[str, np.ndarray],
    samples: np.ndarray,
    obs_columns: Mapping[str, np.ndarray] | None = None,
    *,
    sparse_samples: bool = False,
    rows: np.ndarray | None = None,
) -> None:
    """Store a cis fit: per-cell dosage summaries ``columns`` (``stat -> [cells]``) and samples.

    ``obs_columns``: further per-cell columns under their full names (e.g. escape probability).
    ``samples`` is cells x draws with NaN rows for cells outside the fit, or with ``rows`` (the
    fitted cells' positions, ascending) the fitted cells' draws only. ``sparse_samples`` stores
    them as a CSR matrix holding the fitted cells' rows only (dosages are positive, so an empty
    row is a cell outside the fit; :func:`read_cis_samples` gives the NaN rows back), built
    from the fitted rows without a dense cells x draws matrix of the whole screen.
    """
    names = CisKeys(key)
    with warnings.catch_warnings():  # a screen adds five columns per target: pandas calls
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)  # obs "fragmented"
        for stat, column in columns.items():
            mdata.obs[names.dose(stat)] = column
        for name, column in (obs_columns or {}).items():
            mdata.obs[name] = column
    if rows is not None and sparse_samples:
        samples = _sparse_rows(np.asarray(samples), np.asarray(rows), mdata.n_obs)
    elif rows is not None:
        full = np.full((mdata.n_obs, samples.shape[1]), np.nan, dtype=samples.dtype)
        full[rows] = samples
        samples = full
    elif sparse_samples:
        samples = sparse.csr_matrix(np.nan_to_num(samples, nan=0.0))
    mdata.obsm[names.samples] = samples
    mdata.uns[names.record] = stamp(record, "cis")


def _sparse_rows(samples: np.ndarray, rows: np.ndarray, n_obs: int) -> sparse.csr_matrix:
    """CSR ``n_obs x draws`` with ``samples`` in rows ``rows`` (ascending), other rows empty.

    The same matrix as ``csr_matrix`` of the NaN-filled dense one with NaN read as 0.
    """
    n_draws = samples.shape[1]
    counts = np.zeros(n_obs, dtype=np.int64)
    counts[rows] = n_draws
    indptr = np.concatenate([[0], np.cumsum(counts)])
    index = np.int32 if indptr[-1] < np.iinfo(np.int32).max else np.int64
    indices = np.tile(np.arange(n_draws, dtype=index), len(rows))
    data = np.nan_to_num(samples, nan=0.0).ravel()
    out = sparse.csr_matrix((data, indices, indptr.astype(index)), shape=(n_obs, n_draws))
    out.eliminate_zeros()
    return out


def read_cis(mdata: MuData, key: str, *, samples: bool = False, cells: bool = False) -> Mapping:
    """The cis run record ``key`` (raises with the call to make when it is missing).

    ``samples=True`` also requires the per-cell dosage samples in ``mdata.obsm``, ``cells=True``
    the per-cell dosage columns in ``mdata.obs``.
    """
    names = CisKeys(key)
    if names.record not in mdata.uns or (samples and names.samples not in mdata.obsm):
        raise KeyError(
            f"No cis fit {key!r} in mdata.uns; run `ds.tl.fit_cis(mdata, cis_feature=..., "
            f"key_added={key!r})` first or pass `key=`."
        )
    C.check_cis(mdata, key, cells=cells)
    return mdata.uns[names.record]


def has_cis_doses(mdata: MuData, key: str) -> bool:
    """Whether the per-cell dosage columns of the cis fit ``key`` are in ``mdata.obs``."""
    return CisKeys(key).dose("mean") in mdata.obs.columns


def read_cis_dose(mdata: MuData, key: str, stat: str = "mean") -> pd.Series:
    """Per-cell dosage statistic ``stat`` (one of :data:`CIS_STATS`) of the cis fit ``key``.

    Read the record with :func:`read_cis` first (``cells=True``): this only looks the column up.
    """
    return mdata.obs[CisKeys(key).dose(stat)]


def read_cis_samples(mdata: MuData, key: str) -> np.ndarray:
    """Cells x samples dosage draws of the cis fit ``key`` (``read_cis(..., samples=True)`` first).

    Cells outside the fit hold NaN, whether the draws are stored dense or sparse.
    """
    return dense_samples(mdata.obsm[CisKeys(key).samples])


def dense_samples(value) -> np.ndarray:
    """Stored dosage draws as a dense array, NaN rows for cells outside the fit.

    Examples
    --------
    >>> dense_samples(sparse.csr_matrix(np.array([[1.0, 2.0], [0.0, 0.0]]))).tolist()
    [[1.0, 2.0], [nan, nan]]
    """
    if not sparse.issparse(value):
        return np.asarray(value)
    matrix = sparse.csr_matrix(value)
    out = matrix.toarray()
    out[np.diff(matrix.indptr) == 0] = np.nan
    return out
