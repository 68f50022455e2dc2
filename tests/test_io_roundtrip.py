"""Simulate -> write as Cell Ranger + STARsolo files -> read -> fit == fit of the simulation."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import dream_sc as ds


def _direct(sim):
    direct = sim.copy()
    del direct.obs["sum_factor"]
    ds.pp.sum_factors(direct)
    return direct


def _from_files(sim, tmp_path):
    """Write the screen as files (two GEM wells = cell lines), read everything back."""
    run = ds.datasets.write_cellranger(
        sim, tmp_path / "cellranger", format="mtx", gem_well_key="cell_line", seed=1
    )
    junctions, genes = ds.datasets.binomial_to_junctions(sim, "splicing", cells=run["barcodes"])
    wells = run["barcodes"].str.rsplit("-", n=1).str[-1]
    for well in ("1", "2"):  # one STARsolo run per sample, filtered to its cells
        ds.datasets.write_starsolo_junctions(
            junctions[np.asarray(wells == well)],
            tmp_path / f"starsolo{well}" / "Solo.out",
            matrix="filtered",
            compress=True,
        )
    gtf = ds.datasets.write_gtf(tmp_path / "genes.gtf", genes)

    mdata = ds.io.read_cellranger(run["outs"], feature_reference=run["feature_reference"])
    lines = sim.obs["cell_line"].cat.categories
    well = mdata.obs_names.str.rsplit("-", n=1).str[-1].astype(int) - 1
    mdata.obs["cell_line"] = pd.Categorical(lines[well], categories=lines)
    parts = [
        ds.io.read_starsolo_junctions(tmp_path / f"starsolo{w}" / "Solo.out", cells=mdata)
        for w in ("1", "2")
    ]
    mdata.mod["junctions"] = ad.concat(parts, merge="same")[mdata.obs_names].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata.update()
    ds.pp.annotate_junctions(mdata, gtf=gtf)
    ds.pp.splicing_from_junctions(
        mdata, kinds=("sj",), sj_trials="gene", min_cells_covered=0, min_total_reads=0
    )
    # the inclusion junction of each simulated feature carries its successes and trials
    inclusion = junctions.var["role"] == "inclusion"
    ids = (
        junctions.var["chrom"]
        + ":"
        + junctions.var["start"].astype(str)
        + "-"
        + junctions.var["end"].astype(str)
        + ":"
        + junctions.var["strand"]
    )[inclusion]
    splicing = mdata["sj"][:, ids.to_numpy()].copy()
    splicing.var_names = junctions.var["feature"][inclusion].to_numpy()
    mdata.mod["splicing"] = splicing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata.update()
    ds.pp.sum_factors(mdata)
    return mdata


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    sim = ds.datasets.simulate_screen(
        n_cells=200, n_genes=10, n_junctions=4, n_isoform_genes=0, seed=7, guides_per_target=3
    )
    return _direct(sim), _from_files(sim, tmp_path_factory.mktemp("files"))


def test_files_hold_the_simulated_screen(screens):
    direct, read = screens
    assert read.n_obs == direct.n_obs
    for column in ("guide", "target", "cell_line"):
        assert read.obs[column].astype(str).tolist() == direct.obs[column].astype(str).tolist()
        assert (
            read.obs[column].cat.categories.tolist() == direct.obs[column].cat.categories.tolist()
        )
    np.testing.assert_array_equal(read["rna"].X.toarray(), direct["rna"].X.toarray())
    np.testing.assert_array_equal(read["splicing"].X.toarray(), direct["splicing"].X.toarray())
    np.testing.assert_array_equal(
        read["splicing"].layers["total"].toarray(), direct["splicing"].layers["total"].toarray()
    )
    np.testing.assert_array_equal(read.obs["sum_factor"], direct.obs["sum_factor"])
    assert read["splicing"].var["gene"].tolist() == read["splicing"].var_names.tolist()


def _same_frame(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert a.columns.tolist() == b.columns.tolist()
    numeric = a.select_dtypes("number").columns
    np.testing.assert_array_equal(a[numeric].to_numpy(), b[numeric].to_numpy())
    other = [c for c in a.columns if c not in numeric]
    assert a[other].astype(str).to_numpy().tolist() == b[other].astype(str).to_numpy().tolist()


def test_technical_fits_identical(screens):
    direct, read = (m.copy() for m in screens)
    for mdata in (direct, read):
        for modality in ("rna", "splicing"):
            ds.tl.fit_technical(mdata, modality=modality, n_steps=15, seed=0)
    for modality in ("rna", "splicing"):
        _same_frame(
            direct[modality].varm["dream_technical"], read[modality].varm["dream_technical"]
        )


@pytest.mark.slow
def test_full_pipeline_identical(screens):
    """Technical, cis and trans fits of rna and splicing: identical stored results."""
    direct, read = (m.copy() for m in screens)
    for mdata in (direct, read):
        for modality in ("rna", "splicing"):
            ds.tl.fit_technical(mdata, modality=modality, n_steps=30, seed=0)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=30, seed=0)
        for modality in ("rna", "splicing"):
            ds.tl.fit_trans(
                mdata, modality=modality, n_steps=30, seed=0, test=False, refine_intervals=False
            )
    _same_frame(ds.get.cis_dosage(direct), ds.get.cis_dosage(read))
    for modality in ("rna", "splicing"):
        _same_frame(
            ds.get.trans_results(direct, modality=modality),
            ds.get.trans_results(read, modality=modality),
        )
