"""Importance-sampling refinement of polynomial curves: prior, coordinates, target, calibration."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import integrate, sparse, stats

import dream_sc as ds
from conftest import FAST
from dream_sc.models import refine as R
from dream_sc.models.curves import evaluate_curve, get_curve
from dream_sc.models.curves._priors import horseshoe_log_density, shared_horseshoe_log_density
from dream_sc.models.observation import ObservationData
from dream_sc.models.trans import TransInputs, TransPriors, natural_params
from dream_sc.tl import _refine


def _priors(n: int, degree: int = 3) -> TransPriors:
    return TransPriors(
        eta_ref_loc=np.linspace(1.0, 2.0, n).astype(np.float32),
        amplitude_scale=np.linspace(0.3, 0.6, n).astype(np.float32),
        log_k_loc=1.5,
        log_k_scale=0.8,
        log_gap_loc=0.2,
        log_x_ref=2.5,
        half_range=2.0,
        degree=degree,
    )


def _shared_by_quad(u: np.ndarray) -> float:
    """``p(u) = int prod_d N(u_d; 0, lam^2) HalfCauchy(lam) dlam`` by adaptive quadrature."""
    r = float(np.linalg.norm(u))

    def f(log_lam):
        lam = np.exp(log_lam)
        return np.prod(stats.norm.pdf(u, 0, lam)) * 2 * lam / (np.pi * (1 + lam**2))

    return integrate.quad(f, -40, 40, limit=400, points=[np.log(r)])[0]


def test_shared_horseshoe_density_in_one_dimension_is_the_scalar_one():
    u = np.geomspace(1e-6, 1e5, 301)
    got = shared_horseshoe_log_density(np.concatenate([u, -u])[:, None])
    np.testing.assert_allclose(got, horseshoe_log_density(np.concatenate([u, -u])), atol=1e-9)


@pytest.mark.parametrize("u", [[0.01, 0.02, -0.01], [0.3, -0.1, 0.2], [1.0, 2.0, -0.5], [40, 5, 0]])
def test_shared_horseshoe_density_matches_quadrature(u):
    u = np.asarray(u, dtype=float)
    got = shared_horseshoe_log_density(u)
    assert got.shape == ()
    assert float(got) == pytest.approx(np.log(_shared_by_quad(u)), abs=2e-4)
    assert shared_horseshoe_log_density(-u[::-1]) == got  # depends on |u| only


@pytest.mark.parametrize("dim", [2, 3])
def test_shared_horseshoe_density_integrates_to_one(dim):
    log_r = np.linspace(np.log(1e-8), np.log(1e6), 200001)
    r = np.exp(log_r)
    dens = np.exp(shared_horseshoe_log_density(np.stack([r] + [0 * r] * (dim - 1), -1)))
    surface = 2 * np.pi if dim == 2 else 4 * np.pi  # area of the unit sphere
    mass = surface * integrate.trapezoid(dens * r**dim, log_r)
    assert mass == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("degree", [2, 3])
def test_polynomial_coordinates_round_trip_the_model_parameters(degree):
    rng = np.random.default_rng(0)
    n_draws, n_feat = 7, 4
    latent = {
        "eta_ref": torch.as_tensor(rng.normal(size=(n_draws, n_feat)), dtype=torch.float32),
        "coef_z": torch.as_tensor(rng.normal(size=(n_draws, n_feat, degree)), dtype=torch.float32),
        "log_lambda": torch.as_tensor(rng.normal(size=(n_draws, n_feat)), dtype=torch.float32),
    }
    scale = np.array([0.5, 1.0, 2.0, 0.1], dtype=np.float32)
    priors = _priors(n_feat, degree)
    want = natural_params("polynomial", latent, torch.as_tensor(scale), priors)
    assert R.curve_coordinates("polynomial") == ["eta_ref", "coef"]
    theta = R.to_curve_coordinates("polynomial", latent, scale)
    assert theta.shape == (n_feat, n_draws, 1 + degree) and theta.dtype == np.float64
    got = R.curve_params("polynomial", torch.as_tensor(np.moveaxis(theta, 0, 1)))
    assert set(got) == {"eta_ref", "coef"} and got["coef"].shape == (n_draws, n_feat, degree)
    for k in want:
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-5, atol=1e-6)


def test_polynomial_log_prior_integrates_the_shared_horseshoe_scale_out():
    """The coefficient prior equals the (z_d, lambda) prior of the fit integrated over lambda."""
    priors = _priors(2)
    theta = torch.tensor(
        [[[1.2, 0.3, -0.1, 0.05], [1.5, -2.0, 0.7, 1.1]]], dtype=torch.float64
    )  # [S=1, T=2, 1 + degree]
    got = R.log_prior("polynomial", theta, priors, np.array([0, 1])).numpy()[0]
    for t_, row in enumerate(theta[0].numpy()):
        s = float(priors.amplitude_scale[t_])
        want = stats.norm.logpdf(row[0], priors.eta_ref_loc[t_], 1.0) + np.log(
            _shared_by_quad(row[1:] / s) / s**3
        )
        assert got[t_] == pytest.approx(want, abs=5e-4)


def _simulated_polynomial_features(n_feat: int, n_cells: int, seed: int):
    """Counts of ``n_feat`` features from cubics drawn from the fit's own prior."""
    rng = np.random.default_rng(seed)
    priors = _priors(n_feat)
    unit = np.log(2.0) * priors.half_range
    log_x = priors.log_x_ref + unit * rng.uniform(-1.2, 1.2, n_cells)
    lam = np.abs(stats.cauchy.rvs(size=n_feat, random_state=rng))
    lam = np.minimum(lam, 4.0)  # keeps every mean moderate (affects ~16% of the draws)
    coef = priors.amplitude_scale[:, None] * lam[:, None] * rng.normal(size=(n_feat, 3))
    eta_ref = priors.eta_ref_loc + rng.normal(size=n_feat)
    truth = np.concatenate([eta_ref[:, None], coef], axis=1)  # [T, 1 + D]
    params = {"eta_ref": torch.as_tensor(eta_ref), "coef": torch.as_tensor(coef)}
    eta = evaluate_curve(
        "polynomial", params, torch.as_tensor(log_x), priors.log_x_ref, priors.half_range
    ).numpy()
    r = 5.0
    mu = np.exp(eta)
    y = rng.negative_binomial(r, r / (r + mu)).astype(np.float32)
    inputs = TransInputs(log_x, np.zeros(n_cells), np.zeros(n_cells, int), None, True)
    obs = ObservationData.build("negbinom", sparse.csr_matrix(y))
    target = R.trans_log_target(
        obs,
        "polynomial",
        priors,
        np.arange(n_feat),
        inputs,
        effects=np.zeros((n_feat, 1)),
        noise={"log_r": np.full(n_feat, np.log(r))},
    )
    return SimpleNamespace(truth=truth, target=target, rng=rng, y=y, log_x=log_x, r=r)


def test_trans_log_target_of_a_polynomial_matches_scipy():
    """Log posterior differences of two parameter sets = NB log-likelihood + prior differences."""
    sim = _simulated_polynomial_features(3, 250, seed=5)
    theta = np.stack([sim.truth, sim.truth + np.array([0.05, 0.1, -0.1, 0.05])])  # [S=2, T, D]
    got = sim.target(torch.as_tensor(theta)).numpy()
    priors = _priors(3)
    u = (sim.log_x - priors.log_x_ref) / (np.log(2.0) * priors.half_range)

    def scipy_log_post(th, t_):
        eta = th[0] + sum(th[d] * u**d for d in (1, 2, 3))
        mu, r = np.exp(eta), sim.r
        ll = stats.nbinom.logpmf(sim.y[:, t_], r, r / (r + mu)).sum()
        lp = R.log_prior("polynomial", torch.as_tensor(th[None, None]), priors, np.array([t_]))
        return ll + float(lp)

    for t_ in range(3):
        want = scipy_log_post(theta[0, t_], t_) - scipy_log_post(theta[1, t_], t_)
        assert got[0, t_] - got[1, t_] == pytest.approx(want, abs=2e-2)
        assert abs(want) > 1.0  # the two parameter sets are far apart: a real check


def test_refinement_calibrates_polynomial_intervals_from_a_too_narrow_start():
    """Truths drawn from the prior: refined 90% intervals cover ~90%, the narrow start far less.

    100 features x 4 coordinates; seeds 11 / 12 / 13 of this set-up measured 0.905 / 0.928 /
    0.848 refined against 0.41 / 0.39 / 0.34 for the start.
    """
    n_feat = 100
    sim = _simulated_polynomial_features(n_feat, 500, seed=11)
    truth, rng = sim.truth, sim.rng
    centre = truth + 0.1 * rng.normal(size=truth.shape)  # off-centre and too narrow start
    start = centre[:, None] + 0.03 * rng.normal(size=(n_feat, 300, truth.shape[1]))
    keys = np.arange(n_feat)
    draws = R.adaptive_importance_sampling(
        sim.target, start, keys, root=np.random.SeedSequence(3), rounds=(200, 200, 200),
        n_final=800,
    )  # fmt: skip
    theta = draws.resample(1000, keys, np.random.SeedSequence(3))  # [S, T, D]
    q05, q95 = np.quantile(theta, [0.05, 0.95], axis=0)
    s05, s95 = np.quantile(start, [0.05, 0.95], axis=1)
    covered = (q05 <= truth) & (truth <= q95)
    assert ((s05 <= truth) & (truth <= s95)).mean() < 0.5
    assert covered.mean() == pytest.approx(0.905, abs=1e-9)
    assert 0.85 <= covered.mean(0).min() and covered.mean(0).max() <= 0.97  # every coordinate
    assert np.median(np.log((q95 - q05) / (s95 - s05))) > 0.8  # ~2.5x wider than the start
    assert np.median(draws.ess) > 300


@pytest.mark.parametrize("degree", [1, 3])
@pytest.mark.parametrize("mean_link", [None, "log", "logit"])
@pytest.mark.parametrize("uncertain", [True, False])
def test_in_place_polynomial_equals_evaluate_curve(degree, mean_link, uncertain):
    """The refinement's curve (matmuls, in place) is ``offset + evaluate_curve`` to float32."""
    gen = torch.Generator().manual_seed(3)
    n_cells, n_feat = 300, 7
    params = {
        "eta_ref": torch.randn(n_feat, generator=gen),
        "coef": torch.randn(n_feat, degree, generator=gen),
    }
    log_x = torch.randn(n_cells, generator=gen) + 1.5
    log_x_var = torch.rand(n_cells, generator=gen) * 0.4 if uncertain else None
    offset = torch.randn(n_cells, n_feat, generator=gen)
    priors = TransPriors(np.zeros(n_feat), np.ones(n_feat), 1.0, 0.5, 0.0, 2.2, 1.5, degree)
    expected = offset + evaluate_curve(
        "polynomial", params, log_x, priors.log_x_ref, priors.half_range, log_x_var, mean_link
    )
    got = get_curve("polynomial").add_curve(
        offset.clone(), params, log_x, log_x_var, priors, mean_link
    )
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_polynomial_fits_are_not_refined_by_default(fitted):
    assert get_curve("polynomial").refine_default is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_trans(
            fitted, function="polynomial", n_steps=FAST["trans"], seed=0, test=False,
            key_added="poly",
        )  # fmt: skip
    table = fitted["rna"].varm["poly"]
    assert not table["refined"].any() and table["refine_ess"].isna().all()


def test_fit_trans_refines_responsive_polynomial_features(fitted, monkeypatch):
    monkeypatch.setattr(get_curve("polynomial"), "refine_default", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = ds.tl.fit_trans(
            fitted, function="polynomial", n_steps=FAST["trans"], seed=0, test=False,
            refine_intervals=False, key_added="poly", copy=True,
        )  # fmt: skip
        ds.tl.fit_trans(
            fitted, function="polynomial", n_steps=FAST["trans"], seed=0, test=False,
            n_refine_draws=200, key_added="poly",
        )  # fmt: skip
    got, before = fitted["rna"].varm["poly"], plain["rna"].varm["poly"]
    want = got["fitted"] & (got["prob_dose_dependent"] >= _refine.REFINE_MIN_PROB)
    assert want.sum() >= 3
    np.testing.assert_array_equal(got["refined"], want)
    assert not before["refined"].any() and before["refine_ess"].isna().all()
    assert ((got.loc[want, "refine_ess"] > 1) & (got.loc[want, "refine_ess"] <= 200)).all()
    for col in ("response_mean", "response_q05", "prob_dose_dependent", "lfsr", "score"):
        np.testing.assert_array_equal(got[col].to_numpy(), before[col].to_numpy())
    for col in ("eta_ref_mean", "coef1_q05", "coef3_q95", "ec50_response_q95"):
        np.testing.assert_array_equal(got.loc[~want, col], before.loc[~want, col])
        changed = got.loc[want, col] != before.loc[want, col]
        assert changed[before.loc[want, col].notna()].all()
    assert got["ec50_mean"].isna().all()  # a polynomial has no link-scale EC50
    refined = got.loc[want].dropna(subset=["ec50_response_mean"])
    assert len(refined) >= 2
    assert (refined["ec50_response_q05"] <= refined["ec50_response_mean"]).all()
    assert (refined["ec50_response_mean"] <= refined["ec50_response_q95"]).all()


def test_refined_polynomial_response_ec50s_move_along_the_dose_axis(fitted, monkeypatch):
    """The refined draws carry the guides' dosage uncertainty (``DoseAxis.response_ec50_move``)."""
    from dream_sc.models.trans_summary import DoseAxis
    from dream_sc.tl._trans_job import job_from_record, posterior_from_frame

    monkeypatch.setattr(get_curve("polynomial"), "refine_default", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_trans(
            fitted, function="polynomial", n_steps=FAST["trans"], seed=0, test=False,
            refine_intervals=False, key_added="poly",
        )  # fmt: skip
    adata = fitted["rna"]
    record = adata.uns["poly"]
    config = ds.engine.config.FitConfig.from_record(record["params"], device="cpu", progress=False)
    job = job_from_record(fitted, "rna", record, config)
    assert job.dose_axis is not None
    loc, scale, corr = posterior_from_frame(adata.varm["poly_posterior"], job.fitted)
    columns, _ = job.summarise(loc, scale, corr=corr)
    columns["prob_dose_dependent"] = np.ones(job.n_features)
    moved = _refine.refined_columns(job, columns, loc, scale, corr, n_draws=40)
    monkeypatch.setattr(DoseAxis, "response_ec50_move", lambda self, function: None)
    still = _refine.refined_columns(job, columns, loc, scale, corr, n_draws=40)
    assert moved["refined"].all() and still["refined"].all()
    np.testing.assert_array_equal(moved["coef1_q05"], still["coef1_q05"])  # same draws
    width = lambda c: np.log(c["ec50_response_q95"] / c["ec50_response_q05"])  # noqa: E731
    ok = np.isfinite(width(moved)) & np.isfinite(width(still))
    assert ok.sum() >= 3
    assert (moved["ec50_response_mean"][ok] != still["ec50_response_mean"][ok]).all()
    assert np.median(width(moved)[ok] - width(still)[ok]) > 0  # moved draws: wider intervals
