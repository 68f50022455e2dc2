"""fit_screen(target_batch=K): several targets' cis fits in one batched SVI run (issue 26)."""

from __future__ import annotations

import contextlib
import functools
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import dream_sc as ds
from dream_sc.engine import cis_batched
from test_bad_input import snapshot

SETTINGS = {
    "n_steps": {"technical": 30, "cis": 150, "trans": 10},
    "trans_kwargs": {"refine_intervals": False, "n_permutations": 1},
    "technical_key": None,
    "control_cells": 60,
    "curves": "discoveries",
    "seed": 4,
    "progress": False,
}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread here and in every worker (numbers depend on the threads)."""
    monkeypatch.setattr(ds.settings, "torch_threads", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data():
    """600 cells, 5 targets of ~100 cells (3 guides each), 60 controls, 20 genes."""
    return _quiet(ds.datasets.simulate_many_targets, n_cells=600, n_genes=20, n_targets=5, seed=2)


@pytest.fixture(scope="module")
def fitted():
    """The screen fitted one target at a time and in blocks of 2 (blocks 2 + 2 + 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    alone, batched = _data(), _data()
    ds.settings.torch_threads, keep = 1, ds.settings.torch_threads
    try:
        _quiet(ds.tl.fit_screen, alone, **SETTINGS)
        _quiet(ds.tl.fit_screen, batched, target_batch=2, **SETTINGS)
    finally:
        ds.settings.torch_threads = keep
        torch.set_num_threads(before)
    return alone, batched


@pytest.mark.slow
def test_batched_fits_equal_lone_fits_up_to_rounding(fitted):
    """Each target's guide effects and per-cell dosages: the same to 0.01 log2 (the batched
    loss of a target is its lone loss, with the same noise; only rounding differs)."""
    alone, batched = fitted
    targets = list(alone.uns["dream_screen"]["targets"])
    assert targets == list(batched.uns["dream_screen"]["targets"]) and len(targets) == 5
    worst_effect = worst_dose = 0.0
    for t in targets:
        ga, gb = alone.uns[f"dream_cis_{t}"]["guides"], batched.uns[f"dream_cis_{t}"]["guides"]
        assert list(ga.index) == list(gb.index)
        diff = np.abs(ga["log2_effect_mean"] - gb["log2_effect_mean"]).to_numpy()
        worst_effect = max(worst_effect, float(diff.max()))
        qa = alone.obs[f"dream_cis_{t}_dose_q50"].to_numpy()
        qb = batched.obs[f"dream_cis_{t}_dose_q50"].to_numpy()
        assert np.array_equal(np.isnan(qa), np.isnan(qb))  # the same cells fitted
        used = ~np.isnan(qa)
        worst_dose = max(worst_dose, float(np.abs(np.log2(qa[used] / qb[used])).max()))
        la, lb = alone.uns[f"dream_cis_{t}"]["loss"], batched.uns[f"dream_cis_{t}"]["loss"]
        np.testing.assert_allclose(la[:5], lb[:5], rtol=1e-5)  # the same noise, step by step
    assert worst_effect < 0.01, worst_effect
    assert worst_dose < 0.01, worst_dose
    # the trans results follow the same dosages: the same calls
    ra, rb = ds.get.screen_results(alone), ds.get.screen_results(batched)
    assert ((ra["screen_qvalue"] < 0.1) == (rb["screen_qvalue"] < 0.1)).mean() > 0.98


def test_batched_fit_is_really_batched_and_equals_lone_fits(monkeypatch):
    """Blocks of 3 + 2: one SVI run per block, each target's numbers those of its lone fit up
    to rounding (guide effects and per-cell dosage medians within 1e-3 log2 after 10 steps)."""
    calls = []
    original = cis_batched._fit_together

    def counting(datas, *args):
        calls.append(len(datas))
        return original(datas, *args)

    monkeypatch.setattr(cis_batched, "_fit_together", counting)
    settings = {**SETTINGS, "n_steps": {"technical": 10, "cis": 10, "trans": 5}}
    alone, batched = _data(), _data()
    _quiet(ds.tl.fit_screen, alone, **settings)
    assert calls == []
    _quiet(ds.tl.fit_screen, batched, target_batch=3, **settings)
    assert calls == [3, 2]
    assert batched.uns["dream_screen"]["params"]["target_batch"] == 3
    assert "target_batch" not in alone.uns["dream_screen"]["params"]  # the default: as before
    for t in alone.uns["dream_screen"]["targets"]:
        ga, gb = alone.uns[f"dream_cis_{t}"]["guides"], batched.uns[f"dream_cis_{t}"]["guides"]
        diff = np.abs(ga["log2_effect_mean"] - gb["log2_effect_mean"]).to_numpy()
        assert diff.max() < 1e-3, (t, diff.max())
        qa = alone.obs[f"dream_cis_{t}_dose_q50"].to_numpy()
        qb = batched.obs[f"dream_cis_{t}_dose_q50"].to_numpy()
        used = ~np.isnan(qa)
        assert np.array_equal(used, ~np.isnan(qb))
        assert np.abs(np.log2(qa[used] / qb[used])).max() < 1e-3


@pytest.mark.slow
def test_serial_equals_n_jobs_and_dask_with_batches():
    """target_batch=2 in two worker processes and as dask tasks (a task = a block of 2; blocks
    2 + 2 + 1): every target's results identical to the serial run."""
    distributed = pytest.importorskip("distributed")
    settings = {**SETTINGS, "n_steps": {"technical": 10, "cis": 20, "trans": 5}}
    serial, parallel, remote = _data(), _data(), _data()
    _quiet(ds.tl.fit_screen, serial, target_batch=2, **settings)
    _quiet(ds.tl.fit_screen, parallel, target_batch=2, n_jobs=2, **settings)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    try:
        _quiet(ds.tl.fit_screen, remote, target_batch=2, backend="dask", client=client, **settings)
    finally:
        with contextlib.suppress(TimeoutError):  # a loaded machine can be slow to close
            client.close()
            cluster.close()
    table = ds.get.screen_results(serial)
    for other in (parallel, remote):
        for t in serial.uns["dream_screen"]["targets"]:
            key = f"dream_cis_{t}_dose_samples"
            a, b = serial.obsm[key], other.obsm[key]
            a = a.toarray() if hasattr(a, "toarray") else a
            b = b.toarray() if hasattr(b, "toarray") else b
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(
                serial.uns[f"dream_cis_{t}"]["loss"], other.uns[f"dream_cis_{t}"]["loss"]
            )
        pd.testing.assert_frame_equal(table, ds.get.screen_results(other))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4", None])
def test_bad_target_batch_is_refused_before_any_work(bad):
    mdata = _data()
    before = snapshot(mdata)
    message = f"target_batch must be a positive integer; got {bad!r}."
    with pytest.raises(ValueError, match=f"^{message.replace('.', '[.]')}$"):
        ds.tl.fit_screen(mdata, target_batch=bad, **SETTINGS)
    assert snapshot(mdata) == before


def test_a_bad_target_in_a_block_fails_as_alone_and_leaves_the_screen_unchanged():
    """A target whose cis gene has no counts in its fit: the same error as without batches,
    raised before its block's SVI, and the MuData is left as it was."""
    mdata = _data()
    targets = sorted(t for t in mdata.obs["target"].astype(str).unique() if t != "ntc")
    bad = targets[3]  # in the second block of 2
    rna = mdata["rna"]
    col = rna.var_names.get_loc(bad)
    X = rna.X.tolil() if hasattr(rna.X, "tolil") else rna.X.copy()
    X[:, col] = 0
    rna.X = X.tocsr() if hasattr(X, "tocsr") else X
    settings = {**SETTINGS, "n_steps": {"technical": 10, "cis": 10, "trans": 5}}
    message = f"cis_feature {bad!r} has zero counts in every fitted cell."
    with pytest.raises(ValueError, match=message):
        _quiet(ds.tl.fit_screen, mdata.copy(), **settings)
    before = snapshot(mdata)
    with pytest.raises(ValueError, match=message):
        _quiet(ds.tl.fit_screen, mdata, target_batch=2, **settings)
    assert snapshot(mdata) == before


def test_resume_inside_a_block_equals_an_uninterrupted_run(monkeypatch, tmp_path):
    """Interrupted in the middle of the second block (a block's targets are saved together
    once its last trans fit is done: the first block's 3 are): the rerun refits the second
    block whole and ends with the uninterrupted run's numbers."""
    from dream_sc.tl import _screen

    settings = {**SETTINGS, "n_steps": {"technical": 10, "cis": 10, "trans": 5}}
    whole = _data()
    _quiet(ds.tl.fit_screen, whole, target_batch=3, **settings)
    targets = list(whole.uns["dream_screen"]["targets"])
    original, seen = _screen.fit_trans, []

    @functools.wraps(original)
    def dying(*args, **kwargs):
        seen.append(kwargs["key_added"])
        if len(seen) == 5:  # the second target of the second block
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    mdata = _data()
    monkeypatch.setattr(_screen, "fit_trans", dying)
    with pytest.raises(KeyboardInterrupt):
        _quiet(ds.tl.fit_screen, mdata, target_batch=3, checkpoint=str(tmp_path), **settings)
    monkeypatch.setattr(_screen, "fit_trans", original)
    _quiet(ds.tl.fit_screen, mdata, target_batch=3, checkpoint=str(tmp_path), **settings)
    timings = mdata.uns["dream_screen"]["timings"]
    assert list(timings.index[timings["from_checkpoint"]]) == targets[:3]
    for t in targets:
        key = f"dream_cis_{t}_dose_samples"
        a, b = whole.obsm[key], mdata.obsm[key]
        a = a.toarray() if hasattr(a, "toarray") else a
        b = b.toarray() if hasattr(b, "toarray") else b
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(ds.get.screen_results(whole), ds.get.screen_results(mdata))
