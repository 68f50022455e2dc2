from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.special as sc
import scipy.stats as ss
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dream_sc.models import likelihoods as lk
from dream_sc.models.sparse import CSRMatrix, SparseCounts, paired_sparse

F64 = torch.float64
PROPERTY = settings(max_examples=60, deadline=None)
LOG_R_MIN, LOG_R_MAX = math.log(1e-3), math.log(1e8)


def t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=F64)


def leaf(x) -> torch.Tensor:
    return t(x).clone().requires_grad_(True)


def grads(value: torch.Tensor, *params: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value.sum(), params))


def assert_finite(*tensors: torch.Tensor) -> None:
    for x in tensors:
        assert torch.isfinite(x).all(), x


@st.composite
def shapes(draw, max_cells=6, max_features=5):
    return draw(st.integers(1, max_cells)), draw(st.integers(1, max_features))


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def counts(shape, hi=60):
    """Integer counts with plenty of zeros."""
    return hnp.arrays(np.int64, shape, elements=st.one_of(st.just(0), st.integers(0, hi)))


# ----------------------------------------------------------------------------- helpers
@given(
    a=hnp.arrays(np.float64, 8, elements=floats(1e-3, 1e9)),
    y=hnp.arrays(np.int64, 8, elements=st.integers(0, 500)),
)
@settings(max_examples=40, deadline=None)
def test_lgamma_ratio_matches_high_precision(a, y):
    got = lk._lgamma_ratio(t(a), t(y)).numpy()
    with mpmath.workdps(40):
        ref = [
            float(mpmath.loggamma(ai + yi) - mpmath.loggamma(ai))
            for ai, yi in zip(a, y, strict=True)
        ]
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9)


def test_lgamma_ratio_where_and_subset_paths_agree():
    a = t([[0.5, 9.99, 10.0], [1e3, 3.0, 1e9]])
    y = t([[3.0, 0.0, 7.0], [2.0, 40.0, 1.0]])
    direct = torch.lgamma(a + y) - torch.lgamma(a)
    subset = lk._patch_large(direct, a, y, lk._stirling_ratio, use_where=False)
    where = lk._patch_large(direct, a, y, lk._stirling_ratio, use_where=True)
    torch.testing.assert_close(subset, where, rtol=0, atol=0)
    small = a < 10
    assert torch.equal(subset[small], direct[small])
    torch.testing.assert_close(subset, direct, rtol=1e-12, atol=1e-6)  # float64: both fine
    d_direct = torch.digamma(a + y) - torch.digamma(a)
    g_sub = lk._patch_large(d_direct, a, y, lk._stirling_ratio_grad, use_where=False)
    g_where = lk._patch_large(d_direct, a, y, lk._stirling_ratio_grad, use_where=True)
    torch.testing.assert_close(g_sub, g_where, rtol=0, atol=0)
    torch.testing.assert_close(g_sub, d_direct, rtol=1e-9, atol=1e-12)  # series truncation


def test_lgamma_ratio_float32_stable_for_huge_a():
    a = torch.tensor([1e8, 1e8, 5e7], dtype=torch.float32)
    y = torch.tensor([0.0, 3.0, 40.0], dtype=torch.float32)
    got = lk._lgamma_ratio(a, y).double().numpy()
    ref = sc.gammaln(a.double().numpy() + y.double().numpy()) - sc.gammaln(a.double().numpy())
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    naive = (torch.lgamma(a + y) - torch.lgamma(a)).double().numpy()
    assert np.abs(naive - ref).max() > 1.0  # the cancellation the Stirling branch avoids


# ----------------------------------------------------------------------------- negbinom
@st.composite
def nb_case(draw, log_r_lo=LOG_R_MIN, log_r_hi=LOG_R_MAX):
    b, n_t = draw(shapes())
    eta = draw(hnp.arrays(np.float64, (b, n_t), elements=floats(-30.0, 8.0)))
    log_r = draw(hnp.arrays(np.float64, n_t, elements=floats(log_r_lo, log_r_hi)))
    y = draw(counts((b, n_t), hi=draw(st.sampled_from([3, 60, 2000]))))
    return eta, log_r, y


def nb_reference(eta, log_r, y):
    """scipy.stats.nbinom with n = r, p = r / (r + mu), summed over cells."""
    r = np.broadcast_to(np.exp(log_r), eta.shape)
    mu = np.exp(eta)
    return ss.nbinom.logpmf(y, r, r / (r + mu)).sum(0)


def nb_exact(eta, log_r, y):
    """High-precision reference (mpmath) for regimes where scipy's p = r/(r+mu) rounds."""
    out = np.zeros(eta.shape[1])
    with mpmath.workdps(50):
        for (i, j), yv in np.ndenumerate(y):
            r, mu = mpmath.exp(mpmath.mpf(log_r[j])), mpmath.exp(mpmath.mpf(eta[i, j]))
            lp = (
                mpmath.loggamma(yv + r)
                - mpmath.loggamma(r)
                - mpmath.loggamma(yv + 1)
                + r * mpmath.log(r / (r + mu))
                + yv * mpmath.log(mu / (r + mu))
            )
            out[j] += float(lp)
    return out


@PROPERTY
@given(case=nb_case())
def test_negbinom_matches_scipy(case):
    eta, log_r, y = case
    # keep mu / r >= 1e-8, where scipy's own p = r/(r+mu) still resolves 1 - p
    log_r = np.minimum(log_r, eta.min(0) + 18.0)
    got = lk.negbinom_log_prob(t(eta), t(log_r), t(y), include_constant=True)
    np.testing.assert_allclose(got.numpy(), nb_reference(eta, log_r, y), rtol=1e-9, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(case=nb_case(log_r_hi=math.log(1e12)))
def test_negbinom_extreme_regimes_match_high_precision(case):
    eta, log_r, y = case  # tiny mu (eta down to -30) with huge r: scipy itself rounds here
    got = lk.negbinom_log_prob(t(eta), t(log_r), t(y), include_constant=True)
    ref = nb_exact(eta, log_r, y)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-7)


@PROPERTY
@given(case=nb_case(log_r_lo=math.log(1e8), log_r_hi=math.log(1e12)))
def test_negbinom_poisson_limit(case):
    eta, log_r, y = case
    got = lk.negbinom_log_prob(t(eta), t(log_r), t(y), include_constant=True).numpy()
    ref = ss.poisson.logpmf(y, np.exp(eta)).sum(0)
    # |log NB - log Poisson| <= ((y - mu)^2 + y) / r for r >> y, mu
    bound = (((y - np.exp(eta)) ** 2 + y) / np.exp(log_r)).sum(0)
    assert np.all(np.abs(got - ref) <= bound + 1e-8)


def test_negbinom_matches_torch_distributions():
    rng = np.random.default_rng(0)
    eta = rng.normal(0, 2, size=(30, 7))
    log_r = rng.normal(0, 2, size=7)
    y = rng.poisson(np.exp(eta)) * (rng.random((30, 7)) < 0.5)
    r = t(np.exp(log_r))
    dist = torch.distributions.NegativeBinomial(total_count=r, logits=t(eta) - t(log_r))
    expected = dist.log_prob(t(y)).sum(0)
    got = lk.negbinom_log_prob(t(eta), t(log_r), t(y), include_constant=True)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # the dropped constant is exactly -sum lgamma(y + 1)
    dropped = lk.negbinom_log_prob(t(eta), t(log_r), t(y))
    torch.testing.assert_close(dropped - got, torch.lgamma(t(y) + 1).sum(0))


@PROPERTY
@given(case=nb_case(), per_cell_r=st.booleans())
def test_negbinom_dense_equals_sparse_values_and_gradients(case, per_cell_r):
    eta, log_r, y = case
    if per_cell_r:
        log_r = np.broadcast_to(log_r, eta.shape) + np.linspace(-1, 1, eta.shape[0])[:, None]
    results = []
    for y_in in (t(y), SparseCounts.from_scipy(y, dtype=F64)):
        e, lr = leaf(eta), leaf(log_r)
        val = lk.negbinom_log_prob(e, lr, y_in)
        results.append([val.detach(), *grads(val, e, lr)])
    for dense, sparse in zip(*results, strict=True):
        assert_finite(dense, sparse)
        torch.testing.assert_close(dense, sparse, rtol=1e-12, atol=1e-9)


def test_negbinom_float32_stable_in_poisson_limit():
    rng = np.random.default_rng(3)
    eta = rng.uniform(-30, 4, size=(50, 6))
    log_r = np.log([1e8, 1e8, 1e7, 1e6, 1e3, 0.01])
    y = rng.poisson(np.exp(eta))
    ref = nb_reference(eta, log_r, y) + sc.gammaln(y + 1).sum(0)  # constant-free reference
    ref[:2] = (ss.poisson.logpmf(y, np.exp(eta)) + sc.gammaln(y + 1)).sum(0)[:2]
    e32 = torch.tensor(eta, dtype=torch.float32, requires_grad=True)
    lr32 = torch.tensor(log_r, dtype=torch.float32, requires_grad=True)
    got = lk.negbinom_log_prob(e32, lr32, torch.tensor(y, dtype=torch.float32))
    np.testing.assert_allclose(got.detach().double().numpy(), ref, rtol=1e-5, atol=2e-3)
    assert_finite(*grads(got, e32, lr32))


def test_negbinom_gradients_finite_at_extremes():
    eta = leaf([[-30.0, -30.0, 12.0], [-30.0, 0.0, 12.0]])
    log_r = leaf([math.log(1e8), math.log(1e-4), math.log(1e8)])
    y = t([[0.0, 5.0, 2e5], [1.0, 0.0, 0.0]])
    for y_in in (y, SparseCounts.from_dense(y)):
        val = lk.negbinom_log_prob(eta, log_r, y_in)
        assert_finite(val, *grads(val, eta, log_r))


def test_negbinom_gradcheck():
    rng = np.random.default_rng(4)
    y = SparseCounts.from_scipy(rng.poisson(2.0, size=(4, 3)) * (rng.random((4, 3)) < 0.6))
    y = y.to(dtype=F64)
    eta, log_r = leaf(rng.normal(size=(4, 3))), leaf(rng.normal(size=3) + [0, 0, 20.0])
    assert torch.autograd.gradcheck(lambda e, lr: lk.negbinom_log_prob(e, lr, y), (eta, log_r))


@pytest.mark.parametrize("log_r_shape", [(), (7,), (1, 7), (30, 7), (30, 1)])
@pytest.mark.parametrize("sparse", [False, True])
def test_negbinom_gradients_match_torch_distributions(log_r_shape, sparse):
    rng = np.random.default_rng(11)
    eta_np = rng.normal(0, 2, size=(30, 7))
    log_r_np = rng.normal(0, 2, size=log_r_shape)
    y = rng.poisson(np.exp(eta_np)) * (rng.random((30, 7)) < 0.5)
    eta, log_r = leaf(eta_np), leaf(log_r_np)
    y_in = SparseCounts.from_scipy(y, dtype=F64) if sparse else t(y)
    got = lk.negbinom_log_prob(eta, log_r, y_in, include_constant=True)
    weights = t(rng.normal(size=7))  # a non-trivial upstream gradient
    got_grads = torch.autograd.grad((got * weights).sum(), (eta, log_r))
    eta2, log_r2 = leaf(eta_np), leaf(log_r_np)
    dist = torch.distributions.NegativeBinomial(log_r2.exp(), logits=eta2 - log_r2)
    expected = torch.broadcast_to(dist.log_prob(t(y)), (30, 7)).sum(0)
    ref_grads = torch.autograd.grad((expected * weights).sum(), (eta2, log_r2))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-9)
    for g, ref in zip(got_grads, ref_grads, strict=True):
        assert g.shape == ref.shape
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-9)


def test_negbinom_gradcheck_per_cell_dispersion():
    rng = np.random.default_rng(12)
    y = SparseCounts.from_scipy(rng.poisson(2.0, size=(4, 3)) * (rng.random((4, 3)) < 0.6))
    y = y.to(dtype=F64)
    eta = leaf(rng.normal(size=(4, 3)))
    log_r = leaf(rng.normal(size=(4, 3)) + [[0.0, 3.0, 25.0]])
    assert torch.autograd.gradcheck(lambda e, lr: lk.negbinom_log_prob(e, lr, y), (eta, log_r))


def test_negbinom_minibatch_from_csr_equals_dense_rows():
    rng = np.random.default_rng(5)
    y = rng.poisson(1.0, size=(40, 8)) * (rng.random((40, 8)) < 0.3)
    idx = torch.tensor([3, 17, 3, 39, 0])
    block = CSRMatrix.from_scipy(y, dtype=F64).take_rows(idx)
    eta, log_r = t(rng.normal(size=(5, 8))), t(rng.normal(size=8))
    expected = lk.negbinom_log_prob(eta, log_r, t(y[idx.numpy()]), include_constant=True)
    got = lk.negbinom_log_prob(eta, log_r, block, include_constant=True)
    torch.testing.assert_close(got, expected)


def test_negbinom_shape_errors():
    with pytest.raises(ValueError, match=r"`eta` has shape \(2, 3\) but `y` has shape \(3, 2\)"):
        lk.negbinom_log_prob(torch.zeros(2, 3), 0.0, torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"`eta` must be a \[cells, features\] matrix"):
        lk.negbinom_log_prob(torch.zeros(3), 0.0, torch.zeros(3))
    with pytest.raises(ValueError, match=r"`log_r` must be a scalar.*got shape \(2,\)"):
        lk.negbinom_log_prob(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"B, T = 2, 3; got shape \(3, 3\)"):
        lk.negbinom_log_prob(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- binomial
@st.composite
def binom_case(draw, logit_lim=15.0):
    b, n_t = draw(shapes())
    n = draw(counts((b, n_t), hi=draw(st.sampled_from([1, 40, 5000]))))
    frac = draw(hnp.arrays(np.float64, (b, n_t), elements=floats(0.0, 1.0)))
    k = np.floor(frac * (n + 1)).clip(max=n).astype(np.int64)
    logits = draw(hnp.arrays(np.float64, (b, n_t), elements=floats(-logit_lim, logit_lim)))
    return logits, k, n


@PROPERTY
@given(case=binom_case())
def test_binomial_matches_scipy_dense_and_sparse(case):
    logits, k, n = case
    ref = ss.binom.logpmf(k, n, sc.expit(logits)).sum(0)
    ks, ns = paired_sparse(k, n, dtype=F64)
    out = []
    for k_in, n_in in ((t(k), t(n)), (ks, ns)):
        lg = leaf(logits)
        full = lk.binomial_log_prob(lg, k_in, n_in, include_constant=True)
        np.testing.assert_allclose(full.detach().numpy(), ref, rtol=1e-9, atol=1e-8)
        val = lk.binomial_log_prob(lg, k_in, n_in)
        out.append([val.detach(), *grads(val, lg)])
    for dense, sparse in zip(*out, strict=True):
        assert_finite(dense, sparse)
        torch.testing.assert_close(dense, sparse, rtol=1e-12, atol=1e-9)


def test_binomial_zero_trials_contribute_nothing():
    n = t([[0.0, 4.0], [0.0, 0.0]])
    k = t([[0.0, 1.0], [0.0, 0.0]])
    for k_in, n_in in ((k, n), paired_sparse(k.numpy(), n.numpy(), dtype=F64)):
        logits = leaf([[50.0, 0.0], [-3.0, 7.0]])
        val = lk.binomial_log_prob(logits, k_in, n_in)
        torch.testing.assert_close(val, t([0.0, -4.0 * math.log(2.0)]))
        (g,) = grads(val, logits)
        torch.testing.assert_close(g, t([[0.0, 1.0 - 4.0 * 0.5], [0.0, 0.0]]))


def test_binomial_input_errors():
    ks, ns = paired_sparse(np.array([[1, 0]]), np.array([[2, 1]]))
    other = SparseCounts.from_scipy(np.array([[2, 0]]))
    with pytest.raises(ValueError, match="must share the same pattern"):
        lk.binomial_log_prob(torch.zeros(1, 2), ks, other)
    with pytest.raises(TypeError, match="both be dense tensors or both be SparseCounts"):
        lk.binomial_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), ns)
    with pytest.raises(ValueError, match=r"`logits` has shape \(2, 2\) but `n` has shape"):
        lk.binomial_log_prob(torch.zeros(2, 2), ks, ns)


@PROPERTY
@given(case=binom_case(logit_lim=8.0), data=st.data())
def test_betabinomial_matches_scipy_dense_and_sparse(case, data):
    logits, k, n = case
    log_conc = data.draw(
        hnp.arrays(np.float64, logits.shape[1], elements=floats(math.log(0.01), math.log(1e5)))
    )
    c, p = np.exp(log_conc), sc.expit(logits)
    ref = ss.betabinom.logpmf(k, n, c * p, c * (1 - p)).sum(0)
    ks, ns = paired_sparse(k, n, dtype=F64)
    out = []
    for k_in, n_in in ((t(k), t(n)), (ks, ns)):
        lg, lc = leaf(logits), leaf(log_conc)
        full = lk.betabinomial_log_prob(lg, lc, k_in, n_in, include_constant=True)
        np.testing.assert_allclose(full.detach().numpy(), ref, rtol=1e-8, atol=1e-6)
        val = lk.betabinomial_log_prob(lg, lc, k_in, n_in)
        out.append([val.detach(), *grads(val, lg, lc)])
    for dense, sparse in zip(*out, strict=True):
        assert_finite(dense, sparse)
        torch.testing.assert_close(dense, sparse, rtol=1e-12, atol=1e-9)


def test_betabinomial_large_concentration_is_binomial():
    rng = np.random.default_rng(6)
    n = rng.integers(0, 30, size=(20, 4))
    k = rng.binomial(n, 0.3)
    logits = t(rng.normal(size=(20, 4)))
    bb = lk.betabinomial_log_prob(logits, t([math.log(1e12)] * 4), t(k), t(n))
    torch.testing.assert_close(bb, lk.binomial_log_prob(logits, t(k), t(n)), rtol=0, atol=1e-6)


def test_binomial_gradchecks():
    k, n = paired_sparse(np.array([[1, 0, 3], [0, 2, 0]]), np.array([[2, 0, 5], [1, 2, 0]]))
    k, n = k.to(dtype=F64), n.to(dtype=F64)
    rng = np.random.default_rng(7)
    logits, log_conc = leaf(rng.normal(size=(2, 3))), leaf([0.0, 1.0, 15.0])
    assert torch.autograd.gradcheck(lambda lg: lk.binomial_log_prob(lg, k, n), (logits,))
    assert torch.autograd.gradcheck(
        lambda lg, lc: lk.betabinomial_log_prob(lg, lc, k, n), (logits, log_conc)
    )


# ----------------------------------------------------------------------------- multinomial
@st.composite
def multinomial_case(draw):
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    n_empty = draw(st.integers(0, 1))  # a trailing group with no categories
    group = np.repeat(np.arange(len(sizes)), sizes)
    group = draw(st.permutations(group.tolist()))
    b = draw(st.integers(1, 6))
    n_t = len(group)
    eta = draw(hnp.arrays(np.float64, (b, n_t), elements=floats(-10.0, 10.0)))
    y = draw(counts((b, n_t), hi=draw(st.sampled_from([2, 50]))))
    return eta, y, np.asarray(group, dtype=np.int64), len(sizes) + n_empty


def multinomial_loop(eta, y, group, n_groups, log_conc=None):
    """Reference: scipy per cell and group, one group at a time."""
    out = np.zeros(n_groups)
    for g in range(n_groups):
        cols = np.flatnonzero(group == g)
        for i in range(eta.shape[0]):
            if cols.size == 0:
                continue
            x, total = y[i, cols], int(y[i, cols].sum())
            prob = sc.softmax(eta[i, cols])
            if log_conc is None:
                out[g] += ss.multinomial.logpmf(x, total, prob)
            elif total > 0:
                out[g] += ss.dirichlet_multinomial.logpmf(x, np.exp(log_conc[g]) * prob, total)
    return out


@PROPERTY
@given(case=multinomial_case())
def test_multinomial_matches_scipy_loop(case):
    eta, y, group, n_groups = case
    ref = multinomial_loop(eta, y, group, n_groups)
    out = []
    for y_in in (t(y), SparseCounts.from_scipy(y, dtype=F64)):
        e = leaf(eta)
        full = lk.multinomial_log_prob(
            e, y_in, torch.as_tensor(group), n_groups, include_constant=True
        )
        assert full.shape == (n_groups,)
        np.testing.assert_allclose(full.detach().numpy(), ref, rtol=1e-9, atol=1e-8)
        val = lk.multinomial_log_prob(e, y_in, torch.as_tensor(group), n_groups)
        out.append([val.detach(), *grads(val, e)])
    for dense, sparse in zip(*out, strict=True):
        assert_finite(dense, sparse)
        torch.testing.assert_close(dense, sparse, rtol=1e-12, atol=1e-9)


def test_multinomial_zero_total_cells_contribute_nothing():
    group = torch.tensor([0, 1, 0, 1])
    y = t([[0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    eta = leaf([[5.0, 1.0, -2.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    val = lk.multinomial_log_prob(eta, y, group, 3)
    expected_g1 = -3.0 * math.log1p(math.exp(1.0))  # 3 draws of category 3 vs 1
    torch.testing.assert_close(val, t([0.0, expected_g1, 0.0]))
    (g,) = grads(val, eta)
    assert torch.all(g[1] == 0) and g[0, 0] == 0 and g[0, 2] == 0


def test_multinomial_group_index_error():
    with pytest.raises(ValueError, match=r"one entry per feature \(3\), got shape \(2,\)"):
        lk.multinomial_log_prob(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([0, 1]), 2)


@PROPERTY
@given(case=multinomial_case(), data=st.data())
def test_dirichletmultinomial_matches_scipy_loop(case, data):
    eta, y, group, n_groups = case
    log_conc = data.draw(
        hnp.arrays(np.float64, n_groups, elements=floats(math.log(0.05), math.log(1e4)))
    )
    ref = multinomial_loop(eta, y, group, n_groups, log_conc=log_conc)
    out = []
    for y_in in (t(y), SparseCounts.from_scipy(y, dtype=F64)):
        e, lc = leaf(eta), leaf(log_conc)
        full = lk.dirichletmultinomial_log_prob(
            e, lc, y_in, torch.as_tensor(group), n_groups, include_constant=True
        )
        np.testing.assert_allclose(full.detach().numpy(), ref, rtol=1e-8, atol=1e-7)
        val = lk.dirichletmultinomial_log_prob(e, lc, y_in, torch.as_tensor(group), n_groups)
        out.append([val.detach(), *grads(val, e, lc)])
    for dense, sparse in zip(*out, strict=True):
        assert_finite(dense, sparse)
        torch.testing.assert_close(dense, sparse, rtol=1e-12, atol=1e-9)


def test_dirichletmultinomial_large_concentration_is_multinomial():
    rng = np.random.default_rng(8)
    group = torch.tensor([0, 0, 1, 1, 1, 2])
    y = t(rng.poisson(3.0, size=(10, 6)))
    eta = t(rng.normal(size=(10, 6)))
    dm = lk.dirichletmultinomial_log_prob(eta, t([30.0, 30.0, 30.0]), y, group, 3)
    torch.testing.assert_close(dm, lk.multinomial_log_prob(eta, y, group, 3), rtol=0, atol=1e-6)


def test_multinomial_gradchecks():
    rng = np.random.default_rng(9)
    group = torch.tensor([1, 0, 1, 1, 0])
    y = SparseCounts.from_scipy(rng.poisson(1.0, size=(3, 5)), dtype=F64)
    eta, log_conc = leaf(rng.normal(size=(3, 5))), leaf([0.5, 12.0])
    assert torch.autograd.gradcheck(lambda e: lk.multinomial_log_prob(e, y, group, 2), (eta,))
    assert torch.autograd.gradcheck(
        lambda e, lc: lk.dirichletmultinomial_log_prob(e, lc, y, group, 2), (eta, log_conc)
    )


# ----------------------------------------------------------------------------- continuous
@st.composite
def continuous_case(draw):
    b, n_t = draw(shapes())
    y = draw(hnp.arrays(np.float64, (b, n_t), elements=floats(-50.0, 50.0)))
    missing = draw(hnp.arrays(np.bool_, (b, n_t)))
    y = np.where(missing, np.nan, y)
    mean = draw(hnp.arrays(np.float64, (b, n_t), elements=floats(-50.0, 50.0)))
    log_sigma = draw(hnp.arrays(np.float64, n_t, elements=floats(-3.0, 3.0)))
    return mean, log_sigma, y


def masked_sum(values, y):
    return np.where(np.isnan(y), 0.0, values).sum(0)


@PROPERTY
@given(case=continuous_case())
def test_normal_matches_scipy_with_missing(case):
    mean, log_sigma, y = case
    ref = masked_sum(ss.norm.logpdf(y, mean, np.exp(log_sigma)), y)
    m, ls = leaf(mean), leaf(log_sigma)
    got = lk.normal_log_prob(m, ls, t(y), include_constant=True)
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-10, atol=1e-8)
    g_mean, g_sigma = grads(got, m, ls)
    assert_finite(got, g_mean, g_sigma)
    assert torch.all(g_mean[torch.isnan(t(y))] == 0)
    dropped = lk.normal_log_prob(m, ls, t(y)).detach().numpy()
    observed = (~np.isnan(y)).sum(0)
    np.testing.assert_allclose(ref - dropped, -0.5 * math.log(2 * math.pi) * observed, atol=1e-8)


@PROPERTY
@given(case=continuous_case(), data=st.data())
def test_studentt_matches_scipy_with_missing(case, data):
    mean, log_sigma, y = case
    log_nu = data.draw(
        hnp.arrays(np.float64, mean.shape[1], elements=floats(math.log(0.5), math.log(1e3)))
    )
    ref = masked_sum(ss.t.logpdf(y, np.exp(log_nu), mean, np.exp(log_sigma)), y)
    m, ls, ln = leaf(mean), leaf(log_sigma), leaf(log_nu)
    got = lk.studentt_log_prob(m, ls, ln, t(y), include_constant=True)
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-10, atol=1e-8)
    g = grads(got, m, ls, ln)
    assert_finite(got, *g)
    assert torch.all(g[0][torch.isnan(t(y))] == 0)


def test_continuous_per_cell_parameters_and_gradcheck():
    rng = np.random.default_rng(10)
    y = rng.normal(size=(4, 3))
    y[1, 2] = y[3, 0] = np.nan
    m_np, ls_np, ln_np = (rng.normal(size=(4, 3)) for _ in range(3))
    mean, log_sigma, log_nu = leaf(m_np), leaf(ls_np), leaf(ln_np)
    ref_n = masked_sum(ss.norm.logpdf(y, m_np, np.exp(ls_np)), y)
    got_n = lk.normal_log_prob(mean, log_sigma, t(y), include_constant=True)
    np.testing.assert_allclose(got_n.detach().numpy(), ref_n, rtol=1e-12)
    ref_t = masked_sum(ss.t.logpdf(y, np.exp(ln_np), m_np, np.exp(ls_np)), y)
    got_t = lk.studentt_log_prob(mean, log_sigma, log_nu, t(y), include_constant=True)
    np.testing.assert_allclose(got_t.detach().numpy(), ref_t, rtol=1e-12)
    yt = t(y)
    assert torch.autograd.gradcheck(
        lambda m, s, n: lk.studentt_log_prob(m, s, n, yt), (mean, log_sigma, log_nu)
    )
    assert torch.autograd.gradcheck(lambda m, s: lk.normal_log_prob(m, s, yt), (mean, log_sigma))


def test_registry_names():
    assert set(lk.LIKELIHOODS) == {
        "negbinom",
        "binomial",
        "betabinomial",
        "multinomial",
        "dirichletmultinomial",
        "normal",
        "studentt",
    }
    assert lk.LIKELIHOODS["negbinom"] is lk.negbinom_log_prob
