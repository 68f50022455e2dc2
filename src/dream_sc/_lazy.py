"""Out-of-core matrices: read a modality's data column block by column block.

A modality whose ``X`` (or data / trials layer) is a Dask array, or that comes from a backed h5mu
(``mudata.read_h5mu(path, backed=True)``), is never loaded whole. :class:`LazyMatrix` stands for
the requested cells x a set of features and reads only the columns asked for: a feature chunk
reads its own slice where the chunk runs (on a Dask worker with ``backend="dask"``: the task
carries the file path or Dask graph and the column range, not the data), and whole-matrix passes
(validation, detection counts, moment estimates) go through :func:`feature_blockwise`.

A slice read here equals the same columns of the in-memory matrix exactly: float32, rows taken
in the requested order, CSR for sparse data and a C-ordered array for dense data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy import sparse

#: Cells x features held by one block of a whole-matrix pass (64 MB of dense float32).
BLOCK_ELEMENTS = 16_000_000


# ---------------------------------------------------------------------------- sources
@dataclasses.dataclass(frozen=True)
class H5Source:
    """A matrix in an HDF5 file (``.h5mu`` / ``.h5ad``): dense dataset or CSR/CSC group.

    Opened by path for every read, so it pickles as two strings and reads where it runs.
    """

    filename: str
    key: str

    def _open(self):
        import h5py

        return h5py.File(self.filename, "r")

    def describe(self) -> tuple[tuple[int, int], bool]:
        """``(shape, is_sparse)`` without reading the values."""
        with self._open() as f:
            elem = f[self.key]
            if hasattr(elem, "shape") and not hasattr(elem, "keys"):
                return tuple(int(s) for s in elem.shape), False
            return tuple(int(s) for s in elem.attrs["shape"]), True

    def read(self, start: int, stop: int):
        """Columns ``start:stop`` of every row (ndarray or scipy sparse)."""
        from anndata.io import sparse_dataset

        with self._open() as f:
            elem = f[self.key]
            if not hasattr(elem, "keys"):
                return elem[:, start:stop]
            ds = sparse_dataset(elem)
            if ds.format == "csc":
                return ds[:, start:stop]
            # CSR on disk: a column slice needs every row; read row blocks, keep the columns
            n_rows, n_cols = ds.shape
            step = max(1, BLOCK_ELEMENTS // max(n_cols, 1))
            parts = [
                sparse.csr_matrix(ds[r : min(r + step, n_rows)])[:, start:stop]
                for r in range(0, n_rows, step)
            ]
            return sparse.vstack(parts, format="csr")


@dataclasses.dataclass(frozen=True)
class DaskSource:
    """A Dask array (dense or with scipy-sparse blocks, e.g. ``read_elem_lazy``)."""

    array: Any

    def describe(self) -> tuple[tuple[int, int], bool]:
        """``(shape, is_sparse)`` from the array's metadata."""
        return tuple(int(s) for s in self.array.shape), sparse.issparse(self.array._meta)

    def read(self, start: int, stop: int):
        """Columns ``start:stop`` of every row, computed here (synchronously on a worker)."""
        return self.array[:, start:stop].compute(**_compute_options())


def _compute_options() -> dict:
    """Inside a ``dask.distributed`` task read in the task's own thread (no nested graph)."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return {}
    return {"scheduler": "sync"}


def is_dask(matrix: Any) -> bool:
    """Whether ``matrix`` is a Dask array (without importing Dask)."""
    return type(matrix).__module__.startswith("dask.") and hasattr(matrix, "compute")


def _h5_key(matrix: Any) -> tuple[str, str] | None:
    """``(filename, key)`` of a backed h5py dataset or anndata sparse dataset, else None."""
    elem = getattr(matrix, "group", matrix)  # anndata's backed sparse datasets wrap a group
    module = type(elem).__module__
    if module.startswith("h5py") and hasattr(elem, "file") and hasattr(elem, "name"):
        return str(elem.file.filename), str(elem.name)
    return None


def source_of(adata, layer: str | None):
    """The out-of-core source of ``adata.X`` / ``adata.layers[layer]``, or None (in memory).

    Backed AnnData keep ``X`` on disk but read layers into memory when the file is opened; the
    layers of a backed modality are read from its file, like ``X``.
    """
    matrix = adata.X if layer is None else adata.layers[layer]
    if is_dask(matrix):
        return DaskSource(matrix)
    found = _h5_key(matrix)
    if found is not None:
        return H5Source(*found)
    if layer is not None and getattr(adata, "isbacked", False) and not is_dask(adata.X):
        x_key = _h5_key(adata.X)
        if x_key is not None:
            key = f"{x_key[1].rsplit('/', 1)[0]}/layers/{layer}"
            import h5py

            with h5py.File(x_key[0], "r") as f:
                if key in f:
                    return H5Source(x_key[0], key)
    return None


# ---------------------------------------------------------------------------- rows
def _pack_rows(rows: np.ndarray | None, n_rows: int):
    """Row selection in a small picklable form (a bit mask when increasing)."""
    if rows is None:
        return None
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) > 1 and np.all(np.diff(rows) > 0):
        mask = np.zeros(n_rows, bool)
        mask[rows] = True
        return ("mask", np.packbits(mask), n_rows)
    return ("index", rows)


def _unpack_rows(packed) -> np.ndarray | None:
    if packed is None:
        return None
    if packed[0] == "mask":
        return np.flatnonzero(np.unpackbits(packed[1], count=packed[2]))
    return packed[1]


# ---------------------------------------------------------------------------- the matrix
class LazyMatrix:
    """Rows ``rows`` x columns ``cols`` of an out-of-core source, read on demand.

    Parameters
    ----------
    source
        :class:`H5Source` or :class:`DaskSource`.
    rows
        Row positions taken, in order (``None``: all rows).
    cols
        Column positions of this view (``None``: all columns).

    Notes
    -----
    ``M[:, cols]`` and :meth:`load` return in-memory float32 data (CSR or dense) for the
    view's columns; :meth:`view` returns a narrower lazy view (what a chunk task carries).
    Instances pickle to the source handle, the packed row selection and the column indices.
    """

    def __init__(self, source, rows: np.ndarray | None = None, cols: np.ndarray | None = None):
        self.source = source
        shape, self.is_sparse = source.describe()
        self._source_shape = shape
        self._rows = _pack_rows(rows, shape[0])
        self.cols = None if cols is None else np.asarray(cols, dtype=np.int64)
        n_rows = shape[0] if rows is None else len(rows)
        self.shape = (int(n_rows), int(shape[1] if cols is None else len(self.cols)))

    def __repr__(self) -> str:
        kind = "sparse" if self.is_sparse else "dense"
        return f"<LazyMatrix {self.shape[0]} x {self.shape[1]} ({kind}) of {self.source!r}>"

    @property
    def rows(self) -> np.ndarray | None:
        """Row positions taken (``None``: all)."""
        return _unpack_rows(self._rows)

    def _global(self, cols) -> np.ndarray:
        cols = np.arange(self.shape[1])[cols] if not isinstance(cols, np.ndarray) else cols
        if cols.dtype == bool:
            cols = np.flatnonzero(cols)
        cols = np.asarray(cols, dtype=np.int64)
        return cols if self.cols is None else self.cols[cols]

    def view(self, cols) -> LazyMatrix:
        """A lazy view of the columns ``cols`` (positions or mask within this view)."""
        out = object.__new__(LazyMatrix)
        out.__dict__.update(self.__dict__)
        out.cols = self._global(cols)
        out.shape = (self.shape[0], len(out.cols))
        return out

    def load(self, cols=None):
        """The view's columns ``cols`` (default: all) in memory: float32 CSR or dense."""
        glob = self._global(slice(None) if cols is None else cols)
        if len(glob) == 0:
            empty = np.zeros((self.shape[0], 0), np.float32)
            return sparse.csr_matrix(empty) if self.is_sparse else empty
        # read each run of consecutive columns (scattered features never pull what lies between)
        wanted = np.unique(glob)
        runs = np.split(wanted, np.flatnonzero(np.diff(wanted) > 1) + 1)
        pieces = [self._read(int(run[0]), int(run[-1]) + 1) for run in runs]
        if len(pieces) == 1:
            block = pieces[0]
        elif self.is_sparse:
            block = sparse.hstack(pieces, format="csr")
        else:
            block = np.hstack(pieces)
        return block[:, np.searchsorted(wanted, glob)]

    def _read(self, start: int, stop: int):
        """Columns ``start:stop`` of the source for the view's rows, as float32 CSR / array."""
        block = self.source.read(start, stop)
        rows = self.rows
        # values beyond the float32 range become inf here and are rejected by the checks
        with np.errstate(over="ignore"):
            if self.is_sparse:
                block = sparse.csr_matrix(block)
                return (block if rows is None else block[rows]).astype(np.float32)
            block = np.asarray(block)
            return (block if rows is None else block[rows]).astype(np.float32)

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)):
            raise TypeError(
                "A LazyMatrix is read by columns only (M[:, cols]); load it with .load()."
            )
        cols = key[1]
        if isinstance(cols, int | np.integer):
            return self.load(np.array([cols]))
        return self.load(cols)

    def blocks(self, width: int | None = None) -> Iterator[tuple[slice, Any]]:
        """``(positions, block)`` over consecutive column blocks of ``width`` columns."""
        width = block_width(self.shape[0]) if width is None else width
        for start in range(0, self.shape[1], width):
            sel = slice(start, min(start + width, self.shape[1]))
            yield sel, self.load(np.arange(sel.start, sel.stop))


def is_lazy(matrix: Any) -> bool:
    """Whether ``matrix`` is a :class:`LazyMatrix`."""
    return isinstance(matrix, LazyMatrix)


def block_width(n_rows: int) -> int:
    """Columns per block of a whole-matrix pass over ``n_rows`` cells."""
    return max(1, BLOCK_ELEMENTS // max(int(n_rows), 1))


def columns(matrix, cols):
    """Columns ``cols`` of an in-memory matrix or a :class:`LazyMatrix` (in memory)."""
    if matrix is None:
        return None
    return matrix.load(cols) if is_lazy(matrix) else matrix[:, cols]


def narrow(matrix, cols):
    """Columns ``cols``: a lazy view of a :class:`LazyMatrix`, in-memory columns otherwise."""
    if matrix is None:
        return None
    return matrix.view(cols) if is_lazy(matrix) else matrix[:, cols]


def materialise(matrix):
    """A :class:`LazyMatrix` view in memory (anything else unchanged)."""
    return matrix.load() if is_lazy(matrix) else matrix


def feature_blockwise(
    fn: Callable[[Any, Any, slice], Any], X, total=None, cols=None, width: int | None = None
) -> list:
    """``fn(X_block, total_block, positions)`` over column blocks of ``X`` (and ``total``).

    In-memory inputs make a single call with the whole matrices (``X[:, cols]`` when ``cols``
    is given; ``positions`` is ``slice(None)``); when either is a :class:`LazyMatrix` the
    columns are read block by block and ``positions`` locates each block among the columns.
    ``fn`` must compute every output column from its own input column only, so the results
    equal those of the in-memory call (combine them with :func:`concat_blocks`).
    """
    if not (is_lazy(X) or is_lazy(total)):
        if cols is None:
            return [fn(X, total, slice(None))]
        return [fn(X[:, cols], None if total is None else total[:, cols], slice(None))]
    if cols is None:
        cols = np.arange(X.shape[1])
    cols = np.flatnonzero(cols) if np.asarray(cols).dtype == bool else np.asarray(cols)
    width = block_width(X.shape[0]) if width is None else width
    out = []
    for start in range(0, len(cols), width):
        sel = slice(start, min(start + width, len(cols)))
        part = cols[sel]
        out.append(fn(columns(X, part), columns(total, part), sel))
    return out


def concat_blocks(results: list):
    """Join the per-block results of :func:`feature_blockwise` along their last axis.

    Arrays are concatenated, tuples and dataclasses field by field; ``None`` stays ``None``.
    Scalars and non-array values must agree between blocks and are kept.
    """
    if len(results) == 1:
        return results[0]
    first = results[0]
    if first is None:
        return None
    if dataclasses.is_dataclass(first):
        joined = {
            f.name: concat_blocks([getattr(r, f.name) for r in results])
            for f in dataclasses.fields(first)
        }
        return dataclasses.replace(first, **joined)
    if isinstance(first, tuple):
        return tuple(concat_blocks(list(parts)) for parts in zip(*results, strict=True))
    if isinstance(first, np.ndarray) and first.ndim > 0:
        return np.concatenate(results, axis=-1)
    return first


def density(X) -> float:
    """Fraction of stored entries (1 for dense data), counted block by block when lazy."""
    if is_lazy(X):
        if not X.is_sparse:
            return 1.0
        nnz = sum(block.nnz for _, block in X.blocks())
        return nnz / max(X.shape[0] * X.shape[1], 1)
    if sparse.issparse(X):
        return X.nnz / max(np.prod(X.shape), 1)
    return 1.0
