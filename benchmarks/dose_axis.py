"""The per-cell dosage axis of step 2 against the truth (issue 27, item 4).

Per screen design it fits ``fit_technical`` and ``fit_cis`` (package defaults) and prints, over
the cells of the cis fit (controls + cis-targeting):

- ``rho_mean`` / ``rho_q50``: Spearman of ``dose_mean`` / ``dose_q50`` against
  ``obs["true_dose"]``;
- ``rho_oracle``: Spearman of the exact per-cell posterior mean computed with the *true* guide
  dosages, per-cell spread, cis dispersion and technical effect (quadrature over ``log x``,
  same size factors as the fit): the limit any step 2 can reach on these cis counts;
  ``rho_oracle_sf`` the same with the true size factors (which no method sees);
- ``rho_guide``: Spearman of the true dosage of the cell's guide (ignoring its cis counts);
- ``ratio_mean`` / ``ratio_q50``: median over cells of ``dose_mean`` / ``dose_q50`` divided by
  the true dosage (``_ctrl``: control cells only).

Designs: ``hard`` is screen b of ``compare_naive.py`` (2 guides per target, per-cell log2 sd
0.7, 3,000 cells); ``two_line`` the CRISPRi+CRISPRa design of ``ec50_coverage.py``;
``default`` the default ``simulate_screen``; ``single`` one guide per target.

Usage::

    python benchmarks/dose_axis.py --designs hard two_line --seeds 0 1
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _metrics import spearman  # noqa: E402

import dream_sc as ds  # noqa: E402

DESIGNS = {
    "hard": {"guides_per_target": 2, "dose_noise": 0.7},
    "two_line": {"guide_design": "line_specific", "guides_per_target": 2, "dose_noise": 0.7},
    "default": {},
    "single": {"guides_per_target": 1},
    "single_two_line": {
        "guide_design": "line_specific",
        "guides_per_target": 1,
        "dose_noise": 0.7,
    },
}


def simulate(design: str, seed: int, cells: int, genes: int, **extra):
    """A screen of the named design (no splicing or isoform modalities)."""
    kwargs = {**DESIGNS[design], **extra}
    return ds.datasets.simulate_screen(
        n_cells=cells, n_genes=genes, n_junctions=0, n_isoform_genes=0, seed=seed, **kwargs
    )


def oracle_posterior_mean(mdata, cells: pd.Index, size_factor: str = "sum_factor") -> np.ndarray:
    """Exact posterior mean of ``log x`` per cell given the true guide and count parameters."""
    truth = mdata.uns["truth"]
    cis = truth["cis_feature"]
    rna = mdata["rna"]
    obs = mdata.obs.loc[cells]
    guides = truth["guides"]
    centre = np.log(guides["dose"].reindex(obs["guide"].astype(str)).to_numpy(np.float64))
    sd = float(truth["dose_noise"]) * np.log(2.0)
    counts = rna[cells, cis].X
    y = np.asarray(counts.todense() if hasattr(counts, "todense") else counts).ravel()
    tech = rna.varm["true_technical"].loc[cis]
    offset = np.log(obs[size_factor].to_numpy(np.float64))
    offset += tech.reindex(obs["cell_line"].astype(str)).to_numpy(np.float64)
    phi = float(rna.var.loc[cis, "true_dispersion"])
    z = np.linspace(-6, 6, 241)
    log_x = centre[:, None] + sd * z[None, :]  # [N, Q]
    mu = np.exp(offset[:, None] + log_x)
    r = 1.0 / phi
    log_lik = (
        gammaln(y[:, None] + r)
        - gammaln(r)
        + r * np.log(r / (r + mu))
        + y[:, None] * np.log(mu / (r + mu))
    )
    log_w = log_lik - 0.5 * z[None, :] ** 2
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    return (w * log_x).sum(1) / w.sum(1)


def control_profile(mdata, spreads=(0.3, 0.5, 0.7)) -> pd.DataFrame:
    """Maximum likelihood on the control cells' cis counts, profiled over the per-cell spread.

    Quadrature marginal likelihood of ``y ~ NB(s exp(delta) x, phi)``, ``log2 x ~ Normal(log2
    d_g, spread)`` with the *true* technical effect: free guide medians ``d_g``, one spread,
    one dispersion. Rows: the maximum (free spread) and each fixed spread, with ``+nll`` (nats above the maximum), the dispersion and the median ratio
    of the guide medians to the true control dosage.
    """
    truth = mdata.uns["truth"]
    cis, obs = truth["cis_feature"], mdata.obs
    ctrl = (obs["target"].astype(str) == truth["control_label"]).to_numpy()
    counts = mdata["rna"][obs.index[ctrl], cis].X
    y = np.asarray(counts.todense() if hasattr(counts, "todense") else counts).ravel()
    tech = mdata["rna"].varm["true_technical"].loc[cis]
    off = np.log(obs["sum_factor"].to_numpy(np.float64)[ctrl])
    off += tech.reindex(obs["cell_line"].astype(str)[ctrl]).to_numpy(np.float64)
    guides, gidx = np.unique(obs["guide"].astype(str)[ctrl], return_inverse=True)
    true_dose = truth["guides"]["dose"].reindex(guides).to_numpy(np.float64)
    z, w = np.polynomial.hermite_e.hermegauss(40)
    log_w = np.log(w / w.sum())

    def nll(log_d, log_spread, log_phi):
        r = np.exp(-log_phi)
        mu = np.exp(off[:, None] + log_d[gidx][:, None] + np.exp(log_spread) * np.log(2) * z)
        ll = gammaln(y[:, None] + r) - gammaln(r) + r * np.log(r / (r + mu))
        ll += y[:, None] * np.log(mu / (r + mu)) + log_w
        top = ll.max(1, keepdims=True)
        return -(top[:, 0] + np.log(np.exp(ll - top).sum(1))).sum()

    k = len(guides)
    start = np.r_[np.log(true_dose), np.log(0.5), np.log(0.2)]
    best = minimize(lambda p: nll(p[:k], p[k], p[k + 1]), start, method="L-BFGS-B")
    rows = [(np.exp(best.x[k]), 0.0, np.exp(best.x[k + 1]), np.exp(best.x[:k]))]
    for spread in spreads:
        fit = minimize(
            lambda p, s=spread: nll(p[:k], np.log(s), p[k]), np.r_[best.x[:k], best.x[k + 1]]
        )
        rows.append((spread, fit.fun - best.fun, np.exp(fit.x[k]), np.exp(fit.x[:k])))
    return pd.DataFrame(
        [
            {"spread": s, "+nll": d, "dispersion": phi, "dose_ratio": np.median(dose / true_dose)}
            for s, d, phi, dose in rows
        ]
    )


def cell_metrics(mdata, key: str = "dream_cis") -> dict:
    """Per-cell dosage accuracy of the cis fit ``key`` against ``obs["true_dose"]``."""
    obs = mdata.obs
    fitted = obs[f"{key}_dose_mean"].notna().to_numpy()
    cells = obs.index[fitted]
    sub = obs.loc[cells]
    true = sub["true_dose"].to_numpy(np.float64)
    control = (sub["target"].astype(str) == mdata.uns["truth"]["control_label"]).to_numpy()
    mean = sub[f"{key}_dose_mean"].to_numpy(np.float64)
    q50 = sub[f"{key}_dose_q50"].to_numpy(np.float64)
    guide_dose = mdata.uns["truth"]["guides"]["dose"].reindex(sub["guide"].astype(str))
    return {
        "n_cells": int(fitted.sum()),
        "rho_mean": spearman(mean, true),
        "rho_q50": spearman(q50, true),
        "rho_oracle": spearman(oracle_posterior_mean(mdata, cells), true),
        "rho_oracle_sf": spearman(oracle_posterior_mean(mdata, cells, "true_size_factor"), true),
        "rho_guide": spearman(guide_dose.to_numpy(np.float64), true),
        "ratio_mean": float(np.median(mean / true)),
        "ratio_q50": float(np.median(q50 / true)),
        "ratio_mean_ctrl": float(np.median(mean[control] / true[control])),
        "ratio_q50_ctrl": float(np.median(q50[control] / true[control])),
    }


def fit_steps_1_2(mdata, seed: int) -> float:
    """``fit_technical`` and ``fit_cis`` at package defaults; returns the seconds taken."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, seed=seed)
        ds.tl.fit_cis(mdata, cis_feature=mdata.uns["truth"]["cis_feature"], seed=seed)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--designs", nargs="+", default=["hard", "two_line"], choices=sorted(DESIGNS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--genes", type=int, default=100)
    p.add_argument("--profile", action="store_true", help="also print control_profile")
    args = p.parse_args(argv)
    ds.settings.progress_bar = False
    rows = []
    for design in args.designs:
        for seed in args.seeds:
            mdata = simulate(design, seed, args.cells, args.genes)
            seconds = fit_steps_1_2(mdata, seed)
            rows.append({"design": design, "seed": seed, **cell_metrics(mdata), "s": seconds})
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
            if args.profile:
                print(control_profile(mdata).to_string(index=False), flush=True)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
