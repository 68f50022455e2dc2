"""fit_screen, screen_results and the screen plots on tiny simulated screens."""

from __future__ import annotations

import functools

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

import dream_sc as ds
from dream_sc.get._screen import pooled_decoy_qvalues
from dream_sc.models.significance import decoy_qvalues
from dream_sc.tl import _screen

SETTINGS = {
    "n_steps": {"technical": 20, "cis": 20, "trans": 20},
    "trans_kwargs": {"refine_intervals": False, "n_permutations": 2},
    "technical_key": "cell_line",
    "seed": 3,
    "progress": False,
}


def _screen_data():
    return ds.datasets.simulate_screen(
        n_cells=360,
        n_genes=14,
        n_junctions=0,
        n_isoform_genes=0,
        n_targets=2,
        guides_per_target=3,
        n_ntc_guides=3,
        seed=1,
    )


@pytest.fixture(scope="module")
def fitted():
    mdata = _screen_data()
    ds.tl.fit_screen(mdata, **SETTINGS)
    return mdata


def _stored(mdata, target):
    """Every entry a target's fits wrote (obs columns, obsm, uns, varm, uns of rna)."""
    cis, trans = f"dream_cis_{target}", f"dream_trans_{target}"
    out = {c: mdata.obs[c] for c in mdata.obs.columns if c.startswith(cis + "_")}
    out.update({k: mdata.obsm[k] for k in mdata.obsm if k.startswith(cis)})
    out[cis] = mdata.uns[cis]
    rna = mdata["rna"]
    out.update({("varm", k): rna.varm[k] for k in rna.varm if k.startswith(trans)})
    out[("uns", trans)] = rna.uns[trans]
    return out


def _assert_same(a, b, path="value"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            if key in ("seconds", "null_seconds", "versions", "available_gb"):  # run environment
                continue
            _assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=path)
    elif isinstance(a, pd.Series):
        np.testing.assert_array_equal(a.to_numpy(), b.to_numpy(), err_msg=path)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, path


def _assert_target_equal(a, b, target):
    sa, sb = _stored(a, target), _stored(b, target)
    assert set(sa) == set(sb)
    for key in sa:
        _assert_same(_drop_seconds(sa[key]), _drop_seconds(sb[key]), str(key))


def _drop_seconds(value):
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ("seconds", "null_seconds", "versions")}
    return value


def test_keys_record_and_cells_outside_target_are_nan(fitted):
    record = fitted.uns["dream_screen"]
    targets = list(record["targets"])
    assert targets == ["GEMIN5", "GFI1B"]
    labels = fitted.obs["target"].astype(str)
    for target in targets:
        assert f"dream_cis_{target}" in fitted.uns
        assert f"dream_trans_{target}" in fitted["rna"].uns
        assert f"dream_trans_{target}" in fitted["rna"].varm
        dose = fitted.obs[f"dream_cis_{target}_dose_mean"]
        inside = (labels == target) | (labels == "ntc")
        assert dose[~inside].isna().all() and (~inside).sum() > 0
        assert dose[inside].notna().all()
        samples = fitted.obsm[f"dream_cis_{target}_dose_samples"]
        assert np.isnan(samples[~inside.to_numpy()]).all()
        assert fitted["rna"].uns[f"dream_trans_{target}"]["n_cells"] == int(inside.sum())
    timings = record["timings"]
    assert list(timings.index) == targets
    assert (timings["seconds"] > 0).all() and not timings["from_checkpoint"].any()
    assert record["technical"] == "fitted"
    seeds = dict(zip(targets, record["seeds"], strict=True))
    assert seeds[targets[0]] == _screen.target_seed(3, targets[0])
    assert fitted.uns[f"dream_cis_{targets[0]}"]["params"]["seed"] == seeds[targets[0]]


def test_other_targets_cells_do_not_change_a_target(fitted):
    target, other = list(fitted.uns["dream_screen"]["targets"])
    mdata = _screen_data()
    keep = (mdata.obs["target"].astype(str) != other).to_numpy()
    sub = mdata[keep].copy()
    ds.tl.fit_screen(sub, targets=[target], **SETTINGS)
    pd.testing.assert_frame_equal(
        sub["rna"].varm[f"dream_trans_{target}"],
        fitted["rna"].varm[f"dream_trans_{target}"],
        check_exact=True,
    )
    np.testing.assert_array_equal(
        sub.obs[f"dream_cis_{target}_dose_mean"].to_numpy(),
        fitted.obs.loc[sub.obs_names, f"dream_cis_{target}_dose_mean"].to_numpy(),
    )


def test_resume_after_kill_matches_uninterrupted_run(fitted, tmp_path, monkeypatch):
    mdata = _screen_data()
    before = (set(mdata.uns), set(mdata.obs.columns), set(mdata["rna"].varm))
    calls = []
    original = _screen.fit_trans

    @functools.wraps(original)
    def dying(*args, **kwargs):
        calls.append(kwargs["key_added"])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(_screen, "fit_trans", dying)
    with pytest.raises(KeyboardInterrupt):
        ds.tl.fit_screen(mdata, checkpoint=str(tmp_path / "ckpt"), **SETTINGS)
    # rolled back: the MuData is as it was
    assert (set(mdata.uns), set(mdata.obs.columns), set(mdata["rna"].varm)) == before
    assert len(list((tmp_path / "ckpt").glob("target_*.h5"))) == 1
    monkeypatch.setattr(_screen, "fit_trans", original)
    ds.tl.fit_screen(mdata, checkpoint=str(tmp_path / "ckpt"), **SETTINGS)
    record = mdata.uns["dream_screen"]
    assert record["timings"]["from_checkpoint"].tolist() == [True, False]
    assert record["technical"] == "checkpoint"
    for target in record["targets"]:
        _assert_target_equal(mdata, fitted, target)
    pd.testing.assert_frame_equal(
        mdata["rna"].varm["dream_technical"], fitted["rna"].varm["dream_technical"]
    )
    # other settings with the same checkpoint are refused before any work
    with pytest.raises(ValueError, match="written by a run with other settings"):
        ds.tl.fit_screen(mdata, checkpoint=str(tmp_path / "ckpt"), **{**SETTINGS, "seed": 4})


def test_stored_technical_fit_with_same_settings_is_reused(fitted):
    mdata = fitted.copy()
    technical = mdata["rna"].varm["dream_technical"]
    target = list(fitted.uns["dream_screen"]["targets"])[0]
    ds.tl.fit_screen(mdata, targets=[target], **SETTINGS)
    assert mdata.uns["dream_screen"]["technical"] == "reused"
    assert mdata["rna"].varm["dream_technical"] is technical
    _assert_target_equal(mdata, fitted, target)
    # other technical settings (here: the step function's default n_steps) refit it
    settings = {**SETTINGS, "n_steps": {"cis": 20, "trans": 20}}
    ds.tl.fit_screen(mdata, targets=[target], **settings)
    assert mdata.uns["dream_screen"]["technical"] == "fitted"


def test_pooled_qvalues_by_hand():
    scores = [np.array([5.0, 3.0, 1.0, np.nan]), np.array([4.0, 2.0, 0.5])]
    nulls = [np.array([[2.5, 0.1, 0.2, 0.3], [0.4, 0.6, 1.5, 0.0]]), np.array([[3.5, 0.2, 0.1]])]
    q = pooled_decoy_qvalues(scores, nulls, [2, 1])
    # hand: FDR(s) = (1/min(m) + #null_A>=s / 2 + #null_B>=s / 1) / #obs>=s
    obs = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    null_a, null_b = nulls[0].ravel(), nulls[1].ravel()
    fdr = [
        min(1.0, (1.0 + (null_a >= s).sum() / 2 + (null_b >= s).sum()) / (obs >= s).sum())
        for s in obs
    ]
    expected = np.minimum.accumulate(np.array(fdr)[::-1])[::-1]
    by_score = dict(zip(obs, expected, strict=True))
    np.testing.assert_allclose(q[0][:3], [by_score[5.0], by_score[3.0], by_score[1.0]])
    assert q[0][3] == 1.0
    np.testing.assert_allclose(q[1], [by_score[4.0], by_score[2.0], by_score[0.5]])
    # equal permutation counts: exactly decoy_qvalues of the pooled scores
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 40), rng.normal(0, 1, 25)
    na, nb = rng.normal(size=(2, 40)), rng.normal(size=(2, 25))
    pooled = pooled_decoy_qvalues([a, b], [na, nb], [2, 2])
    np.testing.assert_array_equal(
        np.concatenate(pooled), decoy_qvalues(np.r_[a, b], np.r_[na.ravel(), nb.ravel()], 2)
    )


def test_screen_results_pool_every_target(fitted):
    table = ds.get.screen_results(fitted, modality="rna")
    targets = list(fitted.uns["dream_screen"]["targets"])
    assert table.columns[:2].tolist() == ["target", "feature"]
    per = ds.get.trans_results(fitted, modality="rna", key=f"dream_trans_{targets[0]}")
    assert set(per.columns) <= set(table.columns)
    assert len(table) == len(targets) * fitted["rna"].n_vars
    parts = [table[table["target"] == t] for t in targets]
    fitted_rows = [p["fitted"].to_numpy(bool) for p in parts]
    nulls = [fitted["rna"].uns[f"dream_trans_{t}"]["null_scores"] for t in targets]
    expected = decoy_qvalues(
        np.concatenate([p["score"].to_numpy()[f] for p, f in zip(parts, fitted_rows, strict=True)]),
        np.concatenate([np.ravel(n) for n in nulls]),
        2,
    )
    got = np.concatenate(
        [p["qvalue"].to_numpy()[f] for p, f in zip(parts, fitted_rows, strict=True)]
    )
    np.testing.assert_array_equal(got, expected)
    for p, t in zip(parts, targets, strict=True):
        np.testing.assert_array_equal(
            p["qvalue_target"].to_numpy(),
            ds.get.trans_results(fitted, key=f"dream_trans_{t}")["qvalue"].to_numpy(),
        )
        assert (p["significant"] == (p["qvalue"] < 0.1)).all()
        assert (p.loc[~p["fitted"], "qvalue"].isna()).all()


def test_screen_survives_h5mu_round_trip(fitted, tmp_path):
    import mudata

    path = tmp_path / "screen.h5mu"
    fitted.write(path)
    back = mudata.read_h5mu(path)
    pd.testing.assert_frame_equal(
        ds.get.screen_results(back, modality="rna"),
        ds.get.screen_results(fitted, modality="rna"),
        check_dtype=False,
    )
    assert list(back.uns["dream_screen"]["targets"]) == list(fitted.uns["dream_screen"]["targets"])


def test_screen_heatmap_draws_the_screen_matrix(fitted):
    table = ds.get.screen_results(fitted, modality="rna")
    matrix = ds.pl.screen_matrix(
        fitted, significant_only=False, mask_insignificant=False, order="name"
    )
    expected = table.pivot(index="target", columns="feature", values="response_mean")
    pd.testing.assert_frame_equal(matrix, expected.astype(float), check_names=False)
    ax = ds.pl.screen_heatmap(
        fitted, significant_only=False, mask_insignificant=False, order="name", show=False
    )
    drawn = ax.images[0].get_array()
    np.testing.assert_array_equal(np.ma.filled(drawn, np.nan), matrix.to_numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == list(matrix.index)
    masked = ds.pl.screen_matrix(fitted, significant_only=False, order="screen")
    hits = table.pivot(index="target", columns="feature", values="significant")
    assert masked.notna().to_numpy().sum() == int(hits.to_numpy().sum())
    axes = ds.pl.screen_cis_dosage(fitted, show=False)
    assert len(axes) == 2
    guides = ds.get.cis_dosage(fitted, key=f"dream_cis_{matrix.index[0]}")
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert all("(" in lab for lab in labels) and len(labels) == len(guides)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_errors_before_any_work():
    mdata = _screen_data()
    before = (set(mdata.uns), set(mdata.obs.columns))
    with pytest.raises(ValueError, match=r"Target\(s\) \['NOPE'\] have no cells"):
        ds.tl.fit_screen(mdata, targets=["NOPE"], **SETTINGS)
    with pytest.raises(KeyError, match="is not a feature of modality 'rna'"):
        ds.tl.fit_screen(mdata, cis_feature={"GFI1B": "MISSING"}, **SETTINGS)
    with pytest.raises(ValueError, match="includes the control label"):
        ds.tl.fit_screen(mdata, targets=["ntc"], **SETTINGS)
    with pytest.raises(ValueError, match="backend must be one of"):
        ds.tl.fit_screen(mdata, backend="spark", **SETTINGS)
    with pytest.raises(ValueError, match="trans_kwargs sets \\['seed'\\]"):
        ds.tl.fit_screen(mdata, **{**SETTINGS, "trans_kwargs": {"seed": 1}})
    with pytest.raises(ValueError, match="n_steps has unknown step"):
        ds.tl.fit_screen(mdata, **{**SETTINGS, "n_steps": {"tech": 5}})
    slashed = mdata.copy()
    slashed.obs["target"] = slashed.obs["target"].astype(str).replace("GFI1B", "GF/I1B")
    with pytest.raises(ValueError, match="contain '/'"):
        ds.tl.fit_screen(slashed, **SETTINGS)
    with pytest.raises(KeyError, match="No screen record"):
        ds.get.screen_results(mdata)
    assert (set(mdata.uns), set(mdata.obs.columns)) == before


def test_features_and_min_cells_reach_every_target():
    mdata = _screen_data()
    names = list(mdata["rna"].var_names[5:9])
    ds.tl.fit_screen(mdata, features=names, **SETTINGS)
    targets = mdata.uns["dream_screen"]["targets"]
    for target in targets:
        table = mdata["rna"].varm[f"dream_trans_{target}"]
        assert table.index[table["fitted"]].tolist() == names
    results = ds.get.screen_results(mdata)
    assert sorted(set(results.loc[results["fitted"], "feature"])) == sorted(names)
    assert results.loc[~results["fitted"], "qvalue"].isna().all()
    with pytest.raises(ValueError, match=r"Give features either as fit_screen\(features=...\)"):
        ds.tl.fit_screen(
            _screen_data(),
            features=names,
            **{**SETTINGS, "trans_kwargs": {**SETTINGS["trans_kwargs"], "features": names}},
        )


def test_parallel_targets_equal_a_serial_run_with_one_thread(monkeypatch):
    """n_jobs=2 (one torch thread per worker) writes exactly what a serial 1-thread run writes,
    in the same layout, and checkpoints every target."""
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setattr(ds.settings, "torch_threads", 1)
    serial = _screen_data()
    torch.set_num_threads(1)
    try:
        ds.tl.fit_screen(serial, **SETTINGS)
    finally:
        torch.set_num_threads(threads)
    parallel = _screen_data()
    ds.tl.fit_screen(parallel, n_jobs=2, **SETTINGS)
    for target in serial.uns["dream_screen"]["targets"]:
        _assert_target_equal(serial, parallel, target)
    assert list(serial.obs.columns) == list(parallel.obs.columns)
    assert list(serial["rna"].varm) == list(parallel["rna"].varm)
    timings = parallel.uns["dream_screen"]["timings"]
    assert list(timings.index) == ["GEMIN5", "GFI1B"] and (timings["seconds"] > 0).all()


def test_parallel_run_resumes_from_its_checkpoint(tmp_path):
    first = _screen_data()
    ds.tl.fit_screen(first, n_jobs=2, checkpoint=str(tmp_path / "ckpt"), **SETTINGS)
    again = _screen_data()
    ds.tl.fit_screen(again, n_jobs=2, checkpoint=str(tmp_path / "ckpt"), **SETTINGS)
    assert again.uns["dream_screen"]["timings"]["from_checkpoint"].all()
    for target in first.uns["dream_screen"]["targets"]:
        _assert_target_equal(first, again, target)


def test_n_jobs_is_checked_before_any_work():
    mdata = _screen_data()
    before = (set(mdata.uns), set(mdata.obs.columns))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_jobs must be a positive integer or -1"):
            ds.tl.fit_screen(mdata, n_jobs=bad, **SETTINGS)
    with pytest.raises(ValueError, match="with backend='dask' the cluster already runs"):
        ds.tl.fit_screen(mdata, n_jobs=2, backend="dask", **SETTINGS)
    assert (set(mdata.uns), set(mdata.obs.columns)) == before
