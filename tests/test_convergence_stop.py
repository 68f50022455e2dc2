"""Stopping on convergence (``FitConfig.tolerance`` / ``tolerance=`` of the tl fits)."""

from __future__ import annotations

import mudata
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import dream_sc as ds
from dream_sc.engine.config import FitConfig
from dream_sc.engine.svi import run_svi, stop_window, tolerance_reached


def test_tolerance_reached_by_hand():
    # previous window mean 10.0, last 9.995: relative improvement 5e-4
    loss = np.r_[np.full(10, 10.0), np.full(10, 9.995)]
    assert tolerance_reached(loss, 1e-3, 10)
    assert not tolerance_reached(loss, 1e-4, 10)
    assert not tolerance_reached(loss[:15], 1e-3, 10)  # fewer than two windows
    assert stop_window(300) == 15 and stop_window(100) == 10


def _map_fit(tolerance, n_steps=600):
    """MAP of a Normal mean (Delta guide): a deterministic loss, an exact answer (4.0)."""
    data = torch.tensor([3.0, 5.0, 4.5, 3.5])

    def model(batch):
        mu = pyro.sample("mu", dist.Normal(0.0, 100.0))
        with pyro.plate("obs", len(data)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=data)

    with pyro.get_param_store().scope():
        loc = torch.zeros((), requires_grad=True)

        def guide(batch):
            pyro.sample("mu", dist.Delta(loc))

        config = FitConfig(n_steps=n_steps, lr=0.1, tolerance=tolerance)
        result = run_svi(model, guide, lambda: [loc], lambda step: {}, config)
    return result, float(loc.detach())


def test_simple_fit_stops_early_within_error_of_full_fit():
    full, mu_full = _map_fit(None)
    stopped, mu_stop = _map_fit(1e-6)
    assert full.n_steps_run is None and len(full.loss) == 600
    assert stopped.n_steps_run is not None and stopped.n_steps_run < 300
    assert stopped.converged
    assert len(stopped.loss) == 600  # padded with the last window's mean
    w = stop_window(600)
    np.testing.assert_allclose(
        stopped.loss[stopped.n_steps_run :],
        stopped.loss[stopped.n_steps_run - w : stopped.n_steps_run].mean(),
    )
    assert mu_full == pytest.approx(4.0, abs=1e-3)
    # measured: stops after 270 of 600 steps, |mu - mu_full| = 6e-5 (tolerance 1e-4:
    # 210 steps, 1.5e-3)
    assert abs(mu_stop - mu_full) < 1e-3


def test_without_tolerance_identical_and_record_unchanged():
    mdata = ds.datasets.simulate_screen(
        n_cells=200, n_genes=12, n_junctions=0, n_isoform_genes=0, seed=0
    )
    a, b = mdata.copy(), mdata.copy()
    ds.tl.fit_technical(a, n_steps=40, progress=False, seed=1)
    ds.tl.fit_technical(b, n_steps=40, progress=False, seed=1, tolerance=None)
    ra, rb = a["rna"].uns["dream_technical"], b["rna"].uns["dream_technical"]
    np.testing.assert_array_equal(ra["loss"], rb["loss"])
    np.testing.assert_array_equal(
        a["rna"].varm["dream_technical"].to_numpy(), b["rna"].varm["dream_technical"].to_numpy()
    )
    assert "chunk_n_steps_run" not in ra and str(ra["params"]["tolerance"]) in ("", "None")
    with pytest.raises(ValueError, match="tolerance"):
        ds.tl.fit_technical(mdata.copy(), n_steps=40, progress=False, tolerance=-1.0)


@pytest.mark.slow
def test_technical_fit_stops_early_close_to_full_length(tmp_path):
    """fit_technical with a tolerance: fewer steps, recorded, means within the fit's noise."""
    torch.set_num_threads(1)
    mdata = ds.datasets.simulate_screen(
        n_cells=300, n_genes=20, n_junctions=0, n_isoform_genes=0, seed=0
    )
    full, fast = mdata.copy(), mdata.copy()
    ds.tl.fit_technical(full, n_steps=800, progress=False, seed=1)
    ds.tl.fit_technical(fast, n_steps=800, progress=False, seed=1, tolerance=1e-4)
    record = fast["rna"].uns["dream_technical"]
    steps = np.asarray(record["chunk_n_steps_run"])
    assert record["params"]["tolerance"] == pytest.approx(1e-4)
    assert (steps > 0).all() and (steps < 800).all()  # measured: 200 of 800
    ref, got = full["rna"].varm["dream_technical"], fast["rna"].varm["dream_technical"]
    # measured: up to 0.94 posterior sd (dispersion); a fixed 200-step fit differs from the
    # 800-step one by up to 0.99 sd, a fixed 400-step fit by 0.30 sd
    for name in ("baseline", "effect_HEK293T", "dispersion"):
        diff = np.abs(got[f"{name}_mean"] - ref[f"{name}_mean"]) / ref[f"{name}_sd"]
        assert diff.max() < 1.5, name
    path = tmp_path / "tol.h5mu"
    fast.write(path)
    back = mudata.read_h5mu(path)
    np.testing.assert_array_equal(back["rna"].uns["dream_technical"]["chunk_n_steps_run"], steps)


def test_cis_and_trans_record_steps_run_and_test_trans_rereads_tolerance():
    torch.set_num_threads(1)
    mdata = ds.datasets.simulate_screen(
        n_cells=200, n_genes=12, n_junctions=0, n_isoform_genes=0, seed=0
    )
    ds.tl.fit_technical(mdata, n_steps=40, progress=False, seed=1)
    ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=400, progress=False, seed=1, tolerance=1e-3)
    cis_run = int(mdata.uns["dream_cis"]["n_steps_run"])
    assert 0 < cis_run < 400
    ds.tl.fit_trans(
        mdata,
        function="single_hill",
        n_steps=400,
        progress=False,
        seed=1,
        tolerance=1e-3,
        refine_intervals=False,
        n_permutations=3,
        feature_chunk=6,
    )
    record = mdata["rna"].uns["dream_trans"]
    steps = np.asarray(record["chunk_n_steps_run"])
    assert len(steps) == len(record["chunk_converged"]) == 2  # 11 features in chunks of 6
    assert ((steps > 0) & (steps < 400)).all()
    assert np.asarray(record["chunk_converged"]).all()
    before = mdata["rna"].varm["dream_trans"]["qvalue"].to_numpy()
    ds.tl.test_trans(mdata, progress=False)  # rebuilds the job from the record
    np.testing.assert_array_equal(mdata["rna"].varm["dream_trans"]["qvalue"].to_numpy(), before)
