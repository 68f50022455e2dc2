"""Realised FDR and power of ``qvalue`` with size factors estimated from the counts (issue 28).

Simulates a screen (default: CRISPRi line + CRISPRa line, 2 guides per line, 4,000 cells x
300 genes, 25% responsive), computes size factors as a user would with every method of
:func:`dream_sc.pp.sum_factors` (and, for reference only, the simulator's generating capture
efficiency ``obs["true_size_factor"]``), runs the pipeline with each and scores the calls at
``qvalue < 0.1`` against the truth. Also prints the shared shift the score test removed
(``uns["dream_trans"]["shared_shift"]``) and ``tl.calibration_check`` on the fit.

Usage::

    python benchmarks/bench_size_factors.py --methods true library deconvolution dose_aware
    python benchmarks/bench_size_factors.py --frac-responsive 0 --seeds 0 1 2
    python benchmarks/bench_size_factors.py --cells 20000 --genes 2000 --methods dose_aware
    python benchmarks/bench_size_factors.py --design one_line --cells 4000 --genes 8000 \\
        --frac-responsive 0.01
    # --no-shift: score test without the shared-shift correction (the previous behaviour)
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import pandas as pd

import dream_sc as ds

DESIGNS = {
    "two_line": {"guide_design": "line_specific", "guides_per_target": 2, "dose_noise": 0.7},
    "one_line": {"guides_per_target": 4},
}


def simulate(args: argparse.Namespace, seed: int):
    return ds.datasets.simulate_screen(
        n_cells=args.cells,
        n_genes=args.genes,
        n_junctions=0,
        n_isoform_genes=0,
        frac_responsive=args.frac_responsive,
        seed=seed,
        **DESIGNS[args.design],
    )


def run(mdata, method: str, args: argparse.Namespace, seed: int) -> dict:
    key = f"sf_{method}"
    start = time.perf_counter()
    if method == "true":
        truth = "true_size_factor" if "true_size_factor" in mdata.obs else "sum_factor"
        mdata.obs[key] = mdata.obs[truth].to_numpy()
    else:
        ds.pp.sum_factors(mdata, key_added=key, method=method, technical_key="cell_line")
    sf_seconds = time.perf_counter() - start
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        common = {"sum_factor_key": key, "seed": seed, "progress": False}
        ds.tl.fit_technical(mdata, n_steps=args.steps_technical, **common)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=args.steps_cis, **common)
        start = time.perf_counter()
        ds.tl.fit_trans(
            mdata,
            function="single_hill",
            n_steps=args.steps_trans,
            refine_intervals=False,
            test=False,
            **common,
        )
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ds.tl.test_trans(mdata)
        test_seconds = time.perf_counter() - start
        check = ds.tl.calibration_check(mdata, n_null_screens=3)
    res = ds.get.trans_results(mdata)
    res = res[res["fitted"]]
    truth = mdata["rna"].var.loc[res.index, "true_responsive"].to_numpy(bool)
    called = res["qvalue"].to_numpy() < 0.1
    record = mdata["rna"].uns["dream_trans"]
    shift = record.get("shared_shift", {})
    false = called & ~truth
    return {
        "method": method,
        "seed": seed,
        "n_true": int(truth.sum()),
        "calls": int(called.sum()),
        "false": int(false.sum()),
        "fdr": float(false.sum() / max(called.sum(), 1)),
        "power": float((called & truth).sum() / max(truth.sum(), 1)),
        "false_median_abs_lfc": float(np.median(np.abs(res.loc[false, "response_mean"])))
        if false.any()
        else np.nan,
        "flat_median_lfc": float(np.median(res.loc[~truth, "response_mean"])),
        "shift_log2": float(shift.get("log2_change", np.nan)) if shift else np.nan,
        "check_false": int(check["n_false_discoveries"].sum()),
        "warned": sum("shift" in str(w.message) for w in caught),
        "sf_s": sf_seconds,
        "fit_s": fit_seconds,
        "test_s": test_seconds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--design", choices=sorted(DESIGNS), default="two_line")
    p.add_argument("--cells", type=int, default=4000)
    p.add_argument("--genes", type=int, default=300)
    p.add_argument("--frac-responsive", type=float, default=0.25)
    p.add_argument(
        "--methods", nargs="+", default=["true", "library", "deconvolution", "dose_aware"]
    )
    p.add_argument("--steps-technical", type=int, default=100)
    p.add_argument("--steps-cis", type=int, default=200)
    p.add_argument("--steps-trans", type=int, default=50)
    p.add_argument("--no-shift", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    ds.settings.progress_bar = False
    if args.no_shift:
        from dream_sc.tl import _null

        _null.SHARED_SHIFT_DISTRIBUTIONS = ()
    rows = []
    for seed in args.seeds:
        mdata = simulate(args, seed)
        for method in args.methods:
            rows.append(run(mdata, method, args, seed))
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
