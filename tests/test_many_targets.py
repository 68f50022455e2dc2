"""The many-target simulator: structure of the truth and the counts it generates."""

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import dream_sc as ds


@pytest.fixture(scope="module")
def low():
    return ds.datasets.simulate_many_targets(n_cells=4000, n_genes=600, n_targets=20, seed=3)


def test_design_and_truth_tables(low):
    obs, truth = low.obs, low.uns["truth"]
    assert low["rna"].shape == (4000, 600)
    assert sparse.issparse(low["rna"].X) and low["rna"].X.dtype == np.float32
    assert (obs["target"] == "ntc").sum() == 400  # control_fraction 0.1
    assert set(obs["target"]) == {"ntc", *truth["targets"]}
    assert (obs["n_guides"] == 1).all()
    kinds = pd.Series(truth["target_kind"])
    assert (kinds == "null").sum() == 4 and (kinds == "strong").sum() == 2
    pairs = truth["pairs"]
    per_target = pairs.groupby("target").size()
    assert set(per_target.index) == set(kinds.index[kinds != "null"])
    strong = per_target[kinds[kinds == "strong"].index].mean()
    typical = per_target[kinds[kinds == "typical"].index].mean()
    assert strong > 4 * typical
    assert not pairs["feature"].isin(truth["targets"]).any()
    assert not pairs.duplicated(["target", "feature"]).any()
    zeros = 1 - low["rna"].X.nnz / np.prod(low["rna"].shape)
    assert 0.8 < zeros < 0.9


def test_cis_gene_follows_the_guides(low):
    truth, obs = low.uns["truth"], low.obs
    target = truth["targets"][0]
    y = low["rna"][:, target].X.toarray().ravel() / obs["true_size_factor"].to_numpy()
    change = low.obsm["true_log2_dose_change"].tocsc()[:, 0].toarray().ravel()
    own = (obs["target"] == target).to_numpy()
    control = (obs["target"] == "ntc").to_numpy()
    assert np.all(change[~own] == 0) and np.all(change[own] != 0) and change[own].mean() < -1
    x_ntc = truth["x_ntc"][target]
    assert y[control].mean() == pytest.approx(x_ntc, rel=0.15)
    expected = x_ntc * np.mean(2.0 ** change[own])
    assert y[own].mean() == pytest.approx(expected, rel=0.2)


def test_responsive_pairs_move_and_others_do_not(low):
    truth, obs = low.uns["truth"], low.obs
    pairs = truth["pairs"]
    mean_count = np.asarray(low["rna"].X.mean(axis=0)).ravel()
    expressed = mean_count[low["rna"].var_names.get_indexer(pairs["feature"])] > 0.3
    strong = pairs.loc[expressed & (pairs["log_fc_strongest"].abs() > 0.8)].iloc[0]
    y = low["rna"][:, strong["feature"]].X.toarray().ravel() / obs["true_size_factor"].to_numpy()
    target = obs["target"].to_numpy()
    lfc = np.log(y[target == strong["target"]].mean() / y[target == "ntc"].mean())
    assert np.sign(lfc) == np.sign(strong["log_fc_strongest"])  # H falls with the dosage
    assert abs(lfc) > 0.3
    null_target = next(t for t, k in truth["target_kind"].items() if k == "null")
    ratio = y[target == null_target].mean() / y[target == "ntc"].mean()
    assert abs(np.log(ratio)) < abs(lfc)


def test_high_moi_assignment_and_additive_dosage():
    mdata = ds.datasets.simulate_many_targets(
        n_cells=1500, n_genes=200, n_targets=15, moi="high", guides_per_cell=6.0, seed=1
    )
    assignment = mdata.obsm["guide_assignment"]
    assert isinstance(assignment, pd.DataFrame) and assignment.shape == (1500, 15 * 3 + 10)
    assert mdata.obs["n_guides"].mean() == pytest.approx(6.0, abs=0.3)
    np.testing.assert_array_equal(mdata.obs["n_guides"], assignment.sum(axis=1).astype(int))
    guides = mdata.uns["truth"]["guides"]
    targets = mdata.uns["truth"]["targets"]
    carried = assignment.to_numpy() @ pd.get_dummies(guides["target"])[targets].to_numpy()
    change = mdata.obsm["true_log2_dose_change"].toarray()
    np.testing.assert_array_equal(change != 0, carried > 0)
    assert mdata.uns["truth"]["moi"] == "high"


def test_same_seed_same_screen_and_bad_arguments():
    a = ds.datasets.simulate_many_targets(n_cells=300, n_genes=50, n_targets=4, seed=7)
    b = ds.datasets.simulate_many_targets(n_cells=300, n_genes=50, n_targets=4, seed=7)
    assert (a["rna"].X != b["rna"].X).nnz == 0
    pd.testing.assert_frame_equal(a.uns["truth"]["pairs"], b.uns["truth"]["pairs"])
    with pytest.raises(ValueError, match=r"n_genes \(5\) must exceed n_targets \(5\)"):
        ds.datasets.simulate_many_targets(n_cells=10, n_genes=5, n_targets=5)
    with pytest.raises(ValueError, match="moi must be 'low' or 'high'; got 'mid'"):
        ds.datasets.simulate_many_targets(n_cells=10, n_genes=50, n_targets=4, moi="mid")


def test_fixed_disjoint_responders_and_target_names():
    mdata = ds.datasets.simulate_many_targets(
        n_cells=400,
        n_genes=60,
        n_targets=4,
        moi="high",
        responders_per_target=5,
        target_names=["A", "B", "C", "D"],
        seed=2,
    )
    truth = mdata.uns["truth"]
    assert truth["targets"] == ["A", "B", "C", "D"]
    assert list(mdata["rna"].var_names[:4]) == ["A", "B", "C", "D"]
    pairs = truth["pairs"]
    assert pairs.groupby("target").size().to_dict() == {"A": 5, "B": 5, "C": 5, "D": 5}
    assert pairs["feature"].is_unique  # every responder moved by one target only
    assert set(truth["target_kind"].values()) == {"typical"}
    with pytest.raises(
        ValueError,
        match=r"^responders_per_target=20 x 4 targets needs that many of the 56 trans genes; "
        r"lower it or raise n_genes\.$",
    ):
        ds.datasets.simulate_many_targets(
            n_cells=10, n_genes=60, n_targets=4, responders_per_target=20
        )
    with pytest.raises(
        ValueError,
        match=r"^target_names must hold 4 distinct names \(one per target\); got \['A', 'A', "
        r"'B', 'C'\]\.$",
    ):
        ds.datasets.simulate_many_targets(
            n_cells=10, n_genes=60, n_targets=4, target_names=["A", "A", "B", "C"]
        )


def test_issue_size_high_moi_design():
    """The issue-27 screen's design: 8 guides a cell, ~7.5% of the cells per target."""
    mdata = ds.datasets.simulate_many_targets(
        n_cells=3000, n_genes=400, n_targets=100, moi="high", guides_per_cell=8.0, seed=0
    )
    per_cell = mdata.obs["n_guides"].to_numpy()
    assert per_cell.mean() == pytest.approx(8.0, abs=0.15)
    truth = mdata.uns["truth"]
    carried = mdata.obsm["true_log2_dose_change"].toarray() != 0
    assert carried.mean(axis=0).mean() == pytest.approx(8.0 * 3 / 310, rel=0.05)
    kinds = pd.Series(truth["target_kind"]).value_counts().to_dict()
    assert kinds == {"typical": 70, "null": 20, "strong": 10}
    trans = mdata["rna"].X[:, 100:]  # the target genes are a quarter of these 400
    zeros = 1 - trans.nnz / np.prod(trans.shape)
    assert 0.8 < zeros < 0.87  # measured 0.832
