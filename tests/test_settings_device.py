"""``ds.settings.device`` is the default of every tl function (``device=None``)."""

from __future__ import annotations

import inspect

import pytest
import torch

import dream_sc as ds


@pytest.fixture
def device_setting():
    old = ds.settings.device
    yield
    ds.settings.device = old


@pytest.mark.parametrize(
    "name",
    ["fit_technical", "fit_cis", "fit_trans", "test_trans", "fit_screen", "calibration_check"],
)
def test_every_tl_function_defaults_to_the_setting(name):
    assert inspect.signature(getattr(ds.tl, name)).parameters["device"].default is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_setting_cuda_without_gpu_is_refused(tiny_screen, device_setting):
    ds.settings.device = "cuda"
    mdata = tiny_screen.copy()
    with pytest.raises(ValueError, match="device='cuda' was requested but CUDA is not available"):
        ds.tl.fit_technical(mdata, n_steps=2, seed=0)
    assert "dream_technical" not in mdata["rna"].uns


def test_setting_cpu_is_used_and_recorded(tiny_screen, device_setting):
    ds.settings.device = "cpu"
    mdata = tiny_screen.copy()
    ds.tl.fit_technical(mdata, n_steps=2, seed=0)
    assert mdata["rna"].uns["dream_technical"]["params"]["device"] == "cpu"
