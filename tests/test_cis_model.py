"""The cis model's pieces against brute force: NB pmf, quadrature, dispersion split, cell posterior."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

import dream_sc as ds
from dream_sc.engine.svi import FitResult
from dream_sc.models import cis as C
from dream_sc.models import cis_dosage as CD
from dream_sc.models.trans_summary import DoseAxis

LN2 = np.log(2.0)


def t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


@pytest.mark.parametrize(("mean", "r"), [(0.3, 0.5), (15.0, 3.0), (200.0, 1e4)])
def test_nb_log_pmf_matches_scipy(mean, r):
    y = np.array([0, 1, 3, 17, 250], dtype=np.float64)
    got = C.nb_log_pmf(t(y), t(np.full(5, np.log(mean))), t(np.log(r))).numpy()
    ref = stats.nbinom.logpmf(y, r, r / (r + mean)) + special.gammaln(y + 1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-3)


def _brute_marginal(y, base_eta, mu, sigma, r):
    def integrand(l2):
        mean = np.exp(base_eta + LN2 * l2)
        lp = stats.nbinom.logpmf(y, r, r / (r + mean)) + special.gammaln(y + 1)
        return np.exp(lp) * stats.norm.pdf(l2, mu, sigma)

    value, _ = integrate.quad(integrand, mu - 10 * sigma, mu + 10 * sigma, limit=200)
    return np.log(value)


@pytest.mark.parametrize(
    ("y", "mu", "sigma", "r"), [(0, 1.0, 0.3, 2.0), (12, 3.9, 0.15, 3.0), (40, 2.0, 0.6, 50.0)]
)
def test_quadrature_marginal_matches_numerical_integration(y, mu, sigma, r):
    base = np.log(0.8)
    got = C.cell_log_marginal(
        t([y]), t([base]), t([mu]), t([sigma]), torch.tensor(np.log(r), dtype=torch.float32)
    )
    assert got.item() == pytest.approx(_brute_marginal(y, base, mu, sigma, r), abs=2e-3)


def test_within_cell_dispersion_is_a_free_site_below_step_one():
    """``phi_within`` is its own site (not tied to the spread) with a prior below step 1's."""
    phi_step1 = 0.35
    data = C.CisData(
        y=np.array([3.0, 5.0]),
        log_sf=np.zeros(2),
        group=np.zeros(2, int),
        tech_effect_prior=np.zeros(1),
        assignment=np.eye(2),
        is_cis_guide=np.array([True, False]),
        log_r=float(-np.log(phi_step1)),
        log2_x_ntc_prior=2.0,
    )
    model = C.CisModel(data, torch.device("cpu"))
    assert model.phi_prior_loc == pytest.approx(np.log(phi_step1) + C.PHI_WITHIN_PRIOR[0])
    values = C.initial_values(data, model)
    for spread in (-3.0, 0.0):  # the dispersion does not move with the spread
        values["guide_log_sigma"] = torch.full((2,), spread)
        d = model.derived(values)
        assert float(torch.exp(-d["log_r"])) == pytest.approx(
            phi_step1 * np.exp(C.PHI_WITHIN_PRIOR[0]), rel=1e-5
        )


def _single_guide_posterior(log2_x_ntc: float, log_sigma: float, n_draws: int = 50):
    """A posterior whose draws all equal one point (one NTC guide, no other group)."""
    full = lambda v, *shape: np.full((n_draws, *shape), v)  # noqa: E731
    draws = {
        "log2_x_ntc": full(log2_x_ntc),
        "target_mean": full(0.0),
        "log_target_scale": full(0.0),
        "ref_effect": full(0.0, 1),
        "guide_effect_all": full(0.0, 1),
        "log_sigma_loc": full(log_sigma),
        "guide_log_sigma": full(log_sigma, 1),
        "tech_effect_all": full(0.0, 1),
        "log_r_within": full(np.log(4.0)),
    }
    return C.CisPosterior(draws, FitResult(np.zeros(1), True, 0.0), {})


def test_cell_dosage_samples_follow_the_exact_cell_posterior():
    y = np.array([0.0, 5.0, 30.0])
    data = C.CisData(
        y=y,
        log_sf=np.zeros(3),
        group=np.zeros(3, dtype=int),
        tech_effect_prior=np.zeros(1),
        assignment=np.ones((3, 1), dtype=np.float32),
        is_cis_guide=np.array([False]),
        log_r=float(np.log(4.0)),
        log2_x_ntc_prior=3.0,
    )
    mu, sigma = 3.0, 0.5
    post = _single_guide_posterior(mu, np.log(sigma))
    samples, picks = CD.sample_cell_dosage(data, post, 4000, seed=0, device=torch.device("cpu"))
    assert samples.shape == (3, 4000) and picks.shape == (4000,)
    grid = np.linspace(mu - 8 * sigma, mu + 8 * sigma, 4001)
    for i, yi in enumerate(y):
        mean = np.exp(LN2 * grid)
        logp = stats.norm.logpdf(grid, mu, sigma) + stats.nbinom.logpmf(yi, 4.0, 4.0 / (4.0 + mean))
        w = np.exp(logp - logp.max())
        w /= w.sum()
        exact_mean = np.sum(w * grid)
        exact_sd = np.sqrt(np.sum(w * (grid - exact_mean) ** 2))
        assert samples[i].mean() == pytest.approx(exact_mean, abs=4 * exact_sd / np.sqrt(4000))
        assert samples[i].std() == pytest.approx(exact_sd, rel=0.06)
    # more counts, higher dosage
    assert samples[0].mean() < samples[1].mean() < samples[2].mean()


def test_dose_axis_moves_ec50_draws_by_their_worlds_shift():
    log2_draws = np.array([[1.0, 1.1, 0.9], [3.0, 3.1, 2.9], [5.0, 5.1, 4.9]])  # [G, W]
    axis = DoseAxis.from_guides(log2_draws, np.array([100, 100, 100]))
    # every guide moves by the same amount in each world: the axis moves by it everywhere
    np.testing.assert_allclose(axis.shift[:, 50], LN2 * np.array([0.0, 0.1, -0.1]), atol=1e-9)
    log_k = torch.full((6, 2), float(LN2 * 3.0))
    moved = axis.apply(log_k).numpy()
    expected = LN2 * 3.0 + LN2 * np.array([0.0, 0.1, -0.1, 0.0, 0.1, -0.1])
    np.testing.assert_allclose(moved[:, 0], expected, atol=1e-6)


def test_dose_axis_is_local_to_the_guides_that_locate_a_dose():
    log2_draws = np.array([[1.0, 1.0], [3.0, 3.4], [5.0, 5.0]])  # only the middle guide moves
    axis = DoseAxis.from_guides(log2_draws, np.array([100, 100, 100]))
    centre = LN2 * log2_draws.mean(1)
    at = lambda x, w: np.interp(x, axis.grid, axis.shift[w])  # noqa: E731
    dev = LN2 * 0.2  # middle guide's deviation in world 1
    # at the moved guide the axis moves (almost) with it, at the other guides hardly at all
    assert 0.75 * dev < at(centre[1], 1) <= dev
    assert abs(at(centre[0], 1)) < 0.2 * dev and abs(at(centre[2], 1)) < 0.2 * dev
    # half-way between two guides both count
    half = 0.5 * (centre[1] + centre[2])
    assert 0.3 * dev < at(half, 1) < 0.7 * dev
    np.testing.assert_allclose(axis.shift[0], -axis.shift[1], atol=1e-12)
    record = axis.to_record()
    back = DoseAxis.from_record(record)
    np.testing.assert_array_equal(back.shift, axis.shift)
    assert DoseAxis.from_record({}) is None


@pytest.fixture(scope="module")
def cis_fitted():
    mdata = ds.datasets.simulate_screen(n_cells=600, n_genes=20, n_junctions=0, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=200, seed=0)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=300, seed=0)
    return mdata


def test_cis_record_holds_updated_technical_effects_and_guide_worlds(cis_fitted):
    rec = cis_fitted.uns["dream_cis"]
    te = rec["technical_effects"]
    assert list(te.columns) == ["step1", "mean", "sd"]
    assert list(te.index) == ["K562", "HEK293T"]
    assert te.loc["K562", "mean"] == 0.0 and te.loc["K562", "sd"] == 0.0
    assert te.loc["HEK293T", "sd"] > 0
    guides = rec["guides"]
    worlds = np.asarray(rec["guide_dose_samples"])
    n_samples = cis_fitted.obsm["dream_cis_dose_samples"].shape[1]
    assert worlds.shape == (len(guides), n_samples)
    # the worlds are draws of the guides' dosages
    np.testing.assert_allclose(
        np.exp2(worlds).mean(1), guides["dose_mean"], rtol=4 * (worlds.std(1).max() + 0.01)
    )
    phi1, phi = rec["dispersion_step1"], rec["dispersion_within_cell"]
    assert 0 < phi < phi1


def test_grid_kernel_differs_from_the_nb_log_pmf_by_a_per_cell_constant():
    """The per-cell grid weights drop the dosage-free lgamma terms: same softmax."""
    y = torch.tensor([[0.0], [3.0], [40.0]])
    eta = torch.linspace(-3.0, 4.0, 11)[None, :].expand(3, 11)
    log_r = torch.tensor(0.7)
    full = C.nb_log_pmf(y, eta, log_r)
    lean = CD._nb_grid_kernel(y, eta, log_r)
    offset = full - lean
    np.testing.assert_allclose(offset.numpy(), offset[:, :1].expand(3, 11).numpy(), atol=1e-5)
    np.testing.assert_allclose(
        torch.softmax(full, -1).numpy(), torch.softmax(lean, -1).numpy(), atol=1e-5
    )  # float32: the lean weights skip the rounding of large lgamma values
