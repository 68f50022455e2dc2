"""Cost of one trans SVI step's likelihood work: the fused sweep against autograd.

For a minibatch of cells x features of NB counts and a Hill curve with dosage variance, times
forward + backward (gradients with respect to every curve parameter) of

- ``nb only``: the fused NB likelihood alone, from a fixed linear predictor (the floor: one
  likelihood pass);
- ``autograd``: ``evaluate_curve`` + ``negbinom_log_prob`` through torch autograd (the path of
  every family without a fused sweep);
- ``fused sweep``: :func:`dream_sc.models.fused.hill_negbinom_log_likelihood`.

and prints each one's ratio to ``nb only`` (issue 17's target: a step within 2x of one fused
likelihood pass).

Usage::

    python benchmarks/bench_trans_step.py --batch 1024 --genes 2000 --density 0.2 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.sparse as sp
import torch

from dream_sc.models.curves import evaluate_curve
from dream_sc.models.families.negbinom import negbinom_log_prob
from dream_sc.models.fused import FusedCells, hill_negbinom_log_likelihood
from dream_sc.models.sparse import CSRMatrix

LOG_X_REF = 0.7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20000, help="cells in the data")
    parser.add_argument("--batch", type=int, default=1024, help="cells per step")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--density", type=float, default=0.2, help="fraction of non-zeros")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, t = args.cells, args.genes
    y_sp = sp.random(n, t, density=args.density, random_state=0, format="csr")
    y_sp.data = np.ceil(y_sp.data * 5)
    y = CSRMatrix.from_scipy(y_sp)
    delta = torch.randn(2, t) * 0.3
    group = torch.as_tensor(rng.integers(0, 2, n))
    log_sf, log_x = torch.randn(n) * 0.2, torch.randn(n) + 1.0
    log_x_var, log_r = torch.rand(n) * 0.3, torch.randn(t)
    cells = FusedCells(
        y,
        delta=delta,
        group=group,
        log_sf=log_sf,
        log_x=log_x,
        log_x_var=log_x_var,
        log_x_ref=LOG_X_REF,
        log_r=log_r,
    )
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch} x {t} genes, "
        f"density {args.density}"
    )
    for function in ("single_hill", "additive_hill"):
        p = {"eta_ref": torch.randn(t), "v1": torch.randn(t), "log_k1": torch.randn(t) + 1}
        p["n1"] = torch.rand(t) * 3 + 0.3
        if function == "additive_hill":
            p.update(v2=torch.randn(t), log_k2=p["log_k1"] + 0.5, n2=torch.rand(t) * 3 + 0.3)
        for value in p.values():
            value.requires_grad_(True)

        def offset(rows):
            return delta[group[rows]] + log_sf[rows, None]

        def nb_only(rows):
            eta = offset(rows).requires_grad_(True)
            negbinom_log_prob(eta, log_r, y.take_rows(rows)).sum().backward()

        def autograd(rows, function=function, p=p):
            curve = evaluate_curve(function, p, log_x[rows], LOG_X_REF, 3.0, log_x_var[rows], "log")
            negbinom_log_prob(curve + offset(rows), log_r, y.take_rows(rows)).sum().backward()

        def fused(rows, function=function, p=p):
            hill_negbinom_log_likelihood(function, p, cells.at(rows)).backward()

        timings = {}
        for name, step in (("nb only", nb_only), ("autograd", autograd), ("fused sweep", fused)):
            step(torch.arange(args.batch))
            times = []
            for _ in range(args.repeats):
                rows = torch.as_tensor(rng.choice(n, args.batch, replace=False))
                start = time.perf_counter()
                step(rows)
                times.append(time.perf_counter() - start)
            timings[name] = statistics.median(times)
        entries = args.batch * t
        for name, sec in timings.items():
            print(
                f"{function:<14} {name:<12} {sec * 1e3:7.1f} ms  {sec / entries * 1e9:6.1f} ns/entry"
                f"  {sec / timings['nb only']:4.1f}x one likelihood pass"
            )


if __name__ == "__main__":
    main()
