"""fit_trans on the local backend against a dask LocalCluster with 1 and 2 workers.

Simulates an ``rna``-only screen, runs ``fit_technical`` and ``fit_cis`` once, then times
``fit_trans(test=False, refine_intervals=False)`` (only the chunk fits differ between backends;
the refinement runs in the calling process either way) with

- ``backend="local"``,
- ``backend="dask"`` on ``LocalCluster(n_workers=1, threads_per_worker=1)``,
- ``backend="dask"`` on ``LocalCluster(n_workers=2, threads_per_worker=1)``,

every chunk fit with 1 torch thread (``ds.settings.torch_threads = 1``), and checks that all
three give identical results. Worker start-up (process spawn, imports) is excluded: every
worker imports dream_sc before the clock starts. The per-task overhead is measured separately
with ``n_steps=2`` fits of many chunks (which also warm the workers up): worker time beyond
the local run per task, ``(workers * dask wall - local wall) / number of chunks``.
The 1-minute load average is recorded around every run (the machine may be shared).

Usage::

    python benchmarks/bench_dask.py --cells 5000 --genes 1000 --feature-chunk 100
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _metrics import markdown_table  # noqa: E402

import dream_sc as ds  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dream_sc fit_trans: local vs dask backends.")
    p.add_argument("--cells", type=int, default=5000)
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--feature-chunk", type=int, default=100)
    p.add_argument("--steps-trans", type=int, default=1000)
    p.add_argument("--steps-prep", type=int, default=300, help="technical and cis steps (untimed)")
    p.add_argument("--overhead-chunk", type=int, default=20, help="chunk size of the overhead run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    return p.parse_args(argv)


def _warm(client) -> None:
    client.run(lambda: __import__("dream_sc") and None)


def _timed(label: str, fn) -> tuple[float, tuple[float, float]]:
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    load1 = os.getloadavg()[0]
    print(f"[{label}] {seconds:8.1f} s  load {load0:.2f} -> {load1:.2f}", flush=True)
    return seconds, (load0, load1)


def _same(a, b) -> bool:
    for key in ("dream_trans", "dream_trans_posterior", "dream_trans_curve_mean"):
        x, y = a["rna"].varm[key], b["rna"].varm[key]
        if isinstance(x, pd.DataFrame):
            if not x.equals(y):
                return False
        elif not np.array_equal(x, y, equal_nan=True):
            return False
    return np.array_equal(a["rna"].uns["dream_trans"]["loss"], b["rna"].uns["dream_trans"]["loss"])


def run(args: argparse.Namespace) -> pd.DataFrame:
    from distributed import Client, LocalCluster

    warnings.simplefilter("ignore")
    ds.settings.progress_bar = False
    ds.settings.verbosity = 1
    ds.settings.torch_threads = 1
    mdata = ds.datasets.simulate_screen(
        n_cells=args.cells, n_genes=args.genes, n_junctions=0, n_isoform_genes=0, seed=args.seed
    )
    ds.tl.fit_technical(mdata, seed=args.seed, n_steps=args.steps_prep)
    ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=args.seed, n_steps=args.steps_prep)
    print("prepared (technical and cis fits)", flush=True)
    trans = dict(
        test=False,
        refine_intervals=False,
        seed=args.seed,
        n_steps=args.steps_trans,
        feature_chunk=args.feature_chunk,
    )
    tiny = dict(
        test=False,
        refine_intervals=False,
        seed=args.seed,
        n_steps=2,
        feature_chunk=args.overhead_chunk,
    )
    n_chunks = -(-(args.genes - 1) // args.feature_chunk)
    n_tiny = -(-(args.genes - 1) // args.overhead_chunk)
    rows, results = [], {}

    def add(label, workers, seconds, load, result):
        results[label] = result
        rows.append(
            {
                "backend": label,
                "workers x threads": workers,
                "seconds": round(seconds, 1),
                "load": f"{load[0]:.1f} -> {load[1]:.1f}",
            }
        )

    tiny_local = mdata.copy()  # also warms up this process
    t_tiny_local, _ = _timed("local n_steps=2", lambda: ds.tl.fit_trans(tiny_local, **tiny))
    local = mdata.copy()
    seconds, load = _timed("local", lambda: ds.tl.fit_trans(local, **trans))
    add("local", "1 process, 1 torch thread", seconds, load, local)
    overhead = {}
    for n_workers in (1, 2):
        with (
            LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            _warm(client)
            tiny_dask = mdata.copy()  # also warms up the workers (first tasks)
            t_tiny, _ = _timed(
                f"dask {n_workers} worker(s) n_steps=2",
                lambda tiny_dask=tiny_dask, client=client: ds.tl.fit_trans(
                    tiny_dask, backend="dask", client=client, **tiny
                ),
            )
            overhead[n_workers] = (t_tiny, (n_workers * t_tiny - t_tiny_local) / n_tiny)
            fitted = mdata.copy()
            seconds, load = _timed(
                f"dask {n_workers} worker(s)",
                lambda fitted=fitted, client=client: ds.tl.fit_trans(
                    fitted, backend="dask", client=client, **trans
                ),
            )
            add(f"dask, {n_workers} worker(s)", f"{n_workers} x 1", seconds, load, fitted)
    table = pd.DataFrame(rows)
    table["speed-up vs local"] = (table["seconds"].iloc[0] / table["seconds"]).round(2)
    same = all(_same(local, r) for r in results.values())
    print(markdown_table(table))
    print(
        f"\n{args.cells} cells x {args.genes} genes, {n_chunks} chunks of {args.feature_chunk} "
        f"features, {args.steps_trans} steps; identical results on every backend: {same}"
    )
    for n_workers, (t_tiny, per_task) in overhead.items():
        print(
            f"per-task overhead, {n_workers} worker(s) (n_steps=2, {n_tiny} chunks of "
            f"{args.overhead_chunk}): {per_task:.3f} s of worker time per task "
            f"(local {t_tiny_local:.2f} s, dask {t_tiny:.2f} s)"
        )
    if args.out:
        Path(args.out).write_text(markdown_table(table) + "\n")
    if not same:
        raise SystemExit("backends disagree")
    return table


if __name__ == "__main__":
    run(parse_args())
