"""dream_sc against the naive guide-level fit on the same simulated screens.

Screens (``--screens``):

- ``a``: ``simulate_screen(n_cells=3000, n_genes=300)`` (10 guides per target, log2 dosage
  noise sd 0.3);
- ``b``: genome-scale design: 2 guides per target, per-cell log2 dosage noise sd 0.7;
- ``c``: null screen (``frac_responsive=0``), design of ``a``;
- ``d``: null screen with the design of ``b`` (not run by default).

Methods: ``dream_sc`` (default settings, ``--steps-*`` overrides), ``naive_true_tech`` (naive fit
with the simulator's true technical effects: an oracle correction) and ``naive_dream_tech``
(naive fit with dream_sc's fitted technical effects: what a user could actually do).
``naive_cell_counts`` is the per-cell naive dosage from the cell's own cis counts.

Metrics (cells and guides of the cis fit: NTC + cis-targeting; genes: all fitted but the target
genes):

- ``cell_dose_spearman`` / ``cell_dose_mdae``: Spearman and median ``|log2 error|`` of the
  per-cell dosage vs ``obs["true_dose"]`` (naive: the cell's guide dosage);
- ``guide_dose_spearman`` / ``guide_dose_mdae``: the same per guide vs the design dosage
  ``uns["truth"]["guides"]["dose"]``;
- ``curve_rel_err_est``: responsive genes, median over genes of the median over guides of
  ``|f_hat(d_hat_g) - f(d_hat_g)| / f(d_hat_g)`` (the fitted curve against the true curve, at
  the guide dosages the method estimated);
- ``curve_rel_err_true``: ``|f_hat(d_hat_g) - f(d_g)| / f(d_g)``: the predicted mean of guide g
  against its true mean at its true dosage (dosage errors count too);
- ``auroc``: responsive vs flat, scored by ``prob_dose_dependent`` (dream_sc) or ``-log10 p``
  (naive); ``auroc_score`` for dream_sc's ``score`` (|response| / sd);
- ``n_disc``, ``n_false``, ``fdr``, ``power`` at ``qvalue < --alpha``.

Usage::

    python benchmarks/compare_naive.py --seeds 0 --out benchmarks/compare_naive_results.md
    python benchmarks/compare_naive.py --quick --seeds 0 1
    python benchmarks/compare_naive.py --merge run1.csv run2.csv --out merged.md
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
from _metrics import (  # noqa: E402
    PeakRSS,
    auroc,
    discoveries,
    markdown_table,
    median_abs_log2_error,
    median_relative_error,
    power,
    spearman,
)
from naive_baseline import NaiveResult, naive_fit, technical_effects  # noqa: E402

import dream_sc as ds  # noqa: E402

SCREENS = {
    "a": {"label": "a: default (10 guides/target, dose sd 0.3)", "kwargs": {}},
    "b": {
        "label": "b: 2 guides/target, dose sd 0.7",
        "kwargs": {"guides_per_target": 2, "dose_noise": 0.7},
    },
    "c": {"label": "c: null (frac_responsive=0)", "kwargs": {"frac_responsive": 0.0}},
    "d": {
        "label": "d: null, 2 guides/target, dose sd 0.7",
        "kwargs": {"frac_responsive": 0.0, "guides_per_target": 2, "dose_noise": 0.7},
    },
}
METHODS = ("dream_sc", "naive_true_tech", "naive_dream_tech", "naive_cell_counts")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="dream_sc vs the naive guide-level fit.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--screens", nargs="+", default=["a", "b", "c"], choices=sorted(SCREENS))
    p.add_argument("--cells", type=int, default=None, help="default 3000 (1500 with --quick)")
    p.add_argument("--genes", type=int, default=None, help="default 300 (150 with --quick)")
    p.add_argument("--steps-technical", type=int, default=None)
    p.add_argument("--steps-cis", type=int, default=None)
    p.add_argument("--steps-trans", type=int, default=None)
    p.add_argument("--n-permutations", type=int, default=None, help="default: package default")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument(
        "--use-dose-mean",
        action="store_true",
        help="fit_trans(use_dose_mean=True): plug in the posterior mean dosage",
    )
    p.add_argument("--quick", action="store_true", help="smaller screens and fewer SVI steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the markdown report here")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="CSV",
        help="only summarise the metric CSVs of earlier runs (written next to --out)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.cells = args.cells or 1500
        args.genes = args.genes or 150
        args.steps_technical = args.steps_technical or 150
        args.steps_cis = args.steps_cis or 500
        args.steps_trans = args.steps_trans or 250
    args.cells = args.cells or 3000
    args.genes = args.genes or 300
    return args


def _steps(value: int | None) -> dict:
    return {} if value is None else {"n_steps": value}


# ----------------------------------------------------------------------------- fits
def run_dream(mdata, args: argparse.Namespace, seed: int) -> dict:
    """Three-step dream_sc fit in place; returns timing records per step."""
    cis = mdata.uns["truth"]["cis_feature"]
    timing = {}
    trans_kw = _steps(args.steps_trans)
    if args.n_permutations is not None:
        trans_kw["n_permutations"] = args.n_permutations
    if args.use_dose_mean:
        trans_kw["use_dose_mean"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with PeakRSS() as mem:
            ds.tl.fit_technical(mdata, seed=seed, **_steps(args.steps_technical))
        timing["technical"] = mem
        with PeakRSS() as mem:
            ds.tl.fit_cis(mdata, cis_feature=cis, seed=seed, **_steps(args.steps_cis))
        timing["cis"] = mem
        with PeakRSS() as mem:
            ds.tl.fit_trans(mdata, seed=seed, alpha=args.alpha, **trans_kw)
        timing["trans+test"] = mem
    return timing


def run_naive(mdata, source: str) -> NaiveResult:
    truth = mdata.uns["truth"]
    return naive_fit(
        mdata,
        cis_feature=truth["cis_feature"],
        technical=technical_effects(mdata, source=source),
        exclude=list(truth["targets"]),
    )


# ----------------------------------------------------------------------------- metrics
def _curve_errors(fitted: pd.DataFrame, at_est: pd.DataFrame, at_true: pd.DataFrame) -> tuple:
    """Median over genes of the per-gene median relative error over guides."""
    est = median_relative_error(fitted.to_numpy(), at_est.to_numpy(), axis=1)
    tru = median_relative_error(fitted.to_numpy(), at_true.to_numpy(), axis=1)
    return float(np.nanmedian(est)), float(np.nanmedian(tru))


def _true_at(mdata, genes, guide_dose: pd.Series) -> pd.DataFrame:
    curve = ds.datasets.true_curve(mdata, "rna", guide_dose.to_numpy())
    return pd.DataFrame(curve.loc[genes].to_numpy(), index=genes, columns=guide_dose.index)


def evaluate(mdata, naive: dict[str, NaiveResult], alpha: float) -> dict[str, dict[str, float]]:
    """All metrics of every method on one fitted screen."""
    truth = mdata.uns["truth"]
    rna = mdata["rna"]
    true_guides = truth["guides"]["dose"]
    res = ds.get.trans_results(mdata)
    genes = res.index[res["fitted"].to_numpy(bool)]
    genes = genes[~genes.isin(list(truth["targets"]))]
    responsive = rna.var.loc[genes, "true_responsive"].to_numpy(bool)
    resp_genes = genes[responsive]
    has_signal = responsive.any()
    out: dict[str, dict[str, float]] = {m: {} for m in METHODS}

    # dosage -----------------------------------------------------------------
    cells = next(iter(naive.values())).cells.index
    true_cell = mdata.obs.loc[cells, "true_dose"].to_numpy()
    per_cell = {
        "dream_sc": mdata.obs.loc[cells, "dream_cis_dose_mean"].to_numpy(),
        "naive_true_tech": naive["true"].cells["dose_guide"].to_numpy(),
        "naive_dream_tech": naive["dream"].cells["dose_guide"].to_numpy(),
        "naive_cell_counts": naive["dream"].cells["dose_cell"].to_numpy(),
    }
    for m, est in per_cell.items():
        out[m]["cell_dose_spearman"] = spearman(est, true_cell)
        out[m]["cell_dose_mdae"] = median_abs_log2_error(est, true_cell)
    dream_guides = ds.get.cis_dosage(mdata)["dose_mean"]
    guide_est = {
        "dream_sc": dream_guides,
        "naive_true_tech": naive["true"].guides["dose"],
        "naive_dream_tech": naive["dream"].guides["dose"],
    }
    for m, est in guide_est.items():
        tru = true_guides.reindex(est.index).to_numpy()
        out[m]["guide_dose_spearman"] = spearman(est.to_numpy(), tru)
        out[m]["guide_dose_mdae"] = median_abs_log2_error(est.to_numpy(), tru)

    # curves (responsive genes) ----------------------------------------------
    if has_signal:
        d_hat = dream_guides.sort_index()
        long = ds.get.trans_curves(mdata, dose=d_hat.to_numpy(), features=list(resp_genes))
        fitted = long.pivot_table(index="feature", columns="dose", values="mean", sort=False)
        fitted = fitted.loc[resp_genes, d_hat.to_numpy()]
        at_est = _true_at(mdata, resp_genes, d_hat)
        at_true = _true_at(mdata, resp_genes, true_guides.reindex(d_hat.index))
        (out["dream_sc"]["curve_rel_err_est"], out["dream_sc"]["curve_rel_err_true"]) = (
            _curve_errors(fitted, at_est, at_true)
        )
        for m, key in (("naive_true_tech", "true"), ("naive_dream_tech", "dream")):
            d_hat = naive[key].guides["dose"].sort_index()
            curve = naive[key].curve(d_hat.to_numpy()).loc[resp_genes]
            fitted = pd.DataFrame(curve.to_numpy(), index=resp_genes, columns=d_hat.index)
            at_est = _true_at(mdata, resp_genes, d_hat)
            at_true = _true_at(mdata, resp_genes, true_guides.reindex(d_hat.index))
            out[m]["curve_rel_err_est"], out[m]["curve_rel_err_true"] = _curve_errors(
                fitted, at_est, at_true
            )

    # detection ----------------------------------------------------------------
    labels = responsive
    dream_res = res.loc[genes]
    scores = {
        "dream_sc": dream_res["prob_dose_dependent"].to_numpy(dtype=float),
        "naive_true_tech": -np.log10(naive["true"].genes.loc[genes, "pvalue"].to_numpy()),
        "naive_dream_tech": -np.log10(naive["dream"].genes.loc[genes, "pvalue"].to_numpy()),
    }
    qvals = {
        "dream_sc": dream_res["qvalue"].to_numpy(dtype=float),
        "naive_true_tech": naive["true"].genes.loc[genes, "qvalue"].to_numpy(),
        "naive_dream_tech": naive["dream"].genes.loc[genes, "qvalue"].to_numpy(),
    }
    for m in scores:
        if has_signal:
            out[m]["auroc"] = auroc(labels, scores[m])
        n, false, fdp = discoveries(qvals[m], labels, alpha=alpha)
        out[m]["n_disc"] = n
        out[m]["n_false"] = false
        if has_signal:
            out[m]["fdr"] = fdp
            out[m]["power"] = power(qvals[m], labels, alpha=alpha)
    if has_signal:
        out["dream_sc"]["auroc_score"] = auroc(labels, dream_res["score"].to_numpy(dtype=float))
    out["dream_sc"]["n_genes"] = len(genes)
    out["dream_sc"]["n_responsive"] = int(labels.sum())
    return out


# ----------------------------------------------------------------------------- driver
def one_screen(name: str, seed: int, args: argparse.Namespace) -> tuple[pd.DataFrame, dict]:
    spec = SCREENS[name]
    mdata = ds.datasets.simulate_screen(
        n_cells=args.cells,
        n_genes=args.genes,
        n_junctions=0,
        n_isoform_genes=0,
        seed=seed,
        **spec["kwargs"],
    )
    timing = run_dream(mdata, args, seed)
    t0 = time.perf_counter()
    naive = {src: run_naive(mdata, src) for src in ("true", "dream")}
    naive_seconds = (time.perf_counter() - t0) / 2
    metrics = evaluate(mdata, naive, args.alpha)
    rows = [
        {"screen": name, "seed": seed, "method": m, "metric": k, "value": v}
        for m, d in metrics.items()
        for k, v in d.items()
    ]
    info = {
        "screen": name,
        "seed": seed,
        **{f"{k}_s": v.seconds for k, v in timing.items()},
        **{f"{k}_cpu_s": v.cpu_seconds for k, v in timing.items()},
        "dream_peak_rss_gb": max(v.peak_gb for v in timing.values()),
        "naive_s": naive_seconds,
        "load_start": timing["technical"].load[0],
        "load_end": timing["trans+test"].load[1],
        "converged": "/".join(
            str(bool(x))[0]
            for x in (
                mdata["rna"].uns["dream_technical"]["converged"],
                mdata.uns["dream_cis"]["converged"],
                mdata["rna"].uns["dream_trans"]["converged"],
            )
        ),
    }
    return pd.DataFrame(rows), info


METRIC_ORDER = [
    "cell_dose_spearman",
    "cell_dose_mdae",
    "guide_dose_spearman",
    "guide_dose_mdae",
    "curve_rel_err_est",
    "curve_rel_err_true",
    "auroc",
    "auroc_score",
    "n_disc",
    "n_false",
    "fdr",
    "power",
    "n_genes",
    "n_responsive",
]


def summarise(long: pd.DataFrame, *, spread: bool = False) -> dict[str, pd.DataFrame]:
    """One metrics x methods table per screen: mean over seeds (``spread``: "mean [min, max]")."""
    tables = {}
    for name, sub in long.groupby("screen", sort=False):
        wide = sub.pivot_table(index="metric", columns="method", values="value", aggfunc="mean")
        order = [m for m in METRIC_ORDER if m in wide.index]
        cols = [m for m in METHODS if m in wide.columns]
        wide = wide.reindex(index=order, columns=cols)
        if spread and sub["seed"].nunique() > 1:
            lo = sub.pivot_table(index="metric", columns="method", values="value", aggfunc="min")
            hi = sub.pivot_table(index="metric", columns="method", values="value", aggfunc="max")
            lo, hi = lo.reindex(index=order, columns=cols), hi.reindex(index=order, columns=cols)
            wide = wide.astype(object)
            for r in order:
                for c in cols:
                    m, a, b = wide.loc[r, c], lo.loc[r, c], hi.loc[r, c]
                    if np.isfinite(m):
                        wide.loc[r, c] = f"{m:.3g} [{a:.3g}, {b:.3g}]" if a != b else f"{m:.3g}"
                    else:
                        wide.loc[r, c] = "nan"
        wide.index.name = "metric"
        tables[name] = wide
    return tables


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ds.settings.progress_bar = False
    if args.merge:
        merged(args)
        return
    parts, infos = [], []
    for name in args.screens:
        for seed in args.seeds:
            print(f"== screen {name}, seed {seed} (load {os.getloadavg()[0]:.2f})", flush=True)
            frame, info = one_screen(name, seed, args)
            parts.append(frame)
            infos.append(info)
            print(pd.Series(info).to_string(), flush=True)
            md = report(args, pd.concat(parts, ignore_index=True), infos)
            if args.out:  # rewritten after every screen: a killed run keeps what it finished
                Path(args.out).write_text(md)
                out = Path(args.out)
                pd.concat(parts).to_csv(out.with_suffix(".csv"), index=False)
                pd.DataFrame(infos).to_csv(out.with_name(out.stem + "_runs.csv"), index=False)
    print()
    print(md)


def merged(args: argparse.Namespace) -> None:
    """Summarise metric CSVs of several runs (e.g. screens run in parallel processes)."""
    long = pd.concat([pd.read_csv(f) for f in args.merge], ignore_index=True)
    long = long.drop_duplicates(["screen", "seed", "method", "metric"], keep="last")
    order = {k: i for i, k in enumerate(sorted(SCREENS))}
    long = long.sort_values("screen", key=lambda s: s.map(order), kind="stable")
    seeds = sorted(long["seed"].unique())
    lines = [
        "# dream_sc vs naive guide-level fit (merged runs)",
        "",
        f"Seeds {seeds}; mean over seeds, [min, max] when they differ. `mdae` = median |log2 "
        "error|.",
        "",
    ]
    for name, table in summarise(long, spread=True).items():
        n = long.loc[long["screen"] == name, "seed"].nunique()
        lines += [f"## Screen {SCREENS[name]['label']} ({n} seeds)", "", markdown_table(table), ""]
    md = "\n".join(lines)
    print(md)
    if args.out:
        Path(args.out).write_text(md)


def report(args: argparse.Namespace, long: pd.DataFrame, infos: list[dict]) -> str:
    """Markdown report of the screens finished so far."""
    tables = summarise(long)
    lines = [
        "# dream_sc vs naive guide-level fit",
        "",
        f"{args.cells} cells x {args.genes} genes; seeds {args.seeds}; steps technical/cis/trans "
        f"{args.steps_technical or 'default'}/{args.steps_cis or 'default'}/"
        f"{args.steps_trans or 'default'}; use_dose_mean {args.use_dose_mean}; alpha "
        f"{args.alpha}; torch threads "
        f"{torch.get_num_threads()}. Values are means over seeds. `mdae` = median |log2 error|.",
        "",
    ]
    for name, table in tables.items():
        lines += [f"## Screen {SCREENS[name]['label']}", "", markdown_table(table), ""]
    run_info = pd.DataFrame(infos).set_index(["screen", "seed"])
    run_info.index = [f"{s}/{d}" for s, d in run_info.index]
    run_info.index.name = "screen/seed"
    lines += [
        "## Run time (wall seconds; load = 1-min load average at start/end)",
        "",
        markdown_table(run_info),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
