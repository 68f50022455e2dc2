"""Pure-torch pieces of the trans model: marginalised curves and the correlated guide."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

from dream_sc.engine.chunks import ChunkedFit
from dream_sc.models.curves import evaluate_curve, gaussian_powers, hill_fraction
from dream_sc.models.guide import (
    MeanFieldGuide,
    Site,
    cholesky_from_lower,
    correlation_cholesky,
)
from dream_sc.models.trans import TransInputs
from dream_sc.models.trans_summary import draw_latent
from dream_sc.tl._trans_job import posterior_frame, posterior_from_frame


@pytest.mark.parametrize(("n", "var"), [(1.0, 0.05), (3.0, 0.1), (6.0, 0.3)])
def test_marginalised_hill_fraction_matches_monte_carlo(n, var):
    gen = torch.Generator().manual_seed(0)
    log_x = torch.linspace(-1.5, 1.5, 13)
    draws = log_x[:, None] + var**0.5 * torch.randn(13, 200_000, generator=gen)
    mc = torch.sigmoid(n * draws).mean(1)
    approx = hill_fraction(log_x, torch.tensor(0.0), torch.tensor(n), torch.tensor(var))
    # the probit approximation of the logistic-normal integral is good to ~0.02
    assert torch.max(torch.abs(approx - mc)) < 0.02
    exact = hill_fraction(log_x, torch.tensor(0.0), torch.tensor(n))
    # and closer than ignoring the dosage uncertainty
    assert torch.max(torch.abs(exact - mc)) > 2 * torch.max(torch.abs(approx - mc))


def test_gaussian_powers_are_exact_moments():
    mean, var = torch.tensor([0.3, -1.2]), torch.tensor([0.5, 0.1])
    got = gaussian_powers(mean, var, 4).double()
    m, v = mean.double(), var.double()
    expected = torch.stack([m, m**2 + v, m**3 + 3 * m * v, m**4 + 6 * m**2 * v + 3 * v**2], -1)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gaussian_powers(mean, None, 3)[..., 2], mean**3)


def test_polynomial_marginalisation_is_exact_expectation():
    params = {"eta_ref": torch.tensor([0.5]), "coef": torch.tensor([[0.4, -0.3, 0.2]])}
    log_x, log_var = torch.tensor([1.0, 2.0]), torch.tensor([0.2, 0.05])
    got = evaluate_curve("polynomial", params, log_x, 1.5, 2.0, log_var)[:, 0]
    gen = torch.Generator().manual_seed(1)
    draws = log_x[:, None] + log_var[:, None].sqrt() * torch.randn(2, 400_000, generator=gen)
    mc = evaluate_curve("polynomial", params, draws.reshape(-1), 1.5, 2.0)[:, 0]
    torch.testing.assert_close(got, mc.reshape(2, -1).mean(1), rtol=0, atol=2e-3)


@pytest.mark.parametrize("function", ["single_hill", "additive_hill", "polynomial"])
def test_log_link_mean_correction_matches_the_expected_mean(function):
    """``mean_link="log"`` gives ``log E[exp(eta(x))]``, much closer than ``E[eta(x)]``."""
    params = {
        "eta_ref": torch.tensor([1.0, 0.5]),
        "v1": torch.tensor([2.0, -1.5]),
        "log_k1": torch.log(torch.tensor([5.0, 8.0])),
        "n1": torch.tensor([3.0, 1.5]),
        "v2": torch.tensor([-0.8, 0.6]),
        "log_k2": torch.log(torch.tensor([20.0, 30.0])),
        "n2": torch.tensor([2.0, 2.5]),
        "coef": torch.tensor([[0.8, -0.1, 0.05], [-0.5, 0.2, 0.0]]),
    }
    log_x = torch.log(torch.tensor([3.0, 5.0, 9.0, 25.0]))
    var = torch.full((4,), 0.27**2)
    got = evaluate_curve(function, params, log_x, float(np.log(6.0)), 2.0, var, "log")
    plain = evaluate_curve(function, params, log_x, float(np.log(6.0)), 2.0, var)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    expected = torch.zeros(4, 2, dtype=torch.float64)
    for z, w in zip(nodes, weights / weights.sum(), strict=True):
        eta = evaluate_curve(function, params, log_x + 0.27 * float(z), float(np.log(6.0)), 2.0)
        expected += w * eta.double().exp()
    target = expected.log().float()
    assert torch.max(torch.abs(got - target)) < 0.012
    assert torch.max(torch.abs(plain - target)) > 2.5 * torch.max(torch.abs(got - target))
    # logit: the probability of an uncertain cell is pulled towards 1/2; identity: unchanged
    logit = evaluate_curve(function, params, log_x, float(np.log(6.0)), 2.0, var, "logit")
    assert torch.all(logit.abs() <= plain.abs() + 1e-6)
    same = evaluate_curve(function, params, log_x, float(np.log(6.0)), 2.0, var, None)
    torch.testing.assert_close(same, plain)


def test_zero_variance_equals_exact_dosage():
    params = {
        "eta_ref": torch.tensor([1.0, 2.0]),
        "v1": torch.tensor([1.5, -0.7]),
        "log_k1": torch.tensor([0.2, 1.0]),
        "n1": torch.tensor([2.0, 4.0]),
    }
    log_x = torch.linspace(-1, 2, 7)
    a = evaluate_curve("single_hill", params, log_x, 1.0, 1.0)
    b = evaluate_curve("single_hill", params, log_x, 1.0, 1.0, torch.zeros(7))
    torch.testing.assert_close(a, b)


def test_trans_inputs_summarise_and_permute():
    samples = np.log(np.array([[1.0, 4.0], [2.0, 2.0], [8.0, 2.0]]))
    inputs = TransInputs.from_samples(samples, np.zeros(3, int), None, False)
    np.testing.assert_allclose(inputs.log_dose_mean, np.log([2.0, 2.0, 4.0]))
    np.testing.assert_allclose(inputs.log_dose_var, [np.log(2) ** 2, 0.0, np.log(2) ** 2])
    fast = TransInputs.from_samples(samples, np.zeros(3, int), None, True)
    np.testing.assert_allclose(fast.log_dose_mean, np.log([2.5, 2.0, 5.0]))
    np.testing.assert_array_equal(fast.log_dose_var, 0.0)
    perm = inputs.permuted(np.array([2, 0, 1]))
    np.testing.assert_allclose(perm.log_dose_mean, np.log([4.0, 2.0, 2.0]))
    np.testing.assert_allclose(perm.log_dose_var, [np.log(2) ** 2, np.log(2) ** 2, 0.0])


def test_correlation_cholesky_rows_have_unit_norm():
    raw = torch.tensor([[[9.0, 9.0, 9.0], [0.5, 9.0, 9.0], [-1.0, 2.0, 9.0]]])
    r = correlation_cholesky(raw)[0]
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(3))
    assert torch.all(torch.triu(r, diagonal=1) == 0)
    corr = r @ r.T
    torch.testing.assert_close(torch.diagonal(corr), torch.ones(3))
    torch.testing.assert_close(corr[1, 0], torch.tensor(0.5 / np.sqrt(1.25), dtype=torch.float32))
    torch.testing.assert_close(
        correlation_cholesky(torch.zeros(2, 4, 4)), torch.eye(4).expand(2, 4, 4)
    )
    rebuilt = cholesky_from_lower(r.numpy()[None])
    np.testing.assert_allclose(rebuilt[0], r.numpy(), atol=1e-6)


def test_correlated_guide_samples_have_the_fitted_covariance():
    pyro.clear_param_store()
    sites = [Site("b", (2,), 1.0, 0.5), Site("a", (2,), -1.0, 2.0)]
    guide = MeanFieldGuide(sites, prefix="t", correlated=True)
    assert [s.name for s in guide.sites] == ["a", "b"]  # the block is ordered by name
    raw = pyro.param("t.corr_raw")
    with torch.no_grad():
        raw[:, 1, 0] = 1.0  # correlation 1/sqrt(2) between a and b of every feature
    with torch.no_grad():
        values = [guide({}) for _ in range(4000)]
    a = torch.stack([v["a"] for v in values])
    b = torch.stack([v["b"] for v in values])
    torch.testing.assert_close(a.mean(0), torch.full((2,), -1.0), atol=0.1, rtol=0)
    torch.testing.assert_close(b.std(0), torch.full((2,), 0.5), atol=0.03, rtol=0)
    r = np.corrcoef(a[:, 0].numpy(), b[:, 0].numpy())[0, 1]
    assert abs(r - 1 / np.sqrt(2)) < 0.05
    chol = guide.correlation()
    np.testing.assert_allclose(chol[0] @ chol[0].T, [[1, 2**-0.5], [2**-0.5, 1]], atol=1e-6)
    pyro.clear_param_store()


def test_correlated_guide_rejects_cell_local_sites():
    with pytest.raises(ValueError, match="correlated=True needs per-feature, non-cell-local"):
        MeanFieldGuide(
            [Site("x", (3,), cell_local=True)],
            prefix="bad",
            correlated=True,
        )


def test_posterior_frame_round_trips_the_correlation():
    rng = np.random.default_rng(0)
    n = 4
    loc = {"a": rng.normal(size=n).astype(np.float32), "b": rng.normal(size=n).astype(np.float32)}
    scale = {k: np.abs(v) + 0.1 for k, v in loc.items()}
    raw = torch.as_tensor(rng.normal(size=(n, 2, 2)), dtype=torch.float32)
    corr = correlation_cholesky(raw).numpy()
    fit = ChunkedFit(loc, scale, np.zeros(1), [True], np.ones(n, bool), 0.0, corr=corr)
    fitted = np.array([True, True, False, True, True])
    frame = posterior_frame(fit, pd.Index(list("vwxyz")), fitted)
    assert "corr_chol_1_0" in frame.columns and frame.loc["x"].isna().all()
    loc2, scale2, corr2 = posterior_from_frame(frame, fitted)
    np.testing.assert_array_equal(loc2["a"], loc["a"])
    np.testing.assert_array_equal(scale2["b"], scale["b"])
    np.testing.assert_allclose(corr2, corr, atol=1e-6)
    draws = draw_latent(loc2, scale2, np.arange(n), 20_000, np.random.SeedSequence(0), corr=corr2)
    r = np.corrcoef(draws["a"][:, 0].numpy(), draws["b"][:, 0].numpy())[0, 1]
    assert abs(r - (corr @ np.swapaxes(corr, 1, 2))[0, 1, 0]) < 0.03
