"""Parameter recovery on simulated screens with known truth (``pytest -m slow``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

import dream_sc as ds

pytestmark = pytest.mark.slow


def _fit_all(mdata, modalities=("rna",), function="additive_hill", seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod in modalities:
            ds.tl.fit_technical(mdata, modality=mod, seed=seed)
        ds.tl.fit_cis(mdata, cis_feature=mdata.uns["truth"]["cis_feature"], seed=seed)
        for mod in modalities:
            fn = function if mod == "rna" else "single_hill"
            ds.tl.fit_trans(mdata, modality=mod, function=fn, seed=seed)
    return mdata


@pytest.fixture(scope="module")
def screen():
    mdata = ds.datasets.simulate_screen(n_cells=3000, n_genes=300, continuous=True, seed=0)
    return _fit_all(mdata, modalities=("rna", "splicing", "isoform", "score"))


def _fitted_and_true(mdata, modality, features):
    """Fitted and true mean curves ``[features, guides]`` at the guides' estimated dosages.

    Doses are sorted once and used for both tables, so columns line up (``trans_curves`` is
    long format and pivots to sorted doses).
    """
    doses = np.unique(ds.get.cis_dosage(mdata)["dose_mean"].to_numpy())
    fit = ds.get.trans_curves(mdata, modality=modality, dose=doses, features=list(features))
    fitted = fit.pivot(index="feature", columns="dose", values="mean").loc[list(features)]
    assert np.allclose(fitted.columns.to_numpy(dtype=float), doses, rtol=1e-5)
    true = ds.datasets.true_curve(mdata, modality, doses).loc[list(features)]
    return fitted.to_numpy(), true.to_numpy()


def _curve_error(mdata, modality, relative):
    res = ds.get.trans_results(mdata, modality=modality)
    var = mdata[modality].var
    responsive = res.index[res["fitted"] & var["true_responsive"].reindex(res.index).to_numpy(bool)]
    fitted, truth = _fitted_and_true(mdata, modality, responsive)
    err = np.abs(fitted - truth) / (np.abs(truth) if relative else 1.0)
    return float(np.median(err))


def test_cis_dosage_recovery(screen):
    guides = ds.get.cis_dosage(screen)
    truth = screen.uns["truth"]["guides"].loc[guides.index, "dose"]
    rho = stats.spearmanr(guides["dose_mean"], truth).statistic
    assert rho >= 0.95, rho
    # no scale bias, and 90% intervals that cover the true guide dosage
    bias = np.median(np.log2(guides["dose_mean"] / truth))
    assert abs(bias) < 0.05, bias
    covered = ((guides["dose_q05"] <= truth) & (truth <= guides["dose_q95"])).mean()
    assert covered >= 0.75, covered


def test_cis_technical_effect_is_updated_towards_the_truth(screen):
    """All cells of the cis fit re-estimate the cis gene's technical effect."""
    cis = screen.uns["truth"]["cis_feature"]
    te = screen.uns["dream_cis"]["technical_effects"].loc["HEK293T"]
    true = screen["rna"].varm["true_technical"].loc[cis, "HEK293T"]
    assert abs(te["mean"] - true) <= abs(te["step1"] - true) + 0.01
    assert abs(te["mean"] - true) < 3 * te["sd"] + 0.01


def test_technical_recovery_rna(screen):
    est = screen["rna"].varm["dream_technical"]["effect_HEK293T_mean"]
    true = screen["rna"].varm["true_technical"]["HEK293T"]
    r = np.corrcoef(est, true)[0, 1]
    assert r >= 0.9, r


def _pooled_logit_shift(adata, cells, line):
    """Logit of pooled successes / trials, HEK293T minus K562, over ``cells``."""
    k = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    total = adata.layers["total"]
    n = total.toarray() if hasattr(total, "toarray") else np.asarray(total)

    def logit(mask):
        p = (k[mask].sum(0) + 0.5) / (n[mask].sum(0) + 1.0)
        return np.log(p / (1 - p))

    return logit(cells & line) - logit(cells & ~line)


def test_technical_recovery_splicing_reaches_the_information_limit(screen):
    """Junctions carry ~1.5 reads per NTC cell: no estimator from the 750 NTC cells gets near
    r = 0.9. dream_sc must do at least as well as pooling them (measured: 0.80 vs 0.77)."""
    sp = screen["splicing"]
    est = sp.varm["dream_technical"]["effect_HEK293T_mean"].to_numpy()
    true = sp.varm["true_technical"]["HEK293T"].to_numpy()
    ntc = (screen.obs["target"].astype(str) == "ntc").to_numpy()
    line = (screen.obs["cell_line"] == "HEK293T").to_numpy()
    pooled = _pooled_logit_shift(sp, ntc, line)
    r, r_pooled = np.corrcoef(est, true)[0, 1], np.corrcoef(pooled, true)[0, 1]
    assert r >= r_pooled - 0.01, (r, r_pooled)
    assert r >= 0.75, r


def test_rna_curves_track_truth(screen):
    assert _curve_error(screen, "rna", relative=True) <= 0.15


def test_rna_flat_genes_have_near_zero_response(screen):
    res = ds.get.trans_results(screen)
    var = screen["rna"].var
    flat = res["fitted"] & ~var["true_responsive"].to_numpy(bool)
    assert np.median(np.abs(res.loc[flat, "response_mean"])) < 0.1
    assert (res.loc[flat, "shape"] == "flat").mean() >= 0.9


def test_rna_detection_and_fdr(screen):
    res = ds.get.trans_results(screen)
    fitted = res["fitted"]
    truth = screen["rna"].var["true_responsive"][fitted].to_numpy(bool)
    auroc = roc_auc_score(truth, res.loc[fitted, "prob_dose_dependent"])
    assert auroc >= 0.95, auroc
    sig = res.loc[fitted, "qvalue"].to_numpy() < 0.1
    fdr = (sig & ~truth).sum() / max(sig.sum(), 1)
    assert sig.sum() >= 0.5 * truth.sum()
    assert fdr <= 0.15, fdr


@pytest.mark.parametrize(
    "modality",
    [
        "splicing",
        "isoform",
    ],
)
def test_binomial_multinomial_recovery(screen, modality):
    res = ds.get.trans_results(screen, modality=modality)
    truth = screen[modality].var["true_responsive"].to_numpy(bool)
    auroc = roc_auc_score(truth, res["prob_dose_dependent"])
    assert auroc >= 0.9, auroc
    assert _curve_error(screen, modality, relative=False) <= 0.05


def test_continuous_recovery(screen):
    res = ds.get.trans_results(screen, modality="score")
    truth = screen["score"].var["true_responsive"].to_numpy(bool)
    assert roc_auc_score(truth, res["prob_dose_dependent"]) >= 0.9
    sigma = screen["score"].var["true_sigma"].to_numpy()
    fitted, true = _fitted_and_true(screen, "score", res.index[truth])
    assert np.median(np.abs(fitted - true) / sigma[truth][:, None]) <= 0.25


def _ec50_coverage(seed: int) -> tuple[int, int, np.ndarray]:
    """Clearly responsive single-Hill genes of one screen, how many intervals cover the truth,
    and the effective sample sizes of their refinement."""
    mdata = ds.datasets.simulate_screen(n_cells=3000, n_genes=300, seed=seed)
    _fit_all(mdata, function="single_hill", seed=seed)
    res = ds.get.trans_results(mdata)
    var = mdata["rna"].var
    lo, hi = mdata.uns["dream_cis"]["dose_range"]
    clear = (
        res["fitted"]
        & (var["true_function"] == "single_hill")
        & res["significant"]
        & var["true_K1"].between(lo, hi)
    )
    inside = (res.loc[clear, "ec50_q05"] <= var.loc[clear, "true_K1"]) & (
        var.loc[clear, "true_K1"] <= res.loc[clear, "ec50_q95"]
    )
    assert res.loc[clear, "refined"].all()
    return int(clear.sum()), int(inside.sum()), res.loc[clear, "refine_ess"].to_numpy()


def test_ec50_intervals_cover_truth():
    """90% EC50 intervals of clearly responsive genes cover the true EC50 >= 80% of the time.

    Three screens (seed 0 is the issue's ``simulate_screen(n_cells=3000, n_genes=300)``).
    Measured (500 draws): 52/60, 57/66, 46/58 (0.84 pooled); without the importance-sampling
    refinement 0.72, 0.77 and 0.66.
    """
    counts = [_ec50_coverage(seed) for seed in (0, 2, 3)]
    n_clear = sum(c[0] for c in counts)
    n_inside = sum(c[1] for c in counts)
    assert all(c[0] >= 30 for c in counts), [c[0] for c in counts]
    assert all(c[1] / c[0] >= 0.75 for c in counts), [(c[1], c[0]) for c in counts]
    assert n_inside / n_clear >= 0.8, (n_inside, n_clear)
    ess = np.concatenate([c[2] for c in counts])
    assert np.median(ess) >= 150 and ess.min() >= 30, (np.median(ess), ess.min())


def test_null_screens_are_calibrated():
    """No responsive feature: at most 2 discoveries per screen, rarely any at all."""
    any_discovery = []
    for seed in range(5):
        mdata = ds.datasets.simulate_screen(
            n_cells=3000, n_genes=300, frac_responsive=0.0, seed=100 + seed
        )
        _fit_all(mdata, seed=seed)
        q = ds.get.trans_results(mdata)["qvalue"].dropna()
        assert (q < 0.1).sum() <= 2, (seed, int((q < 0.1).sum()))
        any_discovery.append(bool((q < 0.1).any()))
    assert np.mean(any_discovery) <= 0.2


def test_studentt_recovers_curves_despite_outliers(screen):
    """Scores with 3% gross outliers (+-8 noise sd): a Student-t fit still tracks the truth."""
    mdata = screen.copy()
    score = mdata["score"]
    rng = np.random.default_rng(0)
    X = np.array(score.X, dtype=np.float64)
    sigma = score.var["true_sigma"].to_numpy()
    hit = rng.random(X.shape) < 0.03
    X[hit] += rng.choice([-8.0, 8.0], size=hit.sum()) * np.broadcast_to(sigma, X.shape)[hit]
    score.X = X
    ds.pp.register_modality(mdata, "score", distribution="studentt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, modality="score", seed=0)
        ds.tl.fit_trans(mdata, modality="score", function="single_hill", seed=0)
    res = ds.get.trans_results(mdata, modality="score")
    truth = score.var["true_responsive"].to_numpy(bool)
    assert (res["distribution"] == "studentt").all()
    assert roc_auc_score(truth, res["prob_dose_dependent"]) >= 0.9
    fitted, true = _fitted_and_true(mdata, "score", res.index[truth])
    assert np.median(np.abs(fitted - true) / sigma[truth][:, None]) <= 0.25


#: The CRISPRi-line + CRISPRa-line design of issue 14 (2 guides per line, wide dosage noise).
TWO_LINE = {
    "guide_design": "line_specific",
    "guides_per_target": 2,
    "dose_noise": 0.7,
    "n_junctions": 0,
    "n_isoform_genes": 0,
}


def _fit_for_significance(mdata, seed):
    """Step 1 and 2 as usual; a short curve fit (q-values do not depend on it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=400, seed=seed)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=seed)
        ds.tl.fit_trans(
            mdata, function="single_hill", n_steps=100, refine_intervals=False, seed=seed
        )
    return mdata


def test_two_line_design_power_and_fdr():
    """Issue 14: CRISPRi guides in one line, CRISPRa in the other, the line as technical group.
    The old within-group refit null found 11 of 75 responsive genes; the conditional-
    randomisation null must find >= 80% at realised FDR <= 0.1 and pass its own check."""
    mdata = ds.datasets.simulate_screen(
        n_cells=4000, n_genes=300, frac_responsive=0.25, seed=0, **TWO_LINE
    )
    _fit_for_significance(mdata, seed=0)
    res = ds.get.trans_results(mdata)
    res = res[res["fitted"]]
    truth = mdata["rna"].var.loc[res.index, "true_responsive"].to_numpy(bool)
    called = res["qvalue"].to_numpy() < 0.1
    power = (called & truth).sum() / truth.sum()
    fdr = (called & ~truth).sum() / max(called.sum(), 1)
    assert power >= 0.8, power
    assert fdr <= 0.1, fdr
    assert mdata["rna"].uns["dream_trans"]["exchangeability"]["passed"]
    assert roc_auc_score(truth, res["score"]) >= 0.97


def test_two_line_null_screens_are_calibrated():
    """No responsive feature on the two-line design: at most 2 false calls per screen, and
    calibration_check works on it. With 50 permutations and exchangeable scores about 9% of
    null screens get any call (the FDR level) and under 1% more than two."""
    any_call, check_calls = [], []
    for seed in (100, 101):
        mdata = ds.datasets.simulate_screen(
            n_cells=3000, n_genes=300, frac_responsive=0.0, seed=seed, **TWO_LINE
        )
        _fit_for_significance(mdata, seed=seed)
        q = ds.get.trans_results(mdata)["qvalue"].dropna()
        assert (q < 0.1).sum() <= 2, (seed, int((q < 0.1).sum()))
        any_call.append(bool((q < 0.1).any()))
        assert mdata["rna"].uns["dream_trans"]["exchangeability"]["passed"]
        check = ds.tl.calibration_check(mdata, n_null_screens=3)
        assert (check["n_false_discoveries"] <= 2).all(), check
        check_calls += list(check["n_false_discoveries"] > 0)
    assert sum(any_call) <= 1
    assert sum(check_calls) <= 2, check_calls
