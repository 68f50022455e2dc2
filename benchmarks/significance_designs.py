"""Power, realised FDR and null exchangeability of ``qvalue`` on simulated screen designs.

Designs:

- ``two_line``: CRISPRi guides in one cell line, CRISPRa guides in the other, shared NTC guides
  (``simulate_screen(guide_design="line_specific")``), the cell line as technical group - the
  group carries dosage information;
- ``one_line``: the default shared design (every guide in every line);
- ``skewed``: shared guides with unequal guide mixes across lines (``guide_mix_skew``).

Per screen it prints the true / false calls at ``qvalue < 0.1``, the realised FDR, the AUROC of
``score`` and ``prob_dose_dependent``, the exchangeability check and the null-vs-real-flat score
quantiles (known truth), plus the time of the fit and of the significance step.

Usage::

    python benchmarks/significance_designs.py --design two_line --seeds 0 1 2
    python benchmarks/significance_designs.py --design two_line --null-screen --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

import dream_sc as ds

DESIGNS = {
    "two_line": {"guide_design": "line_specific", "guides_per_target": 2, "dose_noise": 0.7},
    "one_line": {},
    "skewed": {"guide_mix_skew": 1.5},
}


def run_screen(args: argparse.Namespace, seed: int) -> dict:
    frac = 0.0 if args.null_screen else args.frac_responsive
    mdata = ds.datasets.simulate_screen(
        n_cells=args.cells,
        n_genes=args.genes,
        n_junctions=0,
        n_isoform_genes=0,
        frac_responsive=frac,
        seed=seed,
        **DESIGNS[args.design],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, seed=seed)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=seed)
        start = time.perf_counter()
        ds.tl.fit_trans(
            mdata, seed=seed, test=False, n_steps=args.steps, refine_intervals=args.refine
        )
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ds.tl.test_trans(mdata)
        test_seconds = time.perf_counter() - start
    res = ds.get.trans_results(mdata)
    res = res[res["fitted"]]
    truth = mdata["rna"].var.loc[res.index, "true_responsive"].to_numpy(bool)
    called = res["qvalue"].to_numpy() < 0.1
    record = mdata["rna"].uns["dream_trans"]
    null = np.asarray(record["null_scores"]).ravel()
    out = {
        "design": args.design,
        "seed": seed,
        "n_true": int(truth.sum()),
        "true_calls": int((called & truth).sum()),
        "false_calls": int((called & ~truth).sum()),
        "power": float((called & truth).sum() / max(truth.sum(), 1)),
        "fdr": float((called & ~truth).sum() / max(called.sum(), 1)),
        "null_q99": float(np.quantile(null, 0.99)),
        "flat_max": float(res.loc[~truth, "score"].max()),
        "fit_s": fit_seconds,
        "test_s": test_seconds,
    }
    if 0 < truth.sum() < len(truth):
        out["auroc_score"] = roc_auc_score(truth, res["score"])
        out["auroc_prob"] = roc_auc_score(truth, res["prob_dose_dependent"])
    check = record.get("exchangeability")
    if check is not None:
        out["top_share"] = float(check["top_share"])
        out["exch_ok"] = bool(check["passed"])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--design", choices=sorted(DESIGNS), default="two_line")
    p.add_argument("--cells", type=int, default=4000)
    p.add_argument("--genes", type=int, default=300)
    p.add_argument("--frac-responsive", type=float, default=0.25)
    p.add_argument("--null-screen", action="store_true", help="frac_responsive = 0")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--refine", action="store_true", help="refine intervals (off: faster)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    ds.settings.progress_bar = False
    rows = []
    for seed in args.seeds:
        rows.append(run_screen(args, seed))
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
