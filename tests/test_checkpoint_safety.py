"""Checkpoints hold data only, are reused only for the same data and settings, and fail clearly."""

from __future__ import annotations

import pathlib
import pickle
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import dream_sc as ds
from dream_sc import _checkpoints as ckpt
from dream_sc.engine import svi as inference
from dream_sc.tl._screen_store import Checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*did not converge")

TRANS = {
    "function": "single_hill",
    "n_steps": 20,
    "seed": 4,
    "feature_chunk": 12,
    "test": False,
    "refine_intervals": False,
}
SCREEN = {
    "n_steps": {"technical": 10, "cis": 10, "trans": 10},
    "cis_kwargs": {"warm_start": False},  # no Laplace start: fast
    "trans_kwargs": {"refine_intervals": False, "test": False},
    "n_samples": 50,
    "seed": 3,
    "progress": False,
}
FIX = (
    "Nothing was deleted; rerun with the original settings and data, use another checkpoint "
    "path, or pass checkpoint_mismatch='restart' to delete the stale checkpoint and start over."
)


class Interrupt(RuntimeError):
    pass


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _mismatch(path, *found: str) -> str:
    return re.escape(
        f"Checkpoint {str(path)!r} was written by a run with other settings or data: "
        f"{'; '.join(found)}. {FIX}"
    )


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def interrupted(fitted_screen, tmp_path_factory):
    """A trans checkpoint of ``TRANS``: chunk 0 finished, chunk 1 saved at step 10."""
    folder = tmp_path_factory.mktemp("interrupted")
    old, calls = ds.settings.checkpoint_every, {"n": 0}

    def hook(step: int) -> None:
        calls["n"] += 1
        if calls["n"] == 35:
            raise Interrupt

    original = inference._after_step
    ds.settings.checkpoint_every, inference._after_step = 10, hook
    try:
        with pytest.raises(Interrupt):
            ds.tl.fit_trans(fitted_screen.copy(), checkpoint=str(folder / "trans"), **TRANS)
    finally:
        ds.settings.checkpoint_every, inference._after_step = old, original
    assert sorted(p.name for p in folder.iterdir()) == [
        "trans.real.chunk0.done.pt",
        "trans.real.chunk1.pt",
    ]
    return folder


@pytest.fixture
def resumable(interrupted, tmp_path):
    """A private copy of the interrupted checkpoint: its path prefix."""
    for f in interrupted.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "trans"


def _shuffled_counts(mdata):
    rna = mdata["rna"]
    rna.X = rna.X[np.random.default_rng(0).permutation(rna.n_obs)]


def _renamed_gene(mdata):
    names = list(mdata["rna"].var_names)
    names[-1] = names[-1] + "_renamed"  # not the cis gene
    mdata["rna"].var_names = names
    mdata.update()


CHANGES = {
    "seed": ({"seed": 5}, None, ["seed 4 -> 5"]),
    "lr": ({"lr": 0.05}, None, ["lr 0.03 -> 0.05"]),
    "n_steps": ({"n_steps": 30}, None, ["n_steps 20 -> 30"]),
    "function": (
        {"function": "additive_hill"},
        None,
        ["function 'single_hill' -> 'additive_hill'"],
    ),
    "shuffled counts": (
        {},
        _shuffled_counts,
        ["the counts of modality 'rna'", "the priors", "the warm start"],
    ),
    "renamed gene": ({}, _renamed_gene, ["the feature names and order"]),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_input_is_refused_and_nothing_deleted(fitted, resumable, change):
    kwargs, edit, found = CHANGES[change]
    if edit is not None:
        edit(fitted)
    before = _snapshot(resumable.parent)
    done = f"{resumable}.real.chunk0.done.pt"
    with pytest.raises(ValueError, match=_mismatch(done, *found)):
        ds.tl.fit_trans(fitted, checkpoint=str(resumable), **{**TRANS, **kwargs})
    assert _snapshot(resumable.parent) == before  # a refused resume deletes nothing
    assert "dream_trans" in fitted["rna"].uns  # nothing written either (the fixture's own fit)


def test_fewer_cells_are_refused(fitted, resumable):
    fewer = fitted[fitted.obs_names[20:]].copy()
    done = f"{resumable}.real.chunk0.done.pt"
    found = (
        "batch_size 400 -> 380; the cell names and order; the counts of modality 'rna'; the sum "
        "factors; the dosage record 'dream_cis'; the technical groups; the priors; the warm start"
    ).split("; ")
    with pytest.raises(ValueError, match=_mismatch(done, *found)):
        ds.tl.fit_trans(fewer, checkpoint=str(resumable), **TRANS)


def test_restart_equals_a_fresh_fit(fitted, resumable):
    fresh = fitted.copy()
    ds.tl.fit_trans(fresh, key_added="fresh", **{**TRANS, "seed": 5})
    ds.tl.fit_trans(
        fitted,
        key_added="restarted",
        checkpoint=str(resumable),
        checkpoint_mismatch="restart",
        **{**TRANS, "seed": 5},
    )
    pd.testing.assert_frame_equal(
        fitted["rna"].varm["restarted"], fresh["rna"].varm["fresh"], check_exact=True
    )
    np.testing.assert_array_equal(
        fitted["rna"].uns["restarted"]["loss"], fresh["rna"].uns["fresh"]["loss"]
    )
    assert not list(resumable.parent.iterdir())


def test_checkpoint_mismatch_is_checked(fitted):
    with pytest.raises(
        ValueError, match=re.escape("checkpoint_mismatch must be one of ['raise', 'restart']")
    ):
        ds.tl.fit_trans(fitted, checkpoint_mismatch="ignore", **TRANS)


@pytest.mark.parametrize("where", ["chunk0.done.pt", "chunk1.pt"])
@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_planted_trans_payload_does_not_run(fitted, resumable, tmp_path_factory, where, writer):
    marker = tmp_path_factory.mktemp("marker") / "ran"
    assert pickle.loads(pickle.dumps(Payload(marker))) is None and marker.exists()  # live
    marker.unlink()
    file = pathlib.Path(f"{resumable}.real.{where}")
    if writer == "pickle":
        file.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save(Payload(marker), file)
    message = (
        f"Checkpoint file {str(file)!r} was written by an older dream_sc in a pickle-based "
        "format, which is no longer loaded (loading a pickle can run code); delete it, or "
        "pass checkpoint_mismatch='restart'."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        ds.tl.fit_trans(fitted, checkpoint=str(resumable), **TRANS)
    assert not marker.exists()
    assert file.exists()


@pytest.mark.parametrize("step", ["technical", "cis"])
def test_planted_payload_of_technical_and_cis_does_not_run(fitted, tmp_path, step):
    marker = tmp_path / "ran"
    prefix = tmp_path / "ckpt"
    if step == "technical":
        file = pathlib.Path(f"{prefix}.chunk0.done.pt")
        call = ds.tl.fit_technical
        kwargs = {"n_steps": 10, "seed": 0}
    else:
        file = pathlib.Path(f"{prefix}.cis.pt")
        call = ds.tl.fit_cis
        kwargs = {"cis_feature": "GFI1B", "n_steps": 10, "seed": 0}
    torch.save(Payload(marker), file)
    with pytest.raises(ValueError, match=re.escape(f"{str(file)!r} was written by an older")):
        call(fitted, checkpoint=str(prefix), **kwargs)
    assert not marker.exists() and file.exists()
    if step == "technical":  # (a cis fit costs too long for this test)
        call(fitted, checkpoint=str(prefix), checkpoint_mismatch="restart", key_added="r", **kwargs)
        assert not marker.exists() and not file.exists()  # deleted, never loaded


def _damage(file: pathlib.Path, how: str) -> str:
    if how == "empty":
        file.write_bytes(b"")
        return "empty file"
    if how == "garbage":
        file.write_bytes(b"not a checkpoint at all" * 10)
        return "not a dream_sc checkpoint"
    if how == "truncated":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
        return "OSError"
    ckpt.write(file, kind="chunk", fingerprint={}, tree={})  # valid file, wrong content
    return "holds a 'chunk' checkpoint, expected 'svi'"


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated", "wrong kind"])
def test_damaged_file_names_the_path(fitted, resumable, how):
    file = pathlib.Path(f"{resumable}.real.chunk1.pt")
    detail = _damage(file, how)
    message = f"Checkpoint file {str(file)!r} is damaged ({detail}"
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        ds.tl.fit_trans(fitted, checkpoint=str(resumable), **TRANS)
    assert str(info.value).endswith("); delete it, or pass checkpoint_mismatch='restart'.")
    assert file.exists() and pathlib.Path(f"{resumable}.real.chunk0.done.pt").exists()


def test_optimiser_state_round_trips_exactly(tmp_path):
    """Adam / OneCycle state and the torch RNG state survive the data-only format bit for bit."""
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adam([{"params": [p], "lr": 0.1}], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.1], total_steps=10)
    p.sum().backward()
    opt.step()
    sched.step()
    tree = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": torch.get_rng_state(),
        "nan": float("nan"),
    }
    ckpt.write(tmp_path / "s.pt", kind="svi", fingerprint={"seed": 1}, tree=tree)
    back = ckpt.read(tmp_path / "s.pt", kind="svi").tree
    assert back["optimizer"]["param_groups"] == tree["optimizer"]["param_groups"]
    assert back["scheduler"] == tree["scheduler"]
    for key, value in tree["optimizer"]["state"][0].items():
        assert torch.equal(back["optimizer"]["state"][0][key], value)
    assert torch.equal(back["rng"], tree["rng"]) and np.isnan(back["nan"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pt"]  # no temporary file left


# ---- fit_screen -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """A finished fit_screen run and its checkpoint directory (kept after success)."""
    mdata = ds.datasets.simulate_screen(
        n_cells=200, n_genes=8, n_junctions=0, n_isoform_genes=0, n_targets=2, seed=1
    )
    folder = tmp_path_factory.mktemp("screen") / "ckpt"
    ds.tl.fit_screen(mdata, checkpoint=str(folder), **SCREEN)
    return mdata, folder


@pytest.fixture
def screen_copy(screen, tmp_path):
    mdata, folder = screen
    shutil.copytree(folder, tmp_path / "ckpt")
    return mdata.copy(), tmp_path / "ckpt"


def test_screen_doubled_sum_factors_are_refused(screen_copy):
    mdata, folder = screen_copy
    mdata.obs["sum_factor"] = mdata.obs["sum_factor"] * 2
    before = _snapshot(folder)
    piece = folder / "technical.h5"
    with pytest.raises(ValueError, match=_mismatch(piece, "the sum factors")):
        ds.tl.fit_screen(mdata, checkpoint=str(folder), **SCREEN)
    assert _snapshot(folder) == before


def test_screen_target_refused_without_manifest_and_restarted(screen_copy, screen):
    mdata, folder = screen_copy
    (folder / "manifest.json").unlink()  # every piece carries its own fingerprint
    first, second = sorted(mdata.uns["dream_screen"]["targets"])
    rna = mdata["rna"]
    cells = np.flatnonzero((mdata.obs["target"] == second).to_numpy()[rna_rows(mdata)])
    X = rna.X.copy()
    X[cells[0], 0] += 1  # one count of one cell of the second target
    rna.X = X
    piece = Checkpoint(folder).file(second)
    with pytest.raises(ValueError, match=_mismatch(piece, "the counts of modality 'rna'")):
        ds.tl.fit_screen(mdata, checkpoint=str(folder), **SCREEN)
    fresh = mdata.copy()
    ds.tl.fit_screen(fresh, **SCREEN)
    ds.tl.fit_screen(mdata, checkpoint=str(folder), checkpoint_mismatch="restart", **SCREEN)
    timings = mdata.uns["dream_screen"]["timings"]
    assert timings.loc[[first, second], "from_checkpoint"].tolist() == [True, False]
    for target in (first, second):
        key = f"dream_trans_{target}"
        pd.testing.assert_frame_equal(
            mdata["rna"].varm[key], fresh["rna"].varm[key], check_exact=True
        )


def rna_rows(mdata) -> np.ndarray:
    """Positions in ``mdata.obs`` of the rows of ``mdata['rna']``."""
    return mdata.obs_names.get_indexer(mdata["rna"].obs_names)


@pytest.mark.parametrize("name", ["__technical__", "target"])
def test_planted_screen_payload_does_not_run(screen_copy, tmp_path, name):
    mdata, folder = screen_copy
    marker = tmp_path / "ran"
    if name == "target":
        name = sorted(mdata.uns["dream_screen"]["targets"])[0]
    file = Checkpoint(folder).file(name)
    file.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match=re.escape(f"{str(file)!r} was written by an older")):
        ds.tl.fit_screen(mdata, checkpoint=str(folder), **SCREEN)
    assert not marker.exists()


def test_screen_old_pickle_pieces_are_refused(screen_copy, tmp_path):
    mdata, folder = screen_copy
    marker = tmp_path / "ran"
    old = folder / "technical.pkl"
    old.write_bytes(pickle.dumps({"pieces": Payload(marker)}))
    with pytest.raises(ValueError, match=re.escape(f"{str(old)!r} was written by an older")):
        ds.tl.fit_screen(mdata, checkpoint=str(folder), **SCREEN)
    assert not marker.exists() and old.exists()


def test_screen_damaged_manifest(screen_copy):
    mdata, folder = screen_copy
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(
        ValueError, match=re.escape(f"{str(folder / 'manifest.json')!r} is damaged")
    ):
        ds.tl.fit_screen(mdata, checkpoint=str(folder), **SCREEN)


# ---- data digests ---------------------------------------------------------------------------


def test_count_digest_ignores_storage_and_reads_lazy_data_by_blocks(
    tiny_screen, tmp_path, monkeypatch
):
    import mudata as md
    from scipy import sparse

    from dream_sc import _lazy
    from dream_sc._data import modality_data
    from dream_sc.tl._fingerprints import matrix_digest

    X = sparse.csr_matrix(tiny_screen["rna"].X)
    expected = matrix_digest(X)
    assert matrix_digest(X.toarray()) == expected  # dense
    assert matrix_digest(X.tocsc()) == expected  # CSC
    assert matrix_digest(X.astype(np.float32)) == expected  # another dtype, same values
    changed = X.copy()
    changed[0, 0] = changed[0, 0] + 1
    assert matrix_digest(changed) != expected
    out = tiny_screen.copy()
    out["rna"].X = X.tocsc()
    out.write(tmp_path / "s.h5mu")
    backed = md.read_h5mu(tmp_path / "s.h5mu", backed=True)
    data = modality_data(backed, "rna", backed.obs_names)
    assert data.lazy
    monkeypatch.setattr(_lazy, "BLOCK_ELEMENTS", 7 * data.X.shape[0])  # blocks of 7 genes
    in_memory = modality_data(tiny_screen, "rna", tiny_screen.obs_names)
    assert matrix_digest(data.X) == matrix_digest(in_memory.X)


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    """A crash while writing leaves the old complete file and no temporary file."""
    target = tmp_path / "state.pt"
    ckpt.write(target, kind="svi", fingerprint={"seed": 0}, tree={"step": 10})

    def dying(tmp):
        tmp.write_bytes(b"\x89HDF\r\n\x1a\npartial")
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(target, dying)
    assert ckpt.read(target, kind="svi").tree == {"step": 10}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_changes_name_settings_and_data():
    stored = {"seed": 0, "function": "single_hill", "the sum factors": {"blake2b": "a"}}
    current = {"seed": 1, "function": "single_hill", "the sum factors": {"blake2b": "b"}}
    assert ckpt.changes(stored, current) == ["seed 0 -> 1", "the sum factors"]
    assert ckpt.changes(stored, {**stored, "lr": 0.05}) == ["lr not recorded -> 0.05"]


def test_run_without_seed_resumes_with_the_recorded_seed(fitted_screen, resumable):
    assert ds.settings.seed is None
    kw = {k: v for k, v in TRANS.items() if k != "seed"}
    resumed = fitted_screen.copy()
    ds.tl.fit_trans(resumed, checkpoint=str(resumable), **kw)
    fresh = fitted_screen.copy()
    ds.tl.fit_trans(fresh, **TRANS)
    assert resumed["rna"].uns["dream_trans"]["params"]["seed"] == TRANS["seed"]
    pd.testing.assert_frame_equal(
        resumed["rna"].varm["dream_trans"], fresh["rna"].varm["dream_trans"]
    )
    assert not list(resumable.parent.iterdir())  # finished: checkpoint files removed
