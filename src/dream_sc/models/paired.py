"""Paired binomial data: successes ``k`` stored on the sparsity pattern of the trials ``n``.

Every entry with ``n > 0`` is stored in both (``k`` possibly 0), so the binomial likelihoods
can walk both with the same indices.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .sparse import CSRMatrix, SparseCounts, _as_csr

__all__ = ["paired_csr", "paired_sparse", "paired_to"]


def _flat_keys(csr: sp.csr_matrix) -> np.ndarray:
    """Row-major flat positions of the stored entries of a canonical CSR matrix (sorted)."""
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    return rows * csr.shape[1] + csr.indices.astype(np.int64)


def _aligned_values(k_matrix: Any, n_matrix: Any) -> tuple[sp.csr_matrix, np.ndarray]:
    """``n`` without zeros, and the values of ``k`` at ``n``'s stored positions (checked)."""
    n_csr = _as_csr(n_matrix)
    n_csr.eliminate_zeros()
    k_csr = _as_csr(k_matrix)
    if k_csr.shape != n_csr.shape:
        raise ValueError(
            f"Successes and trials must have the same shape, got {k_csr.shape} and {n_csr.shape}."
        )
    k_csr.eliminate_zeros()
    n_keys = _flat_keys(n_csr)
    k_keys = _flat_keys(k_csr)
    pos = np.searchsorted(n_keys, k_keys)
    found = pos < n_keys.size
    found[found] = n_keys[pos[found]] == k_keys[found]
    if not found.all():
        raise ValueError(
            "Successes are non-zero where trials are zero: every success count needs trials > 0 "
            "at the same entry."
        )
    k_vals = np.zeros(n_csr.nnz, dtype=np.float64)
    k_vals[pos] = k_csr.data
    if np.any(k_vals < 0):
        raise ValueError("Successes must be non-negative.")
    if np.any(k_vals > n_csr.data):
        raise ValueError("Successes exceed trials for some entries (k > n).")
    return n_csr, k_vals


def paired_sparse(
    k_matrix: Any,
    n_matrix: Any,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[SparseCounts, SparseCounts]:
    """Successes ``k`` and trials ``n`` as two :class:`SparseCounts` on ``n``'s pattern.

    Every entry with ``n > 0`` is stored in both (``k`` possibly 0); entries with ``n = 0``
    are stored in neither (they carry no binomial information). Both share the same ``row``
    and ``col`` tensors.

    Parameters
    ----------
    k_matrix, n_matrix
        Same-shape 2-D scipy sparse matrices or dense arrays, ``0 <= k <= n``.
    dtype
        dtype of the values (host tensors: move the pair with :func:`paired_to`).

    Returns
    -------
    ``(k, n)``.

    Examples
    --------
    >>> import numpy as np
    >>> k, n = paired_sparse(np.array([[0, 1], [0, 0]]), np.array([[2, 1], [0, 0]]))
    >>> k.val.tolist(), n.val.tolist(), n.col.tolist()
    ([0.0, 1.0], [2.0, 1.0], [0, 1])
    """
    n_csr, k_vals = _aligned_values(k_matrix, n_matrix)
    n = SparseCounts.from_scipy(n_csr, dtype=dtype)
    k = SparseCounts(
        row=n.row,
        col=n.col,
        val=torch.as_tensor(k_vals, dtype=dtype),
        n_rows=n.n_rows,
        n_cols=n.n_cols,
    )
    return k, n


def paired_csr(
    k_matrix: Any,
    n_matrix: Any,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[CSRMatrix, CSRMatrix]:
    """Successes and trials as two :class:`CSRMatrix` sharing ``n``'s pattern.

    ``take_rows`` with the same ``idx`` on both then gives aligned :class:`SparseCounts`, ready
    for :func:`dream_sc.models.likelihoods.binomial_log_prob`.

    Parameters
    ----------
    k_matrix, n_matrix
        Same-shape 2-D scipy sparse matrices or dense arrays, ``0 <= k <= n``.
    dtype
        dtype of the values (host tensors: move the pair with :func:`paired_to`).

    Returns
    -------
    ``(k, n)``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> k, n = paired_csr(np.array([[0, 1], [0, 0]]), np.array([[2, 1], [0, 3]]))
    >>> k.take_rows(torch.tensor([1])).val.tolist(), n.take_rows(torch.tensor([1])).val.tolist()
    ([0.0], [3.0])
    """
    n_csr, k_vals = _aligned_values(k_matrix, n_matrix)
    n = CSRMatrix.from_scipy(n_csr, dtype=dtype)
    k = CSRMatrix(
        crow=n.crow,
        col=n.col,
        val=torch.as_tensor(k_vals, dtype=dtype),
        shape=n.shape,
    )
    return k, n


def paired_to(
    k: CSRMatrix | SparseCounts, n: CSRMatrix | SparseCounts, *args: Any, **kwargs: Any
) -> tuple[CSRMatrix | SparseCounts, CSRMatrix | SparseCounts]:
    """Move and/or cast a pair of :func:`paired_csr` / :func:`paired_sparse` like a tensor.

    Arguments as for :meth:`torch.Tensor.to`; the two keep sharing one index pattern.

    Examples
    --------
    >>> import numpy as np, torch
    >>> k, n = paired_csr(np.array([[0, 1]]), np.array([[2, 1]]))
    >>> k, n = paired_to(k, n, "cpu", torch.float64)
    >>> k.col is n.col, k.val.dtype
    (True, torch.float64)
    """
    moved = n.to(*args, **kwargs)
    return replace(moved, val=k.val.to(*args, **kwargs)), moved
