"""Coverage of the 90% EC50 intervals on simulated screens with known truth.

The simulator's curves are Hill curves on the link scale (log for counts):
``eta(x) = a + v1 H(x; K1, n1) + v2 H(x; K2, n2)``, doses on the scale "expected cis counts
per unit size factor in the reference line", the same scale as the fitted dosage. The true
``ec50`` (link scale) of a single-Hill gene is ``true_K1``: the same quantity the fitted
``ec50`` estimates (the running benchmark already uses the new columns; the script also runs on
versions without them).

Per screen and curve function it prints, for the responsive single-Hill genes whose true EC50
lies inside the observed dosage range (``uns["dream_cis"]["dose_range"]``): their number, the
fraction whose ``[ec50_q05, ec50_q95]`` covers ``true_K1`` (``cover``), the median factor error
of ``ec50_mean`` and the median interval width (factor q95/q05); ``cover_all``: the same
coverage over every responsive gene whose true ``K1`` is in range (the issue's count, additive
truths included); the response-scale columns against the true response-scale EC50 defined as
the fitted function defines it (``cover_resp``, ``err_resp``); and the time of the fit.
Polynomial fits also print ``cover_proj``: how often the interval covers the response-scale EC50
of the best polynomial of the fit's degree to the true curve (``projected_response_ec50``), and
``err_proj``: the median factor between that EC50 and the truth (the polynomial's own bias).

``cover_resp_all`` / ``n_resp_all``: response-scale coverage over every responsive gene whose
true response-scale EC50 exists (non-monotone truths included). Designs (``--designs``, see
``dose_axis.py``): ``two_line`` (the issue's CRISPRi+CRISPRa screen, the default), ``default``
(``simulate_screen``'s own design: 10 shared guides per target), ``single`` (one guide per
target) and ``single_two_line`` (one CRISPRi and one CRISPRa guide). Each screen also prints its
per-cell dosage metrics (``dose_axis.cell_metrics``).

Usage::

    python benchmarks/ec50_coverage.py --seeds 0 1 --functions single_hill additive_hill
    python benchmarks/ec50_coverage.py --designs two_line default --functions single_hill \
        additive_hill polynomial --steps 0
    python benchmarks/ec50_coverage.py --designs two_line default --seeds 0 1 2 \
        --functions polynomial --steps 0 --cache /tmp/screens [--refine-polynomial]

``--cache DIR`` writes each screen after steps 1-2 to ``DIR`` (and reads it back), so repeated
runs (other functions, ``--degree``, ``--no-refine``, ``--refine-polynomial``) fit only the
trans step on the same input.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import mudata
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dose_axis import DESIGNS, cell_metrics  # noqa: E402

import dream_sc as ds  # noqa: E402

TWO_LINE = DESIGNS["two_line"]


def true_response_ec50(mdata, features, function: str, lo: float, hi: float) -> np.ndarray:
    """True response-scale EC50 defined as the fitted ``function`` defines it.

    ``single_hill``: half-way between the plateaus of the true single-Hill curve (closed form:
    ``v h = log((1 + e^v) / 2)``, then invert the Hill); otherwise the lowest dose of
    ``[lo, hi]`` where the true mean crosses half-way between its values at ``lo`` and ``hi``.
    """
    var = mdata["rna"].var.loc[features]
    if function == "single_hill":
        v, k, n = (var[c].to_numpy() for c in ("true_v1", "true_K1", "true_n1"))
        h = np.log((1 + np.exp(v)) / 2) / v
        return k * (h / (1 - h)) ** (1 / n)
    grid = np.geomspace(lo, hi, 4001)
    curve = ds.datasets.true_curve(mdata, "rna", grid).loc[features].to_numpy()
    half = 0.5 * (curve[:, :1] + curve[:, -1:])
    above = (curve - half) * np.sign(curve[:, -1:] - curve[:, :1]) >= 0
    return grid[above.argmax(axis=1)]


def projected_response_ec50(mdata, features, degree: int, lo: float, hi: float) -> np.ndarray:
    """Response-scale EC50 of the best polynomial of ``degree`` to each true curve.

    The polynomial (in log dosage, on the log link) is fitted by least squares to the true
    link-scale curve over the cells' true dosages, weighted by the true mean (Poisson weights):
    what a polynomial fit converges to with unlimited cells. Its half-way crossing over
    ``[lo, hi]`` (the definition of the fitted EC50) against the truth's separates the
    polynomial's misspecification from posterior error.
    """
    dose = mdata.obs["true_dose"].to_numpy(np.float64)
    dose = dose[np.isfinite(dose) & (dose > 0)]
    centre, half = 0.5 * np.log(lo * hi), 0.5 * np.log(hi / lo)
    basis = np.stack([((np.log(dose) - centre) / half) ** d for d in range(degree + 1)], 1)
    grid = np.geomspace(lo, hi, 4001)
    on_grid = np.stack([((np.log(grid) - centre) / half) ** d for d in range(degree + 1)], 1)
    link = np.log(ds.datasets.true_curve(mdata, "rna", dose).loc[features].to_numpy())
    out = np.empty(len(features))
    for i, eta in enumerate(link):
        w = np.sqrt(np.exp(eta))
        beta = np.linalg.lstsq(basis * w[:, None], eta * w, rcond=None)[0]
        curve = np.exp(on_grid @ beta)
        half_way = 0.5 * (curve[0] + curve[-1])
        above = (curve - half_way) * np.sign(curve[-1] - curve[0]) >= 0
        out[i] = grid[above.argmax()]
    return out


def screen(seed: int, cells: int, genes: int, design: str = "two_line", cache: str | None = None):
    """Simulate and fit steps 1-2; with ``cache`` (a folder) the fitted screen is reused."""
    path = None if cache is None else Path(cache) / f"{design}_s{seed}_{cells}x{genes}.h5mu"
    if path is not None and path.exists():  # read back even when just written: same input
        return mudata.read_h5mu(path)
    mdata = ds.datasets.simulate_screen(
        n_cells=cells,
        n_genes=genes,
        n_junctions=0,
        n_isoform_genes=0,
        frac_responsive=0.25,
        seed=seed,
        **DESIGNS[design],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, seed=seed)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        mdata.write(path)
        return mudata.read_h5mu(path)
    return mdata


def coverage(mdata, function: str, seed: int, steps: int, key: str, **fit_kwargs) -> dict:
    start = time.perf_counter()
    kwargs = {"n_steps": steps} if steps else {}  # 0: the package default
    kwargs.update(fit_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_trans(mdata, function=function, seed=seed, test=False, key_added=key, **kwargs)
    seconds = time.perf_counter() - start
    res = ds.get.trans_results(mdata, key=key)
    var = mdata["rna"].var.loc[res.index]
    lo, hi = (float(v) for v in mdata.uns["dream_cis"]["dose_range"])
    sel = (
        res["fitted"].to_numpy(bool)
        & (var["true_function"] == "single_hill").to_numpy()
        & var["true_K1"].between(lo, hi).to_numpy()
    )
    resp = (
        res["fitted"].to_numpy(bool)
        & var["true_responsive"].to_numpy(bool)
        & var["true_K1"].between(lo, hi).to_numpy()
    )
    k_all = var["true_K1"].to_numpy()[resp]
    cover_all = (res["ec50_q05"].to_numpy()[resp] <= k_all) & (
        k_all <= res["ec50_q95"].to_numpy()[resp]
    )
    truth = var["true_K1"].to_numpy()[sel]
    r = res[sel]
    out = {
        "seed": seed,
        "function": function,
        "n": int(sel.sum()),
        "cover": float(((r["ec50_q05"] <= truth) & (truth <= r["ec50_q95"])).mean()),
        "err": float(np.median(np.exp(np.abs(np.log(r["ec50_mean"] / truth))))),
        "width": float(np.median(r["ec50_q95"] / r["ec50_q05"])),
        "n_all": int(resp.sum()),
        "cover_all": float(cover_all.mean()),
        "seconds": seconds,
    }
    if "refined" in r:
        out["refined"] = float(r["refined"].mean())
    if "ec50_response_mean" in r:
        t_lo, t_hi = (float(v) for v in mdata["rna"].uns[key]["dose_range"])
        t_resp = true_response_ec50(mdata, r.index, function, t_lo, t_hi)
        out["cover_resp"] = float(
            ((r["ec50_response_q05"] <= t_resp) & (t_resp <= r["ec50_response_q95"])).mean()
        )
        out["err_resp"] = float(
            np.nanmedian(np.exp(np.abs(np.log(r["ec50_response_mean"] / t_resp))))
        )
        out["width_resp"] = float(
            np.nanmedian(np.log2(r["ec50_response_q95"] / r["ec50_response_q05"]))
        )
        out.update(_cover_all_responders(mdata, res, function, t_lo, t_hi))
        if function == "polynomial":  # misspecification: the best polynomial's own EC50
            degree = int(mdata["rna"].uns[key]["params"]["degree"])
            proj = projected_response_ec50(mdata, r.index, degree, t_lo, t_hi)
            q05, q95 = r["ec50_response_q05"].to_numpy(), r["ec50_response_q95"].to_numpy()
            out["cover_proj"] = float(((q05 <= proj) & (proj <= q95)).mean())
            out["err_proj"] = float(np.median(np.exp(np.abs(np.log(proj / t_resp)))))
    return out


def _cover_all_responders(mdata, res, function: str, lo: float, hi: float) -> dict:
    """Response-scale coverage over every responder whose true response-scale EC50 exists."""
    var = mdata["rna"].var.loc[res.index]
    resp = res["fitted"].to_numpy(bool) & var["true_responsive"].to_numpy(bool)
    names = res.index[resp]
    if function == "single_hill":  # a closed form exists for single-Hill truths only
        names = names[(var.loc[names, "true_function"] == "single_hill").to_numpy()]
    truth = true_response_ec50(mdata, names, function, lo, hi)
    exists = (truth > lo * 1.0001) & (truth <= hi)  # a crossing inside the range
    r = res.loc[names[exists]]
    t = truth[exists]
    covered = (r["ec50_response_q05"] <= t) & (t <= r["ec50_response_q95"])
    return {"n_resp_all": int(exists.sum()), "cover_resp_all": float(covered.mean())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=4000)
    p.add_argument("--genes", type=int, default=300)
    p.add_argument("--steps", type=int, default=1000, help="trans steps (0: package default)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--functions", nargs="+", default=["single_hill", "additive_hill"])
    p.add_argument("--designs", nargs="+", default=["two_line"], choices=sorted(DESIGNS))
    p.add_argument(
        "--degree", type=int, default=None, help="polynomial degree (default: package's)"
    )
    p.add_argument("--no-refine", action="store_true", help="refine_intervals=False")
    p.add_argument(
        "--refine-polynomial",
        action="store_true",
        help="refine polynomial fits too (Curve.refine_default, off for polynomials)",
    )
    p.add_argument("--cache", help="folder of fitted screens (steps 1-2) to reuse across runs")
    p.add_argument("--csv", help="also write the coverage rows to this CSV")
    args = p.parse_args(argv)
    ds.settings.progress_bar = False
    if args.refine_polynomial:
        from dream_sc.models.curves import get_curve

        get_curve("polynomial").refine_default = True
    rows, doses = [], []
    for design in args.designs:
        for seed in args.seeds:
            mdata = screen(seed, args.cells, args.genes, design, args.cache)
            doses.append({"design": design, "seed": seed, **cell_metrics(mdata)})
            print(pd.DataFrame(doses[-1:]).to_string(index=False), flush=True)
            for function in args.functions:
                extra = {"refine_intervals": False} if args.no_refine else {}
                if args.degree is not None and function == "polynomial":
                    extra["degree"] = args.degree
                key = f"dream_trans_{function}"
                row = coverage(mdata, function, seed, args.steps, key, **extra)
                rows.append({"design": design, "degree": extra.get("degree"), **row})
                print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    fmt = {"index": False, "float_format": lambda v: f"{v:.3f}"}
    print(pd.DataFrame(doses).to_string(**fmt))
    print(pd.DataFrame(rows).to_string(**fmt))
    if args.csv:
        pd.DataFrame(rows).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
