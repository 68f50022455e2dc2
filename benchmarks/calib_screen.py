"""Calibration of stage one on a many-target screen: where do the false calls come from?

Simulates :func:`dream_sc.datasets.simulate_many_targets`, runs ``tl.fit_screen`` (stage one
and the curves of the discoveries) for one or more seeds and reports, per seed and pooled:

- the realised FDR of every q-value column of ``get.screen_results`` (false / calls over all
  pairs), and the quantity the hierarchical procedure bounds: the average over the selected
  targets of the within-target false discovery proportion (Benjamini-Bogomolov);
- the **calibration of the flat pairs' p-values** (the pairs the simulator did not make
  responsive): the share below 1e-2, 1e-3, 1e-4 divided by that level (1 = calibrated,
  > 1 = anti-conservative) for the target-pooled permutation p-value
  (``feature_pvalue``, what the hierarchical columns use), by the flat gene's mean count
  (sparse genes carry the heavy tails) and by whether another target moves it (leak) or not;
- optionally the size factors: ``--true-size-factors`` fits with the generating ones.

Usage::

    python benchmarks/calib_screen.py --cells 20000 --genes 2000 --targets 100 \\
        --fit-targets 20 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _metrics import markdown_table  # noqa: E402

import dream_sc as ds  # noqa: E402
from dream_sc.models.hierarchical_fdr import permutation_pvalues  # noqa: E402

#: p-value levels of the calibration table.
LEVELS = (1e-2, 1e-3, 1e-4)
#: Mean-count bins of the flat genes (counts per cell, all cells).
BINS = (0.0, 0.01, 0.05, 0.3, np.inf)


def run_screen(args, seed: int):
    """Simulate and fit one screen; the screen-wide table and the per-target p-values."""
    mdata = ds.datasets.simulate_many_targets(
        n_cells=args.cells, n_genes=args.genes, n_targets=args.targets, seed=seed
    )
    if args.true_size_factors:
        mdata.obs["sum_factor"] = mdata.obs["true_size_factor"].to_numpy()
    chosen = None
    if args.fit_targets is not None:
        everything = sorted(set(mdata.uns["truth"]["targets"]))
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(everything, size=args.fit_targets, replace=False))
    t0 = time.perf_counter()
    ds.tl.fit_screen(
        mdata,
        technical_key=None,
        n_steps=dict(zip(("technical", "cis", "trans"), args.steps, strict=True)),
        seed=seed,
        progress=False,
        control_cells=args.control_cells,
        curves="discoveries",
        targets=chosen,
    )
    seconds = time.perf_counter() - t0
    table = ds.get.screen_results(mdata, alpha=args.alpha)
    return mdata, table, seconds


def label_pairs(mdata, table: pd.DataFrame) -> pd.DataFrame:
    """Truth, target kind, leak and mean count of every pair of the screen-wide table."""
    truth = mdata.uns["truth"]
    pairs = truth["pairs"]
    responsive = set(zip(pairs["target"], pairs["feature"], strict=True))
    moved = set(pairs["feature"])
    x = mdata["rna"].X
    means = pd.Series(np.asarray(x.mean(axis=0)).ravel(), index=mdata["rna"].var_names)
    out = table[["target", "feature", "score", "feature_pvalue", "response_mean"]].copy()
    out["true"] = [(t, f) in responsive for t, f in zip(out["target"], out["feature"], strict=True)]
    out["kind"] = out["target"].map(truth["target_kind"])
    out["leak"] = out["feature"].isin(moved)
    out["mean_count"] = out["feature"].map(means).to_numpy()
    for col in ("qvalue", "screen_qvalue", "qvalue_target", "target_selected"):
        out[col] = table[col].to_numpy()
    return out


def fdr_rows(pairs: pd.DataFrame, alpha: float) -> dict:
    """Realised FDR of each q-value column and the selected targets' average FDP."""
    rows = {}
    for col in ("qvalue", "screen_qvalue", "qvalue_target"):
        called = pairs[col].fillna(1.0).to_numpy() < alpha
        false = called & ~pairs["true"].to_numpy()
        rows[col] = {
            "calls": int(called.sum()),
            "false": int(false.sum()),
            "realised_fdr": false.sum() / max(called.sum(), 1),
        }
    called = pairs["screen_qvalue"].fillna(1.0) < alpha
    per = pairs.assign(called=called, false=called & ~pairs["true"])
    by = ["seed", "target"] if "seed" in per else ["target"]
    per = per[per["target_selected"].fillna(False).astype(bool)].groupby(by)
    fdp = per["false"].sum() / per["called"].sum().clip(lower=1)
    rows["screen_qvalue"]["avg_selected_fdp"] = float(fdp.mean()) if len(fdp) else 0.0
    rows["screen_qvalue"]["n_selected"] = int(len(fdp))
    return rows


def calibration(pairs: pd.DataFrame, levels=LEVELS) -> pd.DataFrame:
    """Share of flat pairs' p-values below each level over the level, by stratum."""
    flat = pairs[~pairs["true"] & pairs["feature_pvalue"].notna()]
    strata = {"all flat": np.ones(len(flat), dtype=bool)}
    counts = flat["mean_count"].to_numpy()
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        strata[f"mean count [{lo:g}, {hi:g})"] = (counts >= lo) & (counts < hi)
    strata["leak (another target moves it)"] = flat["leak"].to_numpy()
    strata["pure (no target moves it)"] = ~flat["leak"].to_numpy()
    for kind in ("null", "typical", "strong"):
        strata[f"target kind {kind}"] = (flat["kind"] == kind).to_numpy()
    p = flat["feature_pvalue"].to_numpy()
    rows = {}
    for name, mask in strata.items():
        row = {"pairs": int(mask.sum())}
        for level in levels:
            expected = level * mask.sum()
            row[f"obs/exp p<{level:g}"] = (p[mask] < level).sum() / max(expected, 1e-12)
            row[f"n p<{level:g}"] = int((p[mask] < level).sum())
        rows[name] = row
    return pd.DataFrame(rows).T


def own_column_pvalues(mdata, pairs: pd.DataFrame) -> np.ndarray:
    """Per-feature permutation p-values against the feature's own null column."""
    record = mdata.uns["dream_screen"]
    keys = dict(zip(record["targets"], record["trans_keys"], strict=True))
    out = np.full(len(pairs), np.nan)
    rna = mdata["rna"]
    for target, idx in pairs.groupby("target").indices.items():
        trans = rna.uns[str(keys[target])]
        null = np.asarray(trans["null_scores"], dtype=np.float64)
        scores = pairs["score"].to_numpy()[idx]
        ok = np.isfinite(scores)
        if null.ndim == 2 and null.shape[1] == ok.sum():
            p = permutation_pvalues(scores[ok], null, pooled=False)
            sub = out[idx]
            sub[ok] = p
            out[idx] = sub
    return out


def dump_nulls(mdata, path: Path) -> None:
    """Every target's real scores, null scores and features, and the genes' nonzero counts."""
    record = mdata.uns["dream_screen"]
    rna = mdata["rna"]
    target = mdata.obs["target"].to_numpy()
    control = target == mdata.uns["truth"]["control_label"]
    nz = rna.X.copy()
    nz.data = (nz.data > 0).astype(np.float32)
    out = {}
    for t, key in zip(record["targets"], record["trans_keys"], strict=True):
        trans = rna.uns[str(key)]
        table = ds.get.trans_results(mdata, key=str(key))
        tested = table["score"].notna().to_numpy()
        own = target == t
        out[f"{t}|score"] = table["score"].to_numpy()[tested]
        out[f"{t}|features"] = table.index.to_numpy().astype(str)[tested]
        out[f"{t}|null"] = np.asarray(trans["null_scores"], dtype=np.float64)
        cols = rna.var_names.get_indexer(out[f"{t}|features"])
        out[f"{t}|nnz_target"] = np.asarray(nz[own][:, cols].sum(0)).ravel()
        out[f"{t}|nnz_control"] = np.asarray(nz[control][:, cols].sum(0)).ravel()
    np.savez_compressed(path, **out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=20000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--fit-targets", type=int, default=20)
    p.add_argument("--steps", type=int, nargs=3, default=(200, 300, 100))
    p.add_argument("--control-cells", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--true-size-factors", action="store_true")
    p.add_argument(
        "--no-strata",
        action="store_true",
        help="pooled null without sparsity strata (the null before dream_sc.tl._null."
        "sparsity_matched)",
    )
    p.add_argument("--no-shift", action="store_true", help="score without the shared-shift removal")
    p.add_argument("--save", type=Path, default=None, help="directory for the labelled pairs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from dream_sc.tl import _null

    if args.no_shift:
        _null.SHARED_SHIFT_DISTRIBUTIONS = ()
    if args.no_strata:
        _null.STRATIFIED_NULL_DISTRIBUTIONS = ()
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    every = []
    for seed in args.seeds:
        mdata, table, seconds = run_screen(args, seed)
        pairs = label_pairs(mdata, table)
        pairs["own_pvalue"] = own_column_pvalues(mdata, pairs)
        pairs["seed"] = seed
        every.append(pairs)
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            pairs.to_csv(args.save / f"pairs_seed{seed}.csv", index=False)
            dump_nulls(mdata, args.save / f"nulls_seed{seed}.npz")
        rows = fdr_rows(pairs, args.alpha)
        print(f"\n## seed {seed}: fit_screen {seconds:.0f} s, load {os.getloadavg()[0]:.2f}")
        print(markdown_table(pd.DataFrame(rows).T), flush=True)
    pooled = pd.concat(every, ignore_index=True)
    print(f"\n## pooled over seeds {args.seeds}")
    print(markdown_table(pd.DataFrame(fdr_rows(pooled, args.alpha)).T))
    print("\nflat pairs, target-pooled permutation p-value (feature_pvalue):")
    print(markdown_table(calibration(pooled)))
    print("\nflat pairs, own-column permutation p-value (resolution 1 / (1 + P)):")
    own = pooled.assign(feature_pvalue=pooled["own_pvalue"])
    print(markdown_table(calibration(own, levels=(0.1, 0.05)).iloc[:, :4]))


if __name__ == "__main__":
    main()
