"""The CUDA path end to end (marked ``gpu``; skipped where no CUDA device exists).

Results on the GPU are not bit-identical to the CPU (different reduction kernels), so these tests
compare the estimates within Monte-Carlo tolerance and check where the work ran.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import dream_sc as ds

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEVICE = "cuda"


def _screen():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.datasets.simulate_screen(
            n_cells=600, n_genes=40, n_junctions=0, n_isoform_genes=0, seed=3
        )


def _pipeline(mdata, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, modality="rna", n_steps=100, seed=0, device=device)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=200, seed=0, device=device)
        ds.tl.fit_trans(mdata, modality="rna", n_steps=200, seed=0, device=device)
    return mdata


@pytest.fixture(scope="module")
def fitted():
    return _pipeline(_screen(), "cpu"), _pipeline(_screen(), DEVICE)


def test_every_step_records_the_cuda_device(fitted):
    _, gpu = fitted
    assert gpu["rna"].uns["dream_technical"]["params"]["device"].startswith("cuda")
    assert gpu.uns["dream_cis"]["params"]["device"].startswith("cuda")
    assert gpu["rna"].uns["dream_trans"]["params"]["device"].startswith("cuda")


def test_memory_plan_uses_the_device_memory(fitted):
    _, gpu = fitted
    plan = gpu["rna"].uns["dream_trans"]["plan"]
    assert plan["memory_source"].startswith("free memory of cuda")


def test_cuda_estimates_agree_with_the_cpu(fitted):
    cpu, gpu = fitted
    a = ds.get.trans_results(cpu, modality="rna")
    b = ds.get.trans_results(gpu, modality="rna")
    assert list(a.index) == list(b.index)
    assert (a["fitted"] == b["fitted"]).all()
    a, b = a[a["fitted"]], b[b["fitted"]]
    assert np.corrcoef(a["response_mean"], b["response_mean"])[0, 1] > 0.98
    agree = (a["prob_dose_dependent"] > 0.5) == (b["prob_dose_dependent"] > 0.5)
    assert agree.mean() >= 0.9
    dose_a = ds.get.cis_dosage(cpu)["dose_mean"].to_numpy()
    dose_b = ds.get.cis_dosage(gpu)["dose_mean"].to_numpy()
    np.testing.assert_allclose(dose_a, dose_b, rtol=0.1)


def test_cuda_results_are_plain_host_arrays(fitted):
    _, gpu = fitted
    for key, value in gpu["rna"].varm.items():
        if key.startswith("dream_"):
            assert not isinstance(value, torch.Tensor), key
    table = ds.get.trans_results(gpu, modality="rna")
    assert table.select_dtypes("number").notna().any().all()
