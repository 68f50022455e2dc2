"""Size factors that the perturbation's composition does not bias, and the shared-shift score."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import sparse

import dream_sc as ds
from dream_sc.models.null import dose_basis, null_model, score_parts, statistics
from dream_sc.models.shared_shift import estimate_shift, remove_shift, shift_profile
from dream_sc.models.size_factors import (
    association_pvalues,
    deconvolution_factors,
    library_factors,
)
from dream_sc.tl._shift_check import shift_diagnostic


def _composition_counts(seed: int = 0, n: int = 800, t: int = 300):
    """Counts whose second half of cells has 20% of the features up 4x (library +60%)."""
    rng = np.random.default_rng(seed)
    s = np.exp(rng.normal(0, 0.3, n))
    s /= s.mean()
    mu = np.exp(rng.uniform(np.log(0.5), np.log(20), t))
    perturbed = np.arange(n) >= n // 2
    fold = np.ones((n, t))
    fold[np.ix_(perturbed, np.arange(t) < t // 5)] = 4.0
    y = rng.poisson(s[:, None] * mu[None, :] * fold).astype(np.float64)
    return sparse.csr_matrix(y), s, perturbed


def _bias(factors, truth, perturbed) -> float:
    """log ratio (perturbed vs. rest) of estimated over true factors."""
    r = np.log(factors / truth)
    return float(r[perturbed].mean() - r[~perturbed].mean())


def test_library_factors_are_totals_over_mean():
    X = sparse.csr_matrix(np.array([[1, 2, 3], [0, 0, 6], [4, 4, 4]], dtype=float))
    np.testing.assert_allclose(library_factors(X), np.array([6, 6, 12]) / 8)
    np.testing.assert_allclose(
        library_factors(X, np.array([1, 2])), np.array([5, 6, 8]) / 6.3333333333
    )
    with pytest.raises(ValueError, match="zero counts"):
        library_factors(X, np.array([0, 1]))


def test_deconvolution_resists_composition():
    X, s, perturbed = _composition_counts()
    lib = library_factors(X)
    dec = deconvolution_factors(X)
    assert _bias(lib, s, perturbed) > 0.4  # library: the perturbed cells look 60% deeper
    assert abs(_bias(dec, s, perturbed)) < 0.1  # the median moves a little with 20% moving
    assert np.corrcoef(np.log(dec), np.log(s))[0, 1] > 0.9
    np.testing.assert_allclose(dec.mean(), 1.0)


def test_association_flags_moving_features():
    X, s, perturbed = _composition_counts(seed=1)
    p = association_pvalues(X, s, perturbed.astype(int), np.zeros(len(s), int))
    moving = np.arange(X.shape[1]) < X.shape[1] // 5
    assert (p[moving] < 1e-6).all()
    assert np.mean(p[~moving] < 0.01) < 0.05  # about uniform for the flat features


def test_dose_aware_on_two_line_screen():
    mdata = ds.datasets.simulate_screen(
        n_cells=1500,
        n_genes=120,
        n_junctions=0,
        n_isoform_genes=0,
        guide_design="line_specific",
        guides_per_target=2,
        dose_noise=0.7,
        frac_responsive=0.25,
        seed=3,
    )
    # CRISPRa cells against the NTC cells of their own line (the CRISPRa line)
    line = (mdata.obs["cell_line"].astype(str) == "HEK293T").to_numpy()
    truth = mdata.obs["true_size_factor"].to_numpy()[line]
    crispra = mdata.obs["guide"].astype(str).str.contains("_a").to_numpy()[line]
    ntc = (mdata.obs["target"] == "ntc").to_numpy()[line]
    ds.pp.sum_factors(mdata, key_added="lib", method="library")
    ds.pp.sum_factors(mdata, key_added="da", method="dose_aware", technical_key="cell_line")
    both = crispra | ntc
    lib = mdata.obs["lib"].to_numpy()[line]
    da = mdata.obs["da"].to_numpy()[line]
    lib_bias = _bias(lib[both], truth[both], crispra[both])
    da_bias = _bias(da[both], truth[both], crispra[both])
    assert lib_bias > 0.06  # measured 0.083: libraries grow with the cis gene and responders
    assert abs(da_bias) < 0.03  # measured 0.012
    record = mdata.uns["dream_sum_factors"]["da"]
    assert record["method_used"] == "dose_aware"
    assert "GFI1B" in set(record["left_out"])
    responsive = mdata["rna"].var_names[mdata["rna"].var["true_responsive"].to_numpy(bool)]
    assert np.mean(np.isin(responsive, record["left_out"])) > 0.8
    # the simulator's own column is the default estimate from the counts, in the truth's unit
    # (one constant, see datasets._normalise)
    scale = mdata.uns["dream_sum_factors"]["sum_factor"]["scale"]
    np.testing.assert_allclose(mdata.obs["sum_factor"], scale * mdata.obs["da"])


def test_default_call_without_labels_falls_back():
    mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=40, n_junctions=0, n_isoform_genes=0)
    del mdata.obs["guide"], mdata.obs["target"]
    ds.pp.sum_factors(mdata, modality="rna", key_added="sum_factor")
    assert mdata.uns["dream_sum_factors"]["sum_factor"]["method_used"] == "deconvolution"
    np.testing.assert_allclose(mdata.obs["sum_factor"].mean(), 1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        ds.pp.sum_factors(mdata, method="tmm")


def _shifted_screen(shift: float, seed: int = 0, n: int = 1500, t: int = 200):
    """Flat NB features whose offsets carry ``shift * standardised log dose``."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    log_x = rng.normal(0, 1, n) + 0.5 * group
    onehot = np.eye(2)[group]
    sf = np.exp(rng.normal(0, 0.3, n))
    z = (log_x - log_x.mean()) / log_x.std()
    mu = np.exp(rng.uniform(np.log(1), np.log(30), t))
    r = 5.0
    mean = sf[:, None] * mu[None, :] * np.exp(shift * z)[:, None]
    y = rng.negative_binomial(r, r / (r + mean)).astype(np.float64)
    model = null_model("negbinom", y, onehot, log_sf=np.log(sf), log_r=np.full(t, np.log(r)))
    return model, onehot, group, log_x


def test_shared_shift_estimated_and_removed():
    model, onehot, group, log_x = _shifted_screen(0.1)
    basis = dose_basis(log_x)
    rng = np.random.default_rng(1)
    perms = []
    for _ in range(20):
        p = np.arange(len(group))
        for g in (0, 1):
            idx = np.flatnonzero(group == g)
            p[idx] = rng.permutation(idx)
        perms.append(p)
    u, v = score_parts(model, onehot, [basis] + [basis[p] for p in perms])
    raw = statistics(u, v, model.dispersion)
    shift = estimate_shift(u, v, model.dispersion)
    fixed = statistics(remove_shift(u, v, shift.gamma), v, model.dispersion)
    # gamma on the standardised basis: about 0.1 (z = the basis' first column), permutations ~0
    assert abs(shift.gamma[0, 0] - 0.1) < 0.02
    assert np.abs(shift.gamma[1:, 0]).max() < 0.02
    assert np.median(raw[0]) > 5  # every flat feature "responds" without the correction
    assert 0.5 < np.median(fixed[0]) / np.median(fixed[1:]) < 1.5  # exchangeable again
    change = shift_profile(shift.gamma[0], basis, log_x)
    assert 0.2 < change < 0.6  # log2 change of the shared offset between dose quantiles


def test_shift_diagnostic_flags():
    ok = shift_diagnostic(
        {"log2_change": 0.01, "null_log2_change_sd": 0.01}, np.zeros(100), np.zeros(100, bool)
    )
    assert not ok["warn"]
    rng = np.random.default_rng(0)
    shifted = -0.15 + 0.05 * rng.normal(size=200)
    bad = shift_diagnostic(
        {"log2_change": -0.14, "null_log2_change_sd": 0.01}, shifted, np.zeros(200, bool)
    )
    assert bad["warn"] and bad["flat_median_log2"] < -0.1 and bad["shared_shift_z"] < -10


def test_library_factors_warn_and_calibrate_on_two_line_screen():
    mdata = ds.datasets.simulate_screen(
        n_cells=1500,
        n_genes=100,
        n_junctions=0,
        n_isoform_genes=0,
        guide_design="line_specific",
        guides_per_target=2,
        dose_noise=0.7,
        frac_responsive=0.25,
        seed=0,
    )
    ds.pp.sum_factors(mdata, key_added="lib", method="library")
    kw = {"sum_factor_key": "lib", "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=60, **kw)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, **kw)
    with pytest.warns(UserWarning, match="shifted off zero"):
        ds.tl.fit_trans(mdata, function="single_hill", n_steps=20, refine_intervals=False, **kw)
    record = mdata["rna"].uns["dream_trans"]
    assert record["shared_shift"]["log2_change"] < -0.05
    res = ds.get.trans_results(mdata)
    truth = mdata["rna"].var["true_responsive"].to_numpy(bool)
    called = res["qvalue"].to_numpy() < 0.1
    assert (called & ~truth).sum() <= 0.1 * max(called.sum(), 1) + 1
    with pytest.warns(UserWarning, match="shifted off zero"):
        check = ds.tl.calibration_check(mdata)
    assert check.attrs["shift"]["warn"]


def test_shift_message_quotes_only_what_was_measured():
    from dream_sc.tl._shift_check import shift_message

    diag = {
        "shared_shift_log2": -0.21,
        "shared_shift_z": 6.7,
        "flat_median_log2": np.nan,
        "flat_pvalue": np.nan,
        "n_flat": 13,
    }
    text = shift_message(diag)
    assert text.startswith(
        "The features without a dose response are shifted off zero: shared shift -0.21 log2 "
        "over the dosage range (+6.7 sd of the permutations' shifts). The size factors"
    )
    assert "nan" not in text
