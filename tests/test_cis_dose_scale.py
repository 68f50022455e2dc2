"""The dose scale of the cis fit against the simulated truth (issue 27, item 4).

Two things put the per-cell dosages ~10% above the truth on the CRISPRi/CRISPRa check screen:
the simulator's estimated size factors were in another unit than its truth in the reference
line (fixed in the simulator), and the posterior *mean* of a right-skewed per-cell posterior
sits ``exp(v / 2)`` above its median (inherent; ``dose_q50`` is the point estimate to compare).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import spearmanr

import dream_sc as ds

TWO_LINE = {"guide_design": "line_specific", "guides_per_target": 2, "dose_noise": 0.7}


def test_simulated_size_factors_are_in_the_truths_unit_in_the_reference_line():
    mdata = ds.datasets.simulate_screen(
        n_cells=800, n_genes=40, n_junctions=0, n_isoform_genes=0, seed=1, **TWO_LINE
    )
    obs = mdata.obs
    ref = (obs["cell_line"] == "K562").to_numpy()
    log_ratio = np.log(obs["true_size_factor"] / obs["sum_factor"]).to_numpy()
    assert abs(log_ratio[ref].mean()) < 1e-10
    scale = mdata.uns["dream_sum_factors"]["sum_factor"]["scale"]
    # the estimate is the default pp.sum_factors up to that one constant
    redo = mdata.copy()
    ds.pp.sum_factors(redo, "rna", key_added="sf", technical_key="cell_line")
    np.testing.assert_allclose(obs["sum_factor"], scale * redo.obs["sf"], rtol=1e-10)
    assert 0.8 < scale < 1.25


@pytest.mark.slow
def test_per_cell_dosage_is_on_the_truths_scale():
    """Posterior medians within 3% of the truth (controls too); means above by exp(v/2).

    Measured (3,000 cells x 100 genes): seed 2 median ratio 0.996 (means 1.030), seed 1 0.968
    (1.040) where the NTC dosage itself has a posterior sd of 0.07 log2 (5%): the tolerance is
    3% plus the fit's own uncertainty of the reference dosage. Before the simulator's size
    factors were put in the truth's unit, seed 1's means sat 1.058 above the truth (4,000
    cells x 300 genes; controls 1.082), after it 1.026 (controls 1.050; medians 0.983, 1.014).
    """
    mdata = ds.datasets.simulate_screen(
        n_cells=3000, n_genes=60, n_junctions=0, n_isoform_genes=0, seed=2, **TWO_LINE
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, seed=2)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=2)
    tolerance = 0.03 + 2 * np.log(2) * mdata.uns["dream_cis"]["log2_x_ntc_sd"]
    cells = ds.get.cis_dosage(mdata, level="cell").dropna(subset=["dose_mean"])
    obs = mdata.obs.loc[cells.index]
    truth = obs["true_dose"].to_numpy()
    control = (obs["target"] == "ntc").to_numpy()
    median_ratio = cells["dose_q50"].to_numpy() / truth
    assert abs(np.log(np.median(median_ratio))) < tolerance, np.median(median_ratio)
    assert abs(np.log(np.median(median_ratio[control]))) < tolerance, np.median(
        median_ratio[control]
    )
    # the mean of each cell's posterior is its median times about exp(v / 2)
    samples = np.asarray(mdata.obsm["dream_cis_dose_samples"])[
        obs.index.map(mdata.obs_names.get_loc)
    ]
    v = np.log(samples).var(axis=1)
    jensen = cells["dose_mean"].to_numpy() / cells["dose_q50"].to_numpy()
    assert abs(np.median(np.log(jensen) - v / 2)) < 0.02
    # calibrated: the truth's rank in each cell's posterior is uniform on average
    pit = (samples < truth[:, None]).mean(axis=1)
    assert abs(pit.mean() - 0.5) < 0.04, pit.mean()
    assert spearmanr(cells["dose_mean"], truth).correlation > 0.93
