"""Targets with a single guide (issue 27, item 2): fitted, with honest guide-level intervals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dream_sc as ds


@pytest.fixture(scope="module")
def single_guide_screen():
    """1,500 cells, one GFI1B guide (log2 effect -1) and five NTC guides, fitted."""
    mdata = ds.datasets.simulate_screen(
        n_cells=1500,
        n_genes=40,
        n_junctions=0,
        n_isoform_genes=0,
        guides_per_target=1,
        seed=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=80, seed=0)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=0)
    return mdata


def test_single_guide_target_is_fitted_with_n_guides():
    """Tiny and fast: the refusal of earlier versions is gone, n_guides is stored."""
    mdata = ds.datasets.simulate_screen(
        n_cells=300, n_genes=15, n_junctions=0, n_isoform_genes=0, guides_per_target=1, seed=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=40, seed=0)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=60, seed=0)
    guides = ds.get.cis_dosage(mdata)
    assert mdata.uns["dream_cis"]["n_guides"] == 1
    assert guides.loc["GFI1B_1", "n_guides"] == 1
    assert guides.loc["GFI1B_1", "log2_effect_q05"] < -0.5  # the -1 log2 knock-down is seen
    assert mdata.uns["dream_cis"]["priors"]["target_scale"]["used"] is False


@pytest.mark.slow
def test_single_guide_target_fits_with_the_truth_inside_its_interval(single_guide_screen):
    mdata = single_guide_screen
    guides = ds.get.cis_dosage(mdata)
    assert mdata.uns["dream_cis"]["n_guides"] == 1
    assert (guides["n_guides"] == np.where(guides["is_control"], 5, 1)).all()
    truth = mdata.uns["truth"]["guides"]
    row = guides.loc["GFI1B_1"]
    true_effect = truth.loc["GFI1B_1", "log2_effect"]
    assert true_effect == pytest.approx(-1.0)
    assert row["log2_effect_q05"] <= true_effect <= row["log2_effect_q95"]
    assert abs(row["log2_effect_mean"] - true_effect) < 0.15
    # the hierarchy has nothing to pool and must not collapse: the interval stays honest
    width = row["log2_effect_q95"] - row["log2_effect_q05"]
    assert 0.02 < width < 0.6, width
    # per-cell dosages on the truth's scale, ranked like the truth
    cells = ds.get.cis_dosage(mdata, level="cell").dropna(subset=["dose_mean"])
    true_dose = mdata.obs.loc[cells.index, "true_dose"].to_numpy()
    ratio = np.median(cells["dose_q50"].to_numpy() / true_dose)
    # 3% plus the fit's own uncertainty of the NTC dosage (0.07 log2 on 1,000 cells)
    tolerance = 0.03 + 2 * np.log(2) * mdata.uns["dream_cis"]["log2_x_ntc_sd"]
    assert abs(np.log(ratio)) < tolerance, (ratio, tolerance)
    targeting = (mdata.obs.loc[cells.index, "target"] == "GFI1B").to_numpy()
    rho = np.corrcoef(np.log(cells["dose_mean"]), np.log(true_dose))[0, 1]
    assert rho > 0.6, rho
    assert np.median(cells["dose_q50"][targeting]) < 0.7 * np.median(cells["dose_q50"][~targeting])


@pytest.mark.slow
def test_single_guide_target_carries_on_to_the_trans_fit(single_guide_screen, tmp_path):
    mdata = single_guide_screen.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_trans(mdata, function="single_hill", n_steps=60, seed=0, test=False)
    res = ds.get.trans_results(mdata)
    fitted = res[res["fitted"]]
    assert len(fitted) == mdata["rna"].n_vars - 1
    assert np.isfinite(fitted["response_mean"]).all()
    path = tmp_path / "single.h5mu"
    mdata.write(path)
    import mudata

    back = mudata.read_h5mu(path)
    assert (
        ds.get.cis_dosage(back)["n_guides"].tolist()
        == ds.get.cis_dosage(mdata)["n_guides"].tolist()
    )


def test_fit_screen_fits_a_single_guide_target_next_to_a_two_guide_one():
    mdata = ds.datasets.simulate_screen(
        n_cells=400,
        n_genes=15,
        n_junctions=0,
        n_isoform_genes=0,
        n_targets=2,
        guides_per_target=2,
        seed=5,
    )
    keep = (mdata.obs["guide"] != "GEMIN5_2").to_numpy()  # GEMIN5 keeps one guide after QC
    mdata = mdata[keep].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_screen(
            mdata,
            n_steps=20,
            trans_kwargs={"n_permutations": 1, "refine_intervals": False},
            seed=0,
            progress=False,
        )
    assert mdata.uns["dream_cis_GEMIN5"]["n_guides"] == 1
    assert mdata.uns["dream_cis_GFI1B"]["n_guides"] == 2
    table = ds.get.screen_results(mdata)
    assert set(table["target"]) == {"GEMIN5", "GFI1B"}
