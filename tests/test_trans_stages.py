"""Two-stage trans fits (``curves="discoveries"``): the score test first, curves for the hits."""

from __future__ import annotations

import warnings

import mudata as md
import numpy as np
import pytest
from scipy import sparse

import dream_sc as ds
from dream_sc._stores._keys import TransKeys
from dream_sc._stores.trans import read_curves
from dream_sc.models.significance import decoy_qvalues, shape_calls

TRANS = {"function": "single_hill", "n_steps": 40, "n_permutations": 8, "seed": 5}


@pytest.fixture(scope="module")
def staged():
    """One cis fit, then the same trans fit with every curve and with the discoveries only."""
    mdata = ds.datasets.simulate_screen(
        n_cells=500, n_genes=60, n_junctions=0, n_isoform_genes=0, seed=2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=60, seed=0)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=150, seed=0)
        ds.tl.fit_trans(mdata, key_added="all", **TRANS)
        ds.tl.fit_trans(mdata, key_added="disc", curves="discoveries", **TRANS)
    return mdata


def test_stage_one_gives_the_significance_of_a_full_fit(staged):
    full, disc = staged["rna"].varm["all"], staged["rna"].varm["disc"]
    for column in ("score", "qvalue"):
        np.testing.assert_array_equal(full[column].to_numpy(), disc[column].to_numpy())
    np.testing.assert_array_equal(full["significant"], disc["significant"])
    np.testing.assert_array_equal(full["tested"], disc["tested"])
    uns = staged["rna"].uns
    np.testing.assert_array_equal(uns["all"]["null_scores"], uns["disc"]["null_scores"])
    # the q-values are the target-decoy q-values of the stored scores and null
    tested = disc["tested"].to_numpy()
    null = np.asarray(uns["disc"]["null_scores"])
    assert null.shape == (TRANS["n_permutations"], tested.sum())
    q = decoy_qvalues(disc["score"].to_numpy()[tested], null.ravel(), null.shape[0])
    np.testing.assert_array_equal(q, disc["qvalue"].to_numpy()[tested])


def test_stage_two_fits_exactly_the_discoveries_and_the_top_feature(staged):
    disc = staged["rna"].varm["disc"]
    tested = disc["tested"].to_numpy()
    q = disc["qvalue"].to_numpy()
    top = np.nanargmax(np.where(tested, disc["score"].to_numpy(), -np.inf))
    expected = tested & (q < 0.25)
    expected[top] = True
    np.testing.assert_array_equal(disc["fitted"].to_numpy(), expected)
    assert 0 < expected.sum() < tested.sum()  # some curves are saved
    left_out = tested & ~expected
    assert (
        disc.loc[left_out, ["response_mean", "ec50_mean", "prob_dose_dependent"]].isna().all().all()
    )
    assert (disc.loc[left_out, "shape"] == "flat").all()
    stored = staged["rna"].varm["disc_curve_mean"]
    assert sparse.issparse(stored) and stored.nnz == expected.sum() * stored.shape[1]
    bands = read_curves(staged["rna"], "disc")["mean"]
    assert np.isnan(bands[left_out]).all() and np.isfinite(bands[expected]).all()
    np.testing.assert_array_equal(bands[expected], stored.toarray()[expected])
    curves = ds.get.trans_curves(staged, key="disc")  # the fitted features' curves
    assert set(curves["feature"]) == set(disc.index[expected])
    assert disc.loc[~tested, "shape"].eq("not_fitted").all()  # the cis gene


def test_size_factor_check_skips_the_responses_of_selected_curves(staged):
    """Stage two's non-significant curves are selected for size: the median check skips them."""
    uns = staged["rna"].uns
    full, disc = uns["all"]["shift_diagnostic"], uns["disc"]["shift_diagnostic"]
    flat = ~staged["rna"].varm["all"]["significant"].to_numpy(bool)
    flat &= staged["rna"].varm["all"]["tested"].to_numpy(bool)
    assert full["n_flat"] == flat.sum() > 20  # every curve fitted: the median is read
    assert disc["n_flat"] == 0 and "flat_median_log2" not in disc
    assert disc["shared_shift_log2"] == full["shared_shift_log2"]  # the shift is still checked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = ds.tl.calibration_check(staged, key="disc", n_null_screens=1)
    assert check.attrs["shift"]["n_flat"] == 0


def test_curves_of_the_discoveries_agree_with_the_full_fit(staged):
    full, disc = staged["rna"].varm["all"], staged["rna"].varm["disc"]
    hits = disc["significant"].to_numpy()
    assert hits.sum() >= 10
    a, b = full.loc[hits, "response_mean"], disc.loc[hits, "response_mean"]
    assert (np.sign(a) == np.sign(b)).all()
    assert np.median(np.abs(a - b)) < 0.1
    np.testing.assert_array_equal(full.loc[hits, "shape"], disc.loc[hits, "shape"])


def test_looser_alpha_marks_significant_features_without_a_curve(staged):
    mdata = staged.copy()
    ds.tl.test_trans(mdata, key="disc", alpha=0.6)
    table = mdata["rna"].varm["disc"]
    no_curve = table["shape"].to_numpy() == "no_curve"
    assert no_curve.any()
    np.testing.assert_array_equal(no_curve, table["significant"] & ~table["fitted"])
    # the curve columns of the fitted features are those of the fit
    fitted = staged["rna"].varm["disc"]["fitted"].to_numpy()
    np.testing.assert_array_equal(
        table.loc[fitted, "prob_dose_dependent"],
        staged["rna"].varm["disc"].loc[fitted, "prob_dose_dependent"],
    )


def test_two_stage_fit_survives_an_h5mu_round_trip(staged, tmp_path):
    path = tmp_path / "staged.h5mu"
    staged.write(path)
    back = md.read_h5mu(path)
    table = ds.get.trans_results(back, key="disc")  # validated on read
    np.testing.assert_array_equal(table["tested"], staged["rna"].varm["disc"]["tested"])
    np.testing.assert_array_equal(table["fitted"], staged["rna"].varm["disc"]["fitted"])
    np.testing.assert_array_equal(TransKeys.tested(table), table["tested"].to_numpy())


def test_shape_calls_by_hand():
    shape = shape_calls(
        np.array([0.5, -0.5, np.nan, 0.1, np.nan]),
        np.array([0.0, 0.99, np.nan, 0.0, np.nan]),
        np.array([True, True, True, False, False]),
        np.array([True, True, True, True, False]),
    )
    assert shape.tolist() == ["increasing", "non_monotonic", "no_curve", "flat", "not_fitted"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"curves": "some"}, "curves must be one of ('all', 'discoveries'); got 'some'."),
        ({"curves": "discoveries", "curve_qvalue": 0}, "curve_qvalue must be a number in (0, 1]"),
        ({"curves": "discoveries", "test": False}, "pass test=True (and n_permutations >= 1)"),
    ],
)
def test_bad_stage_settings_raise_before_any_work(staged, kwargs, message):
    mdata = staged.copy()
    before = set(mdata["rna"].varm)
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        ds.tl.fit_trans(mdata, key_added="bad", **{**TRANS, **kwargs})
    assert set(mdata["rna"].varm) == before


SCREEN = {
    "n_steps": {"technical": 20, "cis": 40, "trans": 20},
    "trans_kwargs": {"refine_intervals": False, "n_permutations": 4},
    "seed": 3,
    "progress": False,
}


def test_fit_screen_two_stages_keeps_the_screen_wide_table(two_target_screen):
    full, disc = two_target_screen(n_genes=30), two_target_screen(n_genes=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_screen(full, **SCREEN)
        ds.tl.fit_screen(disc, curves="discoveries", **SCREEN)
    a, b = ds.get.screen_results(full), ds.get.screen_results(disc)
    for column in ("score", "qvalue", "screen_qvalue", "feature_pvalue", "target_qvalue"):
        np.testing.assert_array_equal(a[column].to_numpy(), b[column].to_numpy())
    np.testing.assert_array_equal(a["significant_screen"], b["significant_screen"])
    assert b["fitted"].sum() < a["fitted"].sum()
    called = b["significant_screen"].to_numpy()
    shapes = b.loc[called, "shape_screen"]
    assert shapes.isin(["increasing", "decreasing", "non_monotonic", "no_curve"]).all()
    assert (shapes[b.loc[called, "fitted"].to_numpy()] != "no_curve").all()


def test_fit_screen_refuses_curves_twice_and_without_a_test(two_target_screen):
    mdata = two_target_screen(n_genes=30)
    keys = set(mdata.uns)
    with pytest.raises(ValueError, match=r"Give curves either as fit_screen\(curves=...\) or in"):
        ds.tl.fit_screen(
            mdata, curves="discoveries", **{**SCREEN, "trans_kwargs": {"curves": "all"}}
        )
    with pytest.raises(ValueError, match="pass test=True"):
        ds.tl.fit_screen(mdata, curves="discoveries", **{**SCREEN, "trans_kwargs": {"test": False}})
    assert set(mdata.uns) == keys
