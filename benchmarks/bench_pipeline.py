"""Wall time and peak memory of the three-step dream_sc pipeline on a simulated screen.

Simulates a screen, then runs ``fit_technical``, ``fit_cis``, ``fit_trans`` (with
``test=False``) and ``test_trans`` (the permutation null; skipped with ``--no-test``), timing
each step and sampling the process RSS every 50 ms in a background thread (per-step peaks).
Prints the memory plans the package logged and a final table. The 1-minute load average is
recorded at the start and end of every step: on a shared machine other processes inflate
timings.

Target (issue): the whole pipeline at 20,000 cells x 2,000 genes in under 10 minutes with peak
RSS under 4 GB on 2 CPU cores.

Usage::

    python benchmarks/bench_pipeline.py --cells 3000 --genes 300
    python benchmarks/bench_pipeline.py --cells 20000 --genes 2000 --out bench_20k.md
"""

from __future__ import annotations

import argparse
import os
import platform
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time and memory of the dream_sc pipeline.")
    p.add_argument("--cells", type=int, default=20000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--steps-technical", type=int, default=None, help="default: package default")
    p.add_argument("--steps-cis", type=int, default=None, help="default: package default")
    p.add_argument("--steps-trans", type=int, default=None, help="default: package default")
    p.add_argument("--function", default="additive_hill")
    p.add_argument("--no-test", action="store_true", help="skip the permutation test")
    p.add_argument("--use-dose-mean", action="store_true", help="fit_trans fast path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--depth", type=float, default=1.0, help="simulate_screen depth (zeros)")
    p.add_argument("--frac-responsive", type=float, default=0.3)
    p.add_argument("--max-memory-gb", type=float, default=None, help="settings.max_memory_gb")
    p.add_argument("--no-refine", action="store_true", help="fit_trans(refine_intervals=False)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    return p.parse_args(argv)


def _steps(value: int | None) -> dict:
    return {} if value is None else {"n_steps": value}


class TransSplit:
    """Wall seconds of the trans sub-steps (SVI, summaries, interval refinement)."""

    def __init__(self) -> None:
        from dream_sc.tl import _trans, _trans_job

        self.seconds: dict[str, float] = {}
        job = _trans_job.TransJob
        job.fit = self._timed(job.fit, "svi")
        job.summarise = self._timed(job.summarise, "summaries")
        _trans.refined_columns = self._timed(_trans.refined_columns, "refinement")

    def _timed(self, func, label):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        return timed


def run(args: argparse.Namespace) -> pd.DataFrame:
    torch.set_num_threads(args.threads)
    ds.settings.progress_bar = False
    if args.max_memory_gb is not None:
        ds.settings.max_memory_gb = args.max_memory_gb
    split = TransSplit()
    rows = []

    def record(step: str, mem: PeakRSS) -> None:
        rows.append(
            {
                "step": step,
                "seconds": mem.seconds,
                "cpu_seconds": mem.cpu_seconds,
                "rss_start_gb": mem.start_gb,
                "peak_rss_gb": mem.peak_gb,
                "load_start": mem.load[0],
                "load_end": mem.load[1],
            }
        )
        print(
            f"[{step}] {mem.seconds:8.1f} s (cpu {mem.cpu_seconds:8.1f} s)  peak RSS {mem.peak_gb:6.2f} GB "
            f"(start {mem.start_gb:5.2f})  load {mem.load[0]:.2f} -> {mem.load[1]:.2f}",
            flush=True,
        )

    with PeakRSS() as mem:
        mdata = ds.datasets.simulate_screen(
            n_cells=args.cells,
            n_genes=args.genes,
            n_junctions=0,
            n_isoform_genes=0,
            seed=args.seed,
            depth=args.depth,
            frac_responsive=args.frac_responsive,
        )
    record("simulate", mem)
    cis = mdata.uns["truth"]["cis_feature"]
    rna = mdata["rna"]
    print(
        f"screen: {mdata.n_obs} cells x {rna.n_vars} genes, {rna.X.nnz / np.prod(rna.shape):.1%} non-zero"
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with PeakRSS() as mem:
            ds.tl.fit_technical(mdata, seed=args.seed, **_steps(args.steps_technical))
        record("fit_technical", mem)
        print("  plan:", dict(rna.uns["dream_technical"]["plan"]))
        with PeakRSS() as mem:
            ds.tl.fit_cis(mdata, cis_feature=cis, seed=args.seed, **_steps(args.steps_cis))
        record("fit_cis", mem)
        plan = mdata.uns["dream_cis"].get("plan")
        if plan is not None:
            print("  plan:", dict(plan))
        with PeakRSS() as mem:
            ds.tl.fit_trans(
                mdata,
                function=args.function,
                test=False,
                use_dose_mean=args.use_dose_mean,
                refine_intervals=not args.no_refine,
                seed=args.seed,
                **_steps(args.steps_trans),
            )
        record("fit_trans", mem)
        print("  plan:", dict(rna.uns["dream_trans"]["plan"]))
        n_steps = int(rna.uns["dream_trans"]["params"]["n_steps"])
        refined = int(ds.get.trans_results(mdata)["refined"].fillna(False).astype(bool).sum())
        print(
            "  trans split (wall s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in split.seconds.items())
            + f"; {split.seconds.get('svi', 0.0) / n_steps * 1e3:.0f} ms per SVI step; "
            f"{refined} features refined"
        )
        if not args.no_test:
            with PeakRSS() as mem:
                ds.tl.test_trans(mdata)
            record("test_trans", mem)

    table = pd.DataFrame(rows).set_index("step")
    fits = table.drop(index="simulate")
    table.loc["pipeline (fits)"] = {
        "seconds": fits["seconds"].sum(),
        "cpu_seconds": fits["cpu_seconds"].sum(),
        "rss_start_gb": fits["rss_start_gb"].iloc[0],
        "peak_rss_gb": fits["peak_rss_gb"].max(),
        "load_start": fits["load_start"].iloc[0],
        "load_end": fits["load_end"].iloc[-1],
    }
    res = ds.get.trans_results(mdata)
    truth = rna.var["true_responsive"].to_numpy(bool)
    fitted = res["fitted"].to_numpy(bool)
    conv = {
        "technical": bool(rna.uns["dream_technical"]["converged"]),
        "cis": bool(mdata.uns["dream_cis"].get("converged", True)),
        "trans": bool(rna.uns["dream_trans"]["converged"]),
    }
    print(f"converged: {conv}")
    if not args.no_test:
        sig = res["significant"].to_numpy(bool) & fitted
        print(
            f"significant: {sig.sum()} ({(sig & ~truth).sum()} not responsive); "
            f"responsive genes: {(truth & fitted).sum()}"
        )
    return table


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    table = run(args)
    header = (
        f"dream_sc pipeline: {args.cells} cells x {args.genes} genes, function={args.function}, "
        f"test={not args.no_test}, steps technical/cis/trans="
        f"{args.steps_technical or 'default'}/{args.steps_cis or 'default'}/"
        f"{args.steps_trans or 'default'}, torch threads={torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )
    md = header + "\n\n" + markdown_table(table, floatfmt=".3g")
    print()
    print(md)
    if args.out:
        Path(args.out).write_text(md + "\n")


if __name__ == "__main__":
    main()
