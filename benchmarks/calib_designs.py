"""Stage one with and without sparsity-matched nulls on the existing significance designs.

For each seed: ``simulate_screen`` with the design of ``significance_designs.py`` (two-line
CRISPRi + CRISPRa with 2 guides per line by default; ``--null-screen`` for no responsive
features), the technical and cis fits, a short trans fit (the score test does not depend on
the curves), then ``tl.test_trans`` twice on the same fit: with the pooled null of every
feature (``STRATIFIED_NULL_DISTRIBUTIONS = ()``, the null before
:func:`dream_sc.tl._null.sparsity_matched`) and with it. Prints calls, false calls, power and
realised FDR at ``qvalue < 0.1`` of both, and for null screens whether any call was made.
With fewer than 400 features there is a single stratum and both are identical.

Usage::

    python benchmarks/calib_designs.py --genes 1000 --seeds 0 1 2
    python benchmarks/calib_designs.py --genes 1000 --null-screen --seeds 0 1 2 3 4
    python benchmarks/calib_designs.py --genes 1000 --seeds 0 1 2 --screen-test
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _metrics import markdown_table  # noqa: E402
from significance_designs import DESIGNS  # noqa: E402

import dream_sc as ds  # noqa: E402
from dream_sc.tl import _null  # noqa: E402
from dream_sc.tl._test_cells import SCREEN_TEST  # noqa: E402


def calls(mdata, truth: np.ndarray, alpha: float, key: str = "dream_trans") -> dict:
    """Calls, false calls, power and realised FDR of the stored q-values."""
    res = ds.get.trans_results(mdata, key=key)
    fitted = res["fitted"].to_numpy(bool)
    called = res["qvalue"].to_numpy()[fitted] < alpha
    true = truth[fitted]
    return {
        "calls": int(called.sum()),
        "false": int((called & ~true).sum()),
        "power": float((called & true).sum() / max(true.sum(), 1)),
        "fdr": float((called & ~true).sum() / max(called.sum(), 1)),
    }


def run(args, seed: int) -> list[dict]:
    mdata = ds.datasets.simulate_screen(
        n_cells=args.cells,
        n_genes=args.genes,
        n_junctions=0,
        n_isoform_genes=0,
        frac_responsive=0.0 if args.null_screen else args.frac_responsive,
        seed=seed,
        **DESIGNS[args.design],
    )
    truth = mdata["rna"].var["true_responsive"].to_numpy(bool)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, seed=seed, n_steps=args.steps[0], progress=False)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=seed, n_steps=args.steps[1])
        if args.screen_test:  # fit_trans's default test against fit_screen's (low MOI)
            for name, options in (("cell, quadratic", {}), ("guide, combined", SCREEN_TEST)):
                key = "t_" + name.split(",")[0]
                ds.tl.fit_trans(
                    mdata, seed=seed, n_steps=args.steps[2], progress=False, key_added=key,
                    alpha=args.alpha, **options,
                )  # fmt: skip
                row = calls(mdata, truth, args.alpha, key)
                rows.append({"seed": seed, "null": name, **row})
            return rows
        ds.tl.fit_trans(mdata, seed=seed, test=False, n_steps=args.steps[2], progress=False)
        for name, dists in (("pooled null", ()), ("sparsity-matched", ("negbinom",))):
            _null.STRATIFIED_NULL_DISTRIBUTIONS = dists
            ds.tl.test_trans(mdata, alpha=args.alpha)
            rows.append({"seed": seed, "null": name, **calls(mdata, truth, args.alpha)})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--design", choices=sorted(DESIGNS), default="two_line")
    p.add_argument("--cells", type=int, default=4000)
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--frac-responsive", type=float, default=0.25)
    p.add_argument("--null-screen", action="store_true")
    p.add_argument("--steps", type=int, nargs=3, default=(300, 400, 50))
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--screen-test",
        action="store_true",
        help="compare fit_trans's default test with fit_screen's low-MOI test (guide "
        "dosages, all controls, combined statistic) instead of the two nulls",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for seed in args.seeds:
        rows += run(args, seed)
        print(markdown_table(pd.DataFrame(rows[-2:]).set_index("null")), flush=True)
    frame = pd.DataFrame(rows)
    total = frame.groupby("null")[["calls", "false"]].sum()
    total["fdr (pooled over seeds)"] = total["false"] / total["calls"].clip(lower=1)
    total["power (mean)"] = frame.groupby("null")["power"].mean()
    total["seeds with any call"] = frame.assign(any=frame["calls"] > 0).groupby("null")["any"].sum()
    print(
        f"\n{args.design}, {args.cells} cells x {args.genes} genes, seeds {args.seeds}, "
        f"null screen {args.null_screen}, load {os.getloadavg()[0]:.2f}"
    )
    print(markdown_table(total))


if __name__ == "__main__":
    main()
