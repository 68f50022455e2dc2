from __future__ import annotations

import time
from importlib import resources

import mudata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.special import expit

from dream_sc.datasets import example, simulate_screen, true_curve
from dream_sc.datasets._example import read_example_design

SMALL = {"n_cells": 400, "n_genes": 40, "n_junctions": 20, "n_isoform_genes": 12}


@pytest.fixture(scope="module")
def small():
    return simulate_screen(**SMALL, seed=7, continuous=True)


@pytest.fixture(scope="module")
def big():
    # enough cells per guide (~450) to check the dosage truth against the cis counts
    return simulate_screen(n_cells=6000, n_genes=30, n_junctions=0, n_isoform_genes=0, seed=3)


@pytest.fixture(scope="module")
def high_moi():
    return simulate_screen(
        n_cells=3000,
        n_genes=20,
        n_junctions=5,
        n_isoform_genes=4,
        n_targets=2,
        moi="high",
        guides_per_cell=2.5,
        seed=11,
    )


@pytest.fixture(scope="module")
def example_screen():
    return example()


def _dense(x):
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_same_screen(small):
    again = simulate_screen(**SMALL, seed=7, continuous=True)
    for mod in small.mod:
        np.testing.assert_array_equal(_dense(small[mod].X), _dense(again[mod].X))
        pd.testing.assert_frame_equal(small[mod].var, again[mod].var)
        pd.testing.assert_frame_equal(
            small[mod].varm["true_technical"], again[mod].varm["true_technical"]
        )
    np.testing.assert_array_equal(
        _dense(small["splicing"].layers["total"]), _dense(again["splicing"].layers["total"])
    )
    pd.testing.assert_frame_equal(small.obs, again.obs)
    pd.testing.assert_frame_equal(small.uns["truth"]["guides"], again.uns["truth"]["guides"])
    assert small.uns["truth"]["x_ntc"] == again.uns["truth"]["x_ntc"]


def test_threads_do_not_change_the_result(monkeypatch):
    from dream_sc.datasets import _modalities

    kw = {"n_cells": 4500, "n_genes": 12, "n_junctions": 4, "n_isoform_genes": 3, "seed": 9}
    monkeypatch.setattr(_modalities, "_MAX_WORKERS", 1)
    serial = simulate_screen(**kw)
    monkeypatch.setattr(_modalities, "_MAX_WORKERS", 3)
    monkeypatch.setattr(_modalities, "_n_workers", lambda: 3)
    threaded = simulate_screen(**kw)
    for mod in serial.mod:
        np.testing.assert_array_equal(_dense(serial[mod].X), _dense(threaded[mod].X))


def test_other_seed_other_screen(small):
    other = simulate_screen(**SMALL, seed=8, continuous=True)
    assert (_dense(small["rna"].X) != _dense(other["rna"].X)).mean() > 0.3
    assert small.uns["truth"]["x_ntc"] != other.uns["truth"]["x_ntc"]
    assert not np.array_equal(small.obs["true_dose"], other.obs["true_dose"])


# --- layout -----------------------------------------------------------------------------------


def test_shapes_and_names(small):
    assert set(small.mod) == {"rna", "splicing", "isoform", "score"}
    assert small["rna"].shape == (400, 40)
    assert small["splicing"].shape == (400, 20)
    assert small["isoform"].n_vars == small["isoform"].var["group"].value_counts().sum()
    assert small["score"].shape == (400, 20)
    assert list(small["rna"].var_names[:3]) == ["GFI1B", "gene_0001", "gene_0002"]
    assert small["rna"].var_names[-1] == "gene_0039"
    assert list(small["splicing"].var_names[:2]) == ["sj_0001", "sj_0002"]
    assert small["isoform"].var_names[0] == "tx_0001"
    assert small["isoform"].var["group"].iloc[0] == "iso_gene_001"
    assert list(small.obs_names[:2]) == ["cell_00001", "cell_00002"]
    for mod in small.mod:
        assert small[mod].obs_names.equals(small.obs_names)
    assert set(small["splicing"].var["gene"]) <= set(small["rna"].var_names[1:])


def test_default_modalities_and_target_names():
    mdata = simulate_screen(n_cells=60, n_genes=8, n_junctions=3, n_isoform_genes=3, n_targets=4)
    assert set(mdata.mod) == {"rna", "splicing", "isoform"}
    assert list(mdata["rna"].var_names[:5]) == ["GFI1B", "GEMIN5", "DDX6", "TGT4", "gene_0001"]
    assert mdata.uns["truth"]["targets"] == ["GFI1B", "GEMIN5", "DDX6", "TGT4"]
    assert (mdata["rna"].var["true_function"].iloc[:4] == "cis").all()
    assert not mdata["rna"].var["true_responsive"].iloc[:4].any()
    assert list(mdata["rna"].var["true_shape"].iloc[:4]) == [
        "increasing",
        "flat",
        "flat",
        "flat",
    ]
    only_rna = simulate_screen(n_cells=30, n_genes=5, n_junctions=0, n_isoform_genes=0)
    assert set(only_rna.mod) == {"rna"}


def test_matrices_are_sparse_float32_integers(small):
    for mod, layer in [("rna", None), ("splicing", None), ("splicing", "total"), ("isoform", None)]:
        x = small[mod].X if layer is None else small[mod].layers[layer]
        assert isinstance(x, sparse.csr_matrix)
        assert x.dtype == np.float32
        assert np.all(x.data == np.round(x.data)) and np.all(x.data > 0)
    assert small["score"].X.dtype == np.float32


def test_registrations(small):
    regs = {mod: small[mod].uns["dream_sc"] for mod in small.mod}
    assert regs["rna"]["distribution"] == "negbinom"
    assert regs["splicing"]["distribution"] == "binomial"
    assert regs["splicing"]["total_layer"] == "total"
    assert regs["isoform"]["distribution"] == "multinomial"
    assert regs["isoform"]["group_key"] == "group"
    assert regs["score"]["distribution"] == "normal"


def test_obs_columns(small):
    obs = small.obs
    assert list(obs["cell_line"].cat.categories) == ["K562", "HEK293T"]
    assert set(obs["cell_line"]) == {"K562", "HEK293T"}
    assert (obs["target"] == "ntc").sum() == 100  # round(0.25 * 400)
    assert set(obs["target"]) == {"GFI1B", "ntc"}
    np.testing.assert_allclose(obs["true_size_factor"].mean(), 1.0)
    assert 0.2 < np.log(obs["true_size_factor"]).std() < 0.4
    # the pipeline's factor is estimated from the counts (close to the truth), in the truth's
    # unit in the reference line (geometric mean ratio 1 there; issue 27)
    ref = (obs["cell_line"] == "K562").to_numpy()
    ratio = np.log(obs["sum_factor"] / obs["true_size_factor"]).to_numpy()
    assert abs(ratio[ref].mean()) < 1e-10
    assert abs(obs["sum_factor"].mean() - 1.0) < 0.1
    assert np.corrcoef(np.log(obs["sum_factor"]), np.log(obs["true_size_factor"]))[0, 1] > 0.8
    np.testing.assert_allclose(np.log2(obs["true_dose"]), obs["true_log2_dose"])
    np.testing.assert_allclose(small.obsm["true_target_dose"]["GFI1B"], obs["true_dose"])
    guides = small.uns["truth"]["guides"]
    np.testing.assert_array_equal(
        guides.loc[obs["guide"].astype(str), "target"].to_numpy(), obs["target"].astype(str)
    )


def test_guide_effects_spread_over_range():
    mdata = simulate_screen(n_cells=50, n_genes=5, n_junctions=0, n_isoform_genes=0, seed=2)
    guides = mdata.uns["truth"]["guides"]
    b = np.sort(guides.loc[guides["target"] == "GFI1B", "log2_effect"].to_numpy())
    step = 4.0 / 9
    assert b.size == 10 and b[0] >= -3.0 and b[-1] <= 1.0
    assert np.all(np.diff(b) > 0.5 * step) and np.all(np.diff(b) < 1.5 * step)
    assert np.min(np.abs(b)) < 0.6 * step  # a guide near 0 (no effect)
    ntc = guides[guides["target"] == "ntc"]
    assert list(ntc.index) == [f"NTC_{k}" for k in range(1, 6)]
    assert (ntc["log2_effect"] == 0).all()
    x_ntc = mdata.uns["truth"]["x_ntc"]["GFI1B"]
    np.testing.assert_allclose(guides["dose"], x_ntc * 2.0 ** guides["log2_effect"])


def test_depth_scales_every_baseline():
    kw = {"n_cells": 200, "n_genes": 10, "n_junctions": 5, "n_isoform_genes": 3, "seed": 4}
    one, two = simulate_screen(**kw), simulate_screen(**kw, depth=2.0)
    np.testing.assert_allclose(
        two.uns["truth"]["x_ntc"]["GFI1B"], 2 * one.uns["truth"]["x_ntc"]["GFI1B"]
    )
    np.testing.assert_allclose(two.obs["true_dose"], 2 * one.obs["true_dose"])
    np.testing.assert_allclose(two["rna"].var["true_a"], one["rna"].var["true_a"] + np.log(2))
    np.testing.assert_allclose(two.obs["true_size_factor"], one.obs["true_size_factor"])


# --- truth consistency ------------------------------------------------------------------------


def test_cis_counts_match_guide_dose(big):
    rna, obs = big["rna"], big.obs
    delta = rna.varm["true_technical"].loc["GFI1B"]
    scale = obs["true_size_factor"].to_numpy() * np.exp(
        delta[obs["cell_line"].astype(str)].to_numpy()
    )
    norm = pd.Series(_dense(rna[:, "GFI1B"].X).ravel() / scale, index=big.obs_names)
    per_guide = norm.groupby(obs["guide"].astype(str).to_numpy()).agg(["mean", "size"])
    truth = big.uns["truth"]["guides"]["dose"]
    per_guide = per_guide[per_guide["size"] >= 50]
    assert len(per_guide) == 15
    rel = per_guide["mean"] / truth[per_guide.index] - 1
    assert rel.abs().max() < 0.15, rel
    # the cis dosage really varies with the guide: knock-down guides well below NTC
    assert truth.min() < 0.2 * big.uns["truth"]["x_ntc"]["GFI1B"]


def test_ntc_dose_centres_on_baseline(big):
    obs, truth = big.obs, big.uns["truth"]
    ntc = obs.loc[obs["target"] == "ntc", "true_log2_dose"]
    assert len(ntc) == 1500
    assert abs(ntc.mean() - np.log2(truth["x_ntc"]["GFI1B"])) < 4 * 0.3 / np.sqrt(len(ntc))
    assert abs(ntc.std() - 0.3) < 0.03
    per_cell = (
        obs["true_log2_dose"]
        - np.log2(truth["guides"].loc[obs["guide"].astype(str), "dose"]).to_numpy()
    )
    assert abs(per_cell.std() - truth["dose_noise"]) < 0.02


def test_responsive_fraction_is_exact():
    mdata = simulate_screen(n_cells=100, n_genes=101, n_junctions=50, n_isoform_genes=20, seed=5)
    rna = mdata["rna"].var.iloc[1:]
    assert rna["true_responsive"].sum() == 30  # round(0.3 * 100)
    assert mdata["splicing"].var["true_responsive"].sum() == 15
    iso = mdata["isoform"].var
    assert iso.groupby("group")["true_group_responsive"].first().sum() == 6
    for var in [rna, mdata["splicing"].var]:
        responsive = var["true_responsive"].to_numpy()
        assert np.all((var["true_function"] != "flat").to_numpy() == responsive)
        assert np.all((var["true_shape"] != "flat").to_numpy() == responsive)
        flat = var[~responsive]
        assert (flat["true_v1"] == 0).all() and (flat["true_v2"] == 0).all()
        assert (flat["true_K1"] == 1).all() and (flat["true_n2"] == 1).all()
    none = simulate_screen(n_cells=50, n_genes=20, frac_responsive=0.0, seed=5)
    assert not any(none[m].var["true_responsive"].any() for m in none.mod)


def test_curve_shapes_and_response_sizes(small):
    lo, hi = small.uns["truth"]["dose_range"]
    grid = np.geomspace(lo, hi, 200)
    var = small["rna"].var.iloc[1:]
    log_curve = np.log(true_curve(small, "rna", grid).iloc[1:])
    response = (log_curve.max(axis=1) - log_curve.min(axis=1)).to_numpy()
    resp = var["true_responsive"].to_numpy()
    assert np.all(response[~resp] == 0)
    assert np.all(response[resp] > 0.5) and np.all(response[resp] < 2.55)
    steps = np.diff(log_curve.to_numpy(), axis=1)
    for shape, ok in [
        ("increasing", lambda s: np.all(s >= -1e-12)),
        ("decreasing", lambda s: np.all(s <= 1e-12)),
        ("non_monotonic", lambda s: s.max() > 1e-3 and s.min() < -1e-3),
    ]:
        rows = np.flatnonzero(var["true_shape"].to_numpy() == shape)
        assert all(ok(steps[r]) for r in rows), shape
    single = var[var["true_function"] == "single_hill"]
    assert np.all(
        np.sign(single["true_v1"]) == np.where(single["true_shape"] == "increasing", 1, -1)
    )
    add = var[var["true_function"] == "additive_hill"]
    assert (add["true_shape"] == "non_monotonic").all()
    assert np.all(np.sign(add["true_v1"]) == -np.sign(add["true_v2"]))
    assert np.all(add["true_K1"] < add["true_K2"])
    assert np.all((var.loc[resp, "true_n1"] >= 1) & (var.loc[resp, "true_n1"] <= 4))


def test_binomial_successes_within_trials(small):
    sj = small["splicing"]
    x, n = _dense(sj.X), _dense(sj.layers["total"])
    assert np.all(x <= n)
    assert (n == 0).mean() > 0.2  # many cells without reads
    assert x.sum() > 0 and (n - x).sum() > 0
    lo, hi = small.uns["truth"]["dose_range"]
    psi = true_curve(small, "splicing", np.geomspace(lo, hi, 100))
    change = (psi.max(axis=1) - psi.min(axis=1))[sj.var["true_responsive"].to_numpy()]
    assert np.all(change >= 0.15 - 1e-9)


def test_isoform_groups(small):
    iso = small["isoform"]
    sizes = iso.var["group"].value_counts()
    assert set(sizes) == {2, 3, 4}
    assert len(sizes) == 12
    lo, hi = small.uns["truth"]["dose_range"]
    prop = true_curve(small, "isoform", np.geomspace(lo, hi, 100))
    change = prop.max(axis=1) - prop.min(axis=1)
    by_group = change.groupby(iso.var["group"].to_numpy()).max()
    responsive = iso.var.groupby("group")["true_group_responsive"].first()
    assert responsive.sum() == 4  # round(0.3 * 12)
    assert np.all(by_group[responsive] >= 0.15 - 1e-9)
    assert np.all(by_group[~responsive] < 1e-12)
    movers = iso.var[iso.var["true_function"] != "flat"]
    assert set(movers["group"]) == set(responsive[responsive].index)
    # centred technical effects within a group
    tech = iso.varm["true_technical"]
    np.testing.assert_allclose(tech.groupby(iso.var["group"]).sum().to_numpy(), 0, atol=1e-12)


def test_continuous_score(small):
    y = small["score"].X
    assert abs(np.isnan(y).mean() - 0.1) < 0.02
    var = small["score"].var
    assert (var["true_sigma"] > 0).all()
    # residuals in the reference group have sd sigma
    ref = (small.obs["cell_line"] == "K562").to_numpy()
    eta = true_curve(small, "score", small.obs["true_dose"].to_numpy()[ref]).to_numpy().T
    resid = y[ref] - eta
    np.testing.assert_allclose(np.nanstd(resid, axis=0), var["true_sigma"], rtol=0.25)


def test_technical_truth(small):
    for mod in small.mod:
        tech = small[mod].varm["true_technical"]
        assert list(tech.columns) == ["K562", "HEK293T"]
        assert tech.index.equals(small[mod].var_names)
        assert (tech["K562"] == 0).all()
        assert (tech["HEK293T"] != 0).all()
    sd = small["rna"].varm["true_technical"]["HEK293T"].std()
    assert 0.2 < sd < 0.4


def test_high_moi_assignment(high_moi):
    obs, truth = high_moi.obs, high_moi.uns["truth"]
    assign = high_moi.obsm["guide_assignment"]
    assert assign.index.equals(high_moi.obs_names)
    assert list(assign.columns) == list(truth["guides"].index)
    assert set(np.unique(assign.to_numpy())) == {0, 1}
    per_cell = assign.sum(axis=1)
    assert per_cell.min() >= 1 and abs(per_cell.mean() - 2.6) < 0.2
    names = assign.columns.to_numpy()
    joined = ["+".join(names[row > 0]) for row in assign.to_numpy()]
    assert joined == list(obs["guide"].astype(str))
    targets = truth["guides"]["target"]
    assert truth["guide_targets"] == targets.to_dict()
    for label, row in zip(obs["target"].astype(str), assign.to_numpy(), strict=True):
        hit = set(targets[row > 0])
        expected = "GFI1B" if "GFI1B" in hit else ("ntc" if hit == {"ntc"} else "GEMIN5")
        assert label == expected
    b = truth["guides"]["log2_effect"].where(targets == "GFI1B", 0.0).to_numpy()
    noise = obs["true_log2_dose"] - np.log2(truth["x_ntc"]["GFI1B"]) - assign.to_numpy() @ b
    assert abs(noise.mean()) < 0.03 and abs(noise.std() - 0.3) < 0.03
    b2 = truth["guides"]["log2_effect"].where(targets == "GEMIN5", 0.0).to_numpy()
    other = np.log2(high_moi.obsm["true_target_dose"]["GEMIN5"]) - np.log2(truth["x_ntc"]["GEMIN5"])
    assert abs((other - assign.to_numpy() @ b2).std() - 0.3) < 0.03


def test_true_curve_domains_and_values(small):
    dose = np.array([0.5, 2.0, 8.0, 30.0])
    rna = true_curve(small, "rna", dose)
    assert rna.shape == (40, 4) and list(rna.columns) == list(dose)
    assert rna.columns.name == "dose"
    assert (rna.to_numpy() > 0).all()
    np.testing.assert_allclose(rna.loc["GFI1B"], dose)
    var = small["rna"].var
    gene = var.index[(var["true_function"] == "additive_hill").to_numpy()][0]
    p = var.loc[gene]
    x = 8.0
    eta = (
        p["true_a"]
        + p["true_v1"] * x ** p["true_n1"] / (p["true_K1"] ** p["true_n1"] + x ** p["true_n1"])
        + p["true_v2"] * x ** p["true_n2"] / (p["true_K2"] ** p["true_n2"] + x ** p["true_n2"])
    )
    np.testing.assert_allclose(rna.loc[gene, 8.0], np.exp(eta), rtol=1e-10)
    flat = var.index[(var["true_function"] == "flat").to_numpy()][0]
    np.testing.assert_allclose(rna.loc[flat], np.exp(var.loc[flat, "true_a"]))
    sj = true_curve(small, "splicing", dose)
    assert ((sj > 0) & (sj < 1)).all().all()
    sv = small["splicing"].var.iloc[0]
    eta0 = sv["true_a"] + sv["true_v1"] / (1 + (sv["true_K1"] / 2.0) ** sv["true_n1"])
    eta0 += sv["true_v2"] / (1 + (sv["true_K2"] / 2.0) ** sv["true_n2"])
    np.testing.assert_allclose(sj.iloc[0][2.0], expit(eta0))
    iso = true_curve(small, "isoform", dose)
    np.testing.assert_allclose(iso.groupby(small["isoform"].var["group"]).sum(), 1.0)
    score = true_curve(small, "score", 2.0)
    assert score.shape == (20, 1)


def test_true_curve_errors(small):
    with pytest.raises(KeyError, match="'atac' is not in the MuData"):
        true_curve(small, "atac", 1.0)
    with pytest.raises(ValueError, match="dose must be positive finite"):
        true_curve(small, "rna", [1.0, 0.0])
    plain = mudata.MuData({"rna": small["rna"][:, :3].copy()})
    plain.mod["rna"].var = plain.mod["rna"].var[[]]
    with pytest.raises(KeyError, match="carries no ground truth"):
        true_curve(plain, "rna", 1.0)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cells": 0}, r"n_cells must be an integer >= 1; got 0"),
        ({"n_cells": 10.5}, r"n_cells must be an integer"),
        ({"n_genes": 2, "n_targets": 3}, r"n_genes must be an integer >= 3"),
        ({"n_junctions": -1}, r"n_junctions must be an integer >= 0"),
        ({"moi": "medium"}, r"moi must be one of 'low', 'high'; got 'medium'"),
        ({"ntc_fraction": 0.0}, r"ntc_fraction must be a number in \(0.0, 1.0\]"),
        ({"ntc_fraction": 1.0}, r"ntc_fraction must be < 1"),
        ({"frac_responsive": 1.5}, r"frac_responsive must be a number in \[0.0, 1.0\]"),
        ({"depth": 0}, r"depth must be a number"),
        ({"dose_noise": -0.1}, r"dose_noise must be a number"),
        ({"guide_log2_range": (1.0, -3.0)}, r"guide_log2_range must be a pair"),
        ({"cell_lines": ()}, r"cell_lines must be a non-empty sequence"),
        ({"cell_lines": ("A", "A")}, r"cell_lines must be a non-empty sequence of distinct"),
        ({"cell_lines": "K562"}, r"cell_lines must be"),
        ({"control_label": "GFI1B"}, r"control_label must be a non-empty string"),
        ({"n_ntc_guides": 0}, r"n_ntc_guides must be an integer >= 1"),
        ({"seed": -1}, r"seed must be an integer >= 0"),
        ({"guides_per_cell": 0.0}, r"guides_per_cell must be a number"),
        ({"continuous": "yes"}, r"continuous must be True or False; got 'yes'"),
    ],
)
def test_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_screen(**kwargs)


def test_single_cell_line_and_custom_control():
    mdata = simulate_screen(
        n_cells=80,
        n_genes=6,
        n_junctions=0,
        n_isoform_genes=0,
        cell_lines=("A",),
        control_label="NT",
    )
    assert list(mdata.obs["cell_line"].cat.categories) == ["A"]
    assert set(mdata.obs["target"]) == {"GFI1B", "NT"}
    assert mdata.uns["truth"]["control_label"] == "NT"
    assert list(mdata["rna"].varm["true_technical"].columns) == ["A"]


# --- example ----------------------------------------------------------------------------------


def test_example_uses_real_design(example_screen):
    table = read_example_design()
    assert len(table) == 2600
    mdata = example_screen
    assert mdata.n_obs == 2600
    np.testing.assert_array_equal(mdata.obs_names, table["barcode"])
    np.testing.assert_array_equal(mdata.obs["guide"].astype(str), table["guide"])
    np.testing.assert_array_equal(mdata.obs["target"].astype(str), table["target"])
    np.testing.assert_allclose(mdata.obs["true_size_factor"], table["sum_factor"])
    counts = mdata.obs["target"].value_counts()
    assert counts.to_dict() == {"ntc": 1491, "GFI1B": 393, "GEMIN5": 388, "DDX6": 328}
    truth = mdata.uns["truth"]
    assert truth["cis_feature"] == "GFI1B"
    assert truth["targets"] == ["GFI1B", "GEMIN5", "DDX6"]
    assert sorted(truth["guides"].index) == sorted(
        ["GFI1B_1", "GFI1B_2", "GFI1B_3", "GEMIN5_1", "GEMIN5_2", "DDX6_1", "DDX6_3"]
        + [f"NTC_{k}" for k in range(1, 6)]
    )
    assert (truth["guides"].filter(like="NTC", axis=0)["target"] == "ntc").all()
    assert (truth["guides"].loc[truth["guides"]["target"] != "ntc", "log2_effect"] < 0).all()
    assert set(mdata.mod) == {"rna", "splicing", "isoform"}
    assert mdata["rna"].shape == (2600, 200)
    assert list(mdata["rna"].var_names[:3]) == ["GFI1B", "GEMIN5", "DDX6"]
    assert mdata["splicing"].n_vars == 100
    assert mdata["isoform"].var["group"].nunique() == 30
    assert list(mdata.obs["cell_line"].cat.categories) == ["K562", "HEK293T"]
    # GEMIN5/DDX6 cells keep GFI1B at its baseline dosage
    obs = mdata.obs
    other = obs.loc[obs["target"].isin(["GEMIN5", "DDX6"]), "true_log2_dose"]
    assert abs(other.mean() - np.log2(truth["x_ntc"]["GFI1B"])) < 0.05


def test_example_is_deterministic_and_fast(example_screen):
    start = time.perf_counter()
    again = example()
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(_dense(example_screen["rna"].X), _dense(again["rna"].X))
    np.testing.assert_array_equal(_dense(example_screen["isoform"].X), _dense(again["isoform"].X))
    assert elapsed < 5.0  # ~0.3 s on an idle core; generous bound for loaded CI machines


def test_example_data_ships_inside_the_package():
    source = resources.files("dream_sc.datasets").joinpath("data", "example_design.csv")
    assert source.is_file()
    with source.open("rb") as handle:
        assert len(handle.read()) < 200_000


# --- h5mu round trip --------------------------------------------------------------------------


def test_h5mu_round_trip(tmp_path, small, high_moi):
    for name, mdata in [("small", small), ("high", high_moi)]:
        path = tmp_path / f"{name}.h5mu"
        mdata.write(path)
        back = mudata.read_h5mu(path)
        truth, orig = back.uns["truth"], mdata.uns["truth"]
        pd.testing.assert_frame_equal(
            truth["guides"].astype({"target": str}), orig["guides"], check_dtype=False
        )
        assert truth["x_ntc"] == orig["x_ntc"]
        assert truth["guide_targets"] == orig["guide_targets"]
        for key in ["cis_feature", "reference_group", "control_label", "moi", "dose_noise", "seed"]:
            assert truth[key] == orig[key]
        assert list(truth["targets"]) == orig["targets"]
        np.testing.assert_array_equal(truth["dose_range"], orig["dose_range"])
        for mod in mdata.mod:
            assert dict(back[mod].uns["dream_sc"]) == dict(mdata[mod].uns["dream_sc"])
            pd.testing.assert_frame_equal(back[mod].var, mdata[mod].var, check_dtype=False)
            pd.testing.assert_frame_equal(
                back[mod].varm["true_technical"], mdata[mod].varm["true_technical"]
            )
            np.testing.assert_array_equal(_dense(back[mod].X), _dense(mdata[mod].X))
            pd.testing.assert_frame_equal(
                true_curve(back, mod, [1.0, 5.0]), true_curve(mdata, mod, [1.0, 5.0])
            )
        pd.testing.assert_frame_equal(back.obs, mdata.obs)
    pd.testing.assert_frame_equal(
        back.obsm["guide_assignment"], high_moi.obsm["guide_assignment"], check_dtype=False
    )


@pytest.mark.slow
def test_large_screen_is_fast():
    start = time.perf_counter()
    mdata = simulate_screen(n_cells=20000, n_genes=2000)
    assert time.perf_counter() - start < 20.0
    assert mdata["rna"].shape == (20000, 2000)
