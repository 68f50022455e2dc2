"""Workers of fit_screen get only their target's slice of the screen; results stay identical."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import dream_sc as ds
from dream_sc._stores.cis import _sparse_rows
from dream_sc.tl import _target_cells
from dream_sc.tl._target_cells import expand_rows, mudata_bytes, read_mudata_bytes
from test_screen import SETTINGS, _assert_target_equal, _screen_data


@pytest.fixture
def one_thread(monkeypatch):
    """Serial runs with the workers' single torch thread (results depend on the threads)."""
    monkeypatch.setattr(ds.settings, "torch_threads", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def slices(monkeypatch):
    """Every slice the calling process cuts for a worker: ``{target: (cells, payload)}``."""
    seen = {}
    cut = _target_cells.target_slice

    def recording(mdata, target, kwargs):
        cells, payload = cut(mdata, target, kwargs)
        seen[target] = (cells, payload)
        return cells, payload

    monkeypatch.setattr(_target_cells, "target_slice", recording)
    return seen


def _check_slices(serial, seen, full_bytes, expected=None):
    """Each slice holds exactly the cells the serial fit used (``expected``: a mask per target;
    default the cells with a cis dose), in screen order, and no other target's results (and is
    smaller than the whole screen's ``full_bytes``)."""
    targets = list(serial.uns["dream_screen"]["targets"])
    assert sorted(seen) == targets
    for target in targets:
        cells, payload = seen[target]
        used = serial.obs[f"dream_cis_{target}_dose_mean"].notna().to_numpy()
        if expected is not None:
            used = expected[target]
        np.testing.assert_array_equal(cells, np.flatnonzero(used))
        sub = read_mudata_bytes(payload)
        assert list(sub.obs_names) == list(serial.obs_names[used])
        assert list(sub["rna"].obs_names) == list(serial.obs_names[used])
        assert sub.n_obs < serial.n_obs and (full_bytes is None or len(payload) < full_bytes)
        assert not [k for k in sub.uns if k.startswith(("dream_cis", "dream_screen"))]
        assert "dream_technical" in sub["rna"].varm


@pytest.mark.parametrize("test_controls", ["all", "fitted"])
def test_low_moi_slices_hold_the_target_and_the_controls_it_reads(
    one_thread, slices, test_controls
):
    """The cis and trans fits read the target's cells and the 25 subsampled controls; the
    significance test reads every control cell (fit_screen's default) or those 25."""
    trans_kwargs = {**SETTINGS["trans_kwargs"], "test_controls": test_controls}
    settings = {**SETTINGS, "control_cells": 25, "trans_kwargs": trans_kwargs}
    serial = _screen_data()
    ds.tl.fit_screen(serial, **settings)
    full_bytes = len(mudata_bytes(_screen_data()))
    torch.set_num_threads(2)
    parallel = _screen_data()
    ds.tl.fit_screen(parallel, n_jobs=2, **settings)
    labels = serial.obs["target"].astype(str).to_numpy()
    expected = {}
    for target in serial.uns["dream_screen"]["targets"]:
        _assert_target_equal(serial, parallel, target)
        fitted = serial.obs[f"dream_cis_{target}_dose_mean"].notna().to_numpy()
        assert fitted.sum() == (labels == target).sum() + 25
        expected[target] = fitted | (labels == "ntc") if test_controls == "all" else fitted
    _check_slices(serial, slices, full_bytes, expected)


def test_high_moi_slices_hold_the_carriers_and_their_complement_draw(one_thread, slices):
    from test_high_moi import _data

    mdata = _data(n_cells=200)
    settings = {
        "n_steps": {"technical": 20, "cis": 20, "trans": 20},
        "trans_kwargs": {"refine_intervals": False, "n_permutations": 2},
        "sum_factor_key": "true_size_factor",
        "guide_targets": mdata.uns["truth"]["guide_targets"],
        "control_cells": 40,
        "seed": 5,
        "progress": False,
    }
    serial, parallel = mdata.copy(), mdata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_screen(serial, **settings)
        ds.tl.fit_screen(parallel, n_jobs=2, **settings)
    table = mdata.obsm["guide_assignment"]
    mapping = settings["guide_targets"]
    for target in serial.uns["dream_screen"]["targets"]:
        _assert_target_equal(serial, parallel, target)
        mine = np.array([mapping[g] == target for g in table.columns])
        carriers = (table.to_numpy()[:, mine] > 0).any(1)
        assert len(slices[target][0]) == carriers.sum() + 40
    _check_slices(serial, slices, None)  # most cells carry a guide of every target here


def test_per_cell_results_are_put_back_as_the_whole_screen_writes_them():
    names = pd.Index([f"c{i}" for i in range(7)])
    rows = np.array([1, 4, 5])
    samples = np.arange(1.0, 7.0).reshape(3, 2)
    dense = expand_rows(samples, rows, names)
    expected = np.full((7, 2), np.nan)
    expected[rows] = samples
    np.testing.assert_array_equal(dense, expected)
    csr = expand_rows(_sparse_rows(samples, np.arange(3), 3), rows, names)
    whole = _sparse_rows(samples, rows, 7)
    assert (csr != whole).nnz == 0 and csr.shape == whole.shape
    assert csr.indptr.dtype == whole.indptr.dtype and csr.indices.dtype == whole.indices.dtype
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=names[rows])
    placed = expand_rows(frame, rows, names)
    assert placed.index.equals(names) and placed["a"].isna().sum() == 4
    assert placed["a"].iloc[rows].tolist() == [1.0, 2.0, 3.0]
    labels = pd.Series(pd.Categorical(["x", "y", "x"]))
    assert (
        expand_rows(labels, rows, names).astype(object).where(lambda s: s.notna()).tolist()[1]
        == "x"
    )
    with pytest.raises(TypeError, match=r"'n' \(int64\) of a target's slice cannot be put back"):
        expand_rows(np.array([1, 2, 3]), rows, names, "n")
    assert sparse.issparse(csr)
