"""Wall time per step and per target of ``tl.fit_screen`` on the bundled example screen.

Runs ``ds.tl.fit_screen`` on ``ds.datasets.example()`` (2,600 cells x 500 genes, targets GFI1B,
GEMIN5, DDX6 + NTC) and prints

- a table of exclusive wall seconds per target and sub-step: the technical fit; the cis SVI
  (``fit_cis_model``) and the per-cell dosage draws; the trans SVI, its summaries, the
  interval refinement and the permutation-null refits (their SVI and summaries);
- peak RSS, CPU time and the 1-minute load average (the machine may be shared);
- accuracy against the simulator's truth: per-guide dosage error (all targets), and for
  GFI1B (the only target the simulated features respond to) AUROC, power and realised FDR;
  GEMIN5 and DDX6 are null screens, so every call there is false. Counts are given for the
  per-target and the screen-wide q-values (``ds.get.screen_results``).

The sub-step split wraps package internals (``TransJob.fit``, ``refined_columns``,
``null_fits``, ``fit_cis_model``) for timing only; pieces that are not found are not split.

Target (issue 17): <= 30 s for the 3-target screen with significance.

Usage::

    python benchmarks/bench_screen.py                       # fit_screen defaults
    python benchmarks/bench_screen.py --steps 200 200 300   # technical cis trans
    python benchmarks/bench_screen.py --no-refine --permutations 1
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _metrics import PeakRSS, auroc, discoveries, markdown_table, power  # noqa: E402

import dream_sc as ds  # noqa: E402


class StepTimer:
    """Exclusive wall and CPU seconds per (target, label) of nested timed calls."""

    def __init__(self) -> None:
        self.table: dict[tuple[str, str], float] = defaultdict(float)
        self.cpu: dict[tuple[str, str], float] = defaultdict(float)
        self.stack: list[list] = []
        self.target = "(screen)"

    def wrap(self, func, label, inner_label=None):
        @functools.wraps(func)
        def timed(*args, **kwargs):
            name = label
            if inner_label and any(f[0] == "trans.null" for f in self.stack):
                name = inner_label
            frame = [name, time.perf_counter(), 0.0, time.process_time(), 0.0]
            self.stack.append(frame)
            try:
                return func(*args, **kwargs)
            finally:
                self.stack.pop()
                elapsed = time.perf_counter() - frame[1]
                cpu = time.process_time() - frame[3]
                self.table[(self.target, name)] += elapsed - frame[2]
                self.cpu[(self.target, name)] += cpu - frame[4]
                if self.stack:
                    self.stack[-1][2] += elapsed
                    self.stack[-1][4] += cpu

        return timed

    def frame(self, cpu: bool = False) -> pd.DataFrame:
        """Targets x labels, with row and column totals."""
        out = pd.Series(self.cpu if cpu else self.table).unstack(fill_value=0.0)
        out.index.name = "target"
        out["total"] = out.sum(axis=1)
        out.loc["all"] = out.sum(axis=0)
        return out


def instrument(timer: StepTimer) -> None:
    """Wrap the pipeline pieces (where present) with the timer."""
    from dream_sc.tl import _cis, _screen, _trans, _trans_job

    def patch(module, name, label, inner=None):
        if hasattr(module, name):
            setattr(module, name, timer.wrap(getattr(module, name), label, inner))

    patch(_screen, "fit_technical", "technical")
    patch(_screen, "fit_cis", "cis.other")
    patch(_screen, "fit_trans", "trans.other")
    patch(_cis, "fit_cis_model", "cis.svi")
    patch(_cis, "cell_dosage_draws", "cis.cell_draws")
    patch(_trans, "refined_columns", "trans.refine")
    patch(_trans, "null_fits", "trans.null")
    job = getattr(_trans_job, "TransJob", None)
    if job is not None:
        patch(job, "fit", "trans.svi", "null.svi")
        patch(job, "summarise", "trans.summarise", "null.summarise")
    original = _screen._fit_target

    @functools.wraps(original)
    def per_target(*args, **kwargs):
        timer.target = kwargs["target"]
        try:
            return original(*args, **kwargs)
        finally:
            timer.target = "(screen)"

    _screen._fit_target = per_target


def accuracy(mdata, screen: pd.DataFrame, alpha: float) -> pd.DataFrame:
    truth = mdata.uns["truth"]
    guides = truth["guides"]
    primary = str(truth["cis_feature"])
    responsive = mdata["rna"].var["true_responsive"].astype(bool)
    rows = {}
    for target in mdata.uns["dream_screen"]["targets"]:
        est = ds.get.cis_dosage(mdata, key=f"dream_cis_{target}")
        own = est.index[est["target"] == target]
        err = np.abs(
            np.log2(est.loc[own, "dose_mean"].to_numpy())
            - np.log2(guides.loc[own, "dose"].to_numpy())
        )
        part = screen[(screen["target"] == target) & screen["fitted"]].set_index("feature")
        labels = (
            responsive.loc[part.index].to_numpy()
            if target == primary
            else np.zeros(len(part), bool)
        )
        coverage = float("nan")
        if target == primary:
            var = mdata["rna"].var.loc[part.index]
            lo, hi = mdata.uns[f"dream_cis_{target}"]["dose_range"]
            clear = (
                part["significant"].to_numpy()
                & labels
                & (var["true_function"] == "single_hill").to_numpy()
                & var["true_K1"].between(lo, hi).to_numpy()
            )
            k = var["true_K1"].to_numpy()[clear]
            inside = (part["ec50_q05"].to_numpy()[clear] <= k) & (
                k <= part["ec50_q95"].to_numpy()[clear]
            )
            coverage = f"{int(inside.sum())}/{int(clear.sum())}"
        n_t, false_t, _ = discoveries(part["qvalue_target"], labels, alpha=alpha)
        n_s, false_s, _ = discoveries(part["qvalue"], labels, alpha=alpha)
        rows[target] = {
            "guide_dose_abs_log2_err": float(np.median(err)),
            "auroc": auroc(labels, part["score"]) if target == primary else float("nan"),
            "power": power(part["qvalue"], labels, alpha=alpha)
            if target == primary
            else float("nan"),
            "ec50_90%_coverage": coverage,
            "calls_target_q": n_t,
            "false_target_q": false_t,
            "calls_screen_q": n_s,
            "false_screen_q": false_s,
        }
    return pd.DataFrame(rows).T.rename_axis("target")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time per step and target of tl.fit_screen.")
    p.add_argument(
        "--steps",
        type=int,
        nargs=3,
        default=None,
        metavar=("TECHNICAL", "CIS", "TRANS"),
        help="SVI steps per fit (default: fit_screen's defaults)",
    )
    p.add_argument("--lr", type=float, nargs=3, default=None, metavar=("TECH", "CIS", "TRANS"))
    p.add_argument("--permutations", type=int, default=None, help="null refits per target")
    p.add_argument("--no-refine", action="store_true", help="skip the interval refinement")
    p.add_argument("--targets", nargs="+", default=None, help="subset of targets (default all)")
    p.add_argument("--function", default="additive_hill")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--simulate",
        type=int,
        nargs=4,
        default=None,
        metavar=("CELLS", "GENES", "TARGETS", "GUIDES"),
        help="a simulated screen instead of the example (guides per target; 25%% NTC cells)",
    )
    p.add_argument("--depth", type=float, default=1.0, help="simulate_screen depth (--simulate)")
    p.add_argument(
        "--n-jobs",
        type=int,
        default=1,
        help="fit_screen(n_jobs=): targets in worker processes (sub-steps then not split)",
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ds.settings.progress_bar = False
    warnings.simplefilter("ignore")
    if args.simulate is None:
        mdata = ds.datasets.example()
    else:
        cells, genes, targets, guides = args.simulate
        mdata = ds.datasets.simulate_screen(
            n_cells=cells,
            n_genes=genes,
            n_junctions=0,
            n_isoform_genes=0,
            n_targets=targets,
            guides_per_target=guides,
            depth=args.depth,
            seed=args.seed,
        )
        rna = mdata["rna"]
        print(
            f"simulated: {mdata.n_obs} cells x {rna.n_vars} genes, {targets} targets x {guides} "
            f"guides, {rna.X.nnz / np.prod(rna.shape):.1%} non-zero",
            flush=True,
        )
    timer = StepTimer()
    if args.n_jobs == 1:  # the wrapped pieces cannot be sent to worker processes
        instrument(timer)
    trans_kwargs = {}
    if args.permutations is not None:
        trans_kwargs["n_permutations"] = args.permutations
    if args.no_refine:
        trans_kwargs["refine_intervals"] = False
    kwargs = {}
    if args.steps is not None:
        kwargs["n_steps"] = dict(zip(("technical", "cis", "trans"), args.steps, strict=True))
    if args.lr is not None:
        kwargs["technical_kwargs"] = {"lr": args.lr[0]}
        kwargs["cis_kwargs"] = {"lr": args.lr[1]}
        trans_kwargs["lr"] = args.lr[2]
    with PeakRSS() as mem:
        ds.tl.fit_screen(
            mdata,
            modality="rna",
            function=args.function,
            targets=args.targets,
            seed=args.seed,
            trans_kwargs=trans_kwargs,
            progress=False,
            n_jobs=args.n_jobs,
            **kwargs,
        )
    screen = ds.get.screen_results(mdata, modality="rna", alpha=args.alpha)
    print(f"settings: {vars(args)}")
    print(
        f"\nexclusive wall seconds per target and sub-step (fit_screen total {mem.seconds:.1f} s)"
    )
    if args.n_jobs == 1:
        print(markdown_table(timer.frame(), floatfmt=".1f"))
        print("\nexclusive CPU seconds (process time, all threads; less sensitive to other load)")
        print(markdown_table(timer.frame(cpu=True), floatfmt=".1f"))
    print(
        f"\npeak RSS {mem.peak_gb:.2f} GB (start {mem.start_gb:.2f} GB), CPU {mem.cpu_seconds:.0f} s,"
        f" load average {mem.load[0]:.1f} -> {mem.load[1]:.1f}"
    )
    print("\nfit_screen record (seconds per target):")
    print(markdown_table(mdata.uns["dream_screen"]["timings"], floatfmt=".1f"))
    print(f"\naccuracy (q < {args.alpha}; every target but the first is a null target):")
    print(markdown_table(accuracy(mdata, screen, args.alpha), floatfmt=".3g"))


if __name__ == "__main__":
    main()
