"""Size-factor estimators (pure maths on a cells x features count matrix).

Three estimators, all scaled to mean 1 over the cells:

- :func:`library_factors`: total counts (library size);
- :func:`deconvolution_factors`: pooled median-of-ratios deconvolution (the idea of scran's
  ``computeSumFactors``): cells are pooled in rings of similar library size, each pool's
  median ratio to an average pseudo-cell estimates the sum of its cells' factors, and the
  linear system pools -> cells is solved by least squares. The median ignores a minority of
  features that move with the perturbation, and pooling makes the median defined on sparse
  data;
- library size over a subset of features (:func:`library_factors` with ``features``), used by
  the dose-aware estimator of :func:`dream_sc.pp.sum_factors` with the features that are not
  associated with the perturbation labels (:func:`association_pvalues`).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse, stats
from scipy.sparse.linalg import spsolve

#: Pool sizes of the deconvolution (cells per pool), as in scran.
POOL_SIZES = (21, 41, 61, 81, 101)


def _row_sums(X, features: np.ndarray | None = None) -> np.ndarray:
    M = X if features is None else X[:, features]
    if sparse.issparse(M):
        return np.asarray(M.sum(axis=1), dtype=np.float64).ravel()
    return np.asarray(M, dtype=np.float64).sum(1)


def library_factors(X, features: np.ndarray | None = None) -> np.ndarray:
    """Library sizes (over ``features``, default all) scaled to mean 1.

    Parameters
    ----------
    X
        Counts ``[N, T]`` (dense or sparse).
    features
        Column indices or boolean mask of the features to sum.
    """
    totals = _row_sums(X, features)
    if (totals <= 0).any():
        raise ValueError(
            f"{int((totals <= 0).sum())} cells have zero counts in the features used for size "
            "factors; filter them first (e.g. `sc.pp.filter_cells(adata, min_counts=1)`)."
        )
    return totals / totals.mean()


def _dense(M) -> np.ndarray:
    return M.toarray() if sparse.issparse(M) else np.asarray(M)


def _normalised(X, lib: np.ndarray):
    """Counts divided by the cell's library size (sparse stays sparse)."""
    if sparse.issparse(X):
        return sparse.diags(1.0 / lib) @ sparse.csr_matrix(X, dtype=np.float64)
    return np.asarray(X, dtype=np.float64) / lib[:, None]


def deconvolution_factors(
    X,
    *,
    pool_sizes: tuple[int, ...] = POOL_SIZES,
    min_mean: float = 0.1,
    block: int = 2048,
) -> np.ndarray:
    """Pooled median-of-ratios size factors (scran-style deconvolution), mean 1.

    Cells are ordered by library size and arranged in a ring (odd ranks ascending, then even
    ranks descending), so every window of ``k`` consecutive cells pools cells of similar
    depth. For pool ``P`` the median over features of ``sum_{i in P} (y_it / L_i) / a_t`` -
    ``a_t`` the mean of ``y_it / L_i`` over all cells, features with mean count at least
    ``min_mean`` - estimates ``sum_{i in P} theta_i`` with ``theta_i = s_i / L_i``; the system
    over every window of every size is solved by least squares, and ``s_i = theta_i L_i``.

    Parameters
    ----------
    X
        Counts ``[N, T]``.
    pool_sizes
        Pool sizes; sizes larger than the number of cells are dropped (a single pool of all
        cells is used when none is left).
    min_mean
        Features with a lower mean count are ignored (their ratios are mostly zero).
    block
        Pools whose medians are computed together (memory: ``block x T``).
    """
    lib = _row_sums(X)
    if (lib <= 0).any():
        raise ValueError(
            f"{int((lib <= 0).sum())} cells have zero counts; filter them before computing "
            "size factors."
        )
    n = len(lib)
    means = np.asarray(X.mean(axis=0)).ravel()
    keep = np.flatnonzero(means >= min_mean)
    if len(keep) < 10:
        keep = np.argsort(-means)[: min(len(means), 10)]
    Xk = X[:, keep]
    lib_scaled = lib / lib.mean()
    norm = _normalised(Xk, lib_scaled)
    pseudo = np.asarray(norm.mean(axis=0)).ravel()  # > 0: every kept feature has counts
    order = np.argsort(lib, kind="stable")
    ring = np.concatenate([order[0::2], order[1::2][::-1]])
    sizes = [k for k in pool_sizes if k <= n] or [n]
    rows, cols, rhs = [], [], []
    pool_members = [np.arange(k) for k in sizes]
    starts = np.arange(n)
    n_pools = 0
    for k, members in zip(sizes, pool_members, strict=True):
        idx = ring[(starts[:, None] + members[None, :]) % n] if k < n else ring[None, :]
        n_here = len(idx)
        indicator = sparse.csr_matrix(
            (np.ones(idx.size), (np.repeat(np.arange(n_here), idx.shape[1]), idx.ravel())),
            shape=(n_here, n),
        )
        for b in range(0, n_here, block):
            pooled = indicator[b : b + block] @ norm
            pooled = pooled.toarray() if sparse.issparse(pooled) else np.asarray(pooled)
            rhs.append(np.median(pooled / pseudo[None, :], axis=1))
        coo = indicator.tocoo()
        rows.append(coo.row + n_pools)
        cols.append(coo.col)
        n_pools += n_here
    r = np.concatenate(rhs)
    # weak per-cell rows (scran): theta_i ~ its library-size value, keeps the system full rank
    weak = 1e-3
    A = sparse.csr_matrix(
        (
            np.concatenate([np.ones(sum(len(x) for x in rows)), np.full(n, weak)]),
            (
                np.concatenate([*rows, n_pools + np.arange(n)]),
                np.concatenate([*cols, np.arange(n)]),
            ),
        ),
        shape=(n_pools + n, n),
    )
    b = np.concatenate([r, weak * np.ones(n)])
    # normal equations: A'A is a banded ring (cells share pools only with ring neighbours),
    # so a sparse direct solve is fast where an iterative least-squares solver is not
    theta = spsolve((A.T @ A).tocsc(), A.T @ b)
    factors = theta * lib_scaled
    bad = ~(factors > 0)
    if bad.any():  # as scran: fall back to library size for non-positive solutions
        factors[bad] = lib_scaled[bad] * np.median(theta[~bad]) if (~bad).any() else lib_scaled[bad]
    return factors / factors.mean()


def association_pvalues(
    X,
    size_factors: np.ndarray,
    classes: np.ndarray,
    groups: np.ndarray,
) -> np.ndarray:
    """Per-feature p-value of association between expression and perturbation classes.

    One-way analysis of variance of ``log1p(y / s)`` across ``classes`` within every technical
    group (``groups``; the F statistic pools the within-group sums of squares), i.e. whether
    the mean normalised expression differs between the guides (or targets) of a group.

    Parameters
    ----------
    X
        Counts ``[N, T]``.
    size_factors
        ``[N]`` current size factors.
    classes
        ``[N]`` integer class per cell (e.g. guide; controls of one group share a class).
    groups
        ``[N]`` integer technical group per cell.
    """
    classes = np.asarray(classes)
    groups = np.asarray(groups)
    _, cell_class = np.unique(np.column_stack([groups, classes]), axis=0, return_inverse=True)
    cell_class = np.asarray(cell_class).ravel()
    n_classes = int(cell_class.max()) + 1
    n_groups = len(np.unique(groups))
    n = len(cell_class)
    if sparse.issparse(X):
        Z = sparse.csr_matrix(X, dtype=np.float64, copy=True)
        Z.data = np.log1p(Z.data / np.repeat(size_factors, np.diff(Z.indptr)))
        Z2 = Z.copy()
        Z2.data **= 2
    else:
        Z = np.log1p(np.asarray(X, dtype=np.float64) / size_factors[:, None])
        Z2 = Z * Z
    M = sparse.csr_matrix((np.ones(n), (cell_class, np.arange(n))), shape=(n_classes, n))
    _, group_of_cell = np.unique(groups, return_inverse=True)
    G = sparse.csr_matrix((np.ones(n), (np.asarray(group_of_cell).ravel(), np.arange(n))))
    counts = np.asarray(M.sum(1)).ravel()
    gcounts = np.asarray(G.sum(1)).ravel()
    s_class = _dense(M @ Z)
    s_group = _dense(G @ Z)
    ss_total = _dense(G @ Z2).sum(0)
    between_fit = (s_class**2 / counts[:, None]).sum(0)
    group_fit = (s_group**2 / gcounts[:, None]).sum(0)
    ssb = np.maximum(between_fit - group_fit, 0.0)
    ssw = np.maximum(ss_total - between_fit, 1e-300)
    df_b = max(n_classes - n_groups, 1)
    df_w = max(n - n_classes, 1)
    f = (ssb / df_b) / (ssw / df_w)
    return np.asarray(stats.f.sf(f, df_b, df_w), dtype=np.float64)
