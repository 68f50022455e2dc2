"""The calling process's per-target work of fit_screen(n_jobs / dask) at genome scale.

With ``n_jobs`` or ``backend="dask"`` the calling process, per target, chooses the target's
cells (:func:`dream_sc.tl._target_cells.cells_for_target`), cuts its slice of the screen (a
MuData view and copy; writing the slice's h5mu is measured by ``bench_screen_slices.py``),
puts the worker's per-cell results back on the screen's cells
(:func:`~dream_sc.tl._target_cells.expand_pieces`) and writes them into the MuData
(:func:`~dream_sc.tl._screen_store.apply`). These are the parts whose cost grows with the
screen's cells, so they bound how many workers one calling process keeps busy. Measured on a
synthetic screen of ``--cells`` cells (10% controls, ~200 cells per target, a 10-feature
count matrix: the cost of a slice's counts is the other script's) with ``control_cells=1000``
and the pieces of one target (six per-cell columns, 100 sparse dosage draws per fitted cell).

Usage::

    python benchmarks/bench_screen_caller.py --cells 100000 2000000
"""

from __future__ import annotations

import argparse
import time
import warnings
from types import SimpleNamespace

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

from dream_sc.tl import _target_cells as T
from dream_sc.tl._screen_store import apply, index_digest


def synthetic_screen(n: int, rng: np.random.Generator) -> tuple[md.MuData, np.ndarray]:
    """``n`` cells, 10% controls, the rest on ``n // 200`` targets; a 10-feature matrix."""
    n_targets = n // 200
    targets = np.array([f"T{i:05d}" for i in range(n_targets)])
    labels = np.where(rng.random(n) < 0.1, "ntc", targets[rng.integers(0, n_targets, n)])
    names = pd.Index([f"cell{i}" for i in range(n)])
    X = sparse.random(n, 10, density=0.2, format="csr", dtype=np.float32, random_state=0)
    mdata = md.MuData({"rna": ad.AnnData(X, obs=pd.DataFrame(index=names))})
    mdata.obs["target"] = pd.Categorical(labels)
    mdata.obs["guide"] = pd.Categorical(np.char.add(labels, "_g1"))
    mdata.obs["sum_factor"] = rng.random(n) + 0.5
    return mdata, targets


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[100_000])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    print(
        "| cells | cells per slice | choose s | view + copy s | expand s | apply s | "
        "first call s (index hash, digest) |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in args.cells:
        rng = np.random.default_rng(0)
        mdata, targets = synthetic_screen(n, rng)
        tech = SimpleNamespace(technical_key=None, groups=["all"])
        control = (mdata.obs["target"] == "ntc").to_numpy()
        picked = list(mdata.obs_names[np.flatnonzero(control)[:1000]])
        kwargs = {
            "modality": "rna",
            "seed": 1,
            "common": {"guide_key": "guide", "target_key": "target", "control_label": "ntc"},
            "cis_kwargs": {"control_cells": picked},
        }
        t0 = time.perf_counter()
        T.cells_for_target(mdata, targets[0], kwargs, tech=tech)  # builds the names' hash table
        digest = index_digest(mdata.obs_names)
        first = time.perf_counter() - t0
        times, digests = [], {}
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            cells = T.cells_for_target(mdata, targets[1 + rep], kwargs, tech=tech)
            t1 = time.perf_counter()
            T.screen_slice(mdata, cells, modality="rna")
            t2 = time.perf_counter()
            k = len(cells)
            pieces = {
                "global/obs": {
                    f"c{rep}_{s}": ("-", pd.Series(rng.random(k), name=f"c{rep}_{s}"))
                    for s in range(6)
                },
                "global/obsm": {f"s{rep}": sparse.csr_matrix(rng.random((k, 100), np.float32))},
            }
            t3 = time.perf_counter()
            full = T.expand_pieces(pieces, cells, mdata.obs_names, digest)
            t4 = time.perf_counter()
            apply(mdata, "rna", full, digests)
            t5 = time.perf_counter()
            times.append((k, t1 - t0, t2 - t1, t4 - t3, t5 - t4))
        med = np.median(np.array(times), axis=0)
        print(
            f"| {n:,} | {med[0]:.0f} | {med[1]:.3f} | {med[2]:.3f} | {med[3]:.3f} | "
            f"{med[4]:.3f} | {first:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
