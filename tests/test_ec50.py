"""Response-scale EC50: closed form against numeric roots, NaN rules, stored columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import expit, logit

import dream_sc as ds
from dream_sc.models import ec50 as E
from dream_sc.models.curves import hill_fraction
from dream_sc.models.families import get_family

LOG_X_REF = float(np.log(8.0))
HALF_RANGE = 2.5
RESPONSE_COLUMNS = ["ec50_response_mean", "ec50_response_q05", "ec50_response_q95"]


def _t(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def _single(eta_ref, v, k, n) -> dict[str, torch.Tensor]:
    """Draws ``[1, T]`` of single-Hill parameters."""
    return {
        "eta_ref": _t([[eta_ref]]),
        "v1": _t([[v]]),
        "log_k1": _t(np.log([[k]])),
        "n1": _t([[n]]),
    }


def _eta(params: dict, x: float, t: int) -> float:
    """Link-scale curve of feature ``t`` at dose ``x`` (numpy, independent of the module)."""
    h = lambda k, n: expit(n * (np.log(x) - k))  # noqa: E731
    h_ref = lambda k, n: expit(n * (LOG_X_REF - k))  # noqa: E731
    p = {k: v[0, t].item() for k, v in params.items() if k != "coef"}
    out = p["eta_ref"] + p["v1"] * (h(p["log_k1"], p["n1"]) - h_ref(p["log_k1"], p["n1"]))
    if "v2" in p:
        out += p["v2"] * (h(p["log_k2"], p["n2"]) - h_ref(p["log_k2"], p["n2"]))
    return out


CASES = [  # eta_ref, v, K, n
    (1.0, 2.0, 5.0, 2.0),
    (3.0, -1.5, 20.0, 1.3),
    (-2.0, 4.0, 2.0, 3.5),
    (0.5, 0.3, 9.0, 0.8),
]


@pytest.mark.parametrize(("eta_ref", "v", "k", "n"), CASES)
def test_log_link_closed_form_matches_numeric_root(eta_ref, v, k, n):
    """``v h = log((1 + e^v) / 2)``, inverted through the Hill, is where the mean is half-way."""
    params = _single(eta_ref, v, k, n)
    got = float(E.single_hill_response_log_ec50("negbinom", params, LOG_X_REF)[0, 0])
    eta0 = eta_ref - v * float(hill_fraction(_t(LOG_X_REF), _t(np.log(k)), _t(n)))
    half = 0.5 * (np.exp(eta0) + np.exp(eta0 + v))  # mean half-way between the asymptotes
    root = brentq(lambda lx: np.exp(_eta(params, np.exp(lx), 0)) - half, -30, 30, xtol=1e-13)
    assert got == pytest.approx(root, abs=1e-6)
    h = np.log((1 + np.exp(v)) / 2) / v
    assert got == pytest.approx(np.log(k) + logit(h) / n, abs=1e-9)


@pytest.mark.parametrize(("eta_ref", "v", "k", "n"), CASES)
def test_logit_and_identity_closed_forms(eta_ref, v, k, n):
    params = _single(eta_ref, v, k, n)
    got = float(E.single_hill_response_log_ec50("binomial", params, LOG_X_REF)[0, 0])
    eta0 = eta_ref - v * float(hill_fraction(_t(LOG_X_REF), _t(np.log(k)), _t(n)))
    half = 0.5 * (expit(eta0) + expit(eta0 + v))
    root = brentq(lambda lx: expit(_eta(params, np.exp(lx), 0)) - half, -30, 30, xtol=1e-13)
    assert got == pytest.approx(root, abs=1e-6)
    # identity link: the response-scale EC50 is K itself
    ident = float(E.single_hill_response_log_ec50("normal", params, LOG_X_REF)[0, 0])
    assert ident == pytest.approx(np.log(k), abs=1e-12)


def test_log_link_half_way_fraction_is_smooth_at_zero_amplitude():
    family = get_family("negbinom")
    v = _t([-1e-7, 1e-7, 1e-3])
    h = family.half_way_fraction(torch.zeros_like(v), v)
    # h = 1/2 + v/8 + O(v^3) near 0; the exact expression elsewhere
    want = [0.5 - 1.25e-8, 0.5 + 1.25e-8, np.log((1 + np.exp(1e-3)) / 2) / 1e-3]
    np.testing.assert_allclose(h.numpy(), want, rtol=0, atol=1e-12)


def test_additive_and_polynomial_crossings_match_numeric_roots():
    lo, hi = 1.5, 60.0
    additive = {
        "eta_ref": _t([[1.0, 0.2]]),
        "v1": _t([[2.5, -1.0]]),
        "log_k1": _t(np.log([[4.0, 3.0]])),
        "n1": _t([[2.0, 1.5]]),
        "v2": _t([[-1.2, 2.0]]),
        "log_k2": _t(np.log([[25.0, 30.0]])),
        "n2": _t([[3.0, 2.5]]),
    }
    got = E.crossing_log_dose("negbinom", "additive_hill", additive, lo, hi, LOG_X_REF, HALF_RANGE)
    for t in range(2):
        f = lambda lx, t=t: np.exp(_eta(additive, np.exp(lx), t))  # noqa: E731
        half = 0.5 * (f(np.log(lo)) + f(np.log(hi)))
        grid = np.linspace(np.log(lo), np.log(hi), 20001)
        vals = np.array([f(g) - half for g in grid])
        first = np.flatnonzero(np.sign(vals[1:]) != np.sign(vals[0]))[0] + 1
        root = brentq(
            lambda lx, f=f, half=half: f(lx) - half, grid[first - 1], grid[first], xtol=1e-13
        )
        assert float(got[0, t]) == pytest.approx(root, abs=1e-6)
    poly = {"eta_ref": _t([[0.3]]), "coef": _t([[[0.8, -0.1, 0.05]]])}
    got = float(
        E.crossing_log_dose("negbinom", "polynomial", poly, lo, hi, LOG_X_REF, HALF_RANGE)[0, 0]
    )

    def fp(lx):
        u = (lx - LOG_X_REF) / (np.log(2) * HALF_RANGE)
        return np.exp(0.3 + 0.8 * u - 0.1 * u**2 + 0.05 * u**3)

    half = 0.5 * (fp(np.log(lo)) + fp(np.log(hi)))
    root = brentq(lambda lx: fp(lx) - half, np.log(lo), np.log(hi), xtol=1e-13)
    assert got == pytest.approx(root, abs=1e-6)


def test_nan_where_no_crossing_and_where_most_draws_have_none():
    flat = {
        "eta_ref": _t([[0.5, 0.5]]),
        "v1": _t([[0.0, 0.0]]),
        "log_k1": _t(np.log([[5.0, 5.0]])),
        "n1": _t([[2.0, 2.0]]),
        "v2": _t([[0.0, 0.0]]),
        "log_k2": _t(np.log([[9.0, 9.0]])),
        "n2": _t([[2.0, 2.0]]),
    }
    got = E.response_ec50_draws("negbinom", "additive_hill", flat, 1.0, 50.0, 0.0, 2.0)
    assert torch.isnan(got).all()
    single = _single(1.0, 0.0, 5.0, 2.0)
    assert torch.isnan(
        E.response_ec50_draws("negbinom", "single_hill", single, 1.0, 50.0, 0.0, 2.0)
    )
    # three draws of one feature: two with no response (v = 0), one with -> NaN summaries;
    # a second feature with a response in every draw -> finite summaries
    draws = {
        "eta_ref": _t([[1.0, 1.0]] * 3),
        "v1": _t([[0.0, 1.0], [0.0, 1.2], [2.0, 0.8]]),
        "log_k1": _t(np.log([[5.0, 5.0]] * 3)),
        "n1": _t([[2.0, 2.0]] * 3),
    }
    cols = E.response_ec50_columns("negbinom", "single_hill", draws, 1.0, 50.0, 0.0, 2.0)
    assert list(cols) == RESPONSE_COLUMNS
    for name in RESPONSE_COLUMNS:
        assert np.isnan(cols[name][0]) and np.isfinite(cols[name][1])
    assert cols["ec50_response_q05"][1] <= cols["ec50_response_mean"][1]
    assert cols["ec50_response_mean"][1] <= cols["ec50_response_q95"][1]


def test_grouped_family_uses_the_grid():
    """Multinomial categories: no closed form; the grid crossing lies inside the range."""
    params = {
        "eta_ref": _t([[0.0, 0.5]]),
        "v1": _t([[2.0, -1.0]]),
        "log_k1": _t(np.log([[5.0, 8.0]])),
        "n1": _t([[2.0, 2.0]]),
    }
    group = torch.tensor([0, 0])
    got = E.response_ec50_draws("multinomial", "single_hill", params, 1.0, 50.0, 0.0, 2.0, group, 1)
    assert torch.isfinite(got).all() and (got >= 1.0).all() and (got <= 50.0).all()


def test_trans_results_carry_the_response_scale_columns(fitted):
    res = ds.get.trans_results(fitted)
    assert set(RESPONSE_COLUMNS) <= set(res.columns)
    fit = res[res["fitted"]]
    assert np.isfinite(fit[RESPONSE_COLUMNS].to_numpy()).all()
    assert (fit["ec50_response_q05"] <= fit["ec50_response_q95"]).all()
    assert res.loc[~res["fitted"], RESPONSE_COLUMNS].isna().all().all()
    # additive Hill: the response-scale EC50 is a dose inside the observed range
    lo, hi = fitted["rna"].uns["dream_trans"]["dose_range"]
    assert fit["ec50_response_mean"].between(lo * (1 - 1e-6), hi * (1 + 1e-6)).all()


def test_polynomial_response_ec50_moves_along_the_dose_axis():
    """A curve without dose parameters has its response-scale EC50 draws moved directly."""
    from dream_sc.models.trans_summary import DoseAxis

    grid = np.linspace(-1.0, 5.0, 7)
    axis = DoseAxis(grid, np.stack([np.full(7, 0.1), np.full(7, -0.1)]))  # two worlds
    assert axis.response_ec50_move("single_hill") is None  # moved with log_k1 instead
    move = axis.response_ec50_move("polynomial")
    params = {"eta_ref": _t([[0.0]] * 2), "coef": _t([[[1.0, 0.0, -0.2]]] * 2)}
    args = ("negbinom", "polynomial", params, 1.0, 50.0, LOG_X_REF, HALF_RANGE)
    plain = E.response_ec50_columns(*args)
    moved = E.response_ec50_columns(*args, move=move)
    lo, hi = moved["ec50_response_q05"][0], moved["ec50_response_q95"][0]
    assert plain["ec50_response_q05"][0] == pytest.approx(plain["ec50_response_q95"][0])
    assert np.log(hi / lo) == pytest.approx(0.2 * 0.9, rel=1e-3)  # the worlds' 0.2 apart
