"""``get.screen_results`` at genome scale: the same values as the concatenating build, string
columns as Categoricals, ``columns=``, and memory per pair that does not carry the null."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest

import dream_sc as ds
from dream_sc._stores._keys import TransKeys
from dream_sc.get import _screen
from dream_sc.models.hierarchical_fdr import hierarchical_fdr, permutation_pvalues, simes_pvalue
from dream_sc.models.significance import DECOY_PSEUDOCOUNT, shape_calls

ALPHA = 0.1
CATEGORICAL = ("target", "feature", "distribution", "function", "shape", "shape_target")
SETTINGS = {
    "n_steps": {"technical": 20, "cis": 20, "trans": 20},
    "trans_kwargs": {"refine_intervals": False, "n_permutations": 5},
    "technical_key": None,
    "control_cells": 100,
    "curves": "discoveries",
    "seed": 2,
    "progress": False,
}


@pytest.fixture(scope="module")
def screen():
    import torch

    torch.set_num_threads(1)
    mdata = ds.datasets.simulate_many_targets(
        n_cells=1000,
        n_genes=40,
        n_targets=4,
        mean_responsive=8,
        effect_range=(1.5, 2.5),
        baseline_median=1.0,
        guide_log2_range=(-3.0, -2.0),
        seed=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_screen(mdata, **SETTINGS)
    return mdata


def _reference_pooled(scores, null_scores, n_null_sets, pseudocount=DECOY_PSEUDOCOUNT):
    """The pooled target-decoy q-values as first written: all null scores sorted together."""
    m = np.asarray(n_null_sets, dtype=np.float64)
    null_v, null_w = [], []
    for values, mt in zip(null_scores, m, strict=True):
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        null_v.append(values)
        null_w.append(np.full(len(values), 1.0 / mt))
    null = np.concatenate(null_v)
    order = np.argsort(null, kind="stable")
    null, weight = null[order], np.concatenate(null_w)[order]
    tail = np.append(np.cumsum(weight[::-1])[::-1], 0.0)
    flat = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    q = np.ones_like(flat)
    finite = np.isfinite(flat)
    if finite.any():
        values = flat[finite]
        order = np.argsort(-values, kind="stable")
        s = values[order]
        n_ge = np.searchsorted(-s, -s, side="right")
        null_ge = tail[np.searchsorted(null, s, side="left")]
        fdr = np.minimum((pseudocount / m.min() + null_ge) / np.maximum(n_ge, 1), 1.0)
        out = np.empty_like(values)
        out[order] = np.minimum.accumulate(fdr[::-1])[::-1]
        q[finite] = out
    bounds = np.cumsum([0] + [len(s) for s in scores])
    return [q[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _reference_table(mdata, alpha=ALPHA):
    """The screen table as first built: per-target copies, object strings, one concat."""
    record = mdata.uns["dream_screen"]
    targets, keys = list(record["targets"]), list(record["trans_keys"])
    tables = [ds.get.trans_results(mdata, key=k) for k in keys]
    nulls = [np.asarray(mdata["rna"].uns[k]["null_scores"], dtype=np.float64) for k in keys]
    tested = [TransKeys.tested(t) for t in tables]
    scores = [t["score"].to_numpy()[f] for t, f in zip(tables, tested, strict=True)]
    q_screen = _reference_pooled(scores, nulls, [n.shape[0] for n in nulls])
    pvalues = [permutation_pvalues(s, n) for s, n in zip(scores, nulls, strict=True)]
    result = hierarchical_fdr(
        pvalues, alpha=alpha, target_pvalues=[simes_pvalue(p) for p in pvalues]
    )

    def shapes(frame, f, significant):
        return shape_calls(
            frame["response_mean"].to_numpy(),
            frame["prob_non_monotonic"].to_numpy(),
            significant,
            f,
        ).astype(str)

    frames = []
    for i, (target, frame, f) in enumerate(zip(targets, tables, tested, strict=True)):
        q = np.full(len(f), np.nan)
        q[f] = q_screen[i]
        for name in ("qvalue", "significant", "shape"):
            frame[f"{name}_target"] = frame[name]
        frame["qvalue"], frame["significant"] = q, f & (q < alpha)
        frame["shape"] = shapes(frame, f, frame["significant"].to_numpy())
        for name, values in (
            ("feature_pvalue", pvalues[i]),
            ("screen_qvalue", result.screen_qvalue[i]),
        ):
            frame[name] = np.full(len(f), np.nan)
            frame.loc[f, name] = values
        frame["target_pvalue"] = float(result.target_pvalue[i])
        frame["target_qvalue"] = float(result.target_qvalue[i])
        frame["target_selected"] = bool(result.target_selected[i])
        calls = np.zeros(len(f), dtype=bool)
        calls[f] = result.significant[i]
        frame["significant_screen"] = calls
        frame["shape_screen"] = shapes(frame, f, calls)
        frame.insert(0, "feature", frame.index.astype(str))
        frame.insert(0, "target", target)
        frames.append(frame.reset_index(drop=True))
    return pd.concat(frames, ignore_index=True)


def _as_strings(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].astype(object)
    return out


def test_table_equals_the_concatenating_build_exactly(screen):
    table = ds.get.screen_results(screen, alpha=ALPHA)
    reference = _reference_table(screen)
    assert table.columns.tolist() == reference.columns.tolist()
    pd.testing.assert_frame_equal(_as_strings(table), reference, check_exact=True)
    assert table.attrs["hierarchical_fdr"]["n_targets"] == 4
    # calls (measured 11), curves for the discoveries only (15 of 160), every shape kind
    assert table["significant_screen"].sum() >= 5
    assert 5 <= table["response_mean"].notna().sum() < 40
    assert {"flat", "not_fitted", "increasing", "decreasing"} <= set(table["shape"])


def test_string_columns_are_sorted_categoricals(screen):
    table = ds.get.screen_results(screen)
    kinds = {name: str(dtype) for name, dtype in table.dtypes.items()}
    assert [n for n, k in kinds.items() if k == "category"] == [*CATEGORICAL, "shape_screen"]
    assert set(kinds.values()) == {"category", "float64", "bool", "int64"}
    for name in (*CATEGORICAL, "shape_screen"):
        values = table[name]
        assert values.cat.categories.tolist() == sorted(set(values.astype(str)))
        assert values.cat.codes.dtype == np.int8  # a byte per pair (< 128 categories here)
    targets = list(screen.uns["dream_screen"]["targets"])
    assert table["target"].tolist() == [t for t in targets for _ in range(screen["rna"].n_vars)]
    # reads like strings: comparisons, isin, sorting and groupby(observed=True)
    first = table[table["target"] == targets[0]]
    assert first["feature"].tolist() == screen["rna"].var_names.tolist()
    assert table["shape"].isin(["flat"]).sum() == (table["shape"].astype(str) == "flat").sum()
    by_target = table.groupby("target", observed=True)["significant_screen"].sum()
    assert by_target.index.tolist() == sorted(targets)
    ordered = table.sort_values(["feature", "target"], kind="stable")
    strings = _as_strings(table).sort_values(["feature", "target"], kind="stable")
    assert ordered.index.tolist() == strings.index.tolist()


def test_columns_selects_without_changing_values(screen):
    table = ds.get.screen_results(screen)
    wanted = ["target", "feature", "screen_qvalue", "significant_screen", "ec50_mean"]
    small = ds.get.screen_results(screen, columns=wanted)
    pd.testing.assert_frame_equal(small, table[wanted], check_exact=True)
    assert small.attrs == table.attrs
    again = ds.get.screen_results(screen, columns=["shape_screen", "qvalue", "target"])
    pd.testing.assert_frame_equal(again, table[["shape_screen", "qvalue", "target"]])
    assert ds.get.screen_results(screen, columns="shape_target").columns.tolist() == [
        "shape_target"
    ]


def test_columns_errors_before_any_work(screen, monkeypatch):
    names = ds.get.screen_results(screen).columns.tolist()

    def fail(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(_screen, "pooled_decoy_qvalues", fail)
    monkeypatch.setattr(_screen, "_hierarchical", fail)
    expected = f"columns has unknown name(s) ['qvalues', 'gene']; valid names: {names}."
    with pytest.raises(ValueError) as err:
        ds.get.screen_results(screen, columns=["target", "qvalues", "gene"])
    assert str(err.value) == expected
    with pytest.raises(
        ValueError,
        match=r"columns must name at least one column, each once; got \['target', 'target'\]",
    ):
        ds.get.screen_results(screen, columns=["target", "target"])
    with pytest.raises(ValueError, match=r"at least one column, each once; got \[\]"):
        ds.get.screen_results(screen, columns=[])


def test_varm_is_read_once_per_screen(screen, monkeypatch):
    """anndata checks every varm entry on each read of ``AnnData.varm`` (5 per target)."""
    from anndata import AnnData

    original, reads = AnnData.__dict__["varm"], []

    class Counting:
        def __get__(self, obj, objtype=None):
            reads.append(obj is not None)
            return original.__get__(obj, objtype)

    monkeypatch.setattr(AnnData, "varm", Counting())
    ds.get.screen_results(screen)
    assert sum(reads) == 1  # the concatenating build read it 11 times per target
    with pytest.raises(ValueError, match=r"targets is empty; pass targets of the screen"):
        ds.get.screen_results(screen, targets=[])


def test_memory_per_pair(screen):
    table = ds.get.screen_results(screen)
    per_pair = table.memory_usage(deep=True, index=False).sum() / len(table)
    old = _reference_table(screen).memory_usage(deep=True, index=False).sum() / len(table)
    n_float, n_bool = int((table.dtypes == np.float64).sum()), int((table.dtypes == np.bool_).sum())
    # measured 476 (additive Hill: 52 float64 columns, an int64, 9 bools, 7 one-byte codes,
    # 36 for the categories shared by 160 pairs) against 883 before
    assert per_pair < 8 * n_float + 8 + n_bool + 7 + 60
    assert per_pair < 0.6 * old
    light = ds.get.screen_results(
        screen, columns=["target", "feature", "screen_qvalue", "significant_screen", "ec50_mean"]
    )
    codes = sum(light[c].cat.codes.nbytes for c in ("target", "feature")) / len(light)
    assert codes == 2.0  # one byte each for 4 targets and 40 features
    assert light.memory_usage(deep=True, index=False).sum() / len(light) < 2 + 8 + 1 + 8 + 40  # 45


def test_pooled_qvalues_equal_the_first_estimator_and_leave_the_null_alone():
    rng = np.random.default_rng(7)
    for trial in range(12):
        sizes = rng.integers(0, 400, size=rng.integers(1, 5))
        sets = [3] * len(sizes) if trial % 3 else list(rng.integers(1, 4, size=len(sizes)))
        scores = [np.round(rng.exponential(size=n), 1) for n in sizes]
        nulls = [
            np.round(rng.exponential(size=(m, n)), 1) for m, n in zip(sets, sizes, strict=True)
        ]
        if len(scores[0]) > 3:
            scores[0][:3] = [np.nan, np.inf, 0.0]
            nulls[0].flat[:2] = [np.nan, np.inf]
        got = ds.get.pooled_decoy_qvalues(scores, nulls, sets)
        for a, b in zip(got, _reference_pooled(scores, nulls, sets), strict=True):
            np.testing.assert_array_equal(a, b)
    # 3 x 1/3 summed one after the other is not 3 * (1/3): the running sums are exact
    scores = [rng.exponential(size=20_000) for _ in range(4)]
    nulls = [rng.exponential(size=(3, 600_000)) for _ in range(4)]
    tracemalloc.start()
    try:
        got = ds.get.pooled_decoy_qvalues(scores, nulls, [3] * 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for a, b in zip(got, _reference_pooled(scores, nulls, [3] * 4), strict=True):
        np.testing.assert_array_equal(a, b)
    null_bytes = sum(n.nbytes for n in nulls)  # 58 MB; the first estimator held 7 copies
    assert peak < 0.3 * null_bytes  # measured 13 MB: blocks of 262,144 null scores at a time
