"""``fit_trans(features=..., min_cells=...)``: fit a subset without refitting step 1."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dream_sc as ds
from conftest import FAST

STEPS = FAST["trans"]


def _fit(mdata, key_added="dream_trans", **kwargs):
    opts = {"refine_intervals": False, "test": False, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_trans(
            mdata, function="single_hill", n_steps=STEPS, seed=0, key_added=key_added, **opts
        )
    return mdata["rna"].varm[key_added]


def test_names_and_mask_select_the_same_features(fitted):
    names = ["gene_0002", "gene_0005", "gene_0011"]
    technical_before = fitted["rna"].varm["dream_technical"].copy()
    by_name = _fit(fitted, features=names, key_added="by_name")
    mask = fitted["rna"].var_names.isin(names)
    by_mask = _fit(fitted, features=mask, key_added="by_mask")
    assert by_name.index[by_name["fitted"]].tolist() == names
    assert by_name["response_mean"].notna().sum() == 3
    assert by_name.loc[~by_name["fitted"], "response_mean"].isna().all()
    pd.testing.assert_frame_equal(by_name, by_mask)
    # the stored technical fit is reused, untouched
    pd.testing.assert_frame_equal(fitted["rna"].varm["dream_technical"], technical_before)
    params = fitted["rna"].uns["by_name"]["params"]
    assert [str(v) for v in params["features"]] == names


def test_selection_survives_rescoring_from_the_record(fitted):
    names = ["gene_0002", "gene_0005", "gene_0011", "gene_0020"]
    table = _fit(fitted, features=names, key_added="sel")
    ds.tl.test_trans(fitted, key="sel")
    rescored = fitted["rna"].varm["sel"]
    assert rescored.index[rescored["fitted"]].tolist() == names
    assert rescored.loc[names, "qvalue"].notna().all()
    np.testing.assert_array_equal(
        rescored.loc[names, "response_mean"], table.loc[names, "response_mean"]
    )


def test_min_cells_drops_rarely_detected_features(fitted):
    rna = fitted["rna"]
    cells = fitted.obs_names[np.isfinite(fitted.obs["dream_cis_dose_mean"])]
    X = rna[cells].X
    detected = np.asarray((X != 0).sum(0)).ravel()
    threshold = int(np.median(detected)) + 1
    table = _fit(fitted, min_cells=threshold, key_added="min")
    expected = (detected >= threshold) & (rna.var_names != "GFI1B")
    np.testing.assert_array_equal(table["fitted"].to_numpy(), expected)
    assert 0 < expected.sum() < rna.n_vars - 1


def test_bad_selections_raise_before_anything_is_written(fitted):
    before = set(fitted["rna"].varm.keys())
    with pytest.raises(KeyError, match=r"1 of the features= are not in 'rna'.var_names"):
        _fit(fitted, features=["gene_0002", "no_such_gene"], key_added="bad")
    with pytest.raises(ValueError, match=r"boolean features= mask needs one entry per feature"):
        _fit(fitted, features=np.ones(3, bool), key_added="bad")
    with pytest.raises(ValueError, match=r"min_cells must be a non-negative integer"):
        _fit(fitted, min_cells=-1, key_added="bad")
    with pytest.raises(ValueError, match=r"No feature of 'rna' is left to fit"):
        _fit(fitted, min_cells=10**9, key_added="bad")
    assert set(fitted["rna"].varm.keys()) == before


def test_multinomial_groups_cannot_be_split():
    from dream_sc.tl._trans_job import select_features

    class Data:
        var_names = pd.Index(["a1", "a2", "b1", "b2"])
        group_index = np.array([0, 0, 1, 1])
        group_names = np.array(["A", "B"], dtype=object)
        distribution = "multinomial"
        X = np.ones((3, 4))
        total = None

    keep = select_features(Data, ("b1", "b2"), 0, "isoform")
    np.testing.assert_array_equal(keep, [False, False, True, True])
    with pytest.raises(
        ValueError, match=r"only some categories of 1 multinomial group.*\(e\.g\. A\)"
    ):
        select_features(Data, ("a1", "b1", "b2"), 0, "isoform")
