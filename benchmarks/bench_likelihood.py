"""Micro-benchmark of the fused sparse-aware likelihoods against torch.distributions.

Times forward + backward (gradients w.r.t. all parameters) and reports, per variant, the median
wall-clock and CPU time over ``--repeats`` runs, the speed-up over the torch.distributions
baseline, and the extra resident memory (peak RSS sampled during the runs minus the RSS with the
inputs already built). Each variant runs in its own interpreter so peaks do not mix; CPU time is
the more stable number on a loaded machine.

Usage::

    python benchmarks/bench_likelihood.py --cells 10000 --genes 2000 --zeros 0.8 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import psutil
import torch

from dream_sc.models import likelihoods as lk
from dream_sc.models.sparse import CSRMatrix, SparseCounts, paired_sparse


# ----------------------------------------------------------------------------- data
def nb_data(cells: int, genes: int, zeros: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    eta = (rng.normal(0.0, 1.0, genes)[None, :] + rng.normal(0.0, 0.5, (cells, genes))).astype(
        np.float32
    )
    log_r = rng.normal(1.0, 1.0, genes).astype(np.float32)
    nonzero = rng.random((cells, genes)) >= zeros
    y = np.where(nonzero, 1 + rng.poisson(np.exp(eta)), 0).astype(np.float32)
    return {"eta": eta, "log_r": log_r, "y": y}


def binomial_data(cells: int, junctions: int, zeros: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (cells, junctions)).astype(np.float32)
    n = np.where(
        rng.random((cells, junctions)) >= zeros, 1 + rng.poisson(4.0, (cells, junctions)), 0
    )
    k = rng.binomial(n, 1.0 / (1.0 + np.exp(-logits.astype(np.float64))))
    return {"logits": logits, "k": k.astype(np.float32), "n": n.astype(np.float32)}


def multinomial_data(cells: int, groups: int, zeros: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, groups)  # 1..8 isoforms per gene
    group = np.repeat(np.arange(groups), sizes)
    n_cat = group.size
    eta = rng.normal(0.0, 1.5, (cells, n_cat)).astype(np.float32)
    y = np.where(rng.random((cells, n_cat)) >= zeros, 1 + rng.poisson(2.0, (cells, n_cat)), 0)
    return {"eta": eta, "y": y.astype(np.float32), "group": group, "sizes": sizes}


# ----------------------------------------------------------------------------- variants
def _leaf(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, requires_grad=True)


def nb_variants(d: dict[str, np.ndarray]) -> dict[str, Callable[[], Callable[[], None]]]:
    """Each entry builds its inputs (untimed) and returns the timed closure."""

    def torch_dist():
        eta, log_r, y = _leaf(d["eta"]), _leaf(d["log_r"]), torch.tensor(d["y"])

        def run():
            r = log_r.exp()
            dist = torch.distributions.NegativeBinomial(
                total_count=r, logits=eta - log_r, validate_args=False
            )
            torch.autograd.grad(dist.log_prob(y).sum(), (eta, log_r))

        return run

    def fused(y_kind: str):
        def build():
            eta, log_r = _leaf(d["eta"]), _leaf(d["log_r"])
            y = torch.tensor(d["y"])
            csr = CSRMatrix.from_scipy(d["y"])
            idx = torch.arange(d["y"].shape[0])
            y_in = SparseCounts.from_dense(y) if y_kind == "sparse" else y

            def run():
                counts = csr.take_rows(idx) if y_kind == "csr" else y_in
                torch.autograd.grad(lk.negbinom_log_prob(eta, log_r, counts).sum(), (eta, log_r))

            return run

        return build

    return {
        "torch.distributions.NegativeBinomial": torch_dist,
        "negbinom_log_prob (dense y)": fused("dense"),
        "negbinom_log_prob (SparseCounts)": fused("sparse"),
        "negbinom_log_prob (CSR take_rows + SparseCounts)": fused("csr"),
    }


def binomial_variants(d: dict[str, np.ndarray]) -> dict[str, Callable[[], Callable[[], None]]]:
    def torch_dist():
        logits, k, n = _leaf(d["logits"]), torch.tensor(d["k"]), torch.tensor(d["n"])

        def run():
            dist = torch.distributions.Binomial(total_count=n, logits=logits, validate_args=False)
            torch.autograd.grad(dist.log_prob(k).sum(), (logits,))

        return run

    def fused(sparse: bool):
        def build():
            logits = _leaf(d["logits"])
            if sparse:
                k, n = paired_sparse(d["k"], d["n"])
            else:
                k, n = torch.tensor(d["k"]), torch.tensor(d["n"])

            def run():
                torch.autograd.grad(lk.binomial_log_prob(logits, k, n).sum(), (logits,))

            return run

        return build

    return {
        "torch.distributions.Binomial": torch_dist,
        "binomial_log_prob (dense k, n)": fused(False),
        "binomial_log_prob (paired SparseCounts)": fused(True),
    }


def multinomial_variants(d: dict[str, np.ndarray]) -> dict[str, Callable[[], Callable[[], None]]]:
    group, sizes = torch.tensor(d["group"]), d["sizes"]
    n_groups, k_max = len(sizes), int(sizes.max())
    # position of each category inside its group, for the padded baseline
    slot = torch.tensor(np.arange(group.numel()) - np.repeat(np.cumsum(sizes) - sizes, sizes))

    def torch_dist():
        eta, y = _leaf(d["eta"]), torch.tensor(d["y"])
        cells = eta.shape[0]
        y_pad = torch.zeros(cells, n_groups, k_max)
        y_pad[:, group, slot] = y

        def run():
            logits = torch.full((cells, n_groups, k_max), -torch.inf)
            logits[:, group, slot] = eta  # padded categories stay at -inf
            dist = torch.distributions.Multinomial(logits=logits, validate_args=False)
            torch.autograd.grad(dist.log_prob(y_pad).sum(), (eta,))

        return run

    def fused(sparse: bool):
        def build():
            eta = _leaf(d["eta"])
            y = SparseCounts.from_scipy(d["y"]) if sparse else torch.tensor(d["y"])

            def run():
                ll = lk.multinomial_log_prob(eta, y, group, n_groups)
                torch.autograd.grad(ll.sum(), (eta,))

            return run

        return build

    return {
        "torch.distributions.Multinomial (padded to max group)": torch_dist,
        "multinomial_log_prob (dense y)": fused(False),
        "multinomial_log_prob (SparseCounts)": fused(True),
    }


# ----------------------------------------------------------------------------- harness
FAMILIES = {
    "negbinom": (lambda a: nb_data(a.cells, a.genes, a.zeros, a.seed), nb_variants),
    "binomial": (
        lambda a: binomial_data(a.cells, a.junctions, a.junction_zeros, a.seed),
        binomial_variants,
    ),
    "multinomial": (
        lambda a: multinomial_data(a.cells, a.isoform_genes, a.isoform_zeros, a.seed),
        multinomial_variants,
    ),
}


class PeakRSS:
    """Sample the process RSS every few milliseconds in a background thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_one(args: argparse.Namespace) -> None:
    """Child mode: time one variant and print its median time and memory as JSON."""
    family, name = args.run.split("::", 1)
    make_data, make_variants = FAMILIES[family]
    d = make_data(args)
    run = make_variants(d)[name]()
    gc.collect()
    base = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        run()  # warm-up
        times, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    result = {
        "median": statistics.median(times),
        "cpu": statistics.median(cpu),
        "extra_rss_mib": (rss.peak - base) / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
    }
    print(json.dumps(result))


def measure(family: str, name: str) -> dict[str, float]:
    """Run one variant in a fresh interpreter so peak RSS and thread pools do not mix."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--run", f"{family}::{name}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(family: str, title: str, variants) -> None:
    print(f"\n== {title}")
    print(
        f"{'variant':<50} {'wall s':>7} {'speed-up':>8} {'cpu s':>7} {'speed-up':>8} "
        f"{'extra RSS MiB':>13}"
    )
    base = None
    for name in variants:
        res = measure(family, name)
        base = base or res
        print(
            f"{name:<50} {res['median']:>7.3f} {base['median'] / res['median']:>7.1f}x "
            f"{res['cpu']:>7.3f} {base['cpu'] / res['cpu']:>7.1f}x {res['extra_rss_mib']:>13.0f}",
            flush=True,
        )


def check_agreement(d: dict[str, np.ndarray]) -> float:
    """Max relative |fused - torch.distributions| per feature (float64, constants included)."""
    eta, log_r, y = (torch.tensor(d[k], dtype=torch.float64) for k in ("eta", "log_r", "y"))
    ref = torch.distributions.NegativeBinomial(log_r.exp(), logits=eta - log_r).log_prob(y).sum(0)
    got = lk.negbinom_log_prob(eta, log_r, SparseCounts.from_dense(y), include_constant=True)
    return float(((got - ref).abs() / ref.abs()).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--zeros", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--junctions", type=int, default=2000)
    parser.add_argument("--junction-zeros", type=float, default=0.9)
    parser.add_argument("--isoform-genes", type=int, default=700)
    parser.add_argument("--isoform-zeros", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # child mode: FAMILY::VARIANT
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        run_one(args)
        return
    print(f"torch {torch.__version__}, threads={args.threads}, repeats={args.repeats}")

    d = FAMILIES["negbinom"][0](args)
    print(
        f"negbinom: {args.cells} x {args.genes}, zeros={np.mean(d['y'] == 0):.2f}, "
        f"max relative deviation from torch.distributions (float64) = {check_agreement(d):.1e}"
    )
    report("negbinom", "negative binomial, forward + backward", nb_variants(d))

    d = FAMILIES["binomial"][0](args)
    print(f"\nbinomial: {args.cells} x {args.junctions}, zero trials={np.mean(d['n'] == 0):.2f}")
    report("binomial", "binomial, forward + backward", binomial_variants(d))

    d = FAMILIES["multinomial"][0](args)
    print(
        f"\nmultinomial: {args.cells} cells x {d['group'].size} categories in "
        f"{args.isoform_genes} groups (1-{d['sizes'].max()} each), zeros={np.mean(d['y'] == 0):.2f}"
    )
    report("multinomial", "multinomial, forward + backward", multinomial_variants(d))


if __name__ == "__main__":
    main()
