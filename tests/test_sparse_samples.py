"""Sparse per-cell dosage samples: a screen's memory does not grow with targets x all cells."""

from __future__ import annotations

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import dream_sc as ds
from dream_sc._stores.cis import read_cis_samples
from dream_sc.tl._screen_checks import SPARSE_SAMPLES_BYTES, sample_storage


@pytest.fixture(scope="module")
def both(two_target_screen):
    """The same target fitted with dense and with sparse samples."""
    mdata = two_target_screen()
    target = sorted(set(mdata.obs["target"]) - {"ntc"})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=20, seed=0)
        for name, flag in (("dense", False), ("sparse", True)):
            ds.tl.fit_cis(
                mdata,
                cis_feature=target,
                cis_target=target,
                n_steps=30,
                seed=0,
                key_added=f"cis_{name}",
                sparse_samples=flag,
            )
            ds.tl.fit_trans(
                mdata,
                cis_key=f"cis_{name}",
                function="single_hill",
                n_steps=20,
                n_permutations=2,
                refine_intervals=False,
                seed=0,
                key_added=f"trans_{name}",
            )
    return mdata


def test_sparse_samples_hold_the_fitted_cells_only_and_read_back_exactly(both):
    dense = both.obsm["cis_dense_dose_samples"]
    stored = both.obsm["cis_sparse_dose_samples"]
    assert sparse.issparse(stored) and stored.shape == dense.shape
    fitted = np.isfinite(dense).all(1)
    assert 0 < fitted.sum() < both.n_obs
    assert stored.nnz == fitted.sum() * dense.shape[1]
    np.testing.assert_array_equal(read_cis_samples(both, "cis_sparse"), dense)


def test_trans_fit_on_sparse_samples_equals_the_dense_one(both):
    a, b = both["rna"].varm["trans_dense"], both["rna"].varm["trans_sparse"]
    pd.testing.assert_frame_equal(a, b)


def test_sparse_samples_survive_an_h5mu_round_trip(both, tmp_path):
    path = tmp_path / "sparse.h5mu"
    both.write(path)
    back = md.read_h5mu(path)
    assert sparse.issparse(back.obsm["cis_sparse_dose_samples"])
    np.testing.assert_array_equal(
        read_cis_samples(back, "cis_sparse"), read_cis_samples(both, "cis_dense")
    )
    ds.tl.test_trans(back, key="trans_sparse", n_permutations=2)  # rebuilds the job from them
    np.testing.assert_array_equal(
        back["rna"].varm["trans_sparse"]["qvalue"], both["rna"].varm["trans_dense"]["qvalue"]
    )


def test_screen_chooses_sparse_samples_when_dense_ones_would_not_fit():
    assert sample_storage({}, 500, 100_000, 100) == {"sparse_samples": True}
    n_obs = SPARSE_SAMPLES_BYTES // (4 * 100 * 2)  # exactly at the limit: dense
    assert sample_storage({}, 2, n_obs, 100) == {"sparse_samples": False}
    assert sample_storage({}, 2, n_obs + 1, 100) == {"sparse_samples": True}
    assert sample_storage({"sparse_samples": False}, 500, 100_000, 100) == {"sparse_samples": False}


def test_screen_with_sparse_samples_resumes_from_its_checkpoint(two_target_screen, tmp_path):
    settings = {
        "n_steps": {"technical": 20, "cis": 20, "trans": 20},
        "trans_kwargs": {"refine_intervals": False, "n_permutations": 2},
        "cis_kwargs": {"sparse_samples": True},
        "seed": 3,
        "progress": False,
        "checkpoint": str(tmp_path / "ckpt"),
    }
    first, second = two_target_screen(), two_target_screen()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_screen(first, **settings)
        ds.tl.fit_screen(second, **settings)  # every target from the checkpoint
    assert second.uns["dream_screen"]["timings"]["from_checkpoint"].all()
    for target in first.uns["dream_screen"]["targets"]:
        key = f"dream_cis_{target}_dose_samples"
        assert sparse.issparse(second.obsm[key])
        np.testing.assert_array_equal(second.obsm[key].toarray(), first.obsm[key].toarray())
    pd.testing.assert_frame_equal(ds.get.screen_results(first), ds.get.screen_results(second))


def test_screen_too_large_for_the_memory_budget_is_refused_before_any_work(two_target_screen):
    from dream_sc.engine.memory import MemoryBudgetError

    mdata = two_target_screen()
    before = (set(mdata.uns), set(mdata.obs.columns), set(mdata.obsm))
    old = ds.settings.max_memory_gb
    ds.settings.max_memory_gb = 0.0002  # 200 kB: less than the results of two targets (~0.35 MB)
    try:
        with pytest.raises(
            MemoryBudgetError,
            match=r"more than the 0\.0 GB available \(user "
            r"budget\)\. Fit the targets in parts \(`targets=` a subset",
        ):
            ds.tl.fit_screen(mdata, n_steps=5, progress=False)
    finally:
        ds.settings.max_memory_gb = old
    assert (set(mdata.uns), set(mdata.obs.columns), set(mdata.obsm)) == before


def test_screen_result_estimate_by_hand():
    from dream_sc.engine.memory import screen_result_bytes

    dense = screen_result_bytes(
        n_targets=2,
        n_obs=100,
        n_features=10,
        n_draws=4,
        cells_per_target=30,
        sparse_draws=False,
        n_permutations=3,
        grid=5,
    )
    cis = 5 * 100 * 8 + 100 * 4 * 4
    trans = 10 * (120 * 12 + 3 * 5 * 4 + 3 * 8)
    assert dense == 2 * (cis + trans)
    sparse_ = screen_result_bytes(
        n_targets=2,
        n_obs=100,
        n_features=10,
        n_draws=4,
        cells_per_target=30,
        sparse_draws=True,
        n_permutations=3,
        grid=5,
    )
    assert sparse_ == 2 * (5 * 100 * 8 + 30 * 4 * 8 + 101 * 8 + trans)
