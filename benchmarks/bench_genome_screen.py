"""A many-target screen end to end: time, peak memory and calls scored against the truth.

Simulates a screen with :func:`dream_sc.datasets.simulate_many_targets` (every target has its
own responsive genes; a fifth of the targets none, a tenth ten times more), runs
``tl.fit_screen`` on it and prints

- wall seconds of the whole screen, per target (cis and trans) and of the technical fit,
  peak RSS and the 1-minute load average (the machine may be shared);
- screen-wide realised FDR, false calls on the no-effect targets, power and AUROC over all
  (target, gene) pairs, for every q-value column ``get.screen_results`` offers
  (``qvalue`` = pooled target-decoy; hierarchical columns when present);
  and ``power_at_fdr``: the power of the best cut of the ranking whose realised FDR is at most
  ``--alpha`` (an oracle cut: it compares rankings where a method's own q-values are off);
- the same for a per-target Wilcoxon rank-sum test (the target's cells against the control
  cells on size-factor-normalised counts, Benjamini-Hochberg over all pairs), computed here;
- optionally pysceptre (``--sceptre``; needs ``pip install pysceptre``; benchmark only).

Usage::

    python benchmarks/bench_genome_screen.py --cells 5000 --genes 500 --targets 10
    python benchmarks/bench_genome_screen.py --cells 100000 --genes 8000 --targets 500 \\
        --steps 100 100 100 --out genome.md    # the issue-26 target size
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
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _metrics import PeakRSS, auroc, markdown_table, power_at_fdr, pvalue_ranking  # noqa: E402

import dream_sc as ds  # noqa: E402


def truth_labels(mdata, table: pd.DataFrame) -> np.ndarray:
    """True for the (target, feature) rows of ``table`` that the simulator made responsive."""
    pairs = mdata.uns["truth"]["pairs"]
    responsive = set(zip(pairs["target"], pairs["feature"], strict=True))
    return np.array(
        [(t, f) in responsive for t, f in zip(table["target"], table["feature"], strict=True)]
    )


def score_calls(called: np.ndarray, labels: np.ndarray, null_target: np.ndarray) -> dict:
    """Realised FDR, power and false calls on no-effect targets of a boolean call vector."""
    n_called = int(called.sum())
    false = int((called & ~labels).sum())
    return {
        "calls": n_called,
        "realised_fdr": false / max(n_called, 1),
        "power": float((called & labels).sum() / max(labels.sum(), 1)),
        "false_on_null_targets": int((called & null_target).sum()),
    }


def wilcoxon_screen(mdata, targets: list[str], features: list[str]) -> pd.DataFrame:
    """Per-target rank-sum test of normalised counts, target cells vs control cells."""
    rna = mdata["rna"]
    x = rna[:, features].X.tocsc()
    sf = mdata.obs["sum_factor"].to_numpy()
    target = mdata.obs["target"].to_numpy()
    control = target == mdata.uns["truth"]["control_label"]
    rows = []
    for t in targets:
        own = target == t
        cells = own | control
        block = (x[cells].toarray() / sf[cells, None]).astype(np.float64)
        res = stats.mannwhitneyu(block[own[cells]], block[~own[cells]], axis=0)
        rows.append(pd.DataFrame({"target": t, "feature": features, "pvalue": res.pvalue}))
    table = pd.concat(rows, ignore_index=True)
    p = table["pvalue"].fillna(1.0).to_numpy()
    table["qvalue"] = stats.false_discovery_control(p, method="bh")
    table["score"] = -np.log10(np.maximum(p, 1e-300))
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=5000)
    p.add_argument("--genes", type=int, default=500)
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--moi", choices=["low", "high"], default="low")
    p.add_argument("--steps", type=int, nargs=3, default=None, metavar=("TECH", "CIS", "TRANS"))
    p.add_argument("--permutations", type=int, default=None)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sceptre", action="store_true")
    p.add_argument("--control-cells", type=int, default=None, help="fit_screen(control_cells=)")
    p.add_argument(
        "--curves", choices=["all", "discoveries"], default="all", help="fit_screen(curves=)"
    )
    p.add_argument("--n-jobs", type=int, default=1, help="fit_screen(n_jobs=): worker processes")
    p.add_argument(
        "--target-batch", type=int, default=1, help="fit_screen(target_batch=): batched cis fits"
    )
    p.add_argument(
        "--fit-targets",
        type=int,
        default=None,
        help="fit a random subset of this many targets (the screen keeps all of them) and "
        "extrapolate the time of the whole screen",
    )
    p.add_argument(
        "--dask-workers",
        type=int,
        default=0,
        help="fit_screen(backend='dask') on a LocalCluster of this many 1-thread workers",
    )
    p.add_argument(
        "--skip-peers",
        action="store_true",
        help="score dream_sc only (the Wilcoxon test takes ~10 s per target at full size)",
    )
    p.add_argument(
        "--max-memory-gb",
        type=float,
        default=None,
        help="ds.settings.max_memory_gb: the budget fit_screen checks its results against "
        "(default: the memory available when it starts, after the simulation)",
    )
    p.add_argument(
        "--guides-per-cell", type=float, default=8.0, help="mean guides per cell at high MOI"
    )
    p.add_argument(
        "--true-size-factors",
        action="store_true",
        help="fit and normalise with the generating size factors (isolates composition)",
    )
    p.add_argument("--sceptre-jobs", type=int, default=1, help="pysceptre n_jobs")
    p.add_argument(
        "--sceptre-targets",
        type=int,
        default=None,
        help="run pysceptre on a random subset of this many fitted targets and score every "
        "method on that subset's pairs as well (pysceptre's cost grows with the pairs)",
    )
    p.add_argument(
        "--save", type=Path, default=None, help="directory for the per-pair tables (CSV)"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.max_memory_gb is not None:
        ds.settings.max_memory_gb = args.max_memory_gb
    if args.n_jobs > 1 or args.dask_workers:
        ds.settings.torch_threads = 1  # one thread per target fit, one fit per core
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    load = os.getloadavg()[0]
    peak = PeakRSS(interval=0.5, tree=True)
    with peak:
        t0 = time.perf_counter()
        mdata = ds.datasets.simulate_many_targets(
            n_cells=args.cells,
            n_genes=args.genes,
            n_targets=args.targets,
            moi=args.moi,
            seed=args.seed,
            guides_per_cell=args.guides_per_cell,
        )
        if args.true_size_factors:
            mdata.obs["sum_factor"] = mdata.obs["true_size_factor"].to_numpy()
        design_kw = {}
        if args.moi == "high":  # the assignment table and the guide map (complement design)
            design_kw["guide_targets"] = mdata.uns["truth"]["guide_targets"]
        simulate_seconds = time.perf_counter() - t0
        steps = None
        if args.steps is not None:
            steps = dict(zip(("technical", "cis", "trans"), args.steps, strict=True))
        trans_kwargs = {}
        if args.permutations is not None:
            trans_kwargs["n_permutations"] = args.permutations
        cluster = {}
        if args.dask_workers:
            from distributed import Client, LocalCluster

            client = Client(
                LocalCluster(
                    n_workers=args.dask_workers, threads_per_worker=1, dashboard_address=None
                )
            )
            cluster = {"backend": "dask", "client": client}
        chosen = None
        if args.fit_targets is not None:
            everything = sorted(set(mdata.uns["truth"]["targets"]))
            rng = np.random.default_rng(args.seed)
            chosen = sorted(rng.choice(everything, size=args.fit_targets, replace=False))
        t0 = time.perf_counter()
        fit_mem = PeakRSS(interval=0.5, tree=True)
        with fit_mem:
            ds.tl.fit_screen(
                mdata,
                technical_key=None,
                n_steps=steps,
                seed=args.seed,
                progress=False,
                trans_kwargs=trans_kwargs,
                control_cells=args.control_cells,
                curves=args.curves,
                n_jobs=args.n_jobs,
                target_batch=args.target_batch,
                targets=chosen,
                **cluster,
                **design_kw,
            )
        fit_seconds = time.perf_counter() - t0
    print(
        f"fit_screen {fit_seconds:.1f} s, peak RSS {fit_mem.peak_gb:.2f} GB summed over this "
        f"process and its workers (each worker's own peak: {worker_peaks(fit_mem)}), CPU "
        f"{fit_mem.cpu_seconds:.0f} s, load "
        f"{fit_mem.load[0]:.2f} -> {fit_mem.load[1]:.2f}",
        flush=True,
    )  # before the scoring, which needs the screen-wide table in memory as well
    record = mdata.uns["dream_screen"]
    targets = list(record["targets"])
    # only the columns scored and saved: ~70 instead of ~450 bytes per pair (4M pairs)
    wanted = [c for c in KEEP_COLUMNS if c != "pvalue"] + ["feature_pvalue"]
    table = ds.get.screen_results(mdata, alpha=args.alpha, columns=wanted)
    # dream_sc's per-pair p-value (permutation, against the target's own null), as the peers'
    table = table.rename(columns={"feature_pvalue": "pvalue"})
    kinds = mdata.uns["truth"]["target_kind"]
    labels = truth_labels(mdata, table)
    null_target = table["target"].map(lambda t: kinds[t] == "null").to_numpy()
    rows = {}
    qcols = [c for c in table.columns if c == "qvalue" or c.endswith("_qvalue")]
    qcols = [c for c in qcols if not c.startswith("target_")] + ["qvalue_target"]
    for col in dict.fromkeys(qcols):
        q = table[col].to_numpy(dtype=float)
        rows[f"dream_sc {col}"] = {
            **score_calls(np.nan_to_num(q, nan=1.0) < args.alpha, labels, null_target),
            **dream_ranking(labels, table, args.alpha),
            **leak_calls(mdata, table, np.nan_to_num(q, nan=1.0) < args.alpha),
        }
    saved = {"dream_sc": table}
    if args.save is not None:
        save_tables(args.save, mdata, saved)
    features = [f for f in mdata["rna"].var_names if f not in targets]
    if not args.skip_peers:
        t0 = time.perf_counter()
        if args.moi == "high":  # cells with vs without the target's guides
            wil = high_moi_wilcoxon(mdata, targets, features)
        else:
            wil = wilcoxon_screen(mdata, targets, features)
        print(f"wilcoxon: {time.perf_counter() - t0:.1f} s")
        wil_labels = truth_labels(mdata, wil)
        wil_null = wil["target"].map(lambda t: kinds[t] == "null").to_numpy()
        rows["wilcoxon (BH over pairs)"] = {
            **score_calls(wil["qvalue"].to_numpy() < args.alpha, wil_labels, wil_null),
            "auroc": auroc(wil_labels, wil["score"].to_numpy()),
            "power_at_fdr": power_at_fdr(wil_labels, wil["score"].to_numpy(), level=args.alpha),
            **leak_calls(mdata, wil, wil["qvalue"].to_numpy() < args.alpha),
        }
        saved["wilcoxon"] = wil
        if args.save is not None:
            save_tables(args.save, mdata, saved)
        print(markdown_table(pd.DataFrame(rows).T), flush=True)  # before pysceptre
    if args.sceptre and not args.skip_peers and args.sceptre_targets is not None:
        rng = np.random.default_rng(args.seed + 1)
        subset = sorted(rng.choice(targets, size=args.sceptre_targets, replace=False))
        rows.update(
            subset_rows(mdata, saved, subset, features, args.alpha, args.sceptre_jobs, args.save)
        )
    elif args.sceptre and not args.skip_peers:
        rows.update(run_sceptre(mdata, targets, features, args.alpha, args.sceptre_jobs))
    scores = pd.DataFrame(rows).T
    timings = record["timings"]
    header = (
        f"## bench_genome_screen: {args.cells} cells x {args.genes} genes x {args.targets} "
        f"targets ({args.moi} MOI), steps {steps or 'default'}, control_cells "
        f"{args.control_cells}, curves {args.curves}\n\n"
        f"- simulate {simulate_seconds:.1f} s; fit_screen {fit_seconds:.1f} s "
        f"(technical {record['technical_seconds']:.1f} s; per target cis "
        f"{timings['cis_seconds'].median():.2f} s, trans {timings['trans_seconds'].median():.2f} "
        f"s median); peak RSS {peak.peak_gb:.2f} GB summed over this process and its "
        f"workers ({fit_mem.peak_gb:.2f} GB during fit_screen), worker processes' own peaks "
        f"{worker_peaks(fit_mem)}; CPU of fit_screen and its workers {fit_mem.cpu_seconds:.0f} "
        f"s, whole run "
        f"{peak.cpu_seconds:.0f} s (n_jobs {args.n_jobs}, dask workers {args.dask_workers}); "
        f"load {load:.2f} -> "
        f"{os.getloadavg()[0]:.2f}\n"
        f"- curves fitted for {int(table['fitted'].sum())} of {int(table['tested'].sum())} "
        f"tested pairs\n"
        f"- responsive pairs {int(labels.sum())} of {len(labels)}; no-effect targets "
        f"{sum(k == 'null' for k in kinds.values())} of {len(kinds)}\n"
    )
    if chosen is not None:
        per_target = (fit_seconds - record["technical_seconds"]) / len(chosen)
        whole = record["technical_seconds"] + per_target * args.targets
        results_gb = results_bytes(mdata) / 1e9
        header += (
            f"- {len(chosen)} of {args.targets} targets fitted: {per_target:.1f} s of screen "
            f"time per target; the whole screen extrapolates to {whole / 60:.1f} min and "
            f"{results_gb / len(chosen) * args.targets:.1f} GB of stored results "
            f"({results_gb:.2f} GB for {len(chosen)} targets)\n"
        )
    text = header + "\n" + markdown_table(scores) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


def dream_ranking(labels: np.ndarray, table: pd.DataFrame, alpha: float) -> dict:
    """AUROC and power at matched FDR of dream_sc's pairs ranked by their p-values (as the
    peers' are; ties broken by the score), and ranked by the raw score (``*_score``).

    The score's null differs between targets (their cells and dosages), so the raw score is
    not comparable across targets; the per-pair permutation p-value (``feature_pvalue``, the
    quantity the screen-wide q-values are built from) is.
    """
    score = table["score"].to_numpy(dtype=float)
    ranking = pvalue_ranking(table["pvalue"].to_numpy(dtype=float), score)
    return {
        "auroc": auroc(labels, ranking),
        "power_at_fdr": power_at_fdr(labels, ranking, level=alpha),
        "auroc_score": auroc(labels, np.nan_to_num(score, nan=0.0)),
        "power_at_fdr_score": power_at_fdr(labels, score, level=alpha),
    }


def leak_calls(mdata, table: pd.DataFrame, called: np.ndarray) -> dict:
    """False calls on genes another target moves (``leak``) and on genes none moves."""
    pairs = mdata.uns["truth"]["pairs"]
    responsive = set(zip(pairs["target"], pairs["feature"], strict=True))
    moved = set(pairs["feature"])
    tf = list(zip(table["target"], table["feature"], strict=True))
    false = called & ~np.array([p in responsive for p in tf])
    leak = np.array([f in moved for _, f in tf])
    return {"false_leak": int((false & leak).sum()), "false_pure": int((false & ~leak).sum())}


def save_tables(directory: Path, mdata, tables: dict) -> None:
    """Per-pair tables of every method and the truth, as CSV (for later analysis)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        keep = [c for c in table.columns if c in KEEP_COLUMNS]
        table[keep].to_csv(directory / f"{name}.csv", index=False)
    truth = mdata.uns["truth"]
    truth["pairs"].to_csv(directory / "truth_pairs.csv", index=False)
    pd.Series(truth["target_kind"], name="kind").to_csv(directory / "target_kind.csv")


KEEP_COLUMNS = (
    "target",
    "feature",
    "score",
    "pvalue",
    "qvalue",
    "screen_qvalue",
    "qvalue_target",
    "significant",
    "response_mean",
    "tested",
    "fitted",
)


def subset_rows(mdata, saved, subset, features, alpha, n_jobs, save) -> dict:
    """pysceptre on ``subset``'s pairs; every method scored on those pairs (BH within them
    for the per-pair tests, dream_sc's screen-wide q-values as they are)."""
    rows = {}
    kinds = mdata.uns["truth"]["target_kind"]
    for name, table in saved.items():
        part = table[table["target"].isin(subset)].reset_index(drop=True)
        if name != "dream_sc":
            p = part["pvalue"].fillna(1.0).to_numpy()
            part = part.assign(qvalue=stats.false_discovery_control(p, method="bh"))
        labels = truth_labels(mdata, part)
        null_target = part["target"].map(lambda t: kinds[t] == "null").to_numpy()
        cols = ["qvalue", "screen_qvalue"] if name == "dream_sc" else ["qvalue"]
        for col in cols:
            called = np.nan_to_num(part[col].to_numpy(dtype=float), nan=1.0) < alpha
            rows[f"{name} {col} ({len(subset)} targets)"] = {
                **score_calls(called, labels, null_target),
                **(
                    dream_ranking(labels, part, alpha)
                    if name == "dream_sc"
                    else {
                        "auroc": auroc(labels, part["score"].fillna(0.0).to_numpy()),
                        "power_at_fdr": power_at_fdr(labels, part["score"].to_numpy(), level=alpha),
                    }
                ),
                **leak_calls(mdata, part, called),
            }
    t0 = time.perf_counter()
    found = run_sceptre(mdata, subset, features, alpha, n_jobs, table_out=saved)
    for key, value in found.items():
        rows[f"{key} ({len(subset)} targets, {time.perf_counter() - t0:.0f} s)"] = value
    if save is not None:
        save_tables(save, mdata, saved)
    return rows


def high_moi_wilcoxon(mdata, targets: list[str], features: list[str]) -> pd.DataFrame:
    """Complement Wilcoxon (cells with vs without the target's guides), BH over all pairs."""
    from bench_high_moi import complement_wilcoxon

    truth = mdata.uns["truth"]
    assignment = mdata.obsm["guide_assignment"]
    carried = assignment.to_numpy() @ pd.get_dummies(truth["guides"]["target"])[targets]
    x = mdata["rna"][:, features].X
    sf = mdata.obs["sum_factor"].to_numpy()
    return complement_wilcoxon(x, sf, carried.to_numpy() > 0, targets, features)


def results_bytes(mdata) -> int:
    """Bytes of everything the screen's per-target fits stored (cis and trans keys)."""
    from scipy import sparse

    record = mdata.uns["dream_screen"]
    prefixes = [str(k) for k in record["cis_keys"]] + [str(k) for k in record["trans_keys"]]

    def size(value) -> int:
        if sparse.issparse(value):
            return int(value.data.nbytes + value.indices.nbytes + value.indptr.nbytes)
        if isinstance(value, pd.DataFrame):
            return int(value.memory_usage(index=False, deep=True).sum())
        if isinstance(value, np.ndarray):
            return int(value.nbytes)
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        return 0

    def owned(name: str) -> bool:
        return any(name == p or name.startswith(p + "_") for p in prefixes)

    total = sum(int(mdata.obs[c].to_numpy().nbytes) for c in mdata.obs.columns if owned(c))
    total += sum(size(mdata.obsm[k]) for k in mdata.obsm if owned(k))
    total += sum(size(mdata.uns[k]) for k in mdata.uns if owned(k))
    rna = mdata["rna"]
    total += sum(size(rna.varm[k]) for k in rna.varm if owned(k))
    total += sum(size(rna.uns[k]) for k in rna.uns if owned(k))
    return total


def worker_peaks(mem: PeakRSS) -> str:
    """Each worker process's own peak RSS (kernel high-water mark, sampled), GB, largest first.

    n_jobs workers are forked by a forkserver and dask workers spawned by their nannies:
    neither is this process's child, so ``RUSAGE_CHILDREN`` never saw them; ``PeakRSS`` reads
    every descendant's ``VmHWM`` while it runs.
    """
    peaks = mem.worker_peaks_gb()
    return ", ".join(f"{p:.2f}" for p in peaks) + " GB" if peaks else "none (no worker process)"


def run_sceptre(
    mdata,
    targets: list[str],
    features: list[str],
    alpha: float,
    n_jobs: int = 1,
    table_out: dict | None = None,
) -> dict:
    """pysceptre on the same pairs: low MOI with the control cells, high MOI the complement.

    Covariates as in sceptre's default formula: intercept, log library size and log number of
    detected genes per cell (high MOI also log guides per cell, sceptre's grna_n_nonzero).
    Benjamini-Hochberg over all pairs of the screen.
    """
    try:
        import pysceptre
    except ImportError:
        print("pysceptre is not installed (pip install pysceptre): skipped")
        return {}
    x = mdata["rna"].X
    library = np.asarray(x.sum(axis=1)).ravel()
    detected = np.diff(x.tocsr().indptr)
    covariates = np.column_stack([np.ones(len(library)), np.log(library), np.log(detected)])
    truth = mdata.uns["truth"]
    genes = list(mdata["rna"].var_names)
    pairs = pd.DataFrame(
        [(f, t) for t in targets for f in features], columns=["response_id", "grna_target"]
    )
    kwargs = {}
    if truth["moi"] == "low":
        guide = mdata.obs["guide"].to_numpy()
        target = mdata.obs["target"].to_numpy()
        cells = {t: np.flatnonzero(target == t) for t in targets}
        control = truth["guides"].index[truth["guides"]["target"] == truth["control_label"]]
        kwargs = {
            "moi": "low",
            "ntc_grna_cells": {g: np.flatnonzero(guide == g) for g in control},
        }
    else:
        assignment = mdata.obsm["guide_assignment"]
        carried = assignment.to_numpy() @ pd.get_dummies(truth["guides"]["target"])[targets]
        cells = {t: np.flatnonzero(carried[t].to_numpy() > 0) for t in targets}
        kwargs = {"moi": "high"}
        n_guides = (assignment.to_numpy() > 0).sum(axis=1)
        covariates = np.column_stack([covariates, np.log(n_guides)])
    t0 = time.perf_counter()
    result = pysceptre.run_discovery_analysis(
        x.T.tocsr(), genes, covariates, cells, pairs, seed=0, n_jobs=n_jobs, **kwargs
    )
    seconds = time.perf_counter() - t0
    table = result.rename(columns={"response_id": "feature", "grna_target": "target"})
    p = table["p_value"].fillna(1.0).to_numpy()
    q = stats.false_discovery_control(p, method="bh")
    labels = truth_labels(mdata, table)
    kinds = truth["target_kind"]
    null_target = table["target"].map(lambda t: kinds[t] == "null").to_numpy()
    scores = -np.log10(np.maximum(p, 1e-300))
    print(f"pysceptre: {seconds:.1f} s")
    if table_out is not None:
        table_out["pysceptre"] = table.assign(pvalue=p, qvalue=q, score=scores)
    return {
        "pysceptre (BH over pairs)": {
            **score_calls(q < alpha, labels, null_target),
            "auroc": auroc(labels, scores),
            "power_at_fdr": power_at_fdr(labels, scores, level=alpha),
            **leak_calls(mdata, table, q < alpha),
        }
    }


if __name__ == "__main__":
    main()
