"""Per-target cost of ``tl.fit_cis`` in a many-target screen (issue 26, genome-scale screens).

Builds (or reads) a many-target screen with its technical fit, draws the shared control
subsample ``fit_screen(control_cells=N)`` uses, then fits the cis step of some targets with the
settings ``fit_screen`` passes (package defaults, per-target seed) and prints one row per
target: wall and CPU seconds, peak RSS, the fit's cells and its accuracy against the
simulator's truth (guide log2 effects; per-cell dosage ``dose_q50`` against the true dosage).
``--prefill K`` first stores K fake cis results (obs columns and a cells x samples ``obsm``
matrix each), as a screen holds after K targets, to show costs that grow with the screen.
``--breakdown`` adds the seconds of each stage (Laplace start, SVI, per-cell draws, ...).
Run it on two commits (``git checkout``) to compare before / after.

Usage::

    python benchmarks/bench_cis_target.py --cells 20000 --genes 2000 --targets 100 \\
        --fit-targets 6 --control-cells 1000 --threads 1 --save screen.h5mu
    python benchmarks/bench_cis_target.py --input screen.h5mu --fit-targets 6
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import mudata
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _metrics import PeakRSS, markdown_table, spearman  # noqa: E402

import dream_sc as ds  # noqa: E402
from dream_sc.tl._cis_block import fit_cis_block  # noqa: E402
from dream_sc.tl._control_cells import screen_controls  # noqa: E402
from dream_sc.tl._screen_checks import target_seed  # noqa: E402

#: Stages timed by ``--breakdown``: (module, function, label).
STAGES = (
    ("dream_sc.tl._cis", "modality_data", "extract"),
    ("dream_sc.models.cis_laplace", "laplace_start", "laplace"),
    ("dream_sc.engine.cis", "run_svi", "svi"),
    ("dream_sc.engine.cis_batched", "_fit_together", "batched_fit"),
    ("dream_sc.tl._cis", "cell_dosage_draws", "cell_draws"),
    ("dream_sc.tl._cis", "write_cis", "write"),
)


def time_stages(acc: dict[str, float]) -> None:
    """Wrap the functions of :data:`STAGES` so that their CPU seconds add up in ``acc``."""
    import importlib

    for module, name, label in STAGES:
        mod = importlib.import_module(module)
        original = getattr(mod, name)

        def timed(*args, _f=original, _label=label, **kwargs):
            start = time.process_time()
            try:
                return _f(*args, **kwargs)
            finally:
                acc[_label] += time.process_time() - start

        setattr(mod, name, timed)


def build_screen(args) -> mudata.MuData:
    """The screen with its technical fit: read from ``--input`` or simulated and fitted."""
    if args.input is not None:
        return mudata.read_h5mu(args.input)
    mdata = ds.datasets.simulate_many_targets(
        n_cells=args.cells, n_genes=args.genes, n_targets=args.targets, seed=args.seed
    )
    ds.tl.fit_technical(mdata, technical_key=None, progress=False, seed=args.seed)
    if args.save is not None:
        mdata.write(args.save)
    return mdata


def prefill(mdata: mudata.MuData, k: int, n_samples: int) -> None:
    """Store ``k`` fake cis results as a screen holds them after ``k`` targets."""
    rng = np.random.default_rng(0)
    n = mdata.n_obs
    for i in range(k):
        key = f"dream_cis_prefill{i}"
        for stat in ("mean", "sd", "q05", "q95", "q50"):
            mdata.obs[f"{key}_dose_{stat}"] = rng.random(n)
        mdata.obsm[f"{key}_dose_samples"] = np.full((n, n_samples), np.nan, dtype=np.float32)


def accuracy(mdata: mudata.MuData, target: str, key: str) -> dict[str, float]:
    """Errors of one target's cis fit against the simulator's truth."""
    truth = mdata.uns["truth"]
    guides = ds.get.cis_dosage(mdata, key=key)
    true_effect = truth["guides"]["log2_effect"]
    mine = guides.index[guides["target"] == target]
    effect_err = np.abs(guides.loc[mine, "log2_effect_mean"] - true_effect.loc[mine])
    col = list(truth["targets"]).index(target)
    change = mdata.obsm["true_log2_dose_change"][:, col]
    change = np.asarray(change.toarray() if hasattr(change, "toarray") else change).ravel()
    true_dose = truth["x_ntc"][target] * np.exp2(change)
    q50 = mdata.obs[f"{key}_dose_q50"].to_numpy()
    cells = (mdata.obs["target"].astype(str) == target).to_numpy() & np.isfinite(q50)
    return {
        "guide_err": float(effect_err.max()),
        "cell_err": float(np.median(np.abs(np.log2(q50[cells] / true_dose[cells])))),
        "cell_rho": spearman(q50[cells], true_dose[cells]),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--input", type=Path, default=None, help="screen with its technical fit")
    p.add_argument("--save", type=Path, default=None, help="write the built screen here")
    p.add_argument("--fit-targets", type=int, default=6, help="targets timed (the first ones)")
    p.add_argument("--control-cells", type=int, default=1000)
    p.add_argument("--n-steps", type=int, default=None, help="cis SVI steps (None: default)")
    p.add_argument(
        "--tolerance", type=float, default=None, help="fit_cis(tolerance=): stop on convergence"
    )
    p.add_argument("--prefill", type=int, default=0, help="fake earlier cis results stored")
    p.add_argument("--breakdown", action="store_true", help="CPU seconds per stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="CSV of the per-target rows")
    p.add_argument(
        "--target-batch",
        type=int,
        default=1,
        help="fit the targets' cis steps K at a time in one batched SVI (fit_screen(target_batch=K))",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    mdata = build_screen(args)
    n_samples = int(ds.settings.n_samples)
    prefill(mdata, args.prefill, n_samples)
    obs = mdata.obs
    control = (obs["target"].astype(str) == "ntc").to_numpy()
    controls = screen_controls(
        obs, control, None, args.control_cells, np.random.default_rng(args.seed)
    )
    targets = [str(t) for t in mdata.uns["truth"]["targets"]][: args.fit_targets]
    acc: dict[str, float] = defaultdict(float)
    if args.breakdown:
        time_stages(acc)
    rows = []
    size = max(1, args.target_batch)
    for first in range(0, len(targets), size):
        block = targets[first : first + size]
        calls = [
            {
                "cis_feature": target,
                "cis_target": target,
                "control_cells": controls,
                "seed": target_seed(args.seed, target),
                "n_steps": args.n_steps,
                "tolerance": args.tolerance,
                "key_added": f"dream_cis_{target}",
                "progress": False,
            }
            for target in block
        ]
        before = dict(acc)
        with PeakRSS() as mem:
            if size == 1:
                ds.tl.fit_cis(mdata, **calls[0])
            else:
                fit_cis_block(mdata, calls)
        for target in block:
            key = f"dream_cis_{target}"
            row = {
                "target": target,
                "cells": int(mdata.uns[key]["n_cells"]),
                "wall_s": mem.seconds / len(block),
                "cpu_s": mem.cpu_seconds / len(block),
                "peak_gb": mem.peak_gb,
                "steps_run": int(mdata.uns[key].get("n_steps_run", -1)),
                **accuracy(mdata, target, key),
            }
            row.update({f"{k}_s": (acc[k] - before.get(k, 0.0)) / len(block) for k in acc})
            rows.append(row)
    table = pd.DataFrame(rows).set_index("target")
    table.loc["mean"] = table.mean(numeric_only=True)
    load = os.getloadavg()[0]
    print(
        f"screen {mdata.n_obs} cells x {mdata['rna'].n_vars} genes, {args.control_cells} "
        f"controls, {args.threads} thread(s), prefill {args.prefill}, tolerance "
        f"{args.tolerance}, target batch {size}, load {load:.1f}"
    )
    print(markdown_table(table))
    if args.out is not None:
        table.to_csv(args.out)


if __name__ == "__main__":
    main()
