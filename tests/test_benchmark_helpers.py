"""Fast checks of the benchmark helpers (naive baseline, metrics) so the benchmarks cannot rot."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.stats import false_discovery_control, mannwhitneyu

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _metrics as M  # noqa: E402
import naive_baseline as NB  # noqa: E402

import dream_sc as ds  # noqa: E402


# ----------------------------------------------------------------------------- metrics
def test_spearman_ignores_non_finite_pairs():
    assert M.spearman([1, 2, 3, np.nan, 5], [10, 20, 30, 40, 0]) == pytest.approx(-0.2)
    assert np.isnan(M.spearman([1, 2], [1, 2]))


def test_median_abs_log2_error_counts_non_positive_as_infinite():
    assert M.median_abs_log2_error([2.0, 4.0, 1.0], [1.0, 4.0, 8.0]) == 1.0
    # zero estimate -> infinite error, kept: errors [1, 0, inf, inf] -> median (1 + inf) / 2
    assert M.median_abs_log2_error([2.0, 4.0, 0.0, 0.0], [1.0, 4.0, 1.0, 1.0]) == np.inf
    assert M.median_abs_log2_error([2.0, 4.0, 0.0], [1.0, 4.0, 1.0]) == 1.0


def test_median_relative_error_axis():
    fit = np.array([[1.0, 3.0, 2.0], [2.0, 2.0, 2.0]])
    tru = np.array([[1.0, 2.0, 4.0], [1.0, 1.0, 4.0]])
    np.testing.assert_allclose(M.median_relative_error(fit, tru, axis=1), [0.5, 1.0])
    assert M.median_relative_error(fit, tru) == pytest.approx(0.5)


def test_auroc_matches_mann_whitney_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.random(60) < 0.3
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)  # rounding makes ties
    u = mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert M.auroc(labels, scores) == pytest.approx(u / (labels.sum() * (~labels).sum()))
    assert M.auroc([True, True, False], [3.0, 2.0, 1.0]) == 1.0
    assert M.auroc([True, False], [1.0, 1.0]) == 0.5
    # NaN scores count as lowest
    assert M.auroc([True, False, False], [np.nan, 1.0, 2.0]) == 0.0
    assert np.isnan(M.auroc([True, True], [1.0, 2.0]))


def test_pvalue_ranking_breaks_ties_by_the_second_score():
    p = np.array([0.01, 0.01, 0.5, np.nan, 0.01, 0.2])
    score = np.array([3.0, 9.0, 1.0, 5.0, 3.0, np.nan])
    assert M.pvalue_ranking(p, score).tolist() == [4.0, 5.0, 2.0, 1.0, 4.0, 3.0]


def test_discoveries_and_power():
    q = [0.01, 0.05, 0.2, np.nan, 0.09]
    labels = [True, False, True, True, True]
    assert M.discoveries(q, labels, alpha=0.1) == (3, 1, pytest.approx(1 / 3))
    assert M.discoveries([0.5, 0.6], [True, False]) == (0, 0, 0.0)
    n, false, fdp = M.discoveries(q, alpha=0.1)
    assert (n, false, np.isnan(fdp)) == (3, -1, True)
    assert M.power(q, labels, alpha=0.1) == 0.5


def test_power_at_fdr_by_hand():
    labels = [True, True, False, True, False, False]
    scores = [9.0, 8.0, 7.0, 6.0, np.nan, 1.0]
    # cuts: 1/1 true, 2/2, 2/3 (FDP 1/3), 3/4 (FDP 1/4), NaN never called
    assert M.power_at_fdr(labels, scores, level=0.1) == pytest.approx(2 / 3)
    assert M.power_at_fdr(labels, scores, level=0.25) == pytest.approx(1.0)
    # a tie between a true and a false hit is cut as one block: 1 of 2 false
    assert M.power_at_fdr([True, False], [5.0, 5.0], level=0.4) == 0.0
    assert M.power_at_fdr([True, False], [5.0, 5.0], level=0.5) == 1.0
    assert np.isnan(M.power_at_fdr([False, False], [1.0, 2.0]))


def test_peak_rss_sees_a_transient_allocation():
    with M.PeakRSS(interval=0.01) as mem:
        block = np.ones(40_000_000)  # 320 MB, freed before exit
        del block
    assert mem.peak_gb - mem.start_gb > 0.25
    assert mem.seconds > 0 and mem.cpu_seconds >= 0
    assert len(mem.load) == 2 and all(np.isfinite(mem.load))


def test_markdown_table_exact():
    frame = pd.DataFrame(
        {"x": [1.23456, np.nan], "y": ["a", "b"]}, index=pd.Index(["r1", "r2"], name="m")
    )
    assert M.markdown_table(frame) == (
        "| m | x | y |\n|---|---|---|\n| r1 | 1.23 | a |\n| r2 | nan | b |"
    )


# ----------------------------------------------------------------------------- naive baseline
def test_bh_qvalues_match_scipy_and_keep_nan():
    p = np.array([0.01, 0.04, 0.03, 0.5, np.nan, 0.0001])
    q = NB.bh_qvalues(p)
    finite = np.isfinite(p)
    np.testing.assert_allclose(q[finite], false_discovery_control(p[finite]))
    assert np.isnan(q[4])
    np.testing.assert_allclose(
        NB.bh_qvalues(np.array([0.01, 0.04, 0.03, 0.5])), [0.04, 0.16 / 3, 0.16 / 3, 0.5]
    )


def test_hill_and_hill_curve():
    assert NB.hill(np.array([3.0]), 1.0, 2.0, 3.0, 2.0)[0] == pytest.approx(2.0)
    params = pd.DataFrame(
        {"a": [0.0, 1.0], "v": [np.log(4.0), 0.0], "K": [2.0, 1.0], "n": [1.0, 3.0]},
        index=["g", "h"],
    )
    curve = NB.hill_curve(params, np.array([2.0, 6.0]))
    np.testing.assert_allclose(curve.to_numpy(), [[2.0, 4.0**0.75], [np.e, np.e]])
    assert list(curve.index) == ["g", "h"]


def test_fit_hill_curves_recovers_noiseless_curve_and_flags_flat_gene():
    dose = np.geomspace(0.5, 20.0, 12)
    rng = np.random.default_rng(0)
    responsive = np.exp(NB.hill(dose, 1.0, 2.0, 3.0, 2.0))
    flat = 5.0 * np.exp(rng.normal(0.0, 0.05, dose.size))
    res = NB.fit_hill_curves(
        dose, np.column_stack([responsive, flat]), features=pd.Index(["r", "f"]), pseudocount=0.0
    )
    np.testing.assert_allclose(
        res.loc["r", ["a", "v", "K", "n"]].to_numpy(float), [1.0, 2.0, 3.0, 2.0], rtol=1e-4
    )
    assert res.loc["r", "pvalue"] < 1e-10
    assert res.loc["f", "pvalue"] > 0.05
    assert res.loc["r", "log2_response"] == pytest.approx(2.0 / np.log(2.0), rel=1e-4)
    # F statistic by hand for the flat gene
    y = np.log(flat)
    fit = NB.hill(dose, *res.loc["f", ["a", "v", "K", "n"]].to_numpy(float))
    rss1, rss0 = ((y - fit) ** 2).sum(), ((y - y.mean()) ** 2).sum()
    assert res.loc["f", "F"] == pytest.approx(((rss0 - rss1) / 3) / (rss1 / 8))
    np.testing.assert_allclose(res["qvalue"], NB.bh_qvalues(res["pvalue"].to_numpy()))


def test_fit_hill_curves_zero_gene_and_errors():
    dose = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    means = np.column_stack([np.zeros(5), np.linspace(1, 2, 5)])
    res = NB.fit_hill_curves(dose, means)
    assert np.isnan(res.loc[0, "pvalue"]) and np.isfinite(res.loc[1, "pvalue"])
    with pytest.raises(ValueError, match="means must be guides x genes with 5 rows"):
        NB.fit_hill_curves(dose, means[:4])
    with pytest.raises(ValueError, match="dose must hold positive finite guide dosages"):
        NB.fit_hill_curves(np.array([0.0, 1, 2, 3, 4]), means)


@pytest.mark.parametrize("as_sparse", [False, True])
def test_guide_pseudobulk_by_hand(as_sparse):
    counts = np.array([[2.0, 0.0], [4.0, 1.0], [6.0, 3.0], [1.0, 1.0]])
    sf = np.array([1.0, 2.0, 1.0, 0.5])
    group = np.array([0, 1, 1, 0])
    guide = np.array(["g2", "g1", "g2", "g1"])
    effects = np.array([[0.0, np.log(2.0)], [0.0, np.log(0.5)]])  # features x groups
    guides, n_cells, means = NB.guide_pseudobulk(
        sparse.csr_matrix(counts) if as_sparse else counts, sf, group, guide, effects
    )
    assert list(guides) == ["g1", "g2"] and list(n_cells) == [2, 2]
    # g1: cell 1 (group 1): [4/2/2, 1/2/0.5] = [1, 1]; cell 3 (group 0): [2, 2]
    # g2: cell 0 (group 0): [2, 0]; cell 2 (group 1): [6/2, 3/0.5] = [3, 6]
    np.testing.assert_allclose(means, [[1.5, 1.5], [2.5, 3.0]])


@pytest.fixture(scope="module")
def small_screen():
    return ds.datasets.simulate_screen(
        n_cells=1200, n_genes=30, n_junctions=0, n_isoform_genes=0, seed=4
    )


def test_technical_effects_sources(small_screen):
    eff = NB.technical_effects(small_screen)
    assert list(eff.columns) == ["K562", "HEK293T"]
    assert (eff["K562"] == 0).all() and eff.shape == (30, 2)
    with pytest.raises(KeyError, match="No technical fit 'dream_technical' in 'rna'"):
        NB.technical_effects(small_screen, source="dream")
    with pytest.raises(ValueError, match="source must be 'true' or 'dream'; got 'x'"):
        NB.technical_effects(small_screen, source="x")


def test_naive_fit_on_a_small_screen(small_screen):
    truth = small_screen.uns["truth"]
    res = NB.naive_fit(
        small_screen, cis_feature="GFI1B", technical=NB.technical_effects(small_screen)
    )
    used = small_screen.obs["target"].astype(str).isin(["ntc", "GFI1B"])
    assert len(res.cells) == used.sum() == res.guides["n_cells"].sum()
    assert "GFI1B" not in res.genes.index and len(res.genes) == 29
    assert set(res.guides.index) == set(truth["guides"].index)
    # guide dosages: arithmetic means of log-normal cell dosages (sd 0.3 log2), close to truth
    err = M.median_abs_log2_error(
        res.guides["dose"], truth["guides"]["dose"].reindex(res.guides.index)
    )
    assert err < 0.15
    assert (
        M.spearman(res.cells["dose_guide"], small_screen.obs.loc[res.cells.index, "true_dose"])
        > 0.8
    )
    # the per-cell naive dosage from own counts is noisier than the guide's
    true_cell = small_screen.obs.loc[res.cells.index, "true_dose"]
    assert M.median_abs_log2_error(res.cells["dose_cell"], true_cell) > M.median_abs_log2_error(
        res.cells["dose_guide"], true_cell
    )
    # detection: responsive genes rank above flat ones
    resp = small_screen["rna"].var.loc[res.genes.index, "true_responsive"].to_numpy(bool)
    assert M.auroc(resp, -np.log10(res.genes["pvalue"].to_numpy())) > 0.8
    curve = res.curve(np.array([1.0, 10.0]))
    assert curve.shape == (29, 2) and np.all(curve.to_numpy() > 0)


def test_compare_naive_quick_arguments():
    import compare_naive as C

    args = C.parse_args(["--quick", "--seeds", "0", "1"])
    assert (args.cells, args.genes, args.steps_technical, args.steps_cis, args.steps_trans) == (
        1500,
        150,
        150,
        500,
        250,
    )
    assert args.screens == ["a", "b", "c"] and args.seeds == [0, 1]
    assert C.parse_args([]).cells == 3000


@pytest.mark.slow
def test_compare_naive_end_to_end_on_a_tiny_screen():
    import compare_naive as C

    args = C.parse_args(
        ["--cells", "400", "--genes", "20", "--steps-technical", "40", "--steps-cis", "100"]
        + ["--steps-trans", "40", "--screens", "a"]
    )
    frame, info = C.one_screen("a", 0, args)
    table = C.summarise(frame)["a"]
    assert list(table.columns) == list(C.METHODS)
    for m in ("dream_sc", "naive_true_tech", "naive_dream_tech"):
        assert 0.0 <= table.loc["auroc", m] <= 1.0
        assert table.loc["guide_dose_spearman", m] > 0.8
        assert np.isfinite(table.loc["curve_rel_err_est", m])
    assert table.loc["n_genes", "dream_sc"] == 19
    assert info["dream_peak_rss_gb"] > 0 and info["converged"].count("/") == 2
