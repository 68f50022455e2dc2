"""Peak memory and time of ``ds.get.screen_results`` on a saved, fitted screen.

Reads a screen fitted with ``ds.tl.fit_screen`` (an ``.h5mu`` file) and builds its screen-wide
table once, printing the seconds, the peak RSS above the loaded MuData (sampled every 20 ms),
the table's bytes per (target, feature) pair (``memory_usage(deep=True)``) and the same
figures extrapolated to the issue's 3,999,500 pairs (500 targets x 7,999 genes)::

    python benchmarks/bench_screen_table.py /tmp/screen.h5mu
    python benchmarks/bench_screen_table.py /tmp/screen.h5mu --columns target feature \\
        screen_qvalue significant_screen ec50_mean
    python benchmarks/bench_screen_table.py /tmp/screen.h5mu --trace   # + tracemalloc peak

One table per process: memory freed by one build stays with the process and would hide the
next build's peak. The extrapolation assumes what the issue's screen has per pair: the same
columns and the same number of permutations (the pooled null is counted, never copied, when
every target has the same number; its blocks do not grow with the screen).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _metrics import PeakRSS  # noqa: E402

import dream_sc as ds  # noqa: E402

FULL_SIZE_PAIRS = 500 * 7_999


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", type=Path, help="a screen fitted with ds.tl.fit_screen (.h5mu)")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--columns", nargs="+", default=None, help="screen_results(columns=)")
    p.add_argument("--trace", action="store_true", help="also the tracemalloc peak (slower)")
    args = p.parse_args(argv)

    import mudata
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    mdata = mudata.read_h5mu(args.path)
    load_seconds = time.perf_counter() - t0
    gc.collect()
    if args.trace:
        tracemalloc.start()
    with PeakRSS(interval=0.02) as mem:
        table = ds.get.screen_results(mdata, alpha=args.alpha, columns=args.columns)
    traced = tracemalloc.get_traced_memory()[1] if args.trace else None
    n = len(table)
    per_pair = table.memory_usage(deep=True, index=False).sum() / n
    peak_pair = (mem.peak - mem.start) / n
    record = mdata.uns["dream_screen"]
    null = mdata["rna"].uns[str(record["trans_keys"][0])]["null_scores"]
    print(
        f"## bench_screen_table: {args.path.name}, {len(record['targets'])} targets, {n:,} pairs, "
        f"{null.shape[0]} permutations, columns {'all' if args.columns is None else args.columns}"
    )
    print(f"- read_h5mu {load_seconds:.1f} s, RSS after reading {mem.start / 1e9:.2f} GB")
    print(
        f"- screen_results {mem.seconds:.1f} s ({mem.seconds / n * 1e6:.2f} us per pair), "
        f"load {mem.load[0]:.2f} -> {mem.load[1]:.2f}"
    )
    print(
        f"- table {per_pair:.0f} bytes per pair ({table.shape[1]} columns; "
        f"{sum(str(d) == 'category' for d in table.dtypes)} categorical); peak RSS above the "
        f"MuData {(mem.peak - mem.start) / 1e9:.3f} GB = {peak_pair:.0f} bytes per pair"
        + ("" if traced is None else f"; tracemalloc peak {traced / n:.0f} bytes per pair")
    )
    print(
        f"- at {FULL_SIZE_PAIRS:,} pairs: table {per_pair * FULL_SIZE_PAIRS / 1e9:.2f} GB, peak "
        f"above the MuData {peak_pair * FULL_SIZE_PAIRS / 1e9:.2f} GB, "
        f"{mem.seconds / n * FULL_SIZE_PAIRS:.0f} s (if time stays linear in pairs)"
    )


if __name__ == "__main__":
    main()
