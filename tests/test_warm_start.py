"""Warm starts: guide-level curve fits for step 3, the Laplace start of step 2."""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

import dream_sc as ds
from dream_sc.models import cis_laplace as CL
from dream_sc.models import warm_start as W
from dream_sc.models.cis import CisModel
from dream_sc.models.trans import TransPriors

LOG_X = np.log([1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 14.0, 20.0])
LOG_X_REF = float(np.log(20.0))


def _priors(scale, degree: int = 3) -> TransPriors:
    scale = np.asarray(scale, dtype=np.float64)
    lo, hi = LOG_X.min(), LOG_X.max()
    return TransPriors(
        eta_ref_loc=np.full(len(scale), 0.7),
        amplitude_scale=scale,
        log_k_loc=0.5 * (lo + hi),
        log_k_scale=0.75 * (hi - lo) / 1.96,
        log_gap_loc=float(np.log((hi - lo) / 3)),
        log_x_ref=LOG_X_REF,
        half_range=float((hi - lo) / np.log(2) / 2),
        degree=degree,
    )


def _hill(x, eta_ref, v, log_k, n):
    h = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    return eta_ref + v * (h(n * (x - log_k)) - h(n * (LOG_X_REF - log_k)))


def test_single_hill_grid_fit_recovers_the_curve_of_exact_guide_means():
    truth = [(1.0, -2.0, np.log(4.0), 2.5), (-0.5, 1.2, np.log(9.0), 1.4)]
    means = np.stack([_hill(LOG_X, *p) for p in truth], axis=1)
    points = W.GuidePoints(LOG_X, np.full(len(LOG_X), 100.0), means)
    spread = np.subtract(*np.quantile(means, [0.95, 0.05], axis=0))  # as the amplitude prior
    fit = W.fit_single_hill(points, _priors(spread), spread)
    for t, (eta_ref, v, log_k, n) in enumerate(truth):
        # on the grid: K within one grid spacing, n one of the grid's values
        spacing = 2 * 1.96 * _priors([1.0]).log_k_scale / (W.GRID_K - 1)
        assert abs(fit["log_k"][t] - log_k) <= spacing
        assert fit["n"][t] == pytest.approx(n)
        assert fit["v"][t] == pytest.approx(v, rel=0.1)
        assert fit["eta_ref"][t] == pytest.approx(eta_ref, abs=0.05)
        assert fit["gain"][t] > W.GAIN_THRESHOLD


def test_warm_start_latents_reproduce_the_amplitude_and_keep_flat_features_at_the_default():
    curve = _hill(LOG_X, 0.3, 1.5, np.log(6.0), 2.5)
    noise = np.random.default_rng(0).normal(0.0, 0.02, len(LOG_X))
    means = np.stack([curve, 0.7 + noise], axis=1)
    scale = np.array([1.5, 0.1])
    priors = _priors(scale)
    start = W.warm_start("single_hill", W.GuidePoints(LOG_X, np.full(8, 50.0), means), priors)
    v = scale * np.exp(start["log_lambda1"]) * start["z1"]
    fit = W.fit_single_hill(W.GuidePoints(LOG_X, np.full(8, 50.0), means), priors, scale)
    assert v[0] == pytest.approx(fit["v"][0], rel=1e-9)
    assert start["log_k1"][0] == fit["log_k"][0]
    # the flat feature: default start (zero amplitude, prior centre, technical baseline)
    assert start["z1"][1] == 0.0 and start["log_lambda1"][1] == W.DEFAULT_LOG_LAMBDA
    assert start["log_k1"][1] == priors.log_k_loc
    assert start["log_n1"][1] == pytest.approx(np.log(2.0))
    assert start["eta_ref"][1] == pytest.approx(0.7)


def test_guides_without_a_mean_are_ignored():
    curve = _hill(LOG_X, 0.0, 2.0, np.log(5.0), 2.5)
    with_gap = curve.copy()
    with_gap[3] = np.nan
    points = W.GuidePoints(LOG_X, np.full(8, 40.0), with_gap[:, None])
    dropped = W.GuidePoints(np.delete(LOG_X, 3), np.full(7, 40.0), np.delete(curve, 3)[:, None])
    priors = _priors([2.0])
    a = W.fit_single_hill(points, priors, np.array([2.0]))
    b = W.fit_single_hill(dropped, priors, np.array([2.0]))
    for key in ("eta_ref", "v", "log_k", "n", "gain"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12)


def test_polynomial_ridge_fit_recovers_a_clean_cubic():
    # the noise floor (s / 50) keeps a weak ridge: clean data are recovered to ~1%
    half_range = float((LOG_X.max() - LOG_X.min()) / np.log(2) / 2)
    u = (LOG_X - LOG_X_REF) / (np.log(2.0) * half_range)
    coef = np.array([0.8, -0.3, 0.05])
    means = (1.5 + coef[0] * u + coef[1] * u**2 + coef[2] * u**3)[:, None]
    spread = np.subtract(*np.quantile(means, [0.95, 0.05], axis=0))
    priors = _priors(spread, degree=3)
    fit = W.fit_polynomial(W.GuidePoints(LOG_X, np.full(8, 30.0), means), priors, spread)
    np.testing.assert_allclose(fit["coef"][0], coef, atol=0.01)
    assert fit["eta_ref"][0] == pytest.approx(1.5, abs=0.01)
    start = W.warm_start("polynomial", W.GuidePoints(LOG_X, np.full(8, 30.0), means), priors)
    back = spread[0] * np.exp(start["log_lambda"][0]) * start["coef_z"][0]
    np.testing.assert_allclose(back, fit["coef"][0], rtol=1e-9)


def test_guide_points_from_cells():
    labels = np.array(["b", "a", "b", "c", "a", "b"])
    log_dose = np.array([1.0, 2.0, 3.0, 4.0, 4.0, 5.0])
    points = W.GuidePoints.from_cells(labels, log_dose, np.zeros((3, 1)))
    np.testing.assert_allclose(points.log_dose, [3.0, 3.0, 4.0])  # a, b, c
    np.testing.assert_array_equal(points.n_cells, [2, 3, 1])


@pytest.fixture(scope="module")
def prepared():
    mdata = ds.datasets.simulate_screen(
        n_cells=800, n_genes=40, n_junctions=0, n_isoform_genes=0, seed=2
    )
    # the tests compare starts, not normalisations: the generating size factors
    mdata.obs["sum_factor"] = mdata.obs["true_size_factor"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=150, seed=0, progress=False)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=200, seed=0, progress=False)
    return mdata


def _log_ec50_error(mdata) -> float:
    res = mdata["rna"].varm["dream_trans"]
    truth = mdata["rna"].var
    hit = truth["true_responsive"].to_numpy(bool) & res["fitted"].to_numpy(bool)
    true_k = truth.loc[hit, "true_K1"].to_numpy(float)
    ok = np.isfinite(true_k)
    est = res.loc[hit, "K1_mean"].to_numpy(float)[ok]
    return float(np.median(np.abs(np.log(est / true_k[ok]))))


def test_warm_start_reaches_the_curves_in_fewer_steps(prepared):
    """40 SVI steps from the warm start beat 40 from the priors' centres on EC50 error.

    Like the cis test below it compares starts, not normalisations: ``prepared`` runs on the
    generating size factors. (With the simulator's estimated factors, once they were put in the
    truth's unit by issue 27, warm 0.381 against cold 0.497: a ratio of 0.77, the threshold 0.75.)
    """
    errors = {}
    for warm in (True, False):
        m = prepared.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.tl.fit_trans(
                m,
                function="single_hill",
                n_steps=40,
                test=False,
                refine_intervals=False,
                warm_start=warm,
                seed=0,
                progress=False,
            )
        assert bool(m["rna"].uns["dream_trans"]["params"]["warm_start"]) is warm
        errors[warm] = _log_ec50_error(m)
    assert errors[True] < 0.75 * errors[False]


def _fit_cis(mdata, warm: bool, n_steps: int):
    m = mdata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_cis(
            m, cis_feature="GFI1B", n_steps=n_steps, warm_start=warm, seed=0, progress=False
        )
    return m


def test_laplace_start_sits_at_the_mode_with_the_inverse_hessian(prepared):
    data_holder = {}
    original = CL.laplace_start

    def capture(guide, model, seed, device):
        ok = original(guide, model, seed, device)
        post = guide.get_posterior()
        data_holder.update(
            ok=ok,
            loc=post.loc.detach().clone(),
            cov=post.covariance_matrix.detach().double().clone(),
            guide=guide,
            model=model,
        )
        return ok

    CL.laplace_start = capture
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.tl.fit_cis(prepared.copy(), cis_feature="GFI1B", n_steps=5, progress=False)
    finally:
        CL.laplace_start = original
    assert data_holder["ok"]
    guide, model = data_holder["guide"], data_holder["model"]
    n = model.n_cells
    batch = {"cell_index": torch.arange(n), "n_cells": n}
    # in float64, as the Laplace start computes it: float32 rounding moves the curvature of the
    # flat spread-dispersion ridge by a few percent
    model64 = CisModel(model.data, torch.device("cpu"), dtype=torch.float64)

    def neg_log_joint(z):
        values = {site["name"]: value for site, value in guide._unpack_latent(z)}
        trace = poutine.trace(poutine.condition(model64, data=values)).get_trace(batch)
        return -trace.log_prob_sum()

    z = data_holder["loc"].double().clone().requires_grad_(True)
    grad = torch.autograd.grad(neg_log_joint(z), z)[0].double()
    cov = data_holder["cov"]
    # a mode: the Newton step to the exact mode is under a tenth of every posterior sd (float32)
    newton = cov @ grad
    assert float((newton.abs() / cov.diagonal().sqrt()).max()) < 0.1
    hessian = torch.autograd.functional.hessian(neg_log_joint, data_holder["loc"].double())
    np.testing.assert_allclose((cov @ hessian).numpy(), np.eye(len(z)), atol=1e-2)
    pyro.clear_param_store()


def test_laplace_start_falls_back_when_the_curvature_is_unusable(prepared, monkeypatch):
    calls = {}
    original = CL.laplace_start

    def broken(guide, model, seed, device):
        before = guide.loc.detach().clone()
        monkeypatch.setattr(torch.linalg, "cholesky", _raise)
        ok = original(guide, model, seed, device)
        monkeypatch.undo()
        calls["ok"], calls["unchanged"] = ok, torch.equal(before, guide.loc.detach())
        return ok

    monkeypatch.setattr(CL, "laplace_start", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_cis(prepared.copy(), cis_feature="GFI1B", n_steps=5, progress=False)
    assert calls == {"ok": False, "unchanged": True}


def _raise(*args, **kwargs):
    raise RuntimeError("not positive definite")


def test_laplace_start_keeps_guide_dosages_accurate_at_the_default_steps(prepared):
    """At the default 300 steps, guide dosages from the Laplace start are as accurate as from
    the moment start (both within 0.04 log2 of a 1,500-step cold fit's error against the
    simulated truth)."""
    truth = prepared.uns["truth"]["guides"]
    # This compares starts, not normalisations: it runs on the generating size factors. With
    # factors estimated from this 40-gene screen's counts every fit's guide dosages sit 4-10%
    # below the (rescaled) truth and the Laplace start and a 1,500-step cold start settle at
    # different points of the flat spread ridge (median error 0.107 vs 0.067 log2 at 1,500
    # steps, 0.122 vs 0.112 at 300): the dose-scale question of the guide-behaviour issue.
    prepared = prepared.copy()
    prepared.obs["sum_factor"] = prepared.obs["true_size_factor"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(prepared, n_steps=150, seed=0, progress=False)

    def error(m) -> float:
        est = m.uns["dream_cis"]["guides"]
        own = est.index[est["target"] == "GFI1B"]
        return float(
            np.median(
                np.abs(
                    np.log2(est.loc[own, "dose_mean"].to_numpy(float))
                    - np.log2(truth.loc[own, "dose"].to_numpy(float))
                )
            )
        )

    long_run = error(_fit_cis(prepared, warm=False, n_steps=1500))
    warm = _fit_cis(prepared, warm=True, n_steps=300)
    cold = error(_fit_cis(prepared, warm=False, n_steps=300))
    assert error(warm) < long_run + 0.04
    assert abs(error(warm) - cold) < 0.02
    assert bool(warm.uns["dream_cis"]["params"]["warm_start"])


def test_laplace_start_does_not_depend_on_the_thread_count():
    """The mode lies on a flat ridge: in float32 the rounding of 1 vs 2 threads moved it along
    the ridge and sometimes made the Hessian indefinite (the cold fallback then biased the
    dosages of a 300-step fit by 13%). The float64 objective lands on the same point."""
    mdata = ds.datasets.simulate_screen(
        n_cells=3000, n_genes=20, n_junctions=0, n_isoform_genes=0, seed=2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=100, seed=0, progress=False)
    found = []
    original = CL.laplace_start

    def capture(guide, model, seed, device):
        ok = original(guide, model, seed, device)
        found.append((ok, guide.get_posterior().loc.detach().double().clone()))
        return ok

    threads = torch.get_num_threads()
    CL.laplace_start = capture
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.tl.fit_cis(mdata.copy(), cis_feature="GFI1B", n_steps=1, progress=False)
    finally:
        CL.laplace_start = original
        torch.set_num_threads(threads)
    (ok1, mode1), (ok2, mode2) = found
    assert ok1 and ok2
    np.testing.assert_allclose(mode1.numpy(), mode2.numpy(), atol=1e-4)
