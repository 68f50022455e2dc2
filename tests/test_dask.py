"""backend="dask": chunk fits on a 2-worker LocalCluster equal the local run exactly."""

from __future__ import annotations

import platform
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import dream_sc as ds
from dream_sc.engine.svi import NonFiniteLossError

distributed = pytest.importorskip(
    "distributed", reason='dask.distributed is not installed (pip install "dream_sc[dask]")'
)


from test_bad_input import snapshot  # noqa: E402

N_STEPS = {"technical": 15, "cis": 40, "trans": 12}
CHUNK = {"technical": 7, "trans": 6}
TRANS = dict(n_permutations=1, n_refine_draws=20, function="single_hill")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """1 torch thread per chunk fit, locally and on the workers (2 workers on 2 cores)."""
    before = ds.settings.torch_threads
    ds.settings.torch_threads = 1
    yield
    ds.settings.torch_threads = before


@pytest.fixture(scope="module")
def client():
    """One 2-process cluster (1 thread per worker) for the whole module."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def screen():
    """A tiny screen with its cis fit, and its local technical and trans fits."""
    mdata = _quiet(
        ds.datasets.simulate_screen,
        n_cells=160,
        n_genes=16,
        n_junctions=0,
        n_isoform_genes=0,
        seed=3,
    )
    mdata["rna"].X = mdata["rna"].X.toarray()  # dense: the Dask-array copies hold the same
    base = mdata.copy()
    _quiet(
        ds.tl.fit_technical,
        base,
        n_steps=N_STEPS["technical"],
        feature_chunk=CHUNK["technical"],
        seed=0,
    )
    _quiet(ds.tl.fit_cis, base, cis_feature="GFI1B", n_steps=N_STEPS["cis"], seed=0)
    local = base.copy()
    _quiet(
        ds.tl.fit_trans,
        local,
        n_steps=N_STEPS["trans"],
        feature_chunk=CHUNK["trans"],
        seed=0,
        **TRANS,
    )
    return mdata, base, local


def _assert_same_columns(a, b, key: str) -> None:
    """Every stored varm table of ``key`` and every uns entry but params/seconds are equal."""
    varm = [k for k in a.varm if k.startswith(key)]
    assert varm and varm == [k for k in b.varm if k.startswith(key)]
    for k in varm:
        x, y = a.varm[k], b.varm[k]
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y, check_exact=True)
        else:
            np.testing.assert_array_equal(x, y)
    for k, value in a.uns[key].items():
        if k in ("params", "seconds", "null_seconds", "versions"):
            continue
        other = b.uns[key][k]
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, other, check_exact=True)
        elif isinstance(value, dict):
            assert value.keys() == other.keys()
        else:
            np.testing.assert_array_equal(np.asarray(value), np.asarray(other), err_msg=k)


def test_dask_equals_local_bit_for_bit(screen, client):
    mdata, base, local = screen
    tech = mdata.copy()
    _quiet(
        ds.tl.fit_technical,
        tech,
        n_steps=N_STEPS["technical"],
        feature_chunk=CHUNK["technical"],
        seed=0,
        backend="dask",
        client=client,
    )
    _assert_same_columns(base["rna"], tech["rna"], "dream_technical")
    params = tech["rna"].uns["dream_technical"]["params"]
    assert params["backend"] == "dask" and params["n_workers"] == 2
    assert base["rna"].uns["dream_technical"]["params"]["backend"] == "local"
    assert params["torch_threads"] == 1
    assert base["rna"].uns["dream_technical"]["params"]["torch_threads"] == 1

    trans = base.copy()  # real fit + one permutation null, all chunks on the cluster
    _quiet(
        ds.tl.fit_trans,
        trans,
        n_steps=N_STEPS["trans"],
        feature_chunk=CHUNK["trans"],
        seed=0,
        backend="dask",  # client=None: the current default client
        **TRANS,
    )
    _assert_same_columns(local["rna"], trans["rna"], "dream_trans")
    assert len(local["rna"].uns["dream_trans"]["chunk_converged"]) == 3
    assert np.isfinite(trans["rna"].uns["dream_trans"]["null_scores"]).all()

    # test_trans: the extra permutation null runs on the cluster too
    again = local.copy()
    _quiet(ds.tl.test_trans, again, n_permutations=2)
    _quiet(ds.tl.test_trans, trans, n_permutations=2, backend="dask", client=client)
    assert trans["rna"].uns["dream_trans"]["null_scores"].shape[0] == 2
    _assert_same_columns(again["rna"], trans["rna"], "dream_trans")
    # every worker that ran a task raised glibc's mmap threshold (the nanny's
    # MALLOC_TRIM_THRESHOLD_ would otherwise fix it at 128 KiB)
    if platform.libc_ver()[0] == "glibc":
        tuned = client.run(_mmap_threshold_raised)
        assert all(tuned.values()) and len(tuned) == 2


def _mmap_threshold_raised() -> bool:
    from dream_sc.engine.backends import _malloc

    return _malloc._tuned


def _install_worker_killer(marker: str) -> None:
    """On a worker: the first chunk 2 to start (marker absent) kills its process."""
    import os
    from pathlib import Path

    import dream_sc.engine.chunks as chunked

    def hook(task):
        if task.number == 1 and not Path(marker).exists():
            Path(marker).touch()
            os._exit(1)

    chunked._before_chunk = hook


def _remove_hooks() -> None:
    import dream_sc.engine.chunks as chunked

    chunked._before_chunk = lambda task: None


def test_lost_worker_is_recomputed(screen, client, tmp_path):
    mdata, base, _ = screen
    marker = tmp_path / "killed"
    client.run(_install_worker_killer, str(marker))
    try:
        tech = mdata.copy()
        _quiet(
            ds.tl.fit_technical,
            tech,
            n_steps=N_STEPS["technical"],
            feature_chunk=CHUNK["technical"],
            seed=0,
            backend="dask",
            client=client,
        )
    finally:
        client.run(_remove_hooks)
    assert marker.exists()  # a worker did die in the middle of the fit
    _assert_same_columns(base["rna"], tech["rna"], "dream_technical")
    client.wait_for_workers(2, timeout=60)


def test_failing_chunk_is_named_and_nothing_is_written(screen, client):
    _, base, _ = screen
    mdata = base.copy()
    X = np.asarray(mdata["rna"].X, dtype=np.float64).copy()
    target = (mdata.obs["target"] == "GFI1B").to_numpy()
    X[np.flatnonzero(target)[3], 8] = 1e38  # overflows float32 arithmetic in feature 8
    mdata["rna"].X = X
    before = snapshot(mdata)
    name = mdata["rna"].var_names[8]
    with pytest.raises(
        NonFiniteLossError,
        match=rf"in feature chunk 2/3 \(features 6\.\.11\) \[[^\]]*\b{name}\b",
    ):
        _quiet(
            ds.tl.fit_trans,
            mdata,
            n_steps=N_STEPS["trans"],
            feature_chunk=CHUNK["trans"],
            seed=0,
            test=False,
            backend="dask",
            client=client,
        )
    assert snapshot(mdata) == before


def test_missing_distributed_names_the_extra(screen, monkeypatch):
    _, base, _ = screen
    mdata = base.copy()
    before = snapshot(mdata)
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r'pip install "dream_sc\[dask\]"'):
        ds.tl.fit_trans(mdata, n_steps=5, backend="dask")
    assert snapshot(mdata) == before


def test_bad_backend_arguments(screen, client):
    _, base, _ = screen
    with pytest.raises(ValueError, match=r"backend must be one of 'local', 'dask'; got 'spark'"):
        ds.tl.fit_technical(base.copy(), backend="spark")
    with pytest.raises(ValueError, match=r"client= is only used with backend='dask'"):
        ds.tl.fit_trans(base.copy(), client=client)
    with pytest.raises(TypeError, match=r"client must be a distributed.Client; got str"):
        ds.tl.fit_technical(base.copy(), backend="dask", client="tcp://nowhere")


@pytest.mark.parametrize("distribute", ["targets", "chunks"])
def test_fit_screen_on_dask_equals_local(client, distribute):
    """Targets as tasks, or their trans chunks as tasks: every target's results are identical."""
    mdata = _quiet(
        ds.datasets.simulate_screen,
        n_cells=240,
        n_genes=12,
        n_junctions=0,
        n_isoform_genes=0,
        n_targets=2,
        guides_per_target=3,
        n_ntc_guides=3,
        seed=1,
    )
    settings = dict(
        n_steps={"technical": 10, "cis": 20, "trans": 10},
        trans_kwargs={"refine_intervals": False, "n_permutations": 2, "feature_chunk": 5},
        technical_kwargs={"feature_chunk": 5},
        seed=2,
        progress=False,
    )
    local, remote = mdata.copy(), mdata.copy()
    _quiet(ds.tl.fit_screen, local, **settings)
    _quiet(
        ds.tl.fit_screen, remote, backend="dask", client=client, distribute=distribute, **settings
    )
    targets = [str(t) for t in local.uns["dream_screen"]["targets"]]
    assert len(targets) == 2
    for target in targets:
        _assert_same_columns(local["rna"], remote["rna"], f"dream_trans_{target}")
    pd.testing.assert_frame_equal(ds.get.screen_results(local), ds.get.screen_results(remote))
    for target in targets:  # the cis fits too (on a worker when targets are tasks)
        key = f"dream_cis_{target}_dose_samples"
        np.testing.assert_array_equal(local.obsm[key], remote.obsm[key])
    assert list(remote.uns["dream_screen"]["targets"]) == targets
    with pytest.raises(ValueError, match="distribute must be 'targets' or 'chunks'; got 'x'"):
        ds.tl.fit_screen(mdata.copy(), backend="dask", client=client, distribute="x", **settings)


def test_mmap_threshold_is_raised_once_per_process(monkeypatch):
    from dream_sc.engine.backends import _malloc

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(_malloc, "_libc", FakeLibc)
    monkeypatch.setattr(_malloc, "_tuned", False)
    monkeypatch.setattr(_malloc.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(_malloc.sys, "platform", "linux")
    assert _malloc.run_tuned(lambda shared, item: shared + item, 2, 3) == 5
    assert _malloc.run_tuned(lambda shared, item: shared * item, 2, 3) == 6
    assert calls == [(-3, 64 * 1024**2)]  # M_MMAP_THRESHOLD, once
    monkeypatch.setattr(_malloc, "_tuned", False)
    monkeypatch.setattr(_malloc.platform, "libc_ver", lambda: ("", ""))
    assert _malloc.raise_mmap_threshold() is False  # musl, macOS, Windows: left alone
    assert calls == [(-3, 64 * 1024**2)]
