"""``fit_technical(n_samples=...)`` sets the number of posterior draws behind its summaries."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dream_sc as ds


def fit(screen, n_samples):
    mdata = screen.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=30, seed=3, n_samples=n_samples)
    return mdata["rna"].varm["dream_technical"], mdata["rna"].uns["dream_technical"]


@pytest.fixture(scope="module")
def fits(tiny_screen):
    return {n: fit(tiny_screen, n) for n in (None, 1, 2, 20000)}


PARAMS = ["baseline", "dispersion"]


def test_default_is_exact_and_fit_unchanged(fits):
    exact, record = fits[None]
    assert record["params"]["n_samples"] == ""  # None, stored h5-safe
    for n in (1, 2, 20000):
        table, rec = fits[n]
        assert rec["params"]["n_samples"] == n
        np.testing.assert_array_equal(rec["loss"], record["loss"])  # same SVI fit
        assert list(table.columns) == list(exact.columns)
    z = 1.6448536269514722
    np.testing.assert_allclose(
        exact["baseline_q05"], exact["baseline_mean"] - z * exact["baseline_sd"]
    )


@pytest.mark.parametrize("param", PARAMS)
def test_one_draw(fits, param):
    table, _ = fits[1]
    np.testing.assert_array_equal(table[f"{param}_sd"], 0.0)
    for stat in ("q05", "q50", "q95"):
        np.testing.assert_array_equal(table[f"{param}_{stat}"], table[f"{param}_mean"])


@pytest.mark.parametrize("param", PARAMS)
def test_two_draws(fits, param):
    """Two draws a < b: mean = median, sd = (b - a) / sqrt(2), q95 - q05 = 0.9 (b - a)."""
    table, _ = fits[2]
    np.testing.assert_allclose(table[f"{param}_q50"], table[f"{param}_mean"], rtol=1e-12)
    spread = table[f"{param}_q95"] - table[f"{param}_q05"]
    np.testing.assert_allclose(spread, 0.9 * np.sqrt(2) * table[f"{param}_sd"], rtol=1e-10)
    assert (table[f"{param}_sd"] > 0).all()


@pytest.mark.parametrize("param", PARAMS)
def test_many_draws_approach_the_exact_summary(fits, param):
    exact, _ = fits[None]
    table, _ = fits[20000]
    sd = exact[f"{param}_sd"].to_numpy()
    mean_err = np.abs(table[f"{param}_mean"] - exact[f"{param}_mean"]) / sd
    assert mean_err.max() < 5 / np.sqrt(20000)
    np.testing.assert_allclose(table[f"{param}_sd"], sd, rtol=0.03)
    for stat in ("q05", "q95"):
        err = np.abs(table[f"{param}_{stat}"] - exact[f"{param}_{stat}"]) / sd
        assert err.max() < 0.06
