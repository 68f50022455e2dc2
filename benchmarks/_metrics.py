"""Metric helpers shared by the benchmark scripts (accuracy against the simulator's truth).

Plain numpy/scipy so they can be tested on hand-made inputs (``tests/test_benchmark_helpers.py``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import psutil
from scipy.stats import rankdata, spearmanr


# ----------------------------------------------------------------------------- accuracy
def spearman(estimate: Sequence[float], truth: Sequence[float]) -> float:
    """Spearman correlation over the pairs where both values are finite (NaN if < 3 pairs)."""
    est = np.asarray(estimate, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(est) & np.isfinite(tru)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(est[ok], tru[ok]).statistic)


def median_abs_log2_error(estimate: Sequence[float], truth: Sequence[float]) -> float:
    """Median of ``|log2(estimate) - log2(truth)|`` over positive finite pairs.

    Non-positive estimates (e.g. a naive per-cell dosage from zero counts without pseudocount)
    have an infinite log error and are counted as such, not dropped.
    """
    est = np.asarray(estimate, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(est) & np.isfinite(tru) & (tru > 0)
    if not ok.any():
        return float("nan")
    est, tru = est[ok], tru[ok]
    with np.errstate(divide="ignore"):
        err = np.where(est > 0, np.abs(np.log2(np.where(est > 0, est, 1.0)) - np.log2(tru)), np.inf)
    return float(np.median(err))


def median_relative_error(fitted: np.ndarray, truth: np.ndarray, *, axis: int | None = None):
    """Median of ``|fitted - truth| / truth`` (over ``axis``; all entries when ``None``)."""
    fit = np.asarray(fitted, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    rel = np.abs(fit - tru) / np.abs(tru)
    return np.nanmedian(rel, axis=axis)


# ----------------------------------------------------------------------------- detection
def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney form, ties count one half).

    NaN scores are treated as the lowest score (a feature a method cannot score is not
    detected). NaN when only one class is present.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isfinite(s), s, -np.inf)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks: ties share
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pvalue_ranking(pvalues: Sequence[float], tie_break: Sequence[float]) -> np.ndarray:
    """A ranking score (higher = more significant) from p-values, ties broken by another score.

    Permutation p-values are discrete: every feature scoring above all null scores shares the
    smallest p-value. This orders by p-value first and by ``tie_break`` (e.g. the test
    statistic) within equal p-values, and returns the resulting rank (NaN p-values rank lowest,
    equal pairs share a rank) for :func:`auroc` and :func:`power_at_fdr`.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    t = np.asarray(tie_break, dtype=np.float64)
    p = np.where(np.isfinite(p), p, np.inf)
    t = np.where(np.isfinite(t), t, -np.inf)
    order = np.lexsort((t, -p))  # ascending: worst first
    key = np.column_stack([-p[order], t[order]])
    new = np.r_[True, np.any(key[1:] != key[:-1], axis=1)]
    ranks = np.empty(len(p))
    ranks[order] = np.cumsum(new)
    return ranks


def discoveries(
    qvalues: Sequence[float], labels: Sequence[bool] | None = None, *, alpha: float = 0.1
):
    """Number of discoveries ``q < alpha`` and the realised false discovery proportion.

    Returns ``(n_discoveries, n_false, fdp)``; ``fdp`` is 0 with no discoveries and NaN when no
    ``labels`` (truth: True = responsive) are given.
    """
    q = np.asarray(qvalues, dtype=np.float64)
    hit = np.isfinite(q) & (q < alpha)
    n = int(hit.sum())
    if labels is None:
        return n, -1, float("nan")
    y = np.asarray(labels, dtype=bool)
    false = int((hit & ~y).sum())
    return n, false, (false / n if n else 0.0)


def power(qvalues: Sequence[float], labels: Sequence[bool], *, alpha: float = 0.1) -> float:
    """Fraction of true positives (``labels``) with ``q < alpha``."""
    q = np.asarray(qvalues, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if not y.any():
        return float("nan")
    return float((np.isfinite(q) & (q < alpha) & y).sum() / y.sum())


def power_at_fdr(labels: Sequence[bool], scores: Sequence[float], *, level: float = 0.1) -> float:
    """Power of the best score threshold whose realised FDR is at most ``level`` (an oracle).

    Ranks by score (higher = more significant; NaN lowest), cuts only between distinct score
    values, and returns the largest true-positive fraction among cuts whose false discovery
    proportion is ``<= level``: the power a method would have if its calls were perfectly
    calibrated. It compares rankings at the operating point screens are read at, where a
    method's own q-values may be too liberal or too strict.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isfinite(s), s, -np.inf)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    true_pos = np.cumsum(y)
    called = np.arange(1, len(y) + 1)
    last_of_tie = np.r_[s[1:] != s[:-1], True] & np.isfinite(s)
    ok = last_of_tie & ((called - true_pos) <= level * called)
    return float(true_pos[ok].max() / y.sum()) if ok.any() else 0.0


# ----------------------------------------------------------------------------- resources
class PeakRSS:
    """Context manager sampling this process's RSS in a background thread.

    ``peak_gb`` is the largest RSS seen while inside (sampled every ``interval`` seconds plus at
    entry and exit), ``start_gb`` the RSS at entry, ``seconds`` the wall time,
    ``cpu_seconds`` the CPU time of this process (user + system, all threads) and ``load`` the
    1-minute load average at entry and exit. Other processes on a shared machine inflate wall
    times (record the load next to every number); CPU time is much less affected.

    With ``tree=True`` the RSS is summed over this process and all its descendants (worker
    processes of ``n_jobs``; pages they share are counted once per process, so this is an
    upper bound) and ``cpu_seconds`` adds the descendants' CPU time as last sampled (up to one
    ``interval`` of a descendant's last work can be missed).

    Examples
    --------
    >>> with PeakRSS() as mem:
    ...     x = bytearray(50_000_000)
    >>> mem.peak_gb >= mem.start_gb
    True
    """

    def __init__(self, interval: float = 0.05, *, tree: bool = False) -> None:
        self.interval = interval
        self.tree = tree
        self._child_cpu: dict[int, float] = {}
        #: peak RSS (kernel high-water mark) of every descendant seen: pid -> (kind, bytes)
        self.descendant_peaks: dict[int, tuple[str, int]] = {}
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0
        self.start = 0
        self.seconds = float("nan")
        self.cpu_seconds = float("nan")
        self.load: tuple[float, float] = (float("nan"), float("nan"))

    def _rss(self) -> int:
        """RSS of this process, plus all its descendants' when ``tree`` (worker processes).

        Also records each descendant's CPU time as last seen: worker processes started by a
        forkserver are not this process's children, so ``RUSAGE_CHILDREN`` never counts them.
        """
        total = self._proc.memory_info().rss
        if self.tree:
            for child in self._proc.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    total += rss
                    times = child.cpu_times()
                    self._child_cpu[child.pid] = times.user + times.system
                    peak = max(rss, _high_water_mark(child.pid))
                    kind, seen = self.descendant_peaks.get(child.pid, (None, 0))
                    if kind is None:
                        kind = _process_kind(child)
                    self.descendant_peaks[child.pid] = (kind, max(seen, peak))
                except psutil.Error:  # the child ended between listing and reading
                    pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._rss()  # also records running descendants' CPU so far
        self._load0 = os.getloadavg()[0]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._cpu0 = self._cpu()
        self._t0 = time.perf_counter()
        return self

    def _cpu(self) -> float:
        times = self._proc.cpu_times()
        cpu = times.user + times.system
        if self.tree:  # descendants as last sampled (CPU before entry subtracted)
            cpu += sum(self._child_cpu.values())
        return cpu

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = self._cpu() - self._cpu0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.load = (self._load0, os.getloadavg()[0])

    @property
    def peak_gb(self) -> float:
        """Peak RSS in GB."""
        return self.peak / 1e9

    @property
    def start_gb(self) -> float:
        """RSS at entry in GB."""
        return self.start / 1e9

    def worker_peaks_gb(self, kinds: tuple[str, ...] = ("worker",)) -> list[float]:
        """Peak RSS (GB, largest first) of the descendants of these kinds (:func:`_process_kind`).

        Each descendant's own peak (the kernel's high-water mark ``VmHWM`` as last sampled,
        pages shared with its parent included), unlike :attr:`peak`, which sums the tree.
        """
        peaks = [b / 1e9 for kind, b in self.descendant_peaks.values() if kind in kinds]
        return sorted(peaks, reverse=True)


def _high_water_mark(pid: int) -> int:
    """Peak resident memory of process ``pid`` in bytes (``VmHWM``; 0 where not readable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _process_kind(proc: psutil.Process) -> str:
    """``"forkserver"``, ``"worker"`` (a process that fits targets) or ``"other"``.

    n_jobs workers are forked by the forkserver (their command line is the forkserver's);
    a LocalCluster's dask workers (and n_jobs workers without a forkserver) are spawned
    (``multiprocessing.spawn``; the nannies run inside the calling process).
    """
    try:
        cmd = " ".join(proc.cmdline())
        parent = proc.parent()
        parent_cmd = " ".join(parent.cmdline()) if parent is not None else ""
    except psutil.Error:
        return "other"
    if "multiprocessing.forkserver" in cmd:
        return "worker" if "multiprocessing.forkserver" in parent_cmd else "forkserver"
    if "multiprocessing.spawn" in cmd:
        return "worker"
    return "other"


# ----------------------------------------------------------------------------- tables
def markdown_table(frame: pd.DataFrame, *, floatfmt: str = ".3g") -> str:
    """A DataFrame as a GitHub markdown table (index as first column), without ``tabulate``."""

    def fmt(v) -> str:
        if isinstance(v, float | np.floating):
            return "nan" if not np.isfinite(v) else format(float(v), floatfmt)
        return str(v)

    head = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    rows = [
        [str(i)] + [fmt(v) for v in row]
        for i, row in zip(frame.index, frame.to_numpy(), strict=True)
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
