"""Pooled vs hierarchical screen-wide q-values on a many-target screen with no-effect targets.

Simulates a low-MOI screen in which every *active* target moves its own set of genes and a
fifth of the targets moves nothing: :func:`many_target_screen` (``--simulator local``, the
default: ``simulate_screen``'s design with responses re-drawn, power at small sizes) or
``ds.datasets.simulate_many_targets`` (``--simulator package``: the issue's genome-scale
screen, sparse counts, ~10% control cells; needs more cells for power). Runs ``ds.tl.fit_screen`` and scores ``ds.get.screen_results`` against the
truth, at q < ``alpha``:

- realised FDR over all (target, feature) pairs, false calls on the no-effect targets, the
  number of no-effect targets with any call, and power, for the pooled screen-wide
  ``qvalue`` / ``significant``, the hierarchical ``significant_screen`` (Simes and exact
  permutation target p-values) and the per-target ``significant_target``;
- target-level: selected targets and how many of them have no effect.

Usage::

    python benchmarks/bench_hierarchical_fdr.py                 # 10 targets, 3,000 cells
    python benchmarks/bench_hierarchical_fdr.py --targets 20 --cells 6000 --genes 300
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

import dream_sc as ds


def many_target_screen(
    *,
    n_cells: int = 3000,
    n_genes: int = 200,
    n_targets: int = 10,
    null_fraction: float = 0.2,
    n_responsive: int = 15,
    log2_slope: tuple[float, float] = (0.5, 1.0),
    seed: int = 0,
) -> MuData:
    """A screen whose active targets each move ``n_responsive`` genes of their own.

    The design (guides, cells, dosages of every target gene, size factors, cell lines, the
    target genes' own counts) is ``ds.datasets.simulate_screen(..., frac_responsive=0)``. The
    counts of a trans gene ``g`` are re-drawn (negative binomial with the simulator's baseline,
    technical effect and dispersion) with mean multiplied by
    ``prod_t (dose_ct / x_ntc_t) ** slope_tg`` over the targets ``t`` it responds to - in every
    cell, as a gene responds to its regulator's level whatever guide the cell carries. The last
    ``round(null_fraction * n_targets)`` targets move nothing. ``uns["truth"]["pairs"]`` lists
    the responsive (target, feature) pairs with their log2 slope;
    ``uns["truth"]["null_targets"]`` the no-effect targets.
    """
    mdata = ds.datasets.simulate_screen(
        n_cells=n_cells,
        n_genes=n_genes,
        n_junctions=0,
        n_isoform_genes=0,
        n_targets=n_targets,
        guides_per_target=3,
        n_ntc_guides=3,
        frac_responsive=0.0,
        seed=seed,
    )
    rng = np.random.default_rng([seed, 26])
    rna = mdata["rna"]
    targets = [str(t) for t in mdata.uns["truth"]["targets"]]
    n_null = int(round(null_fraction * n_targets))
    active = targets[: n_targets - n_null]
    trans = np.arange(n_targets, n_genes)
    x_ntc = mdata.uns["truth"]["x_ntc"]
    dose = mdata.obsm["true_target_dose"].loc[rna.obs_names]
    log_fc = np.zeros((rna.n_obs, len(trans)))
    rows = []
    for target in active:
        genes = rng.choice(len(trans), size=min(n_responsive, len(trans)), replace=False)
        slope = rng.uniform(*log2_slope, size=len(genes)) * rng.choice([-1.0, 1.0], len(genes))
        log2_dose = np.log2(dose[target].to_numpy() / float(x_ntc[target]))
        log_fc[:, genes] += np.log(2.0) * log2_dose[:, None] * slope[None, :]
        for g, s in zip(genes, slope, strict=True):
            rows.append((target, str(rna.var_names[trans[g]]), float(s)))
    var = rna.var.iloc[trans]
    line = mdata.obs.loc[rna.obs_names, "cell_line"].astype(str).to_numpy()
    tech = rna.varm["true_technical"]
    tech = tech.loc[:, line].T.to_numpy()[:, trans] if isinstance(tech, pd.DataFrame) else 0.0
    sf = mdata.obs.loc[rna.obs_names, "true_size_factor"].to_numpy()
    mean = np.exp(var["true_a"].to_numpy()[None, :] + tech + log_fc) * sf[:, None]
    shape = 1.0 / var["true_dispersion"].to_numpy()
    counts = rng.poisson(rng.standard_gamma(np.broadcast_to(shape, mean.shape)) * mean / shape)
    x = rna.X.toarray() if sparse.issparse(rna.X) else np.array(rna.X)
    x[:, trans] = counts
    rna.X = sparse.csr_matrix(x.astype(np.float32))
    mdata.obs.drop(columns=["sum_factor"], inplace=True, errors="ignore")
    ds.pp.sum_factors(mdata)
    mdata.uns["truth"]["pairs"] = pd.DataFrame(rows, columns=["target", "feature", "log2_slope"])
    mdata.uns["truth"]["null_targets"] = targets[n_targets - n_null :]
    return mdata


def score(table: pd.DataFrame, truth: MuData, column: str) -> dict:
    """Calls of a boolean column of ``screen_results`` against the simulated truth."""
    pairs = truth.uns["truth"]["pairs"]
    key = set(zip(pairs["target"], pairs["feature"], strict=True))
    true = np.array([(t, f) in key for t, f in zip(table["target"], table["feature"], strict=True)])
    calls = table[column].to_numpy(dtype=bool)
    on_null = table["target"].isin(list(truth.uns["truth"]["null_targets"])).to_numpy()
    false = calls & ~true
    return {
        "calls": int(calls.sum()),
        "false calls": int(false.sum()),
        "realised FDR": float(false.sum() / max(calls.sum(), 1)),
        "false calls on no-effect targets": int((calls & on_null).sum()),
        "no-effect targets with calls": int(table.loc[calls & on_null, "target"].nunique()),
        "power": float((calls & true).sum() / max(true.sum(), 1)),
    }


def run_one(args: argparse.Namespace, seed: int) -> tuple[pd.DataFrame, list[str], float, object]:
    """Simulate and fit one screen; the scores of every q-value column, selection lines."""
    from _metrics import PeakRSS

    if args.simulator == "package":
        mdata = ds.datasets.simulate_many_targets(
            n_cells=args.cells,
            n_genes=args.genes,
            n_targets=args.targets,
            mean_responsive=args.responsive,
            cell_lines=("K562", "HEK293T"),
            control_fraction=args.control_fraction,
            seed=seed,
        )
        kinds = mdata.uns["truth"]["target_kind"]
        mdata.uns["truth"]["null_targets"] = [t for t, k in kinds.items() if str(k) == "null"]
    else:
        mdata = many_target_screen(
            n_cells=args.cells,
            n_genes=args.genes,
            n_targets=args.targets,
            n_responsive=args.responsive,
            log2_slope=tuple(args.slope),
            seed=seed,
        )
    start = time.perf_counter()
    with PeakRSS() as rss:
        ds.tl.fit_screen(
            mdata,
            n_steps={"technical": args.steps, "cis": args.steps, "trans": args.steps},
            trans_kwargs={"refine_intervals": False, "n_permutations": args.permutations},
            technical_key="cell_line",
            seed=seed,
            progress=False,
        )
    seconds = time.perf_counter() - start
    simes = ds.get.screen_results(mdata, alpha=args.alpha)
    perm = ds.get.screen_results(mdata, alpha=args.alpha, target_test="permutation")
    rows = {
        "pooled (`significant`)": score(simes, mdata, "significant"),
        "per-target (`significant_target`)": score(simes, mdata, "significant_target"),
        "hierarchical, Simes (`significant_screen`)": score(simes, mdata, "significant_screen"),
        "hierarchical, permutation": score(perm, mdata, "significant_screen"),
    }
    null_targets = list(mdata.uns["truth"]["null_targets"])
    lines = []
    for name, table in (("Simes", simes), ("permutation", perm)):
        per = table.groupby("target", sort=False).first()
        selected = per.index[per["target_selected"]].tolist()
        lines.append(
            f"seed {seed}, {name}: selected {len(selected)} of {len(per)} targets "
            f"({sorted(set(selected) & set(null_targets))} without effect); within-target BH "
            f"level {table.attrs['hierarchical_fdr']['feature_level']:.3f}"
        )
    frame = pd.DataFrame(rows).T
    frame.index.name = "q-values"
    return frame, lines, seconds, rss


def main(argv: list[str] | None = None) -> None:
    """Simulate, fit and score ``--seeds`` screens; print markdown tables."""
    import torch
    from _metrics import markdown_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--genes", type=int, default=500)
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--responsive", type=int, default=10)
    parser.add_argument("--slope", type=float, nargs=2, default=(0.5, 1.0))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--permutations", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="screens, seeds seed, seed+1, ...")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--simulator",
        choices=("local", "package"),
        default="local",
        help="local: many_target_screen here; package: ds.datasets.simulate_many_targets "
        "(--responsive is then its mean_responsive, with a tenth of strong targets)",
    )
    parser.add_argument("--control-fraction", type=float, default=0.1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    n_null = int(round(0.2 * args.targets))
    print(
        f"simulator {args.simulator}: {args.targets} targets ({n_null} without effect), {args.cells} cells x {args.genes} "
        f"genes, {args.responsive} responsive genes per active target (log2 slopes "
        f"{args.slope}), {args.steps} steps, {args.permutations} permutations, "
        f"alpha = {args.alpha}"
    )
    frames = []
    for seed in range(args.seed, args.seed + args.seeds):
        frame, lines, seconds, rss = run_one(args, seed)
        frames.append(frame)
        print(
            f"\nseed {seed}: fit_screen {seconds:.0f} s, CPU {rss.cpu_seconds:.0f} s, peak RSS "
            f"{rss.peak_gb:.2f} GB, load average {rss.load[0]:.1f} -> {rss.load[1]:.1f}"
        )
        print(markdown_table(frame))
        print("\n".join(lines))
    if len(frames) > 1:
        total = sum(f[["calls", "false calls", "false calls on no-effect targets"]] for f in frames)
        total["realised FDR (pooled over screens)"] = total["false calls"] / total["calls"].clip(
            lower=1
        )
        total["mean FDP"] = sum(f["realised FDR"] for f in frames) / len(frames)
        total["no-effect targets with calls"] = sum(
            f["no-effect targets with calls"] for f in frames
        )
        total["power"] = sum(f["power"] for f in frames) / len(frames)
        print(f"\nall {len(frames)} screens (counts summed, power and FDP averaged)")
        print(markdown_table(total))


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
