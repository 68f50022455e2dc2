"""The escaper benchmark's oracles (benchmarks/escapers.py) do what their rows claim."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import escapers as E  # noqa: E402

import dream_sc as ds  # noqa: E402
from dream_sc._stores.cis import read_cis_samples  # noqa: E402
from dream_sc.engine.config import FitConfig  # noqa: E402
from dream_sc.models import cis_dosage as CD  # noqa: E402
from dream_sc.tl._trans_job import prepare_trans_job  # noqa: E402
from dream_sc.tl._trans_settings import TransSettings  # noqa: E402

#: A short cis fit (the oracles are checked, not the fit's accuracy).
FIT = {"cis_feature": "GFI1B", "n_steps": 100, "n_samples": 40, "seed": 0}


@pytest.fixture(scope="module")
def small_escaper_screen():
    """400 cells, three GFI1B guides, 30% escapers; technical fit only."""
    mdata = ds.datasets.simulate_screen(
        n_cells=400,
        n_genes=8,
        n_junctions=0,
        n_isoform_genes=0,
        guides_per_target=3,
        seed=2,
        escape_fraction=0.3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=100, seed=0)
    return mdata


def test_membership_oracle_draws_every_cell_from_its_true_component(small_escaper_screen):
    mdata = small_escaper_screen.copy()
    truth = mdata.obs["true_escaped"].to_numpy(bool)
    assert 0.2 < truth[(mdata.obs["target"] != "ntc").to_numpy()].mean() < 0.4
    original = CD._chunk_values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with E.known_membership(truth):
            ds.tl.fit_cis(mdata, **FIT, escapers=True)
        assert CD._chunk_values is original  # restored
        ds.tl.fit_cis(mdata, **FIT, escapers=True, key_added="free")
    # every draw of a cell follows its true component: escape share exactly 0 or 1
    np.testing.assert_allclose(mdata.obs["dream_cis_escape_prob"].to_numpy(), truth, atol=1e-9)
    # the same fit without the oracle leaves cells ambiguous (shares strictly between 0 and 1)
    free = mdata.obs["free_escape_prob"].to_numpy()
    assert ((free > 0.1) & (free < 0.9)).mean() > 0.2
    # the guide-level fit is the same: only the per-cell draws are conditioned
    np.testing.assert_allclose(
        ds.get.cis_dosage(mdata)["log2_effect_mean"],
        ds.get.cis_dosage(mdata, key="free")["log2_effect_mean"],
    )


def test_oracle_cis_hands_the_true_dosage_to_the_trans_fit(small_escaper_screen):
    mdata = small_escaper_screen.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_cis(mdata, **FIT, key_added="cis_plain")
    E.oracle_cis(mdata, "cis_oracle", "cis_plain")
    true = mdata.obs["true_dose"].to_numpy()
    samples = read_cis_samples(mdata, "cis_oracle")
    np.testing.assert_allclose(samples, np.repeat(true[:, None], samples.shape[1], 1), rtol=1e-6)
    cells = ds.get.cis_dosage(mdata, key="cis_oracle", level="cell")
    np.testing.assert_allclose(cells["dose_q50"], true)
    assert (cells["dose_sd"] == 0).all()
    settings = TransSettings.from_params({"function": "single_hill", "cis_key": "cis_oracle"})
    config = FitConfig.resolve("trans", seed=0, device="cpu", progress=False)
    job = prepare_trans_job(mdata, settings, config)
    np.testing.assert_allclose(job.inputs.log_dose_mean, np.log(true[job.rows]), rtol=1e-6)
    assert np.abs(job.inputs.log_dose_var).max() < 1e-10
