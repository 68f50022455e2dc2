"""The significance statistic and null on simulated designs, with steps 1-2 replaced by truth.

Scores every screen with :mod:`dream_sc.models.null` (50 within-line permutations, knockoff+
q-values), using each cell's guide-level dosage (log of its guide's true dosage, variance
``dose_noise^2``) and the true NB dispersion instead of the fits of steps 1 and 2 - seconds per
screen instead of minutes. Compares the AUROC of ``score`` with the naive guide-level F-test
(``naive_baseline.py``, true technical effects). ``--confounded`` pools the group intercepts
(the group-level association left to the dose term) to show the failure mode of issue 14.

Usage::

    python benchmarks/significance_proxy.py --designs two_line one_line --frac 0.25 --seeds 3
    python benchmarks/significance_proxy.py --designs two_line one_line skewed --frac 0 --seeds 5
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naive_baseline import naive_fit, technical_effects  # noqa: E402

import dream_sc as ds  # noqa: E402
from dream_sc.models.null import dose_basis, exchangeability, null_model, score_statistics  # noqa: E402
from dream_sc.models.significance import decoy_qvalues, permute_within_groups  # noqa: E402

DESIGNS = {
    "two_line": {"guide_design": "line_specific", "guides_per_target": 2, "dose_noise": 0.7},
    "one_line": {},
    "one_line2": {"guides_per_target": 2, "dose_noise": 0.7},
    "skewed": {"guide_mix_skew": 1.5},
}


def run(design, seed, frac, *, confounded=False, n_cells=4000, n_perm=50, degree=2) -> dict:
    m = ds.datasets.simulate_screen(
        n_cells=n_cells, n_genes=300, n_junctions=0, n_isoform_genes=0,
        frac_responsive=frac, seed=seed, **DESIGNS[design],
    )  # fmt: skip
    rna = m["rna"]
    keep = rna.var["true_function"].to_numpy() != "cis"
    y = rna.X.toarray()[:, keep]
    g = m.obs["cell_line"].cat.codes.to_numpy()
    onehot = np.ones((len(g), 1)) if confounded else np.eye(2)[g]
    guides = m.uns["truth"]["guides"]
    log_x = np.log(guides["dose"].reindex(m.obs["guide"].astype(str)).to_numpy())
    var = np.full(len(log_x), (m.uns["truth"]["dose_noise"] * np.log(2)) ** 2)
    phi = rna.var["true_dispersion"].to_numpy()[keep]
    sf = m.obs["sum_factor"].to_numpy()
    model = null_model("negbinom", y, onehot, log_sf=np.log(sf), log_r=-np.log(phi))
    basis = dose_basis(log_x, var, degree=degree)
    perms = [permute_within_groups(g, np.random.SeedSequence(seed), k) for k in range(n_perm)]
    stats = score_statistics(model, onehot, [basis] + [basis[p] for p in perms])
    real, null = stats[0], stats[1:]
    truth = rna.var["true_responsive"].to_numpy(bool)[keep]
    called = decoy_qvalues(real, null.ravel(), n_perm) < 0.1
    check = exchangeability(real, null)
    out = {
        "design": design, "seed": seed, "n_true": int(truth.sum()),
        "true_calls": int((called & truth).sum()), "false_calls": int((called & ~truth).sum()),
        "top_share": round(check.top_share, 2), "lower_share": round(check.lower_share, 2),
        "passed": check.passed, "null_q99": round(float(np.quantile(null, 0.99)), 1),
    }  # fmt: skip
    if 0 < truth.sum() < len(truth):
        out["auroc"] = round(roc_auc_score(truth, real), 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            naive = naive_fit(m, cis_feature="GFI1B", technical=technical_effects(m))
        p = naive.genes["pvalue"].reindex(rna.var_names[keep]).to_numpy()
        out["auroc_naive"] = round(roc_auc_score(truth, -np.nan_to_num(p, nan=1.0)), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--designs", nargs="+", default=["two_line"], choices=sorted(DESIGNS))
    p.add_argument("--frac", type=float, default=0.25)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--degree", type=int, default=2)
    p.add_argument("--confounded", action="store_true")
    args = p.parse_args(argv)
    rows = [
        run(d, s, args.frac, confounded=args.confounded, degree=args.degree)
        for d in args.designs
        for s in range(args.seeds)
    ]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
