"""What a fit_screen worker receives per target: the slice of the screen, its size and cost.

``fit_screen(n_jobs=...)`` and ``backend="dask"`` send each task only the cells its target's
fits read (the target's cells and the controls it uses, :mod:`dream_sc.tl._target_cells`), as
the bytes of an h5mu file. This script simulates a screen
(:func:`dream_sc.datasets.simulate_many_targets`), runs a short technical fit (its records are
part of every slice) and then, for ``--sample`` targets, times what the calling process does
per task (choose the cells, cut the slice, write it) and what a worker does before its fit
(read it), next to the whole screen as every worker received it before (the h5mu of the whole
screen). The numbers feed the per-task data and the caller's throughput of a cluster estimate.

Usage::

    python benchmarks/bench_screen_slices.py --cells 100000 --genes 2000 --targets 500 \\
        --control-cells 1000 --sample 10
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

import dream_sc as ds  # noqa: E402
from dream_sc.tl._screen_checks import target_seed  # noqa: E402
from dream_sc.tl._target_cells import (  # noqa: E402
    mudata_bytes,
    read_mudata_bytes,
    target_slice,
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=20000)
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--control-cells", type=int, default=None)
    p.add_argument("--sample", type=int, default=10, help="targets whose slices are cut")
    p.add_argument(
        "--test-controls",
        choices=["all", "fitted"],
        default="all",
        help="the trans test's cells (fit_screen's low-MOI default 'all': every control cell)",
    )
    p.add_argument(
        "--earlier",
        type=int,
        default=0,
        help="earlier targets' results in the MuData (one target's fits, copied under new keys),"
        " as the caller's MuData holds them late in a screen",
    )
    p.add_argument("--technical-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    mdata = ds.datasets.simulate_many_targets(
        n_cells=args.cells, n_genes=args.genes, n_targets=args.targets, seed=args.seed
    )
    ds.tl.fit_technical(
        mdata, technical_key=None, n_steps=args.technical_steps, seed=args.seed, progress=False
    )
    X = mdata["rna"].X
    nnz = X.nnz if hasattr(X, "nnz") else int(np.count_nonzero(X))
    t0 = time.perf_counter()
    whole = len(mudata_bytes(mdata))
    whole_seconds = time.perf_counter() - t0
    targets = sorted(set(mdata.uns["truth"]["targets"]))
    chosen = sorted(np.random.default_rng(args.seed).choice(targets, args.sample, replace=False))
    picked = None
    if args.control_cells is not None:
        from dream_sc.tl._control_cells import screen_controls

        control = (mdata.obs["target"].astype(str) == "ntc").to_numpy()
        rng = np.random.default_rng(args.seed)
        picked = screen_controls(mdata.obs, control, None, args.control_cells, rng)
    common = {"guide_key": "guide", "target_key": "target", "control_label": "ntc"}
    prefixes = ["dream_technical", "dream_screen"]
    if args.earlier:
        prefixes += add_earlier_results(
            mdata, args.earlier, args.control_cells, args.technical_steps, args.seed
        )
    rows = []
    for target in chosen:
        kwargs = {
            "modality": "rna",
            "technical_key_added": "dream_technical",
            "common": common,
            "cis_kwargs": {} if picked is None else {"control_cells": picked},
            "seed": target_seed(args.seed, target),
            "prefixes": prefixes,
            "trans_kwargs": {"test_controls": args.test_controls},
        }
        t0 = time.perf_counter()
        cells, payload = target_slice(mdata, target, kwargs)
        cut = time.perf_counter() - t0
        t0 = time.perf_counter()
        sub = read_mudata_bytes(payload)
        read = time.perf_counter() - t0
        rows.append((len(cells), len(payload), cut, read))
        del sub
    a = np.array(rows, dtype=float)
    med = np.median(a, axis=0)
    print(
        f"## bench_screen_slices: {args.cells} cells x {args.genes} genes x {args.targets} "
        f"targets, {nnz / 1e6:.1f} M non-zeros, control_cells {args.control_cells}, "
        f"test_controls {args.test_controls}, {args.earlier} earlier targets' results\n\n"
        f"- whole screen as one h5mu (what every worker received before): {whole / 1e6:.1f} MB, "
        f"written in {whole_seconds:.2f} s\n"
        f"- per target (median of {len(chosen)}; min-max): {med[0]:.0f} cells "
        f"({a[:, 0].min():.0f}-{a[:, 0].max():.0f}), slice {med[1] / 1e6:.2f} MB "
        f"({a[:, 1].min() / 1e6:.2f}-{a[:, 1].max() / 1e6:.2f}), "
        f"{med[1] / med[0] / 1e3:.2f} kB per cell; cut in the calling process "
        f"{med[2]:.3f} s ({a[:, 2].min():.3f}-{a[:, 2].max():.3f}); read by the worker "
        f"{med[3]:.3f} s\n"
        f"- load {os.getloadavg()[0]:.2f}"
    )


def add_earlier_results(
    mdata, n: int, control_cells: int | None, technical_steps: int, seed: int
) -> list[str]:
    """Fit one target briefly and copy its results under ``n`` new keys; returns the keys."""
    from dream_sc.tl._screen_store import apply, capture

    target = sorted(set(mdata.uns["truth"]["targets"]))[0]
    ds.tl.fit_screen(
        mdata,
        targets=[target],
        technical_key=None,
        control_cells=control_cells,
        n_steps={"technical": technical_steps, "cis": 20, "trans": 20},
        curves="discoveries",
        progress=False,
        seed=seed,
    )
    record = mdata.uns["dream_screen"]
    keys = [str(record[f"{step}_keys"][0]) for step in ("cis", "trans")]  # the one target's
    pieces = {key: capture(mdata, "rna", key, keys) for key in keys}
    added = []
    for i in range(n):
        for key, piece in pieces.items():
            new = key.replace(target, f"EARLIER{i:05d}")
            renamed = {
                where: {name.replace(key, new, 1): v for name, v in entries.items()}
                for where, entries in piece.items()
            }
            apply(mdata, "rna", renamed)
            added.append(new)
    return added


if __name__ == "__main__":
    main()
