"""Device-resident sparse count containers for fused likelihoods and cell minibatches.

Two containers, both pure torch (no AnnData import):

- :class:`SparseCounts` — coordinate (COO) view of one block of cells: the non-zero entries
  ``(row, col, val)`` of a ``n_rows × n_cols`` matrix. This is what the likelihoods in
  :mod:`dream_sc.models.likelihoods` consume.
- :class:`CSRMatrix` — the whole count matrix kept on the device in compressed-row form, from
  which a minibatch of cells is gathered with :meth:`CSRMatrix.take_rows` without a Python loop
  over rows.

Paired binomial data (successes ``k`` on trials ``n``) must share ``n``'s sparsity pattern, with
``k`` explicitly stored (possibly as 0) wherever ``n > 0``: build them with
:func:`paired_sparse` / :func:`paired_csr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["CSRMatrix", "SparseCounts", "paired_csr", "paired_sparse"]


def _as_csr(matrix: Any) -> sp.csr_matrix:
    """Return a canonical CSR copy of ``matrix`` (sorted indices, no duplicates)."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    if sp.issparse(matrix):
        csr = sp.csr_matrix(matrix, copy=True)
    else:
        arr = np.asarray(matrix)
        if arr.ndim != 2:
            raise ValueError(f"Expected a 2-D matrix, got an array with shape {arr.shape}.")
        csr = sp.csr_matrix(arr)
    csr.sum_duplicates()
    csr.sort_indices()
    return csr


def _csr_row_ids(crow: torch.Tensor, nnz: int) -> torch.Tensor:
    """Row index of every stored entry of a CSR matrix."""
    n_rows = crow.numel() - 1
    counts = crow[1:] - crow[:-1]
    return torch.repeat_interleave(
        torch.arange(n_rows, device=crow.device), counts, output_size=nnz
    )


@dataclass
class SparseCounts:
    """Non-zero entries of one block of cells, in coordinate form.

    Parameters
    ----------
    row
        int64 tensor ``[nnz]``, the batch-local row (cell) index of each entry.
    col
        int64 tensor ``[nnz]``, the column (feature) index of each entry.
    val
        Floating tensor ``[nnz]``, the stored values.
    n_rows
        Number of rows of the block (cells in the minibatch).
    n_cols
        Number of columns (features).

    Examples
    --------
    >>> import numpy as np
    >>> from dream_sc.models.sparse import SparseCounts
    >>> y = SparseCounts.from_scipy(np.array([[0, 2], [3, 0]]))
    >>> y.nnz, y.row.tolist(), y.col.tolist(), y.val.tolist()
    (2, [0, 1], [1, 0], [2.0, 3.0])
    """

    row: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    n_rows: int
    n_cols: int

    @classmethod
    def from_scipy(
        cls,
        matrix: Any,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> SparseCounts:
        """Build on the host from any scipy sparse matrix or dense array; explicit zeros dropped.

        Move the result to the fit's device with :meth:`to`.

        Parameters
        ----------
        matrix
            scipy sparse matrix/array (any format), numpy array or torch tensor, 2-D.
        dtype
            Floating dtype of ``val``.

        Returns
        -------
        The non-zero entries in row-major order.

        Examples
        --------
        >>> import scipy.sparse as sp
        >>> SparseCounts.from_scipy(sp.eye(3, format="csc")).nnz
        3
        """
        csr = _as_csr(matrix)
        csr.eliminate_zeros()
        crow = torch.as_tensor(csr.indptr.astype(np.int64))
        return cls(
            row=_csr_row_ids(crow, csr.nnz),
            col=torch.as_tensor(csr.indices.astype(np.int64)),
            val=torch.as_tensor(csr.data, dtype=dtype),
            n_rows=csr.shape[0],
            n_cols=csr.shape[1],
        )

    @classmethod
    def from_dense(cls, y: torch.Tensor) -> SparseCounts:
        """Build from a dense 2-D torch tensor (on its device), keeping the non-zeros.

        Examples
        --------
        >>> import torch
        >>> SparseCounts.from_dense(torch.tensor([[0.0, 1.0], [0.0, 0.0]])).nnz
        1
        """
        if y.ndim != 2:
            raise ValueError(f"Expected a 2-D tensor, got shape {tuple(y.shape)}.")
        n_rows, n_cols = y.shape
        flat_y = y.reshape(-1)
        flat = torch.nonzero(flat_y).squeeze(1)
        row = torch.div(flat, n_cols, rounding_mode="floor")
        col = flat - row * n_cols
        return cls(row=row, col=col, val=flat_y.index_select(0, flat), n_rows=n_rows, n_cols=n_cols)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, n_cols)``."""
        return (self.n_rows, self.n_cols)

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return int(self.val.numel())

    @property
    def device(self) -> torch.device:
        """Device of the stored tensors."""
        return self.val.device

    def flat_index(self) -> torch.Tensor:
        """Row-major flat position ``row * n_cols + col`` of every entry."""
        return self.row * self.n_cols + self.col

    def to(self, *args: Any, **kwargs: Any) -> SparseCounts:
        """Move and/or cast like :meth:`torch.Tensor.to`.

        ``val`` takes the target device and dtype; the int64 indices follow it to the device.

        Examples
        --------
        >>> import numpy as np
        >>> SparseCounts.from_scipy(np.eye(2)).to("cpu", torch.float64).val.dtype
        torch.float64
        """
        val = self.val.to(*args, **kwargs)
        return SparseCounts(
            row=self.row.to(val.device),
            col=self.col.to(val.device),
            val=val,
            n_rows=self.n_rows,
            n_cols=self.n_cols,
        )

    def to_dense(self) -> torch.Tensor:
        """Dense ``[n_rows, n_cols]`` tensor (duplicate entries are summed).

        Examples
        --------
        >>> import numpy as np
        >>> SparseCounts.from_scipy(np.array([[0, 2]])).to_dense()
        tensor([[0., 2.]])
        """
        out = torch.zeros(self.n_rows * self.n_cols, dtype=self.val.dtype, device=self.device)
        out.index_add_(0, self.flat_index(), self.val)
        return out.reshape(self.n_rows, self.n_cols)

    def row_sums(self) -> torch.Tensor:
        """Sum of each row, ``[n_rows]`` (e.g. library sizes).

        Examples
        --------
        >>> import numpy as np
        >>> SparseCounts.from_scipy(np.array([[1, 2], [0, 4]])).row_sums()
        tensor([3., 4.])
        """
        out = torch.zeros(self.n_rows, dtype=self.val.dtype, device=self.device)
        return out.index_add_(0, self.row, self.val)

    def col_sums(self) -> torch.Tensor:
        """Sum of each column, ``[n_cols]``.

        Examples
        --------
        >>> import numpy as np
        >>> SparseCounts.from_scipy(np.array([[1, 2], [0, 4]])).col_sums()
        tensor([1., 6.])
        """
        out = torch.zeros(self.n_cols, dtype=self.val.dtype, device=self.device)
        return out.index_add_(0, self.col, self.val)


@dataclass
class CSRMatrix:
    """A count matrix kept on the device in compressed-sparse-row form.

    Parameters
    ----------
    crow
        int64 tensor ``[n_rows + 1]``, row pointers.
    col
        int64 tensor ``[nnz]``, column indices (sorted within each row).
    val
        Floating tensor ``[nnz]``, stored values.
    shape
        ``(n_rows, n_cols)``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from dream_sc.models.sparse import CSRMatrix
    >>> m = CSRMatrix.from_scipy(np.array([[0, 1], [2, 0], [0, 0]]))
    >>> m.to_dense_rows(torch.tensor([1, 1, 0]))
    tensor([[2., 0.],
            [2., 0.],
            [0., 1.]])
    """

    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    shape: tuple[int, int]

    @classmethod
    def from_scipy(
        cls,
        matrix: Any,
        *,
        dtype: torch.dtype = torch.float32,
        keep_explicit_zeros: bool = False,
    ) -> CSRMatrix:
        """Copy a scipy sparse matrix (any format) or dense array to host tensors.

        Move the result to the fit's device with :meth:`to`.

        Parameters
        ----------
        matrix
            2-D scipy sparse matrix/array, numpy array or torch tensor. To hold a block of
            features only, slice on the scipy side first: ``CSRMatrix.from_scipy(m[:, a:b])``.
        dtype
            Floating dtype of ``val``.
        keep_explicit_zeros
            Keep explicitly stored zeros (needed when values are aligned on another matrix's
            pattern, see :func:`paired_csr`). Zeros of a dense input are never stored.

        Returns
        -------
        The CSR matrix (host tensors).

        Examples
        --------
        >>> import scipy.sparse as sp
        >>> CSRMatrix.from_scipy(sp.random(5, 4, density=0.5, format="coo", random_state=0)).nnz
        10
        """
        csr = _as_csr(matrix)
        if not keep_explicit_zeros:
            csr.eliminate_zeros()
        return cls(
            crow=torch.as_tensor(csr.indptr.astype(np.int64)),
            col=torch.as_tensor(csr.indices.astype(np.int64)),
            val=torch.as_tensor(csr.data, dtype=dtype),
            shape=(int(csr.shape[0]), int(csr.shape[1])),
        )

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return int(self.val.numel())

    @property
    def device(self) -> torch.device:
        """Device of the stored tensors."""
        return self.val.device

    def to(self, *args: Any, **kwargs: Any) -> CSRMatrix:
        """Move and/or cast like :meth:`torch.Tensor.to`.

        ``val`` takes the target device and dtype; the int64 indices follow it to the device.

        Examples
        --------
        >>> import numpy as np, torch
        >>> CSRMatrix.from_scipy(np.eye(2)).to("cpu", torch.float64).val.dtype
        torch.float64
        """
        val = self.val.to(*args, **kwargs)
        return CSRMatrix(
            crow=self.crow.to(val.device),
            col=self.col.to(val.device),
            val=val,
            shape=self.shape,
        )

    def row_sums(self) -> torch.Tensor:
        """Sum of each row, ``[n_rows]`` (e.g. library sizes).

        Examples
        --------
        >>> import numpy as np
        >>> CSRMatrix.from_scipy(np.array([[1, 2], [0, 0]])).row_sums()
        tensor([3., 0.])
        """
        out = torch.zeros(self.shape[0], dtype=self.val.dtype, device=self.device)
        return out.index_add_(0, _csr_row_ids(self.crow, self.nnz), self.val)

    def _gather_positions(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Storage positions of rows ``idx`` (in order), their batch-local row ids, ``len(idx)``."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device).reshape(-1)
        n_rows = self.shape[0]
        if idx.numel() and bool(((idx < -n_rows) | (idx >= n_rows)).any()):
            raise IndexError(f"Row index out of range for a matrix with {n_rows} rows.")
        idx = torch.where(idx < 0, idx + n_rows, idx)
        starts = self.crow.index_select(0, idx)
        counts = self.crow.index_select(0, idx + 1) - starts
        total = int(counts.sum())
        local_row = torch.repeat_interleave(
            torch.arange(idx.numel(), device=self.device), counts, output_size=total
        )
        # position k of the output maps to storage starts[row] + (k - out_start[row])
        shift = starts - (torch.cumsum(counts, 0) - counts)
        pos = torch.arange(total, device=self.device) + shift.index_select(0, local_row)
        return pos, local_row, int(idx.numel())

    def take_rows(self, idx: torch.Tensor) -> SparseCounts:
        """Gather rows ``idx`` into a :class:`SparseCounts` block, rows renumbered ``0..len-1``.

        Vectorised (``repeat_interleave``/``cumsum``); repeated and empty rows are allowed.

        Parameters
        ----------
        idx
            int64 tensor (or sequence) of row indices, in the order wanted.

        Returns
        -------
        The stored entries of the selected rows, row ``i`` of the block being ``idx[i]``.

        Examples
        --------
        >>> import numpy as np, torch
        >>> m = CSRMatrix.from_scipy(np.array([[0, 1], [2, 3]]))
        >>> b = m.take_rows(torch.tensor([1, 0]))
        >>> b.row.tolist(), b.col.tolist(), b.val.tolist()
        ([0, 0, 1], [0, 1, 1], [2.0, 3.0, 1.0])
        """
        pos, local_row, n_taken = self._gather_positions(idx)
        return SparseCounts(
            row=local_row,
            col=self.col.index_select(0, pos),
            val=self.val.index_select(0, pos),
            n_rows=n_taken,
            n_cols=self.shape[1],
        )

    def to_dense_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Dense ``[len(idx), n_cols]`` tensor of rows ``idx``.

        Examples
        --------
        >>> import numpy as np, torch
        >>> CSRMatrix.from_scipy(np.array([[0, 1], [2, 3]])).to_dense_rows(torch.tensor([0]))
        tensor([[0., 1.]])
        """
        return self.take_rows(idx).to_dense()

    def take_cols(self, start: int, stop: int) -> CSRMatrix:
        """Columns ``start:stop`` (a feature chunk) as a new CSR matrix on the same device.

        Examples
        --------
        >>> import numpy as np, torch
        >>> m = CSRMatrix.from_scipy(np.array([[1, 0, 2], [0, 3, 0]])).take_cols(1, 3)
        >>> m.shape, m.to_dense_rows(torch.tensor([0, 1])).tolist()
        ((2, 2), [[0.0, 2.0], [3.0, 0.0]])
        """
        n_rows, n_cols = self.shape
        start, stop, _ = slice(start, stop).indices(n_cols)
        stop = max(stop, start)
        keep = (self.col >= start) & (self.col < stop)
        rows = _csr_row_ids(self.crow, self.nnz)[keep]
        counts = torch.bincount(rows, minlength=n_rows)
        crow = torch.zeros(n_rows + 1, dtype=torch.long, device=self.device)
        crow[1:] = torch.cumsum(counts, 0)
        return CSRMatrix(
            crow=crow, col=self.col[keep] - start, val=self.val[keep], shape=(n_rows, stop - start)
        )

    def to_scipy(self) -> sp.csr_matrix:
        """Copy back to a :class:`scipy.sparse.csr_matrix` on the CPU.

        Examples
        --------
        >>> import numpy as np
        >>> CSRMatrix.from_scipy(np.array([[0, 3]])).to_scipy().toarray()
        array([[0., 3.]], dtype=float32)
        """
        return sp.csr_matrix(
            (self.val.cpu().numpy(), self.col.cpu().numpy(), self.crow.cpu().numpy()),
            shape=self.shape,
        )


# paired successes / trials live in .paired (imported last: they build on the classes above)
from .paired import paired_csr, paired_sparse  # noqa: E402
