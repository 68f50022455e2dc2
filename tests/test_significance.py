import numpy as np

from dream_sc.models.significance import decoy_qvalues, permute_within_groups


def test_decoy_qvalues_by_hand():
    scores = np.array([10.0, 9.0, 8.0, 0.1, np.nan])
    null = np.array([8.5, 0.2, 0.3, 0.05])
    # c = 0.5, thresholds: 10 -> (0.5+0)/1, 9 -> (0.5+0)/2, 8 -> (0.5+1)/3, 0.1 -> (0.5+3)/4
    q = decoy_qvalues(scores, null, 1, pseudocount=0.5)
    np.testing.assert_allclose(q, [0.25, 0.25, 0.5, 0.875, 1.0])
    q2 = decoy_qvalues(scores, np.concatenate([null, null]), 2, pseudocount=0.5)
    np.testing.assert_allclose(q2, [0.125, 0.125, 2.5 / 6, (0.5 + 6) / 8, 1.0])
    # default c = 1 (knockoff+): 10 -> 1/1, 9 -> 1/2, 8 -> 2/3, 0.1 -> 4/4
    np.testing.assert_allclose(decoy_qvalues(scores, null, 1), [0.5, 0.5, 2 / 3, 1.0, 1.0])
    q3 = decoy_qvalues(scores, np.concatenate([null, null]), 2)
    np.testing.assert_allclose(q3, [0.25, 0.25, 3 / 6, 7 / 8, 1.0])


def test_decoy_qvalues_ties_and_monotone():
    scores = np.array([5.0, 5.0, 1.0])
    q = decoy_qvalues(scores, np.array([0.0]), 1)
    np.testing.assert_allclose(q, [1 / 3] * 3)  # the lowest threshold still has no null above it
    rng = np.random.default_rng(0)
    s = rng.normal(size=200)
    q = decoy_qvalues(s, rng.normal(size=200), 1)
    order = np.argsort(-s)
    assert np.all(np.diff(q[order]) >= -1e-12)


def test_null_screens_rarely_discover():
    """Exchangeable scores, 300 features: P(any discovery at q < 0.1) for the default
    (c = 1, two null sets) is ~0.1%, for c = 0.5 with one null set ~1.4%."""
    rng = np.random.default_rng(1)
    default, half = [], []
    for _ in range(1000):
        s, null = rng.normal(size=300), rng.normal(size=600)
        default.append((decoy_qvalues(s, null, 2) < 0.1).any())
        half.append((decoy_qvalues(s, null[:300], 1, pseudocount=0.5) < 0.1).any())
    assert np.mean(default) <= 0.005
    assert 0.005 <= np.mean(half) <= 0.03


def test_default_needs_six_features_above_both_null_sets():
    null = np.zeros(600)
    for k, expected in ((5, 0.1), (6, 1 / 12)):
        scores = np.r_[np.full(k, 5.0), np.full(294, -1.0)]
        q = decoy_qvalues(scores, null, 2)
        np.testing.assert_allclose(q[:k], expected)


def test_permutation_stays_within_groups():
    groups = np.array([0, 0, 1, 1, 1, 0, 1])
    perm = permute_within_groups(groups, np.random.SeedSequence(3), number=0)
    assert sorted(perm) == list(range(7))
    np.testing.assert_array_equal(groups[perm], groups)
    assert not np.array_equal(
        perm, permute_within_groups(groups, np.random.SeedSequence(3), number=1)
    )


def test_calibration_check_on_fitted_screen(fitted):
    import dream_sc as ds

    table = ds.tl.calibration_check(fitted, n_null_screens=1)
    assert list(table.columns) == [
        "n_features",
        "n_false_discoveries",
        "min_qvalue",
        "ks_statistic",
        "ks_pvalue",
    ]
    assert table.loc[0, "n_features"] == fitted["rna"].n_vars - 1
    assert table.loc[0, "n_false_discoveries"] <= 2
    stored = fitted["rna"].uns["dream_trans"]["calibration"]
    assert stored["scores"].shape == (1, fitted["rna"].n_vars - 1)
    assert stored["alpha"] == 0.1


def test_calibration_check_needs_a_null(fitted):
    import pytest

    import dream_sc as ds

    ds.tl.fit_trans(
        fitted, function="single_hill", n_steps=10, seed=0, test=False, key_added="untested"
    )
    with pytest.raises(
        KeyError, match=r"No permutation null for trans fit 'untested'.*ds.tl.test_trans"
    ):
        ds.tl.calibration_check(fitted, key="untested")


def test_fit_stores_score_null_and_exchangeability(fitted):
    rna = fitted["rna"]
    record = rna.uns["dream_trans"]
    res = rna.varm["dream_trans"][rna.varm["dream_trans"]["fitted"]]
    assert record["null_method"] == "rescore"
    assert record["null_scores"].shape == (50, rna.n_vars - 1)
    assert set(record["exchangeability"]) >= {"top_share", "lower_share", "passed"}
    # score (the ranking column) is the dose-association score, the posterior ratio is kept
    assert not np.allclose(res["score"], res["posterior_score"])
    assert "qvalue_non_monotonic" not in res
    q = decoy_qvalues(res["score"].to_numpy(), record["null_scores"].ravel(), 50)
    np.testing.assert_allclose(res["qvalue"], q)


def test_test_trans_permutations_are_nested(fitted):
    import dream_sc as ds

    before = np.asarray(fitted["rna"].uns["dream_trans"]["null_scores"]).copy()
    ds.tl.test_trans(fitted, n_permutations=60)
    after = np.asarray(fitted["rna"].uns["dream_trans"]["null_scores"])
    assert after.shape[0] == 60
    np.testing.assert_allclose(after[:50], before)
    assert fitted["rna"].uns["dream_trans"]["params"]["n_permutations"] == 60


def test_trans_summary_labels_rank_by_score(fitted):
    import dream_sc as ds

    ax = ds.pl.trans_summary(fitted, n_labels=4, show=False)
    labels = {a.get_text() for a in ax.get_children() if a.get_gid() == "label"}
    res = ds.get.trans_results(fitted)
    res = res[res["fitted"]]
    assert labels == set(res["score"].nlargest(4).index)
