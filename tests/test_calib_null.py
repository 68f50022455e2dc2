"""Sparsity-matched permutation null (``dream_sc.tl._null.sparsity_matched``).

The pooled permutation null of a fit mixes the heavy-tailed nulls of sparse features with the
light ones of well-detected features; the sparse features are then anti-conservative and the
others conservative. These tests check the map on hand-made scores (exact properties) and on
the score test of simulated counts with known truth (calibration numbers).
"""

from __future__ import annotations

import numpy as np
import pytest

from dream_sc.models.hierarchical_fdr import permutation_pvalues
from dream_sc.models.null import dose_basis, null_model, score_parts, statistics
from dream_sc.models.significance import permute_within_groups
from dream_sc.tl import _null
from dream_sc.tl._null import sparsity_matched


def _two_tailed_scores(rng, n_per=400, n_perm=40, heavy=6.0):
    """Real + null scores ``[1 + P, 2 n_per]``: half of the features with a heavy tail."""
    light = rng.exponential(1.0, size=(1 + n_perm, n_per))
    heavy_tail = rng.exponential(1.0, size=(1 + n_perm, n_per)) ** 2 * heavy / 2
    stats = np.hstack([heavy_tail, light])
    detected = np.r_[np.full(n_per, 3), np.full(n_per, 500)]
    return stats, detected


def test_scores_are_only_lowered_and_ranks_within_a_feature_kept():
    rng = np.random.default_rng(0)
    stats, detected = _two_tailed_scores(rng)
    out = sparsity_matched(stats, detected)
    assert out.shape == stats.shape
    assert np.all(out <= stats + 1e-12)
    # the same monotone map for a feature's real and null scores: its own-column rank stays
    before = (stats[1:] >= stats[0][None]).sum(0)
    after = (out[1:] >= out[0][None]).sum(0)
    strictly = np.diff(np.sort(stats, axis=0), axis=0).min(0) > 0
    np.testing.assert_array_equal(before[strictly], after[strictly])
    # the heavy-tailed half is shrunk, the light half hardly (the reference is the pool)
    assert np.median(out[1:, :400] / stats[1:, :400]) < 0.9
    assert np.median(out[1:, 400:] / stats[1:, 400:]) > 0.99


def test_fewer_than_two_strata_leave_the_scores_unchanged():
    rng = np.random.default_rng(1)
    stats = rng.exponential(1.0, size=(21, 399))  # 399 features: one stratum of >= 200
    assert np.array_equal(sparsity_matched(stats, np.arange(399)), stats)
    assert np.array_equal(sparsity_matched(stats[:1], np.arange(399)), stats[:1])


def test_nan_scores_stay_nan():
    rng = np.random.default_rng(2)
    stats, detected = _two_tailed_scores(rng)
    stats[0, 5] = np.nan
    stats[3, 450] = np.nan
    out = sparsity_matched(stats, detected)
    assert np.isnan(out[0, 5]) and np.isnan(out[3, 450])
    assert np.isfinite(out).sum() == np.isfinite(stats).sum()


def _score_test(rng, n_control=1000, n_target=180, n_features=2400, n_perm=50):
    """Score test of simulated counts without any dose response (all features flat).

    Many control cells at one dosage and a few knocked-down cells: the dose basis is skewed, so
    a sparse feature's score depends on where its few counts fall.
    """
    n = n_control + n_target
    log_dose = np.r_[rng.normal(0.0, 0.1, n_control), rng.normal(-2.0, 0.6, n_target)]
    basis = dose_basis(log_dose, np.full(n, 0.05))
    log_sf = rng.normal(0.0, 0.4, n)
    mean = np.exp(rng.uniform(np.log(0.001), np.log(2.0), n_features))
    y = rng.poisson(mean[None, :] * np.exp(log_sf)[:, None]).astype(np.float64)
    onehot = np.ones((n, 1))
    model = null_model(
        "negbinom", y, onehot, log_sf=log_sf, log_r=np.full(n_features, np.log(100.0))
    )
    root = np.random.SeedSequence(7)
    group = np.zeros(n, dtype=np.int64)
    perms = [permute_within_groups(group, root, k) for k in range(n_perm)]
    u, v = score_parts(model, onehot, [basis] + [basis[p] for p in perms])
    return statistics(u, v, model.dispersion), (y != 0).sum(0)


def test_score_test_on_flat_counts_moves_both_ends_towards_calibration():
    # seeds 11-13 give sparse 2.4 / 1.9 / 1.7 -> 1.8 / 1.0 / 0.9 times the expected share
    # below 0.01 and detected 0.5 / 0.2 / 0.5 -> 0.9 / 0.7 / 0.9 (measured, not tuned)
    stats, detected = _score_test(np.random.default_rng(12))
    ok = detected > 0
    stats, detected = stats[:, ok], detected[ok]
    sparse = detected < 15
    assert 600 < sparse.sum() < 900
    matched = sparsity_matched(stats, detected)
    p_before = permutation_pvalues(stats[0], stats[1:])
    p_after = permutation_pvalues(matched[0], matched[1:])
    level = 0.01
    ratio = {
        (name, part): (p[mask] < level).mean() / level
        for name, p in (("before", p_before), ("after", p_after))
        for part, mask in (("sparse", sparse), ("dense", ~sparse))
    }
    # pooled null: sparse features anti-conservative, detected ones conservative
    assert ratio["before", "sparse"] > 1.5
    assert ratio["before", "dense"] < 0.5
    # matched: both ends move towards 1
    assert ratio["after", "sparse"] < 1.2
    assert 0.6 < ratio["after", "dense"] < 1.2

    # the top of the null pool is no longer made of the sparse features' nulls alone
    def sparse_share_of_top(scores):
        null = scores[1:]
        top = null >= np.quantile(null, 0.999)
        return top[:, sparse].sum() / top.sum()

    assert sparse_share_of_top(stats) > 0.95
    assert sparse_share_of_top(matched) < 0.9


def test_the_module_constant_switches_it_off(monkeypatch):
    rng = np.random.default_rng(4)
    stats, detected = _two_tailed_scores(rng)
    monkeypatch.setattr(_null, "NULL_STRATUM_MIN_FEATURES", 10_000)
    assert np.array_equal(sparsity_matched(stats, detected), stats)


OWN_DOSAGE_TEST = {"test_basis": "cell", "test_controls": "fitted", "test_statistic": "quadratic"}


@pytest.mark.slow
def test_stage_one_of_a_screen_target_lowers_only_sparse_scores(monkeypatch):
    """Inside ``test_trans`` of a screen target: matched scores never exceed the pooled ones,
    the well-detected features hardly move, and the sparse features' share of the top of the
    null pool shrinks."""
    import warnings

    import dream_sc as ds

    mdata = ds.datasets.simulate_many_targets(
        n_cells=4000, n_genes=800, n_targets=4, seed=3, mean_responsive=60
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_screen(
            mdata,
            technical_key=None,
            n_steps={"technical": 100, "cis": 150, "trans": 20},
            seed=0,
            progress=False,
            targets=["TGT0001"],
            # the per-cell test, whose sparse features have the heavy-tailed null the strata
            # are for (fit_screen's guide-dosage test: 0.075 of the top from the sparsest quarter)
            trans_kwargs=OWN_DOSAGE_TEST,
        )
    key = str(mdata.uns["dream_screen"]["trans_keys"][0])
    scores = {}
    for name, dists in (("pooled", ()), ("matched", ("negbinom",))):
        monkeypatch.setattr(_null, "STRATIFIED_NULL_DISTRIBUTIONS", dists)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.tl.test_trans(mdata, key=key)
        table = ds.get.trans_results(mdata, key=key)
        scores[name] = table["score"].to_numpy(dtype=float)
        null = np.asarray(mdata["rna"].uns[key]["null_scores"], dtype=float)
        scores[name + "_null"] = null
    ok = np.isfinite(scores["pooled"])
    assert ok.sum() > 700
    assert np.all(scores["matched"][ok] <= scores["pooled"][ok] + 1e-12)
    detected = np.asarray((mdata["rna"].X > 0).sum(0)).ravel()
    names = list(mdata["rna"].var_names)
    table_names = list(ds.get.trans_results(mdata, key=key).index)
    det = detected[[names.index(f) for f in table_names]][ok]
    dense = det >= np.quantile(det, 0.75)
    sparse = det <= np.quantile(det, 0.25)
    # the best-detected quarter hardly moves (measured: median ratio 0.999)
    ratio = scores["matched"][ok][dense] / np.maximum(scores["pooled"][ok][dense], 1e-300)
    assert np.median(ratio) > 0.99

    # the top of the null pool: sparse features' share shrinks
    def top_share(null):
        top = null >= np.quantile(null[np.isfinite(null)], 0.999)
        return top[:, sparse].sum() / top.sum()

    # measured: 0.40 -> 0.35 of the null pool's top 0.1% from the sparsest quarter
    assert top_share(scores["matched_null"]) < top_share(scores["pooled_null"])
