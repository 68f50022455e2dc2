"""Importance-sampling refinement of trans posteriors: each piece against brute force."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import integrate, sparse, stats

import dream_sc as ds
from conftest import FAST
from dream_sc.engine.config import FitConfig
from dream_sc.models import refine as R
from dream_sc.models.observation import ObservationData
from dream_sc.models.trans import TransInputs, TransPriors, natural_params
from dream_sc.tl import _refine


def _horseshoe_by_quad(u: float) -> float:
    """``p(u) = int N(u; 0, lam^2) HalfCauchy(lam) dlam`` by adaptive quadrature."""

    def f(log_lam):  # integrand in log lambda
        lam = np.exp(log_lam)
        return stats.norm.pdf(u, 0, lam) * 2 * lam / (np.pi * (1 + lam**2))

    return integrate.quad(f, -40, 40, limit=400, points=[np.log(abs(u))])[0]


@pytest.mark.parametrize("u", [0.01, 0.3, 1.0, 4.0, 60.0])
def test_horseshoe_density_matches_quadrature_and_bounds(u):
    got = R.horseshoe_log_density(np.array([u, -u]))
    assert got[0] == got[1]
    assert got[0] == pytest.approx(np.log(_horseshoe_by_quad(u)), abs=2e-4)
    # Carvalho, Polson & Scott (2010): K/2 log(1 + 4/u^2) < p(u) < K log(1 + 2/u^2)
    k = 1 / np.sqrt(2 * np.pi**3)
    assert k / 2 * np.log1p(4 / u**2) < np.exp(got[0]) < k * np.log1p(2 / u**2)


def test_horseshoe_density_integrates_to_one():
    log_u = np.linspace(np.log(1e-8), np.log(1e6), 200001)
    u = np.exp(log_u)
    mass = 2 * integrate.trapezoid(np.exp(R.horseshoe_log_density(u)) * u, log_u)
    # the mass beyond 1e6 is ~ 2 * sqrt(2 / pi^3) / 1e6
    assert mass == pytest.approx(1.0, abs=1e-4)


def test_curve_coordinates_round_trip_the_model_parameters():
    rng = np.random.default_rng(0)
    for function in ("single_hill", "additive_hill"):
        names = ["eta_ref", "z1", "log_lambda1", "log_k1", "log_n1"]
        if function == "additive_hill":
            names += ["z2", "log_lambda2", "log_gap", "log_n2"]
        latent = {n: torch.as_tensor(rng.normal(size=(7, 4)), dtype=torch.float32) for n in names}
        scale = np.array([0.5, 1.0, 2.0, 0.1], dtype=np.float32)
        priors = _priors(4)
        want = natural_params(function, latent, torch.as_tensor(scale), priors)
        theta = R.to_curve_coordinates(function, latent, scale)  # [T, S, D]
        got = R.curve_params(function, torch.as_tensor(np.moveaxis(theta, 0, 1)))
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-5, atol=1e-6)


def test_coordinates_reject_curves_without_them():
    from dream_sc.models.curves import register_curve, unregister_curve
    from dream_sc.models.curves._base import Curve

    class Bare(Curve):
        name = "bare_for_refine_test"

    register_curve(Bare())
    try:
        with pytest.raises(
            ValueError, match=r"No refinement coordinates for 'bare_for_refine_test'\."
        ):
            R.curve_coordinates("bare_for_refine_test")
    finally:
        unregister_curve("bare_for_refine_test")


def _priors(n: int) -> TransPriors:
    return TransPriors(
        eta_ref_loc=np.linspace(0.0, 1.0, n).astype(np.float32),
        amplitude_scale=np.linspace(0.5, 1.5, n).astype(np.float32),
        log_k_loc=1.5,
        log_k_scale=0.8,
        log_gap_loc=0.2,
        log_x_ref=2.5,
        half_range=2.0,
        degree=3,
    )


def test_log_prior_integrates_the_horseshoe_scale_out():
    """The amplitude prior equals the (z, lambda) prior of the fit integrated over lambda."""
    priors = _priors(2)
    theta = torch.tensor([[[0.2, 0.7, 1.0, 0.5], [0.9, -2.0, 2.5, 1.2]]], dtype=torch.float64)
    got = R.log_prior("single_hill", theta, priors, np.array([0, 1])).numpy()[0]
    for t_, (eta, v, log_k, log_n) in enumerate(theta[0].numpy()):
        s = priors.amplitude_scale[t_]
        want = (
            stats.norm.logpdf(eta, priors.eta_ref_loc[t_], 1.0)
            + np.log(_horseshoe_by_quad(v / s) / s)
            + stats.norm.logpdf(log_k, priors.log_k_loc, priors.log_k_scale)
            + stats.norm.logpdf(log_n, np.log(2.0), 0.6)
        )
        assert got[t_] == pytest.approx(want, abs=5e-4)


def test_trans_log_target_differences_match_scipy():
    """Log posterior differences of two parameter sets = NB log-likelihood + prior differences."""
    rng = np.random.default_rng(3)
    n_cells, n_feat = 300, 2
    log_x = rng.normal(1.5, 0.8, n_cells)
    group = rng.integers(0, 2, n_cells)
    log_sf = rng.normal(0, 0.2, n_cells)
    effects = np.array([[0.0, 0.3], [0.0, -0.2]])
    log_r = np.array([1.0, 2.0])
    y = rng.poisson(5, size=(n_cells, n_feat)).astype(np.float32)
    priors = _priors(n_feat)
    inputs = TransInputs(log_x, np.zeros(n_cells), group, log_sf, use_dose_mean=True)
    obs = ObservationData.build("negbinom", sparse.csr_matrix(y))
    target = R.trans_log_target(
        obs,
        "single_hill",
        priors,
        np.arange(n_feat),
        inputs,
        effects=effects,
        noise={"log_r": log_r},
        cell_block=128,  # several cell blocks
    )
    theta = torch.tensor(
        [
            [[1.5, 0.8, 1.2, 0.3], [0.2, -1.0, 2.0, 1.0]],
            [[1.4, 0.5, 1.7, 0.6], [0.3, -0.6, 1.4, 0.2]],
        ],
        dtype=torch.float64,
    )
    got = target(theta).numpy()

    def scipy_log_post(th, t_):
        eta_ref, v, log_k, log_n = th
        n = np.exp(log_n)
        hill = lambda lx: 1 / (1 + np.exp(-n * (lx - log_k)))  # noqa: E731
        eta = eta_ref + v * (hill(log_x) - hill(priors.log_x_ref)) + effects[t_, group] + log_sf
        mu, r = np.exp(eta), np.exp(log_r[t_])
        ll = stats.nbinom.logpmf(y[:, t_], r, r / (r + mu)).sum()
        lp = R.log_prior("single_hill", torch.as_tensor(th[None, None]), priors, np.array([t_]))
        return ll + float(lp)

    for t_ in range(n_feat):
        want = scipy_log_post(theta[0, t_].numpy(), t_) - scipy_log_post(theta[1, t_].numpy(), t_)
        assert got[0, t_] - got[1, t_] == pytest.approx(want, abs=2e-2)


@pytest.mark.parametrize("distribution", ["negbinom", "binomial", "normal"])
def test_dense_kernels_match_the_sparse_likelihoods_up_to_a_constant(distribution):
    rng = np.random.default_rng(7)
    n_cells, n_feat = 50, 3
    total = rng.integers(0, 12, size=(n_cells, n_feat)).astype(float)
    if distribution == "negbinom":
        y = rng.poisson(3, size=(n_cells, n_feat)).astype(float)
        noise = {"log_r": torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)}
    elif distribution == "binomial":
        y = rng.binomial(total.astype(int), 0.3).astype(float)
        noise = {}
    else:
        y = rng.normal(size=(n_cells, n_feat))
        y[rng.random(y.shape) < 0.2] = np.nan
        noise = {"log_sigma": torch.tensor([-0.5, 0.0, 0.7], dtype=torch.float64)}
    obs = ObservationData.build(
        distribution,
        sparse.csr_matrix(y) if distribution != "normal" else y,
        total=sparse.csr_matrix(total) if distribution == "binomial" else None,
    )
    rows = torch.arange(n_cells)
    gathered = R._as_float64(obs.gather(rows))
    kernel = R._dense_kernel(distribution, gathered, noise)
    eta1, eta2 = (torch.as_tensor(rng.normal(size=(n_cells, n_feat))) for _ in range(2))
    want = obs.feature_log_likelihood(eta1, rows, **noise) - obs.feature_log_likelihood(
        eta2, rows, **noise
    )
    # the sparse Normal path works in the data's float32
    np.testing.assert_allclose((kernel(eta1) - kernel(eta2)).numpy(), want.numpy(), rtol=1e-6)
    assert R._dense_kernel("binomial", gathered, {"log_conc": torch.zeros(3)}) is None


def test_multinomial_cannot_be_refined():
    obs = ObservationData.build(
        "multinomial", sparse.csr_matrix(np.ones((3, 2))), group_index=np.array([0, 0])
    )
    inputs = TransInputs(np.zeros(3), np.zeros(3), np.zeros(3, int), None, use_dose_mean=True)
    with pytest.raises(ValueError, match="couples features"):
        R.trans_log_target(
            obs, "single_hill", _priors(2), np.arange(2), inputs,
            effects=np.zeros((2, 1)), noise={},
        )  # fmt: skip


def test_normalised_weights_truncate_and_survive_non_finite_values():
    log_w = np.array(
        [[0.0, 0.0, 0.0, 50.0], [-np.inf, -np.inf, -np.inf, -np.inf], [0, np.nan, 0, 0]]
    )
    w = R.normalised_weights(log_w, truncate=False)
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(w[1], 0.25)  # nothing finite: uniform
    assert w[2, 1] == 0.0
    capped = R.normalised_weights(log_w, truncate=True)
    # cap sqrt(S)/S = 0.5 before renormalising: the dominant draw keeps 0.5 / (0.5 + 3e-22)
    assert capped[0, 3] == pytest.approx(1.0) and capped[0, 3] < w[0, 3] + 1e-12
    log_w2 = np.log(np.array([[0.7, 0.1, 0.1, 0.1]]))
    capped2 = R.normalised_weights(log_w2, truncate=True)
    np.testing.assert_allclose(capped2, [[0.5 / 0.8, 0.1 / 0.8, 0.1 / 0.8, 0.1 / 0.8]])


def _gaussian_target(means: np.ndarray, sds: np.ndarray):
    def log_target(theta: torch.Tensor) -> torch.Tensor:
        z = (theta.numpy() - means[None]) / sds[None]
        return torch.as_tensor(-0.5 * (z**2).sum(-1))

    return log_target


def test_adaptive_importance_sampling_recovers_a_target_far_from_the_start():
    """Start draws too narrow and off-centre by 3 sd: the rounds move the proposal onto the target."""
    means = np.array([[1.0, -2.0], [0.0, 5.0], [3.0, 3.0]])
    sds = np.array([[0.5, 2.0], [1.0, 0.1], [0.3, 0.3]])
    rng = np.random.default_rng(0)
    start = (
        means[:, None] + 3 * sds[:, None] + 0.3 * sds[:, None] * rng.standard_normal((3, 400, 2))
    )
    draws = R.adaptive_importance_sampling(
        _gaussian_target(means, sds),
        start,
        np.arange(3),
        root=np.random.SeedSequence(0),
        rounds=(500, 500, 500),
        n_final=4000,
    )
    mean = np.einsum("ts,tsd->td", draws.weights, draws.theta)
    sd = np.sqrt(np.einsum("ts,tsd->td", draws.weights, (draws.theta - mean[:, None]) ** 2))
    assert (np.abs(mean - means) <= 0.08 * sds).all(), (mean - means) / sds
    np.testing.assert_allclose(sd, sds, rtol=0.1)
    assert (draws.ess > 1000).all(), draws.ess


def test_importance_draws_are_seeded_per_feature():
    """A feature's draws do not depend on the other features refined with it."""
    means, sds = np.array([[0.0, 1.0], [2.0, 2.0]]), np.array([[1.0, 0.5], [0.2, 0.4]])
    start = means[:, None] + sds[:, None] * np.random.default_rng(1).standard_normal((2, 300, 2))
    keys = np.array([11, 42])
    root = np.random.SeedSequence(5)
    both = R.adaptive_importance_sampling(_gaussian_target(means, sds), start, keys, root=root)
    alone = R.adaptive_importance_sampling(
        _gaussian_target(means[1:], sds[1:]), start[1:], keys[1:], root=root
    )
    np.testing.assert_array_equal(both.theta[1], alone.theta[0])
    np.testing.assert_allclose(both.weights[1], alone.weights[0])
    np.testing.assert_array_equal(
        both.resample(50, keys, np.random.SeedSequence(3))[:, 1],
        alone.resample(50, keys[1:], np.random.SeedSequence(3))[:, 0],
    )


def test_resampling_follows_the_weights():
    theta = np.arange(8, dtype=float).reshape(1, 4, 2)
    weights = np.array([[0.0, 0.75, 0.0, 0.25]])
    draws = R.ImportanceDraws(theta, weights, np.array([1.6]))
    picked = draws.resample(400, np.array([0]), np.random.SeedSequence(0))[:, 0, 0]
    values, counts = np.unique(picked, return_counts=True)
    np.testing.assert_array_equal(values, [2.0, 6.0])
    np.testing.assert_array_equal(counts, [300, 100])  # systematic resampling: exact shares


def test_fit_trans_refines_responsive_hill_features_only(tiny_screen):
    mdata = tiny_screen.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=FAST["technical"], seed=0)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=FAST["cis"], seed=0)
        plain = ds.tl.fit_trans(
            mdata, function="single_hill", n_steps=FAST["trans"], seed=0, test=False,
            refine_intervals=False, copy=True,
        )  # fmt: skip
        ds.tl.fit_trans(
            mdata, function="single_hill", n_steps=FAST["trans"], seed=0, test=False,
            n_refine_draws=200,
        )  # fmt: skip
    got, before = mdata["rna"].varm["dream_trans"], plain["rna"].varm["dream_trans"]
    fitted = got["fitted"]
    want = fitted & (got["prob_dose_dependent"] >= _refine.REFINE_MIN_PROB)
    assert want.any()
    np.testing.assert_array_equal(got["refined"], want)
    assert not before["refined"].any() and before["refine_ess"].isna().all()
    ess = got.loc[want, "refine_ess"]
    assert ((ess > 1) & (ess <= 200)).all()
    assert got.loc[~want, "refine_ess"].isna().all()
    # refined features: parameter columns change, response / score columns do not
    for col in ("response_mean", "response_q05", "prob_dose_dependent", "lfsr", "score"):
        np.testing.assert_array_equal(got[col].to_numpy(), before[col].to_numpy())
    for col in ("ec50_q05", "ec50_q95", "K1_mean", "n1_q95", "v1_mean"):
        np.testing.assert_array_equal(got.loc[~want, col], before.loc[~want, col])
        assert (got.loc[want, col] != before.loc[want, col]).all()
    assert (got.loc[want, "ec50_q05"] < got.loc[want, "ec50_q95"]).all()
    assert mdata["rna"].uns["dream_trans"]["params"]["n_refine_draws"] == 200


def test_refinement_does_not_depend_on_chunking(fitted, monkeypatch):
    from dream_sc.tl._trans_job import job_from_record, posterior_from_frame

    adata = fitted["rna"]
    record = adata.uns["dream_trans"]
    config = FitConfig.from_record(record["params"], device="cpu", progress=False)
    job = job_from_record(fitted, "rna", record, config)
    loc, scale, corr = posterior_from_frame(adata.varm["dream_trans_posterior"], job.fitted)
    columns, _ = job.summarise(loc, scale, corr=corr)
    columns["prob_dose_dependent"] = np.where(np.arange(job.n_features) % 3 == 0, 1.0, 0.0)
    whole = _refine.refined_columns(job, columns, loc, scale, corr, n_draws=40)
    monkeypatch.setattr(_refine, "REFINE_CHUNK", 2)
    pieces = _refine.refined_columns(job, columns, loc, scale, corr, n_draws=40)
    assert whole["refined"].sum() == (np.arange(job.n_features) % 3 == 0).sum()
    for name in ("ec50_mean", "ec50_q05", "K2_q95", "refine_ess"):
        np.testing.assert_allclose(whole[name], pieces[name], rtol=1e-6)


def test_multinomial_jobs_cannot_be_refined_polynomials_only_on_request(monkeypatch):
    from dream_sc.models.curves import get_curve

    job = SimpleNamespace(function="single_hill", data=SimpleNamespace(distribution="multinomial"))
    assert not _refine.can_refine(job)
    job.data.distribution = "binomial"
    assert _refine.can_refine(job)
    job.function = "polynomial"  # coordinates, but not refined by default
    assert not _refine.can_refine(job)
    monkeypatch.setattr(get_curve("polynomial"), "refine_default", True)
    assert _refine.can_refine(job)


@pytest.mark.parametrize("bad", [10, 0, 1.5, True, "many"])
def test_n_refine_draws_is_validated_before_any_work(fitted, bad):
    before = set(fitted["rna"].varm)
    with pytest.raises(
        ValueError, match=rf"n_refine_draws must be an integer >= 20; got {bad!r}\."
    ):
        ds.tl.fit_trans(fitted, n_refine_draws=bad, key_added="never")
    assert set(fitted["rna"].varm) == before


@pytest.mark.parametrize("function", ["single_hill", "additive_hill"])
@pytest.mark.parametrize("mean_link", [None, "log", "logit"])
@pytest.mark.parametrize("uncertain", [True, False])
def test_in_place_hill_curve_equals_evaluate_curve(function, mean_link, uncertain):
    """The refinement's in-place curve is ``offset + evaluate_curve`` to float32 rounding."""
    from dream_sc.models.curves import evaluate_curve
    from dream_sc.models.refine import add_hill_curve
    from dream_sc.models.trans import TransPriors

    gen = torch.Generator().manual_seed(3)
    n_cells, n_feat = 300, 7
    params = {
        "eta_ref": torch.randn(n_feat, generator=gen),
        "v1": 2 * torch.randn(n_feat, generator=gen),
        "log_k1": 0.5 * torch.randn(n_feat, generator=gen) + 1.0,
        "n1": torch.rand(n_feat, generator=gen) * 3 + 0.5,
        "v2": torch.randn(n_feat, generator=gen),
        "log_k2": 0.5 * torch.randn(n_feat, generator=gen) + 2.0,
        "n2": torch.rand(n_feat, generator=gen) * 3 + 0.5,
    }
    log_x = torch.randn(n_cells, generator=gen) + 1.5
    log_x_var = torch.rand(n_cells, generator=gen) * 0.4 if uncertain else None
    offset = torch.randn(n_cells, n_feat, generator=gen)
    priors = TransPriors(np.zeros(n_feat), np.ones(n_feat), 1.0, 0.5, 0.0, 2.2, 1.5, 3)
    expected = offset + evaluate_curve(
        function, params, log_x, priors.log_x_ref, priors.half_range, log_x_var, mean_link
    )
    got = add_hill_curve(offset.clone(), function, params, log_x, log_x_var, priors, mean_link)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_with_q_values_only_the_hits_are_refined(fitted):
    """test=True: refined = prob >= 0.5 and significant; test=False: prob >= 0.5."""
    for test in (True, False):
        m = fitted.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.tl.fit_trans(
                m, function="single_hill", n_steps=40, test=test, n_permutations=5, seed=1
            )
        res = ds.get.trans_results(m, modality="rna")
        res = res[res["fitted"].astype(bool)]
        wanted = res["prob_dose_dependent"].to_numpy(float) >= _refine.REFINE_MIN_PROB
        if test:
            wanted &= res["significant"].to_numpy(bool)
        refined = res["refined"].to_numpy(bool)
        np.testing.assert_array_equal(refined, wanted)
        assert np.isnan(res.loc[~refined, "refine_ess"].to_numpy(float)).all()
