"""A shared control subsample: a target's fit costs what its own cells cost (issue 26)."""

import numpy as np
import pandas as pd
import pytest

import dream_sc as ds
from dream_sc.tl._control_cells import pick_control_cells


def test_stratified_pick_keeps_each_groups_share():
    codes = np.repeat([0, 1, 2], [600, 300, 100])
    control = np.ones(1000, bool)
    control[::10] = False  # 900 controls: 540 / 270 / 90
    picked = pick_control_cells(control, codes, 100, np.random.default_rng(0))
    assert picked.size == 100 and np.all(np.diff(picked) > 0) and control[picked].all()
    np.testing.assert_array_equal(np.bincount(codes[picked]), [60, 30, 10])
    again = pick_control_cells(control, codes, 100, np.random.default_rng(0))
    np.testing.assert_array_equal(picked, again)
    # remainders: 7 cells over shares 0.6/0.3/0.1 -> 4.2, 2.1, 0.7 -> 4, 2, 1
    small = pick_control_cells(control, codes, 7, np.random.default_rng(1))
    np.testing.assert_array_equal(np.bincount(codes[small], minlength=3), [4, 2, 1])
    everything = pick_control_cells(control, codes, 5000, np.random.default_rng(0))
    np.testing.assert_array_equal(everything, np.flatnonzero(control))


@pytest.fixture(scope="module")
def fitted_technical():
    mdata = ds.datasets.simulate_screen(
        n_cells=500, n_genes=30, n_junctions=0, n_isoform_genes=0, n_targets=2, seed=4
    )
    ds.tl.fit_technical(mdata, n_steps=30, progress=False, seed=0)
    return mdata


def test_fit_cis_uses_exactly_the_requested_controls(fitted_technical):
    mdata = fitted_technical.copy()
    control = (mdata.obs["target"] == "ntc").to_numpy()
    own = (mdata.obs["target"] == "GFI1B").to_numpy()
    ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=20, progress=False, seed=0, control_cells=40)
    dosed = mdata.obs["dream_cis_dose_mean"].notna().to_numpy()
    assert (dosed & control).sum() == 40
    assert (dosed & own).sum() == own.sum()
    assert mdata.uns["dream_cis"]["n_cells"] == own.sum() + 40
    lines = mdata.obs.loc[dosed & control, "cell_line"].value_counts()
    share = mdata.obs.loc[control, "cell_line"].value_counts(normalize=True)
    assert (abs(lines / 40 - share) <= 1 / 40 + 1e-9).all()
    names = list(mdata.obs_names[dosed & control])
    again = fitted_technical.copy()
    ds.tl.fit_cis(
        again, cis_feature="GFI1B", n_steps=20, progress=False, seed=0, control_cells=names
    )
    pd.testing.assert_series_equal(
        again.obs["dream_cis_dose_mean"], mdata.obs["dream_cis_dose_mean"]
    )


def test_bad_control_cells_fail_before_any_work(fitted_technical):
    mdata = fitted_technical.copy()
    before = set(mdata.obs.columns), set(mdata.uns)
    target_cell = str(mdata.obs_names[(mdata.obs["target"] == "GFI1B").to_numpy()][0])
    with pytest.raises(
        ValueError, match=rf"control_cells \['{target_cell}'\] are not control cells"
    ):
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", control_cells=[target_cell], progress=False)
    with pytest.raises(KeyError, match=r"control_cells \['nope'\] are not in mdata.obs_names"):
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", control_cells=["nope"], progress=False)
    with pytest.raises(ValueError, match="control_cells must be a positive number of cells"):
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", control_cells=0, progress=False)
    assert (set(mdata.obs.columns), set(mdata.uns)) == before


def test_fit_screen_shares_one_subsample(fitted_technical):
    mdata = fitted_technical.copy()
    ds.tl.fit_screen(
        mdata,
        n_steps={"technical": 30, "cis": 20, "trans": 20},
        trans_kwargs={"n_permutations": 1, "refine_intervals": False},
        control_cells=30,
        seed=0,
        progress=False,
    )
    control = (mdata.obs["target"] == "ntc").to_numpy()
    used = [
        set(mdata.obs_names[control & mdata.obs[f"dream_cis_{t}_dose_mean"].notna().to_numpy()])
        for t in ("GEMIN5", "GFI1B")
    ]
    assert len(used[0]) == 30 and used[0] == used[1]
    assert mdata.uns["dream_screen"]["params"]["control_cells"] == 30
    with pytest.raises(ValueError, match="control_cells"):
        ds.tl.fit_screen(mdata, cis_kwargs={"control_cells": 10}, progress=False)
