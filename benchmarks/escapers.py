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
from dream_sc._stores._keys import CisKeys


def curve_error(mdata, key: str = "dream_trans") -> float:
    """Median over responsive genes of the mean |log2 fitted - log2 true| over the window."""
    lo, hi = (float(v) for v in mdata.uns["truth"]["dose_range"])
    grid = np.geomspace(lo, hi, 25)
    var = mdata["rna"].var
    genes = var.index[var["true_responsive"].to_numpy(bool)]
    fitted = ds.get.trans_curves(mdata, dose=grid, features=list(genes), key=key)
    fitted = fitted.pivot(index="feature", columns="dose", values="mean").loc[genes]
    true = ds.datasets.true_curve(mdata, "rna", grid).loc[genes]
    return float(np.median(np.abs(np.log2(fitted.to_numpy() / true.to_numpy())).mean(1)))


def oracle_cis(mdata, key: str, source: str) -> None:
    """Copy of the cis fit ``source`` whose per-cell dosage draws are the true dosage.

    Every draw of a fitted cell is its ``obs["true_dose"]`` (variance 0, so the trans fit plugs
    it in); the guide table, ``x_ntc`` and the rest of the record stay those of ``source``.
    """
    src, dst = CisKeys(source), CisKeys(key)
    samples = np.asarray(mdata.obsm[src.samples], dtype=np.float32).copy()
    true = mdata.obs["true_dose"].to_numpy(np.float32)
    fitted = np.isfinite(samples).all(1)
    samples[fitted] = true[fitted, None]
    mdata.obsm[dst.samples] = samples
    for stat in (*src.doses, "q50"):
        if src.dose(stat) not in mdata.obs:
            continue
        values = mdata.obs[src.dose(stat)].to_numpy(np.float64).copy()
        values[fitted] = 0.0 if stat == "sd" else true[fitted]
        mdata.obs[dst.dose(stat)] = values
    mdata.uns[dst.record] = mdata.uns[src.record]


def score(mdata, cis_key: str, trans_key: str, escapers: bool) -> dict:
    """Accuracy of one cis fit and the trans fit on it against the simulator's truth."""
    guides = ds.get.cis_dosage(mdata, key=cis_key)
    truth = mdata.uns["truth"]["guides"].loc[guides.index]
    strong = (~guides["is_control"] & (truth["log2_effect"].abs() >= 1)).to_numpy()
    out = {}
    if escapers:
        err = (guides["escape_fraction_mean"] - truth["escape_share"])[strong].abs()
        out["escape_err_max"] = float(err.max())
    effect_err = (guides["log2_effect_mean"] - truth["log2_effect"])[strong].abs()
    out["effect_err_max"] = float(effect_err.max())
    cells_ = ds.get.cis_dosage(mdata, key=cis_key, level="cell").dropna(subset=["dose_mean"])
    out["dose_ratio"] = float(
        np.median(cells_["dose_q50"] / mdata.obs.loc[cells_.index, "true_dose"])
    )
    res = ds.get.trans_results(mdata, key=trans_key)
    res = res[res["fitted"]]
    labels = mdata["rna"].var.loc[res.index, "true_responsive"].to_numpy(bool)
    out["auroc"] = auroc(labels, res["prob_dose_dependent"].to_numpy())
    out["curve_err"] = curve_error(mdata, trans_key)
    return out


#: Settings per screen: (label, cis fit with escapers, trans on the true dosages).
SETTINGS = {
    0.0: (("plain", False, False), ("oracle", False, True)),
    "escapers": (
        ("plain", False, False),
        ("escapers", True, False),
        ("oracle", False, True),
    ),
}


def run(seed: int, cells: int, genes: int, steps: int, fraction: float, oracle: bool) -> list:
    """Every setting on one simulated screen (escape fraction ``fraction``)."""
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, seed=seed)
    rows = []
    for label, escapers, use_truth in SETTINGS[0.0 if fraction == 0 else "escapers"]:
        if use_truth and not oracle:
            continue
        start = time.perf_counter()
        cis_key, trans_key = f"cis_{label}", f"trans_{label}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if use_truth:
                oracle_cis(mdata, cis_key, "cis_plain")
            else:
                ds.tl.fit_cis(
                    mdata, cis_feature="GFI1B", seed=seed, escapers=escapers, key_added=cis_key
                )
            ds.tl.fit_trans(
                mdata,
                function="single_hill",
                cis_key=cis_key,
                key_added=trans_key,
                seed=seed,
                n_steps=steps,
                test=False,
            )
        out = {"seed": seed, "escape_fraction": fraction, "setting": label}
        out.update(score(mdata, cis_key, trans_key, escapers))
        out["seconds"] = time.perf_counter() - start
        rows.append(out)
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--genes", type=int, default=60)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--no-oracle", action="store_true", help="skip the true-dosage trans fits")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds.settings.progress_bar = False
    rows = []
    for seed in args.seeds:
        for fraction in (0.0, args.fraction):
            rows += run(seed, args.cells, args.genes, args.steps, fraction, not args.no_oracle)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
