"""Interrupted fits resume from their checkpoint and end exactly like uninterrupted runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dream_sc as ds
from dream_sc.engine import svi as inference


class Interrupt(RuntimeError):
    pass


@pytest.fixture
def every_ten():
    old = ds.settings.checkpoint_every
    ds.settings.checkpoint_every = 10
    yield
    ds.settings.checkpoint_every = old


def _interrupt_after(monkeypatch, n_calls: int) -> None:
    calls = {"n": 0}

    def hook(step: int) -> None:
        calls["n"] += 1
        if calls["n"] == n_calls:
            raise Interrupt(f"simulated crash after {n_calls} steps")

    monkeypatch.setattr(inference, "_after_step", hook)


def test_trans_resume_is_exact(fitted, tmp_path, monkeypatch, every_ten):
    kw = {"function": "single_hill", "n_steps": 30, "seed": 4, "feature_chunk": 12, "test": False}
    reference = fitted.copy()
    ds.tl.fit_trans(reference, key_added="ref", **kw)
    ckpt = str(tmp_path / "trans")
    # chunk 1 (30 steps) finishes, chunk 2 crashes at its step 15 (checkpoint saved at 10)
    _interrupt_after(monkeypatch, 45)
    with pytest.raises(Interrupt):
        ds.tl.fit_trans(fitted, key_added="resumed", checkpoint=ckpt, **kw)
    assert "resumed" not in fitted["rna"].uns  # nothing written by the interrupted run
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["trans.real.chunk0.done.pt", "trans.real.chunk1.pt"]
    monkeypatch.setattr(inference, "_after_step", lambda step: None)
    ds.tl.fit_trans(fitted, key_added="resumed", checkpoint=ckpt, **kw)
    a, b = fitted["rna"].varm["resumed"], reference["rna"].varm["ref"]
    pd.testing.assert_frame_equal(a, b)
    np.testing.assert_array_equal(
        fitted["rna"].uns["resumed"]["loss"], reference["rna"].uns["ref"]["loss"]
    )
    assert not list(tmp_path.iterdir())  # checkpoint files removed after success


def test_cis_resume_is_exact(tiny_screen, tmp_path, monkeypatch, every_ten):
    base = tiny_screen.copy()
    ds.tl.fit_technical(base, n_steps=20, seed=0)
    reference, resumed = base.copy(), base.copy()
    kw = {"cis_feature": "GFI1B", "n_steps": 60, "seed": 1}
    ds.tl.fit_cis(reference, **kw)
    ckpt = str(tmp_path / "cis")
    _interrupt_after(monkeypatch, 35)  # checkpoint written at step 30
    with pytest.raises(Interrupt):
        ds.tl.fit_cis(resumed, checkpoint=ckpt, **kw)
    assert "dream_cis" not in resumed.uns
    monkeypatch.setattr(inference, "_after_step", lambda step: None)
    ds.tl.fit_cis(resumed, checkpoint=ckpt, **kw)
    np.testing.assert_array_equal(
        resumed.obsm["dream_cis_dose_samples"], reference.obsm["dream_cis_dose_samples"]
    )
    pd.testing.assert_frame_equal(
        resumed.uns["dream_cis"]["guides"], reference.uns["dream_cis"]["guides"]
    )


def test_checkpoint_of_another_fit_is_refused(fitted, tmp_path, monkeypatch, every_ten):
    ckpt = str(tmp_path / "trans")
    _interrupt_after(monkeypatch, 15)
    kw = {"function": "single_hill", "seed": 4, "test": False}
    with pytest.raises(Interrupt):
        ds.tl.fit_trans(fitted, n_steps=30, checkpoint=ckpt, **kw)
    monkeypatch.setattr(inference, "_after_step", lambda step: None)
    with pytest.raises(ValueError, match=r"other settings or data: n_steps 30 -> 40\. Nothing"):
        ds.tl.fit_trans(fitted, n_steps=40, checkpoint=ckpt, **kw)
    assert (tmp_path / "trans.real.chunk0.pt").exists()  # a refused resume deletes nothing
