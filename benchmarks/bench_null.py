"""Cost of the conditional-randomisation null (the significance step) at benchmark scale.

Builds a negative-binomial screen of ``--cells`` x ``--genes`` (two technical groups, sparse
counts like ``simulate_screen``'s) and times exactly what ``tl.test_trans`` adds to a fit: the
no-dose model of every feature chunk and the scores of the real and ``--permutations`` permuted
dosages (:func:`dream_sc.tl._null.rescore` without the job around it). Compare with the time of
``fit_trans(test=False)`` from ``bench_pipeline.py`` on the same machine.

Usage::

    python benchmarks/bench_null.py --cells 20000 --genes 2000 --permutations 50
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scipy import sparse

from dream_sc.engine.memory import feature_chunks
from dream_sc.models.null import dose_basis, null_model, score_statistics
from dream_sc.models.significance import permute_within_groups
from dream_sc.tl._null import _DENSE_BUDGET, _PERMUTATION_BLOCK


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=20000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--permutations", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, t = args.cells, args.genes
    group = rng.integers(0, 2, n)
    sf = np.exp(rng.normal(0, 0.3, n))
    mu = np.exp(rng.normal(-1.0, 1.5, t))
    X = sparse.csc_matrix(rng.poisson(sf[:, None] * mu[None, :]).astype(np.float32))
    log_x = rng.normal(0, 1, n)
    onehot = np.eye(2)[group]
    start, cpu = time.perf_counter(), time.process_time()
    basis = dose_basis(log_x, np.full(n, 0.1))
    perms = [
        permute_within_groups(group, np.random.SeedSequence(0), k) for k in range(args.permutations)
    ]
    width = max(1, _DENSE_BUDGET // n)
    for idx in feature_chunks(t, width):
        y = X[:, idx].toarray().astype(np.float64)
        model = null_model("negbinom", y, onehot, log_sf=np.log(sf), log_r=np.full(len(idx), 2.0))
        score_statistics(model, onehot, [basis])
        for s in range(0, len(perms), _PERMUTATION_BLOCK):
            score_statistics(model, onehot, [basis[q] for q in perms[s : s + _PERMUTATION_BLOCK]])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    load = os.getloadavg()[0]
    print(
        f"{n} cells x {t} genes, {args.permutations} permutations: {seconds:.1f} s wall, "
        f"{cpu:.1f} s CPU (1-min load average at the end {load:.1f})"
    )


if __name__ == "__main__":
    main()
