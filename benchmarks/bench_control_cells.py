"""What a shared control subsample (``fit_screen(control_cells=N)``) costs in accuracy and saves in time.

Simulates a many-target screen whose control cells outnumber each target's cells (as in a
genome-scale screen), fits it twice with the same seed - every control cell in every target's
fit (today's default) and one stratified subsample of ``--control-cells`` shared by all targets
- and prints per-target seconds (cis, trans) of both runs, the agreement between them (guide
dosages, response, EC50 of features significant in both, the calls) and each run's accuracy
against the truth (realised FDR, power, AUROC over all target x gene pairs).

Usage::

    python benchmarks/bench_control_cells.py --cells 8000 --genes 400 --targets 8 \\
        --control-fraction 0.5 --control-cells 800
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
from _metrics import PeakRSS, auroc, markdown_table  # noqa: E402
from bench_genome_screen import score_calls, truth_labels  # noqa: E402

import dream_sc as ds  # noqa: E402


def fit(mdata, control_cells, steps, permutations, seed):
    """Fit a copy of the screen; return it, its wall seconds and its peak RSS."""
    screen = mdata.copy()
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        ds.tl.fit_screen(
            screen,
            technical_key=None,
            n_steps=steps,
            seed=seed,
            progress=False,
            control_cells=control_cells,
            trans_kwargs={"n_permutations": permutations},
        )
        seconds = time.perf_counter() - t0
    return screen, seconds, peak.peak_gb


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=8000)
    p.add_argument("--genes", type=int, default=400)
    p.add_argument("--targets", type=int, default=8)
    p.add_argument("--control-fraction", type=float, default=0.5)
    p.add_argument("--control-cells", type=int, default=800)
    p.add_argument("--steps", type=int, nargs=3, default=[100, 150, 150])
    p.add_argument("--permutations", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    load = os.getloadavg()[0]
    mdata = ds.datasets.simulate_many_targets(
        n_cells=args.cells,
        n_genes=args.genes,
        n_targets=args.targets,
        control_fraction=args.control_fraction,
        seed=args.seed,
    )
    steps = dict(zip(("technical", "cis", "trans"), args.steps, strict=True))
    runs = {
        "all controls": fit(mdata, None, steps, args.permutations, args.seed),
        f"{args.control_cells} controls": fit(
            mdata, args.control_cells, steps, args.permutations, args.seed
        ),
    }
    kinds = mdata.uns["truth"]["target_kind"]
    rows, tables = {}, {}
    for name, (screen, seconds, peak_gb) in runs.items():
        table = ds.get.screen_results(screen)
        tables[name] = table.set_index(["target", "feature"])
        labels = truth_labels(mdata, table)
        null_target = table["target"].map(lambda t: kinds[t] == "null").to_numpy()
        timings = screen.uns["dream_screen"]["timings"]
        rows[name] = {
            "seconds": seconds,
            "cis_s_per_target": timings["cis_seconds"].median(),
            "trans_s_per_target": timings["trans_seconds"].median(),
            "peak_gb": peak_gb,
            **score_calls(table["qvalue"].fillna(1.0).to_numpy() < 0.1, labels, null_target),
            "auroc": auroc(labels, table["score"].fillna(0.0).to_numpy()),
        }
    full, sub = (runs[k][0] for k in runs)
    a, b = tables.values()
    guide_ratio = []
    for t in full.uns["dream_screen"]["targets"]:
        ga = full.uns[f"dream_cis_{t}"]["guides"]["dose_mean"]
        gb = sub.uns[f"dream_cis_{t}"]["guides"]["dose_mean"]
        guide_ratio.append(np.abs(np.log2(gb / ga)))
    both = a["significant"].fillna(False) & b["significant"].fillna(False)
    either = a["significant"].fillna(False) | b["significant"].fillna(False)
    ec50 = np.abs(np.log2(b.loc[both, "ec50_mean"] / a.loc[both, "ec50_mean"]))
    agreement = {
        "median |log2 guide dose ratio|": float(np.median(np.concatenate(guide_ratio))),
        "median |d response| (significant in both)": float(
            (b.loc[both, "response_mean"] - a.loc[both, "response_mean"]).abs().median()
        ),
        "median |log2 EC50 ratio| (significant in both)": float(ec50.median()),
        "calls in both / in either": f"{int(both.sum())} / {int(either.sum())}",
    }
    text = (
        f"## bench_control_cells: {args.cells} cells x {args.genes} genes x {args.targets} "
        f"targets, control fraction {args.control_fraction}, steps {steps}, load {load:.2f} -> "
        f"{os.getloadavg()[0]:.2f}\n\n"
        + markdown_table(pd.DataFrame(rows).T)
        + "\n\n"
        + markdown_table(pd.DataFrame({"value": agreement}))
        + "\n"
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
