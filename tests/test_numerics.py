"""Numerical robustness on tiny screens: extreme depth, all-zero and hugely over-dispersed
features, a 1000x dosage range, non-finite losses and the convergence flags.
"""

from __future__ import annotations

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import dream_sc as ds
from dream_sc.engine.svi import NonFiniteLossError
from test_bad_input import snapshot

STEPS = {"technical": 40, "cis": 60, "trans": 20}
DEEP, ZERO, WILD, ZERO_IN_CONTROLS, ONE_READ = (
    "gene_0001",
    "gene_0002",
    "gene_0003",
    "gene_0004",
    "gene_0005",
)
DEPTH = 1e4


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _numeric(frame: pd.DataFrame) -> np.ndarray:
    """Numeric columns; ``refine_ess`` only where refined (it is NaN by design elsewhere)."""
    if "refine_ess" in frame:
        frame = frame.assign(refine_ess=frame["refine_ess"].where(frame["refined"], 1.0))
    return frame.select_dtypes(include=["number", "bool"]).to_numpy(dtype=np.float64)


def _extreme_screen() -> md.MuData:
    mdata = _quiet(
        ds.datasets.simulate_screen,
        n_cells=240,
        n_genes=10,
        n_junctions=0,
        n_isoform_genes=0,
        seed=3,
    )
    rng = np.random.default_rng(0)
    X = mdata["rna"].X.toarray()
    names = mdata["rna"].var_names
    sf = mdata.obs["sum_factor"].to_numpy()
    control = (mdata.obs["target"] == "ntc").to_numpy()
    X[:, names.get_loc(DEEP)] = rng.poisson(DEPTH * sf)
    X[:, names.get_loc(ZERO)] = 0
    r, mu = 0.01, 5.0 * sf  # NB dispersion 1/r = 100: almost all zeros, a few huge counts
    X[:, names.get_loc(WILD)] = rng.negative_binomial(r, r / (r + mu))
    X[control, names.get_loc(ZERO_IN_CONTROLS)] = 0
    X[:, names.get_loc(ONE_READ)] = 0
    X[np.flatnonzero(~control)[0], names.get_loc(ONE_READ)] = 7
    mdata["rna"].X = sparse.csr_matrix(X)
    return mdata


@pytest.fixture(scope="module")
def extreme():
    """Technical, cis and trans fits of a screen with pathological features (chunks of 4)."""
    mdata = _extreme_screen()
    _quiet(ds.tl.fit_technical, mdata, n_steps=STEPS["technical"], feature_chunk=4, seed=0)
    _quiet(ds.tl.fit_cis, mdata, cis_feature="GFI1B", n_steps=STEPS["cis"], seed=0)
    _quiet(ds.tl.fit_trans, mdata, n_steps=STEPS["trans"], feature_chunk=4, seed=0)
    return mdata


def test_extreme_features_are_really_extreme(extreme):
    X = extreme["rna"].X.toarray()
    names = extreme["rna"].var_names
    wild = X[:, names.get_loc(WILD)]
    assert X[:, names.get_loc(DEEP)].mean() > 0.8 * DEPTH
    assert X[:, names.get_loc(ZERO)].sum() == 0
    assert (wild > 0).mean() < 0.2 and wild.max() > 10 * wild.mean()


def test_technical_finite_and_sane(extreme):
    rna = extreme["rna"]
    table = rna.varm["dream_technical"]
    assert np.isfinite(_numeric(table)).all()
    control = (extreme.obs["target"] == "ntc").to_numpy()
    sf = extreme.obs["sum_factor"].to_numpy()[control]
    deep = rna.X[:, rna.var_names.get_loc(DEEP)].toarray().ravel()[control]
    reference = extreme.obs["cell_line"].to_numpy()[control] == "K562"
    # baseline (log scale, reference group) of the deep gene = log of its mean count per unit sf
    expected = np.log(deep[reference].sum() / sf[reference].sum())
    assert table.loc[DEEP, "baseline_mean"] == pytest.approx(expected, abs=0.05)
    # Poisson counts: the dispersion must be small; the NB(r=0.01) gene: large
    assert table.loc[DEEP, "dispersion_q50"] < 0.01
    assert table.loc[WILD, "dispersion_q50"] > 1.0


def test_features_without_information_are_neutral(extreme):
    rna = extreme["rna"]
    informative = rna.var["dream_technical_informative"]
    assert informative.dtype == bool
    assert not informative[[ZERO, ZERO_IN_CONTROLS, ONE_READ]].any()
    assert informative[[DEEP, WILD, "GFI1B"]].all()
    table = rna.varm["dream_technical"]
    effects = [c for c in table.columns if c.startswith("effect_")]
    assert len(effects) == 5  # one non-reference group x five statistics
    assert (table.loc[~informative, effects] == 0).all().all()
    assert (table.loc[informative, "effect_HEK293T_sd"] > 0).all()


def test_cis_finite(extreme):
    used = extreme.obs["target"].isin(["GFI1B", "ntc"]).to_numpy()
    for stat in ("mean", "sd", "q05", "q95"):
        assert np.isfinite(extreme.obs[f"dream_cis_dose_{stat}"].to_numpy()[used]).all()
    guides = ds.get.cis_dosage(extreme)
    assert np.isfinite(_numeric(guides)).all()
    assert (guides["dose_q05"] > 0).all()


def test_trans_finite_everywhere(extreme):
    rna = extreme["rna"]
    results = ds.get.trans_results(extreme)
    fitted = results["fitted"].to_numpy()
    assert fitted.sum() == rna.n_vars - 1  # all but the cis gene
    values = _numeric(results[fitted])
    columns = results.select_dtypes(include=["number", "bool"]).columns
    bad = columns[~np.isfinite(values).all(0)]
    assert not list(bad), f"non-finite trans columns: {list(bad)}"
    for stat in ("mean", "q05", "q95"):
        assert np.isfinite(rna.varm[f"dream_trans_curve_{stat}"][fitted]).all()
    assert np.isfinite(rna.varm["dream_trans_posterior"].to_numpy()[fitted]).all()
    curves = ds.get.trans_curves(extreme, dose=[1e-3, 1.0, 1e3])
    assert np.isfinite(curves[["mean", "q05", "q95"]].to_numpy()).all()
    assert (curves[["mean", "q05", "q95"]].to_numpy() >= 0).all()
    # the deep gene's curve stays at its depth (expected count per unit sf, reference group)
    deep = ds.get.trans_curves(extreme, features=[DEEP])
    assert deep["mean"].between(0.5 * DEPTH, 2 * DEPTH).all()


def test_converged_flags_per_fit_and_chunk(extreme):
    rna = extreme["rna"]
    technical = rna.uns["dream_technical"]
    assert isinstance(technical["converged"], bool | np.bool_)
    chunks = np.asarray(technical["chunk_converged"])
    assert chunks.dtype == bool and chunks.shape == (3,)  # 10 features, chunks of 4
    assert bool(technical["converged"]) == bool(chunks.all())
    assert isinstance(extreme.uns["dream_cis"]["converged"], bool | np.bool_)
    trans = rna.uns["dream_trans"]
    chunks = np.asarray(trans["chunk_converged"])
    assert chunks.dtype == bool and chunks.shape == (3,)  # 9 fitted features, chunks of 4
    assert bool(trans["converged"]) == bool(chunks.all())
    per_feature = ds.get.trans_results(extreme)["converged"].to_numpy()[1:]
    np.testing.assert_array_equal(per_feature, np.repeat(chunks, [4, 4, 1]))


def test_dosage_spanning_1000x():
    mdata = _quiet(
        ds.datasets.simulate_screen,
        n_cells=240,
        n_genes=8,
        n_junctions=0,
        n_isoform_genes=0,
        seed=4,
        guide_log2_range=(-8.0, 2.0),
    )
    truth = mdata.uns["truth"]["guides"]["dose"]
    assert truth.max() / truth.min() > 500
    _quiet(ds.tl.fit_technical, mdata, n_steps=STEPS["technical"], seed=0)
    _quiet(ds.tl.fit_cis, mdata, cis_feature="GFI1B", n_steps=STEPS["cis"], seed=0)
    _quiet(ds.tl.fit_trans, mdata, n_steps=STEPS["trans"], seed=0)
    guides = ds.get.cis_dosage(mdata)
    assert np.isfinite(_numeric(guides)).all()
    assert guides["dose_mean"].max() / guides["dose_mean"].min() > 10
    results = ds.get.trans_results(mdata)
    fitted = results["fitted"].to_numpy()
    assert np.isfinite(_numeric(results[fitted])).all()
    grid = np.asarray(mdata["rna"].uns["dream_trans"]["dose_grid"])
    assert grid.min() <= guides["dose_mean"].min() and grid.max() >= guides["dose_mean"].max()
    for stat in ("mean", "q05", "q95"):
        assert np.isfinite(mdata["rna"].varm[f"dream_trans_curve_{stat}"][fitted]).all()
    dose = np.geomspace(truth.min(), truth.max(), 7)
    curves = ds.get.trans_curves(mdata, dose=dose)
    band = curves[["mean", "q05", "q95"]].to_numpy()
    assert np.isfinite(band).all() and (band > 0).all()
    assert (curves["q05"] <= curves["q95"]).all()


# --------------------------------------------------------------------------------------------
# non-finite ELBO
# --------------------------------------------------------------------------------------------
CORRUPT = 1e38  # a count that overflows float32 arithmetic (e.g. a sentinel from a bad pipeline)


@pytest.fixture(scope="module")
def small():
    mdata = _quiet(
        ds.datasets.simulate_screen,
        n_cells=200,
        n_genes=15,
        n_junctions=0,
        n_isoform_genes=0,
        seed=0,
    )
    _quiet(ds.tl.fit_technical, mdata, n_steps=10, seed=0)
    _quiet(ds.tl.fit_cis, mdata, cis_feature="GFI1B", n_steps=20, seed=0)
    return mdata


def _corrupt(mdata, target: str, feature: int) -> None:
    X = mdata["rna"].X.toarray().astype(np.float64)
    X[np.flatnonzero((mdata.obs["target"] == target).to_numpy())[3], feature] = CORRUPT
    mdata["rna"].X = X


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:Encountered \\+inf:UserWarning")
@pytest.mark.parametrize(
    ("step", "target", "feature", "where"),
    [
        ("technical", "ntc", 7, r"in feature chunk 2/3 \(features 5\.\.9\)"),
        ("cis", "GFI1B", 0, r"in the cis fit"),
        ("trans", "GFI1B", 7, r"in feature chunk 2/4 \(features 4\.\.7\)"),
    ],
)
def test_non_finite_elbo_names_the_chunk(small, step, target, feature, where):
    mdata = small.copy()
    _corrupt(mdata, target, feature)
    before = snapshot(mdata)
    if step == "cis":  # the cis count is checked before any work: a clear error, not a fit
        for _ in range(2):
            with pytest.raises(ValueError, match=r"count of 1e\+38 .*check for outliers / wrong"):
                ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=10, seed=0)
        assert snapshot(mdata) == before
        return
    calls = {
        "technical": lambda: ds.tl.fit_technical(mdata, n_steps=10, feature_chunk=5, seed=0),
        "cis": lambda: ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=10, seed=0),
        "trans": lambda: ds.tl.fit_trans(mdata, n_steps=10, feature_chunk=4, test=False, seed=0),
    }
    with pytest.raises(
        NonFiniteLossError, match=r"The ELBO became (nan|inf|-inf) at step \d+ " + where
    ):
        calls[step]()
    assert snapshot(mdata) == before
    # the message says what to do
    with pytest.raises(NonFiniteLossError, match=r"check for outliers / wrong layer.*smaller `lr`"):
        calls[step]()


@pytest.mark.parametrize("step", ["technical", "cis", "trans"])
def test_diverging_learning_rate_raises_non_finite_loss(small, step):
    mdata = small.copy()
    before = snapshot(mdata)
    calls = {
        "technical": lambda: ds.tl.fit_technical(
            mdata, n_steps=30, lr=1e6, feature_chunk=5, seed=0
        ),
        "cis": lambda: ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=30, lr=1e6, seed=0),
        "trans": lambda: ds.tl.fit_trans(
            mdata, n_steps=30, lr=1e6, feature_chunk=4, test=False, seed=0
        ),
    }
    try:
        with pytest.raises(NonFiniteLossError, match=r"in (feature chunk \d+/\d+|the cis fit)"):
            calls[step]()
    finally:
        assert snapshot(mdata) == before


def test_count_beyond_float32_is_rejected_before_fitting(small):
    """1e39 overflows the float32 data path to inf: validation must catch it, not the ELBO."""
    mdata = small.copy()
    X = mdata["rna"].X.toarray().astype(np.float64)
    X[np.flatnonzero((mdata.obs["target"] == "ntc").to_numpy())[0], 7] = 1e39
    mdata["rna"].X = X
    before = snapshot(mdata)
    with pytest.raises(ValueError, match="Modality 'rna' contains NaN or infinite values"):
        ds.tl.fit_technical(mdata, n_steps=10, seed=0)
    assert snapshot(mdata) == before
