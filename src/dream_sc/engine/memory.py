"""Memory planning: how much memory is there, and which batch/chunk sizes fit in it.

Peak memory of an SVI step is dominated by the dense ``[cells, features]`` intermediates of the
likelihood and their gradients (about ``BYTES_PER_ENTRY`` bytes per entry), plus the data
(~16 bytes per stored non-zero) and the per-feature noise pool. Posterior summaries evaluate
``[samples, grid, features]`` blocks in feature chunks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from .config import FitConfig

logger = logging.getLogger("dream_sc")

#: Bytes per (cell, feature) entry of one SVI step, measured with ``benchmarks/bench_pipeline.py``
#: (float32 forward intermediates + autograd buffers of the fused likelihoods).
BYTES_PER_ENTRY = 48
#: A trans step's curve adds its own autograd intermediates: each curve declares its bytes
#: per entry (``Curve.bytes_per_entry`` in :mod:`dream_sc.models.curves`).
#: Bytes per stored non-zero of a CSR matrix on the device (int64 column, float32 value, row id).
BYTES_PER_NONZERO = 20
#: Default upper bound on the minibatch size. Per-feature parameters see every cell many times
#: over the default number of steps anyway: on a 3000-cell screen, batches of 1000 cells gave the
#: same EC50s, curves and AUROC as full batches at 2.4x the speed (batches of 500 too, but with
#: a loss too noisy for the convergence check).
DEFAULT_MAX_BATCH = 1024


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < 1 << 60 else None  # v1 reports "unlimited" as a huge number


def _slurm_limit() -> int | None:
    per_node = os.environ.get("SLURM_MEM_PER_NODE")
    if per_node and per_node.isdigit():
        return int(per_node) * 1024**2
    per_cpu = os.environ.get("SLURM_MEM_PER_CPU")
    cpus = os.environ.get("SLURM_CPUS_ON_NODE") or os.environ.get("SLURM_CPUS_PER_TASK")
    if per_cpu and per_cpu.isdigit():
        return int(per_cpu) * int(cpus or 1) * 1024**2
    return None


def _cuda_free_memory(device: str | None) -> tuple[int, str] | None:
    """Free memory of a CUDA device, or ``None`` for host devices."""
    if device is None or not str(device).startswith("cuda"):
        return None
    import torch

    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    free, _total = torch.cuda.mem_get_info(index)
    return int(free), f"free memory of cuda:{index}"


def available_memory(
    max_memory_gb: float | None = None, device: str | None = None
) -> tuple[int, str]:
    """Bytes this process may use, and where the number came from.

    The smallest of: the explicit budget, the cgroup v2 ``memory.max`` (minus current usage),
    the cgroup v1 limit, the SLURM allocation, and psutil's available memory. On a CUDA device
    the fit's tensors live in device memory, so the device's free memory
    (``torch.cuda.mem_get_info``) bounds the budget too.

    Parameters
    ----------
    max_memory_gb
        Explicit budget in GB (overrides everything else when given).
    device
        Torch device of the fit (``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``None`` = host).

    Returns
    -------
    ``(bytes, source)``.
    """
    if max_memory_gb is not None:
        return int(max_memory_gb * 1024**3), "user budget"
    cuda = _cuda_free_memory(device)
    if cuda is not None:
        return cuda
    candidates: list[tuple[int, str]] = [(psutil.virtual_memory().available, "psutil")]
    v2 = _read_int("/sys/fs/cgroup/memory.max")
    if v2 is not None:
        used = _read_int("/sys/fs/cgroup/memory.current") or 0
        candidates.append((max(v2 - used, 0), "cgroup v2 memory.max"))
    v1 = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if v1 is not None:
        used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0
        candidates.append((max(v1 - used, 0), "cgroup v1 memory.limit_in_bytes"))
    slurm = _slurm_limit()
    if slurm is not None:
        rss = psutil.Process().memory_info().rss
        candidates.append((max(slurm - rss, 0), "SLURM allocation"))
    return min(candidates, key=lambda c: c[0])


@dataclass
class Plan:
    """Chosen sizes for one fit."""

    batch_size: int
    feature_chunk: int
    estimated_peak_bytes: int
    available_bytes: int
    source: str

    def as_dict(self) -> dict:
        """h5-serialisable record."""
        return {
            "batch_size": self.batch_size,
            "feature_chunk": self.feature_chunk,
            "estimated_peak_gb": round(self.estimated_peak_bytes / 1024**3, 4),
            "available_gb": round(self.available_bytes / 1024**3, 4),
            "memory_source": self.source,
        }


def estimate_peak_bytes(
    n_cells: int,
    batch: int,
    chunk: int,
    *,
    density: float,
    n_samples: int,
    noise_width: int,
    n_steps: int,
    grid: int = 50,
    bytes_per_entry: int = BYTES_PER_ENTRY,
) -> int:
    """Estimated peak bytes of fitting one feature chunk."""
    step = batch * chunk * bytes_per_entry
    data = int(n_cells * chunk * max(density, 1e-3) * BYTES_PER_NONZERO)
    noise = chunk * noise_width * n_steps * 4
    summaries = n_samples * grid * min(chunk, 1024) * 4 * 4
    return step + data + noise + summaries


def plan_fit(
    n_cells: int,
    n_features: int,
    config: FitConfig,
    *,
    density: float = 1.0,
    draws: int | None = None,
    noise_width: int = 8,
    feature_chunk: int | None = None,
    fraction: float = 0.5,
    bytes_per_entry: int = BYTES_PER_ENTRY,
) -> Plan:
    """Pick a cell minibatch size and feature chunk size that fit in memory.

    Full batches are kept up to ``DEFAULT_MAX_BATCH`` cells; features are fitted in one chunk
    when they fit, else in the largest chunk that does. User values are kept as given (a warning
    is logged when they are predicted not to fit).

    Parameters
    ----------
    n_cells, n_features
        Problem size.
    config
        The fit's :class:`~dream_sc.engine.config.FitConfig`: ``n_steps``, the user's
        ``batch_size`` (``None``: planned), ``max_memory_gb`` (``None``: what
        :func:`available_memory` finds) and ``device`` (on CUDA the device's free memory is the
        budget).
    density
        Fraction of non-zero entries of the data.
    draws
        Posterior draws of the summaries (default ``config.n_samples``, ``None`` as 0).
    noise_width
        Latent values per feature.
    feature_chunk
        User override of the chunk size.
    fraction
        Share of the available memory the plan may use.
    bytes_per_entry
        Bytes per (cell, feature) entry of one SVI step (the curve's ``bytes_per_entry`` for
        trans fits).

    Returns
    -------
    :class:`Plan`.
    """
    batch_size = config.batch_size
    draws = (config.n_samples or 0) if draws is None else draws
    avail, source = available_memory(config.max_memory_gb, str(config.device))
    budget = int(avail * fraction)
    batch = batch_size or min(n_cells, DEFAULT_MAX_BATCH)
    chunk = feature_chunk or n_features

    def peak(b: int, c: int) -> int:
        return estimate_peak_bytes(
            n_cells,
            b,
            c,
            density=density,
            n_samples=draws,
            noise_width=noise_width,
            n_steps=config.n_steps,
            bytes_per_entry=bytes_per_entry,
        )

    if feature_chunk is None:
        while chunk > 64 and peak(batch, chunk) > budget:
            chunk = int(np.ceil(chunk / 2))
    if batch_size is None:
        while batch > 256 and peak(batch, chunk) > budget:
            batch = int(np.ceil(batch / 2))
    plan = Plan(batch, chunk, peak(batch, chunk), avail, source)
    if plan.estimated_peak_bytes > budget:
        logger.warning(
            "memory plan: estimated peak %.2f GB exceeds the budget %.2f GB (%s); pass a smaller "
            "batch_size/feature_chunk or raise settings.max_memory_gb",
            plan.estimated_peak_bytes / 1024**3,
            budget / 1024**3,
            source,
        )
    logger.info(
        "memory plan: batch_size=%d feature_chunk=%d, est. peak %.2f GB of %.2f GB available (%s)",
        plan.batch_size,
        plan.feature_chunk,
        plan.estimated_peak_bytes / 1024**3,
        avail / 1024**3,
        source,
    )
    return plan


def feature_chunks(
    n_features: int, chunk_size: int, group_index: np.ndarray | None = None
) -> list[np.ndarray]:
    """Split features into chunks; multinomial groups are never split across chunks.

    Parameters
    ----------
    n_features
        Number of features.
    chunk_size
        Target chunk size.
    group_index
        Group of every feature (multinomial), or ``None``.

    Returns
    -------
    List of index arrays (each sorted; a group's features stay together).
    """
    if group_index is None:
        return [
            np.arange(s, min(s + chunk_size, n_features)) for s in range(0, n_features, chunk_size)
        ]
    order = np.argsort(group_index, kind="stable")
    sorted_groups = group_index[order]
    boundaries = np.flatnonzero(np.diff(sorted_groups)) + 1
    groups = np.split(order, boundaries)
    chunks, current = [], []
    for members in groups:
        if current and sum(map(len, current)) + len(members) > chunk_size:
            chunks.append(np.sort(np.concatenate(current)))
            current = []
        current.append(members)
    if current:
        chunks.append(np.sort(np.concatenate(current)))
    return chunks
