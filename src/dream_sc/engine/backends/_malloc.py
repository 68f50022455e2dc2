"""glibc ``malloc`` settings for the processes that run dream_sc tasks.

``dask.distributed``'s nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (so that
workers hand freed memory back to the system). Setting any of glibc's thresholds switches off
its dynamic mmap threshold, which stays at 128 KiB: every tensor of a chunk fit is then a fresh
``mmap`` whose pages are faulted in anew at every optimisation step. Measured on the 2-core
machine of ``benchmarks/bench_dask.py``: chunk fits 1.6-2.3x slower than the same fits in the
calling process. Raising the mmap threshold to :data:`MMAP_THRESHOLD` restores the speed (and
keeps the nanny's trim threshold, so freed heap memory is still returned).
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys

logger = logging.getLogger("dream_sc")

#: Allocations below this size come from the heap instead of fresh ``mmap`` calls.
MMAP_THRESHOLD = 64 * 1024**2
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
_tuned = False


def _libc():
    return ctypes.CDLL("libc.so.6")


def raise_mmap_threshold() -> bool:
    """Set glibc's mmap threshold to :data:`MMAP_THRESHOLD` once per process.

    Returns
    -------
    Whether the threshold is set (``False`` off Linux/glibc, where nothing is changed).
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        ok = _libc().mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    except (OSError, AttributeError):  # pragma: no cover - no usable libc
        return False
    if ok:
        _tuned = True
        logger.debug("dream_sc: glibc mmap threshold set to %d bytes", MMAP_THRESHOLD)
    return ok


def run_tuned(fn, shared, item):
    """Run one task ``fn(shared, item)`` in a process with the mmap threshold raised."""
    raise_mmap_threshold()
    return fn(shared, item)
