from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dream_sc.models.sparse import CSRMatrix, SparseCounts, paired_csr, paired_sparse


def _random_counts(seed: int, n_rows: int, n_cols: int, density: float) -> sp.csr_matrix:
    """Random integer counts with some guaranteed empty rows."""
    rng = np.random.default_rng(seed)
    dense = rng.poisson(3.0, size=(n_rows, n_cols)) * (rng.random((n_rows, n_cols)) < density)
    dense[rng.random(n_rows) < 0.3] = 0  # empty rows
    return sp.csr_matrix(dense.astype(np.float64))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_rows=st.integers(1, 12),
    n_cols=st.integers(1, 9),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    data=st.data(),
)
def test_take_rows_matches_scipy_row_slicing(seed, n_rows, n_cols, density, data):
    m = _random_counts(seed, n_rows, n_cols, density)
    idx = data.draw(st.lists(st.integers(0, n_rows - 1), min_size=0, max_size=15))
    csr = CSRMatrix.from_scipy(m, dtype=torch.float64)
    block = csr.take_rows(torch.tensor(idx, dtype=torch.long))
    expected = m[np.asarray(idx, dtype=np.int64)].toarray()
    assert block.shape == (len(idx), n_cols)
    assert block.nnz == int(np.count_nonzero(expected))
    np.testing.assert_array_equal(block.to_dense().numpy(), expected)
    np.testing.assert_array_equal(csr.to_dense_rows(torch.tensor(idx)).numpy(), expected)
    # entries come out grouped by output row, in the requested order
    assert torch.all(block.row[1:] >= block.row[:-1])
    assert block.row.dtype == torch.long and block.col.dtype == torch.long


def test_take_rows_exact_layout_with_repeats_and_empty_rows():
    m = sp.csr_matrix(np.array([[0, 5, 0], [0, 0, 0], [1, 0, 2]], dtype=float))
    block = CSRMatrix.from_scipy(m).take_rows(torch.tensor([2, 1, 0, 2, -3]))
    assert block.n_rows == 5
    assert block.row.tolist() == [0, 0, 2, 3, 3, 4]
    assert block.col.tolist() == [0, 2, 1, 0, 2, 1]
    assert block.val.tolist() == [1.0, 2.0, 5.0, 1.0, 2.0, 5.0]
    assert block.row_sums().tolist() == [3.0, 0.0, 5.0, 3.0, 5.0]
    assert block.col_sums().tolist() == [2.0, 10.0, 4.0]


def test_take_rows_out_of_range_raises():
    csr = CSRMatrix.from_scipy(np.eye(3))
    with pytest.raises(IndexError, match="out of range for a matrix with 3 rows"):
        csr.take_rows(torch.tensor([0, 3]))


def test_take_rows_empty_index():
    block = CSRMatrix.from_scipy(np.eye(3)).take_rows(torch.tensor([], dtype=torch.long))
    assert block.shape == (0, 3) and block.nnz == 0
    assert block.to_dense().shape == (0, 3)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_rows=st.integers(1, 8),
    n_cols=st.integers(1, 10),
    data=st.data(),
)
def test_take_cols_matches_scipy_column_slicing(seed, n_rows, n_cols, data):
    m = _random_counts(seed, n_rows, n_cols, 0.5)
    start = data.draw(st.integers(0, n_cols))
    stop = data.draw(st.integers(start, n_cols))
    chunk = CSRMatrix.from_scipy(m).take_cols(start, stop)
    direct = CSRMatrix.from_scipy(m[:, start:stop])
    assert chunk.shape == (n_rows, stop - start)
    assert torch.equal(chunk.crow, direct.crow)
    assert torch.equal(chunk.col, direct.col)
    np.testing.assert_array_equal(chunk.to_scipy().toarray(), m[:, start:stop].toarray())


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dense", "tensor"])
def test_from_scipy_formats_drop_zeros_and_sum_duplicates(fmt):
    coo = sp.coo_matrix(
        (np.array([1.0, 2.0, 0.0, 4.0]), (np.array([0, 0, 1, 2]), np.array([1, 1, 0, 2]))),
        shape=(3, 3),
    )  # duplicate (0, 1) summed to 3, explicit zero at (1, 0)
    matrix = {
        "csr": coo.tocsr(),
        "csc": coo.tocsc(),
        "coo": coo,
        "dense": coo.toarray(),
        "tensor": torch.as_tensor(coo.toarray()),
    }[fmt]
    y = SparseCounts.from_scipy(matrix, dtype=torch.float64)
    assert (y.row.tolist(), y.col.tolist(), y.val.tolist()) == ([0, 2], [1, 2], [3.0, 4.0])
    assert y.shape == (3, 3) and y.val.dtype == torch.float64
    np.testing.assert_array_equal(y.to_dense().numpy(), coo.toarray())
    np.testing.assert_array_equal(y.row_sums().numpy(), [3.0, 0.0, 4.0])
    np.testing.assert_array_equal(y.col_sums().numpy(), [0.0, 3.0, 4.0])
    csr = CSRMatrix.from_scipy(matrix)
    assert csr.nnz == 2 and csr.crow.tolist() == [0, 1, 1, 2]
    np.testing.assert_array_equal(csr.row_sums().numpy(), [3.0, 0.0, 4.0])


def test_from_scipy_rejects_non_matrix():
    with pytest.raises(ValueError, match="Expected a 2-D matrix"):
        SparseCounts.from_scipy(np.zeros(3))


def test_from_dense_and_to_roundtrip():
    dense = torch.tensor([[0.0, 1.5], [2.0, 0.0]])
    y = SparseCounts.from_dense(dense).to("cpu", torch.float64)
    assert y.val.dtype == torch.float64 and y.row.dtype == torch.long
    assert torch.equal(y.to_dense(), dense.double())
    assert y.flat_index().tolist() == [1, 2]


def test_paired_sparse_aligns_k_on_n_pattern():
    k = sp.csr_matrix(np.array([[0, 3, 0], [1, 0, 0]]))
    n = np.array([[2, 3, 0], [1, 0, 5]])
    ks, ns = paired_sparse(k, n, dtype=torch.float64)
    assert ks.row is ns.row and ks.col is ns.col
    assert ns.flat_index().tolist() == [0, 1, 3, 5]
    assert ks.val.tolist() == [0.0, 3.0, 1.0, 0.0]
    assert ns.val.tolist() == [2.0, 3.0, 1.0, 5.0]


def test_paired_sparse_validates():
    n = np.array([[2, 0]])
    with pytest.raises(ValueError, match="non-zero where trials are zero"):
        paired_sparse(np.array([[1, 1]]), n)
    with pytest.raises(ValueError, match=r"exceed trials .*k > n"):
        paired_sparse(np.array([[3, 0]]), n)
    with pytest.raises(ValueError, match="must be non-negative"):
        paired_sparse(np.array([[-1, 0]]), n)
    with pytest.raises(ValueError, match="same shape"):
        paired_sparse(np.array([[1, 0, 0]]), n)


def test_paired_csr_take_rows_stays_aligned():
    rng = np.random.default_rng(1)
    n = rng.poisson(2.0, size=(20, 6)) * (rng.random((20, 6)) < 0.4)
    k = rng.binomial(n, 0.3)
    kc, nc = paired_csr(sp.csr_matrix(k), sp.csr_matrix(n), dtype=torch.float64)
    assert kc.nnz == nc.nnz == np.count_nonzero(n)
    idx = torch.tensor([5, 0, 19, 5, 7])
    kb, nb = kc.take_rows(idx), nc.take_rows(idx)
    assert torch.equal(kb.row, nb.row) and torch.equal(kb.col, nb.col)
    np.testing.assert_array_equal(kb.to_dense().numpy(), k[idx.numpy()])
    np.testing.assert_array_equal(nb.to_dense().numpy(), n[idx.numpy()])
