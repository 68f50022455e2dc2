"""Trans curves on a screen with escapers against the same screen without (issue 27, item 3).

The same simulated screen (``simulate_screen(..., escape_fraction=f)`` keeps guides, curves and
the counts' random stream of ``f = 0``) is fitted three ways: no escapers + plain cis fit, 30%
escapers + plain cis fit, 30% escapers + ``fit_cis(escapers=True)``. Per run: the strong guides'
escape-fraction error (``|log2 effect| >= 1``), the median per-cell ``dose_q50 / true`` ratio,
the trans curve error (median over responsive ``rna`` genes of the mean absolute log2
difference between fitted and true curve over the true dosage window) and the AUROC of
``prob_dose_dependent`` for ``true_responsive``.

Usage::

    python benchmarks/escapers.py --cells 3000 --genes 60 --steps 400
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import torch
from _metrics import auroc

import dream_sc as ds


def curve_error(mdata) -> float:
    """Median over responsive genes of the mean |log2 fitted - log2 true| over the window."""
    lo, hi = (float(v) for v in mdata.uns["truth"]["dose_range"])
    grid = np.geomspace(lo, hi, 25)
    var = mdata["rna"].var
    genes = var.index[var["true_responsive"].to_numpy(bool)]
    fitted = ds.get.trans_curves(mdata, dose=grid, features=list(genes))
    fitted = fitted.pivot(index="feature", columns="dose", values="mean").loc[genes]
    true = ds.datasets.true_curve(mdata, "rna", grid).loc[genes]
    return float(np.median(np.abs(np.log2(fitted.to_numpy() / true.to_numpy())).mean(1)))


def run(seed: int, cells: int, genes: int, steps: int, fraction: float, escapers: bool) -> dict:
    mdata = ds.datasets.simulate_screen(
        n_cells=cells,
        n_genes=genes,
        n_junctions=0,
        n_isoform_genes=0,
        frac_responsive=0.3,
        guides_per_target=6,
        seed=seed,
        escape_fraction=fraction,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, seed=seed)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=seed, escapers=escapers)
        ds.tl.fit_trans(mdata, function="single_hill", seed=seed, n_steps=steps, test=False)
    guides = ds.get.cis_dosage(mdata)
    truth = mdata.uns["truth"]["guides"].loc[guides.index]
    strong = (~guides["is_control"] & (truth["log2_effect"].abs() >= 1)).to_numpy()
    out = {"seed": seed, "escape_fraction": fraction, "escapers": escapers}
    if escapers:
        err = (guides["escape_fraction_mean"] - truth["escape_share"])[strong].abs()
        out["escape_err_max"] = float(err.max())
    effect_err = (guides["log2_effect_mean"] - truth["log2_effect"])[strong].abs()
    out["effect_err_max"] = float(effect_err.max())
    cells_ = ds.get.cis_dosage(mdata, level="cell").dropna(subset=["dose_mean"])
    out["dose_ratio"] = float(
        np.median(cells_["dose_q50"] / mdata.obs.loc[cells_.index, "true_dose"])
    )
    res = ds.get.trans_results(mdata)
    res = res[res["fitted"]]
    labels = mdata["rna"].var.loc[res.index, "true_responsive"].to_numpy(bool)
    out["auroc"] = auroc(labels, res["prob_dose_dependent"].to_numpy())
    out["curve_err"] = curve_error(mdata)
    out["seconds"] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--genes", type=int, default=60)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds.settings.progress_bar = False
    rows = []
    for seed in args.seeds:
        for fraction, escapers in ((0.0, False), (args.fraction, False), (args.fraction, True)):
            rows.append(run(seed, args.cells, args.genes, args.steps, fraction, escapers))
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
