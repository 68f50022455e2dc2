"""Genome-scale settings against the per-target fit: time, calls and curve accuracy.

Simulates a many-target screen (:func:`dream_sc.datasets.simulate_many_targets`: every
responsive pair is a single-Hill curve with known ``K``) and fits it twice with
``tl.fit_screen``:

- ``per-target``: every control cell in every target's fit, a curve for every feature
  (``control_cells=None, curves="all"``), default steps: the fit before issue 26;
- ``genome``: a shared control subsample and curves for the stage-one discoveries only
  (``control_cells=--control-cells, curves="discoveries"``), ``--genome-trans-steps`` trans steps.

For each it prints the screen time (technical, per-target cis / trans medians), peak RSS,
realised FDR and power of the hierarchical screen-wide calls (``significant_screen``), and,
over the true responsive pairs called in **both** runs, the curve accuracy: median absolute
log2 error of the relative EC50 (``ec50_mean / x_ref`` against ``K / x_ntc``, so a bias of the
dose scale does not count), the share of 90% EC50 intervals covering the truth
(``ec50_q05 / x_ref <= K / x_ntc <= ec50_q95 / x_ref``) and the share of responses with the true
sign. Run on an idle machine; the 1-minute load average is printed.

Usage::

    python benchmarks/bench_stage_two.py --cells 10000 --genes 1000 --targets 10
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
from _metrics import PeakRSS, markdown_table  # noqa: E402

import dream_sc as ds  # noqa: E402


def fit(mdata, *, label: str, seed: int, **kwargs) -> dict:
    """Fit the screen; return its timings and peak RSS."""
    peak = PeakRSS()
    load = os.getloadavg()[0]
    with peak:
        t0 = time.perf_counter()
        ds.tl.fit_screen(mdata, technical_key=None, seed=seed, progress=False, **kwargs)
        seconds = time.perf_counter() - t0
    record = mdata.uns["dream_screen"]
    timings = record["timings"]
    return {
        "setting": label,
        "screen_s": seconds,
        "technical_s": float(record["technical_seconds"]),
        "cis_s_median": float(timings["cis_seconds"].median()),
        "trans_s_median": float(timings["trans_seconds"].median()),
        "peak_rss_gb": peak.peak_gb,
        "load": f"{load:.1f} -> {os.getloadavg()[0]:.1f}",
    }


def calls(mdata, alpha: float) -> pd.DataFrame:
    """The screen table with truth columns: ``responsive``, ``rel_true`` (K / x_ntc)."""
    table = ds.get.screen_results(mdata, alpha=alpha)
    truth = mdata.uns["truth"]
    pairs = truth["pairs"].set_index(["target", "feature"])
    key = pd.MultiIndex.from_arrays([table["target"], table["feature"]])
    table["responsive"] = key.isin(pairs.index)
    x_ntc = table["target"].map(truth["x_ntc"]).to_numpy(dtype=float)
    k_true = pairs["K"].reindex(key).to_numpy(dtype=float)
    table["rel_true"] = k_true / x_ntc
    table["v_true"] = pairs["v"].reindex(key).to_numpy(dtype=float)
    x_ref = {
        t: float(mdata["rna"].uns[k]["x_ref"])
        for t, k in zip(
            mdata.uns["dream_screen"]["targets"],
            mdata.uns["dream_screen"]["trans_keys"],
            strict=True,
        )
    }
    table["x_ref"] = table["target"].map(x_ref).to_numpy(dtype=float)
    return table


def accuracy(table: pd.DataFrame, pairs: pd.Index) -> dict:
    """Curve accuracy over ``pairs`` (target, feature) of ``table``."""
    sub = table.set_index(["target", "feature"]).loc[pairs]
    rel = sub["ec50_mean"] / sub["x_ref"]
    err = np.abs(np.log2(rel / sub["rel_true"]))
    cover = (sub["ec50_q05"] / sub["x_ref"] <= sub["rel_true"]) & (
        sub["rel_true"] <= sub["ec50_q95"] / sub["x_ref"]
    )
    # the response runs from the lowest to the highest dosage, as the true amplitude v does
    sign = np.sign(sub["response_mean"]) == np.sign(sub["v_true"])
    return {
        "pairs": len(sub),
        "median_abs_log2_rel_ec50_error": float(np.nanmedian(err)),
        "ec50_90_coverage": float(cover.mean()),
        "sign_correct": float(sign.mean()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=10000)
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--control-cells", type=int, default=1000)
    p.add_argument("--genome-trans-steps", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    def screen():
        return ds.datasets.simulate_many_targets(
            n_cells=args.cells, n_genes=args.genes, n_targets=args.targets, seed=args.seed
        )

    per_target, genome = screen(), screen()
    rows = [
        fit(per_target, label="per-target", seed=args.seed),
        fit(
            genome,
            label="genome",
            seed=args.seed,
            control_cells=args.control_cells,
            curves="discoveries",
            n_steps={"trans": args.genome_trans_steps},
        ),
    ]
    tables = [calls(per_target, args.alpha), calls(genome, args.alpha)]
    both = None
    for row, table in zip(rows, tables, strict=True):
        called = table["significant_screen"].to_numpy(dtype=bool)
        truth = table["responsive"].to_numpy(dtype=bool)
        row["calls"] = int(called.sum())
        row["realised_fdr"] = float((called & ~truth).sum() / max(called.sum(), 1))
        row["power"] = float((called & truth).sum() / max(truth.sum(), 1))
        row["curves_fitted"] = int(table["fitted"].sum())
        hits = pd.MultiIndex.from_frame(table.loc[called & truth, ["target", "feature"]])
        both = hits if both is None else both.intersection(hits)
    for row, table in zip(rows, tables, strict=True):
        row.update(accuracy(table, both))
    frame = pd.DataFrame(rows).set_index("setting")
    text = (
        f"## bench_stage_two: {args.cells} cells x {args.genes} genes x {args.targets} targets\n\n"
        f"genome: control_cells={args.control_cells}, curves='discoveries', "
        f"{args.genome_trans_steps} trans steps; accuracy over the {len(both)} true pairs "
        f"called in both runs\n\n" + markdown_table(frame) + "\n"
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
