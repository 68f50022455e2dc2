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

``--input`` chooses how the ``rna`` counts reach ``fit_trans``: ``memory`` (a scipy matrix),
``backed`` (the screen written to an h5mu with a CSC ``X`` and reopened with
``mudata.read_h5mu(path, backed=True)``) or ``dask`` (``X`` replaced by
``anndata.experimental.read_elem_lazy`` of that file). Out-of-core inputs drop the in-memory
matrix before the timed fits. The peak resident memory of this (the client) process during
every fit is sampled from ``/proc/self/status`` every 10 ms and reported with the resident
memory before the fit.

Usage::

    python benchmarks/bench_dask.py --cells 5000 --genes 1000 --feature-chunk 100
    python benchmarks/bench_dask.py --input backed --workers 2
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
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
    p.add_argument("--input", choices=("memory", "dask", "backed"), default="memory")
    p.add_argument(
        "--workers", type=int, nargs="*", default=[1, 2], help="dask worker counts (none: local)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    return p.parse_args(argv)


def _warm(client) -> None:
    client.run(lambda: __import__("dream_sc") and None)


def _rss_mb() -> float:
    """Resident memory of this process (MB), from /proc (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _PeakRSS:
    """Samples the resident memory every 10 ms while active; ``peak`` in MB."""

    def __enter__(self):
        gc.collect()
        self.before = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _timed(label: str, fn) -> tuple[float, tuple[float, float], tuple[float, float]]:
    load0 = os.getloadavg()[0]
    with _PeakRSS() as rss:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    load1 = os.getloadavg()[0]
    print(
        f"[{label}] {seconds:8.1f} s  load {load0:.2f} -> {load1:.2f}  "
        f"client RSS {rss.before:.0f} -> peak {rss.peak:.0f} MB",
        flush=True,
    )
    return seconds, (load0, load1), (rss.before, rss.peak)


def _out_of_core(mdata, kind: str, workdir: Path):
    """A maker of fresh screens with the ``rna`` counts on disk (``backed``) or in Dask."""
    import h5py
    import mudata as md
    from scipy import sparse

    path = workdir / "screen.h5mu"
    out = mdata.copy()
    out["rna"].X = sparse.csc_matrix(out["rna"].X)  # column slices read only their columns
    out.write(path)
    del out
    if kind == "backed":  # a backed MuData cannot be copied: reopen the file for every fit
        return lambda: md.read_h5mu(path, backed=True)
    from anndata.experimental import read_elem_lazy

    lazy = mdata.copy()
    lazy["rna"].X = read_elem_lazy(h5py.File(path, "r")["mod/rna/X"])
    return lazy.copy


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
    workdir = tempfile.TemporaryDirectory(prefix="bench_dask_")
    fresh = mdata.copy
    if args.input != "memory":
        fresh = _out_of_core(mdata, args.input, Path(workdir.name))
        del mdata
        gc.collect()
    print(f"input: {args.input} ({type(fresh()['rna'].X).__name__})", flush=True)
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

    def add(label, workers, seconds, load, rss, result):
        results[label] = result
        rows.append(
            {
                "backend": label,
                "input": args.input,
                "workers x threads": workers,
                "seconds": round(seconds, 1),
                "load": f"{load[0]:.1f} -> {load[1]:.1f}",
                "client RSS before -> peak (MB)": f"{rss[0]:.0f} -> {rss[1]:.0f}",
            }
        )

    tiny_local = fresh()  # also warms up this process
    t_tiny_local, _, _ = _timed("local n_steps=2", lambda: ds.tl.fit_trans(tiny_local, **tiny))
    local = fresh()
    seconds, load, rss = _timed("local", lambda: ds.tl.fit_trans(local, **trans))
    add("local", "1 process, 1 torch thread", seconds, load, rss, local)
    overhead = {}
    for n_workers in args.workers:
        with (
            LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            _warm(client)
            tiny_dask = fresh()  # also warms up the workers (first tasks)
            t_tiny, _, _ = _timed(
                f"dask {n_workers} worker(s) n_steps=2",
                lambda tiny_dask=tiny_dask, client=client: ds.tl.fit_trans(
                    tiny_dask, backend="dask", client=client, **tiny
                ),
            )
            overhead[n_workers] = (t_tiny, (n_workers * t_tiny - t_tiny_local) / n_tiny)
            fitted = fresh()
            seconds, load, rss = _timed(
                f"dask {n_workers} worker(s)",
                lambda fitted=fitted, client=client: ds.tl.fit_trans(
                    fitted, backend="dask", client=client, **trans
                ),
            )
            add(f"dask, {n_workers} worker(s)", f"{n_workers} x 1", seconds, load, rss, fitted)
    table = pd.DataFrame(rows)
    table["speed-up vs local"] = (table["seconds"].iloc[0] / table["seconds"]).round(2)
    same = all(_same(local, r) for r in results.values())
    print(markdown_table(table))
    print(
        f"\n{args.cells} cells x {args.genes} genes, {n_chunks} chunks of {args.feature_chunk} "
        f"features, {args.steps_trans} steps, input {args.input}; identical results on every "
        f"backend: {same}"
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
