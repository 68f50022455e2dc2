"""fit_screen's result pieces: compact columns, exact round trips, in-order application."""

from __future__ import annotations

import pickle
import re

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from mudata import MuData

from dream_sc.tl._screen_parallel import in_target_order
from dream_sc.tl._screen_store import (
    _index,
    _read_pieces,
    _write_pieces,
    apply,
    capture,
    drop,
    drop_all,
    index_digest,
)

N_CELLS = 2000


def _screen(names=None) -> MuData:
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(index=names or [f"AAACCTGAGAAACCAT-{i}" for i in range(N_CELLS)])
    rna = ad.AnnData(np.zeros((N_CELLS, 3), dtype=np.float32), obs=obs)
    rna.var_names = ["g0", "g1", "g2"]
    mdata = MuData({"rna": rna})
    mdata.obs["fitA_dose_mean"] = rng.gamma(2.0, size=N_CELLS)
    mdata.obs["fitA_dose_q05"] = rng.gamma(1.0, size=N_CELLS)
    mdata.obs["fitA_label"] = pd.Categorical(rng.choice(["a", "b"], size=N_CELLS))
    mdata.obs["other"] = 1.0
    mdata["rna"].var["fitA_response"] = [0.5, -1.0, 0.0]
    mdata.uns["fitA"] = {"seed": 3}
    return mdata


def test_captured_columns_carry_a_digest_not_the_cell_names():
    mdata = _screen()
    pieces = capture(mdata, "rna", "fitA")
    digest, series = pieces["global/obs"]["fitA_dose_mean"]
    assert digest == index_digest(mdata.obs.index)
    assert digest.startswith(f"{N_CELLS}:")
    assert isinstance(series.index, pd.RangeIndex)
    assert set(pieces["global/obs"]) == {"fitA_dose_mean", "fitA_dose_q05", "fitA_label"}
    # three columns of 2,000 cells: the values (2 x 16 kB + codes), not 3 x 2,000 names
    assert len(pickle.dumps(pieces)) < 45_000


def test_drop_then_apply_restores_every_entry_exactly():
    mdata = _screen()
    before = mdata.obs.copy()
    pieces = capture(mdata, "rna", "fitA")
    drop(mdata, "rna", "fitA")
    assert list(mdata.obs.columns) == ["other"]
    apply(mdata, "rna", pieces)
    pd.testing.assert_frame_equal(mdata.obs[before.columns], before)
    assert mdata["rna"].var["fitA_response"].tolist() == [0.5, -1.0, 0.0]
    assert mdata.uns["fitA"] == {"seed": 3}


def test_drop_all_equals_a_drop_per_prefix():
    """One pass over the containers removes what a drop per prefix removes, nested keys too."""
    prefixes = ["fitA", "fitA_cis", "fitB"]
    loop, once = _screen(), _screen()
    for m in (loop, once):
        m.obs["fitA_cis_dose"] = 2.0
        m.obs["fitB_x"] = 3.0
        m.obs["fitAB"] = 4.0  # not owned by "fitA" (no "_")
        m["rna"].varm["fitB"] = np.ones((3, 2))
        m["rna"].varm["keep"] = np.zeros((3, 2))
        m["rna"].uns["fitA_cis"] = {"n": 1}
    for prefix in prefixes:
        drop(loop, "rna", prefix, prefixes)
    drop_all(once, "rna", prefixes)
    assert list(once.obs.columns) == list(loop.obs.columns) == ["other", "fitAB"]
    assert list(once["rna"].varm) == list(loop["rna"].varm) == ["keep"]
    assert list(once["rna"].var.columns) == list(loop["rna"].var.columns) == []
    assert dict(once.uns) == dict(loop.uns) == {}
    assert dict(once["rna"].uns) == dict(loop["rna"].uns) == {}
    drop_all(once, "rna", [])  # nothing to drop
    assert list(once.obs.columns) == ["other", "fitAB"]


def test_slice_leaves_the_earlier_results_out_and_the_screen_exactly_as_it_was(monkeypatch):
    """The run's result entries are set aside while a slice is cut, then put back as they were."""
    from dream_sc.tl._target_cells import screen_slice

    mdata = _screen()
    rna = mdata["rna"]
    rna.varm["dream_technical"] = np.zeros((3, 1))
    rna.varm["fitB_curve"] = np.ones((3, 4))
    rna.varm["fitA"] = pd.DataFrame({"v": [1.0, 2.0, 3.0]}, index=rna.var_names)
    rna.uns["fitB"] = {"n": 2}
    rna.uns["dream_technical"] = {"ok": True}
    varm_before = {k: rna.varm[k] for k in rna.varm}
    uns_before, own_before = rna.uns, mdata.uns
    sub = screen_slice(
        mdata, np.arange(0, N_CELLS, 7), modality="rna", drop_prefixes=["fitA", "fitB"]
    )
    assert sub.n_obs == len(range(0, N_CELLS, 7))
    assert list(sub["rna"].varm) == ["dream_technical"] and list(sub["rna"].uns) == [
        "dream_technical"
    ]
    assert list(sub.obs.columns) == ["other"] and dict(sub.uns) == {}
    assert list(rna.varm) == list(varm_before)  # same entries, same order, same objects
    assert all(rna.varm[k] is v for k, v in varm_before.items())
    assert rna.uns is uns_before and mdata.uns is own_before and "fitA" in mdata.uns

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(MuData, "copy", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        screen_slice(mdata, np.arange(10), modality="rna", drop_prefixes=["fitA", "fitB"])
    assert list(rna.varm) == list(varm_before) and rna.uns is uns_before
    assert mdata.uns is own_before


def test_apply_to_other_cells_is_refused():
    pieces = capture(_screen(), "rna", "fitA")
    other = _screen(names=[f"cell{i}" for i in range(N_CELLS)])
    drop(other, "rna", "fitA")
    message = (
        "Stored column 'fitA_dose_mean' belongs to other obs_names than this MuData "
        "(a checkpoint of another data set?)."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        apply(other, "rna", pieces)


def test_checkpoint_pieces_round_trip_exactly(tmp_path):
    mdata = _screen()
    pieces = capture(mdata, "rna", "fitA")
    index = _index(pieces)
    with h5py.File(tmp_path / "piece.h5", "w") as f:
        _write_pieces(f, pieces, index)
    with h5py.File(tmp_path / "piece.h5", "r") as f:
        back = _read_pieces(f, index)
    drop(mdata, "rna", "fitA")
    apply(mdata, "rna", back)
    fresh = _screen()
    for name in ("fitA_dose_mean", "fitA_dose_q05", "fitA_label"):
        pd.testing.assert_series_equal(mdata.obs[name], fresh.obs[name])
    assert back["global/obs"]["fitA_label"][1].dtype == "category"


def test_pieces_are_applied_in_target_order_as_soon_as_possible():
    arrivals = [
        ("t2", {"p": 2}, {}),
        ("t0", {"p": 0}, {}),
        ("t3", {"p": 3}, {}),
        ("t1", {"p": 1}, {}),
    ]
    seen, held = [], []
    results = (item for item in arrivals)  # a generator, as the worker pool gives them

    order = ["t0", "t1", "t2", "t3"]
    out = []
    for target, pieces in in_target_order(results, order, lambda t, p, _: seen.append(t)):
        out.append((target, pieces["p"]))
        held.append(len(seen) - len(out))
    assert out == [("t0", 0), ("t1", 1), ("t2", 2), ("t3", 3)]
    assert seen == ["t2", "t0", "t3", "t1"]
    # t0 goes out as soon as it arrives (t2 still held); t1 releases t2 and t3
    assert held == [1, 2, 1, 0]
