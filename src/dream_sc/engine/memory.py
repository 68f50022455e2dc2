"""Memory planning: how much memory is there, and which batch/chunk sizes fit in it.

Peak memory of an SVI step is dominated by the dense ``[cells, features]`` intermediates of the
likelihood and their gradients (about ``BYTES_PER_ENTRY`` bytes per entry), plus the data
(~16 bytes per stored non-zero) and the per-feature noise pool. Posterior summaries evaluate
``[samples, grid, features]`` blocks in feature chunks (:func:`plan_fit`, technical and trans).

The cis fit has one feature and no chunks; its memory goes to the ``cells x guides``
assignment, the quadrature of every cell's dosage in an SVI step, the float64 Laplace start
(the assignment again, a full-data pass and the Hessian) and the per-cell dosage draws (the
``cells x n_samples`` samples and the dosage grids of a cell chunk); :func:`plan_cis` picks
its cell batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import psutil

from ..models.cis import CELL_CHUNK, GRID_POINTS, LAPLACE_MAX_CELLS, N_QUADRATURE, CisData
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


def _cuda_free_memory(config: FitConfig) -> tuple[int, str] | None:
    """Free memory of the fit's CUDA device, or ``None`` for host devices."""
    if not str(config.device).startswith("cuda"):
        return None
    import torch

    dev = torch.device(config.device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    free, _total = torch.cuda.mem_get_info(index)
    return int(free), f"free memory of cuda:{index}"


def available_memory(config: FitConfig | None = None) -> tuple[int, str]:
    """Bytes this process may use, and where the number came from.

    The smallest of: the explicit budget, the cgroup v2 ``memory.max`` (minus current usage),
    the cgroup v1 limit, the SLURM allocation, and psutil's available memory. On a CUDA device
    the fit's tensors live in device memory, so the device's free memory
    (``torch.cuda.mem_get_info``) bounds the budget too.

    Parameters
    ----------
    config
        The fit's configuration: its ``max_memory_gb`` (an explicit budget in GB, overriding
        everything else when given) and ``device`` (``cuda``, ``cuda:1``: the device's free
        memory). ``None``: the host's memory without an explicit budget.

    Returns
    -------
    ``(bytes, source)``.
    """
    config = FitConfig() if config is None else config
    if config.max_memory_gb is not None:
        return int(config.max_memory_gb * 1024**3), "user budget"
    cuda = _cuda_free_memory(config)
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
    """Chosen sizes for one fit.

    Attributes
    ----------
    config
        The fit's configuration with the planned cell batch size (what the fit runs with).
    feature_chunk
        Features fitted together.
    estimated_peak_bytes, available_bytes, source
        The plan's estimated peak, the memory found and where that number came from.
    """

    config: FitConfig
    feature_chunk: int
    estimated_peak_bytes: int
    available_bytes: int
    source: str

    def as_dict(self) -> dict:
        """h5-serialisable record."""
        return {
            "batch_size": int(self.config.batch_size),
            "feature_chunk": self.feature_chunk,
            "estimated_peak_gb": round(self.estimated_peak_bytes / 1024**3, 4),
            "available_gb": round(self.available_bytes / 1024**3, 4),
            "memory_source": self.source,
        }


def estimate_peak_bytes(
    n_cells: int,
    batch: int,
    chunk: int,
    config: FitConfig,
    *,
    density: float,
    draws: int,
    noise_width: int,
    grid: int = 50,
    bytes_per_entry: int = BYTES_PER_ENTRY,
) -> int:
    """Estimated peak bytes of fitting one feature chunk of ``batch`` cells per step.

    ``config.n_steps`` sets the per-feature noise pool; ``draws`` are the posterior draws of
    the summaries.
    """
    step = batch * chunk * bytes_per_entry
    data = int(n_cells * chunk * max(density, 1e-3) * BYTES_PER_NONZERO)
    noise = chunk * noise_width * config.n_steps * 4
    summaries = draws * grid * min(chunk, 1024) * 4 * 4
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
    avail, source = available_memory(config)
    budget = int(avail * fraction)
    batch = batch_size or min(n_cells, DEFAULT_MAX_BATCH)
    chunk = feature_chunk or n_features

    def peak(b: int, c: int) -> int:
        return estimate_peak_bytes(
            n_cells,
            b,
            c,
            config,
            density=density,
            draws=draws,
            noise_width=noise_width,
            bytes_per_entry=bytes_per_entry,
        )

    if feature_chunk is None:
        while chunk > 64 and peak(batch, chunk) > budget:
            chunk = int(np.ceil(chunk / 2))
    if batch_size is None:
        while batch > 256 and peak(batch, chunk) > budget:
            batch = int(np.ceil(batch / 2))
    plan = Plan(replace(config, batch_size=int(batch)), chunk, peak(batch, chunk), avail, source)
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
        plan.config.batch_size,
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


#: Largest cell batch of a cis SVI step (the cis model is cheap per cell: one feature).
CIS_MAX_BATCH = 50_000
#: Smallest cell batch the cis planner goes down to.
CIS_MIN_BATCH = 1024
#: Bytes per (cell, quadrature node) of a cis SVI step: float32 intermediates of the cell's
#: marginal likelihood and their autograd buffers (~10 per node).
CIS_BYTES_PER_NODE = 40
#: Bytes per (cell, grid point) of the per-cell dosage draws: the float32 grid, predictor,
#: likelihood kernel, weights and their cumulative sum.
CIS_BYTES_PER_GRID_POINT = 24
#: Bytes per (cell, posterior sample) of the dosage samples: the float32 draws, their exp2, the
#: sorted copy behind the quantiles and the stored matrix.
CIS_BYTES_PER_SAMPLE = 16
#: Joint posterior draws of the guide-level sites (``engine.cis.fit_cis_model``).
CIS_SITE_DRAWS = 2000


class MemoryBudgetError(MemoryError):
    """A fit is too large for the memory budget even at its smallest plan."""


def cis_peak_bytes(
    data: CisData, batch: int, config: FitConfig, *, laplace: bool = True
) -> dict[str, int]:
    """Estimated bytes of the phases of a cis fit of ``data`` with ``batch`` cells per step.

    Returns ``assignment`` (the ``cells x guides`` assignment on the host and on the device,
    held throughout), ``step`` (one SVI step), ``laplace`` (the float64 Laplace start: the
    assignment in float64, a pass over at most ``LAPLACE_MAX_CELLS`` cells, the Hessian of
    the guide-level sites; 0 without a Laplace start), ``dosage`` (the
    ``cells x config.n_samples`` dosage samples, the dosage grids of a chunk of cells and the
    site draws) and ``peak``: the assignment plus the largest of the three phases, which run
    one after another.
    """
    n_cells, n_guides = data.assignment.shape
    n_groups = len(data.tech_effect_prior)
    n_sites = 2 * n_guides + n_groups + 4  # guide effects and sds, technical effects, scalars
    assignment = n_cells * n_guides * (4 + 4)
    step = batch * (2 * n_guides * 4 + N_QUADRATURE * CIS_BYTES_PER_NODE)
    laplace_cells = min(n_cells, LAPLACE_MAX_CELLS)
    laplace = laplace * (
        n_cells * n_guides * 8
        + laplace_cells * (2 * n_guides * 8 + N_QUADRATURE * 2 * CIS_BYTES_PER_NODE)
        + 4 * n_sites**2 * 8
    )
    chunk = min(n_cells, CELL_CHUNK)
    dosage = (
        n_cells * int(config.n_samples or 0) * CIS_BYTES_PER_SAMPLE
        + chunk * (GRID_POINTS * CIS_BYTES_PER_GRID_POINT + n_guides * 4)
        + CIS_SITE_DRAWS * (n_sites + 2 * n_guides) * 8
    )
    peak = assignment + max(step, laplace, dosage)
    return {
        "assignment": assignment,
        "step": step,
        "laplace": laplace,
        "dosage": dosage,
        "peak": peak,
    }


def plan_cis(
    data: CisData, config: FitConfig, *, laplace: bool = True, fraction: float = 0.5
) -> Plan:
    """Pick the cell batch of a cis fit that fits in memory, or refuse the fit before any work.

    Full batches are kept up to :data:`CIS_MAX_BATCH` cells and halved (down to
    :data:`CIS_MIN_BATCH`) until :func:`cis_peak_bytes` fits in ``fraction`` of
    :func:`available_memory`; a user ``config.batch_size`` is kept as given (a warning is
    logged when it is predicted not to fit).

    Parameters
    ----------
    data
        The cis fit's data (cells x guides assignment, technical groups).
    config
        The fit's configuration: ``batch_size`` (``None``: planned), ``n_samples``,
        ``max_memory_gb`` and ``device``.
    laplace
        The fit starts at the Laplace approximation (``fit_cis(warm_start=True)``).
    fraction
        Share of the available memory the plan may use.

    Returns
    -------
    :class:`Plan` (one feature: ``feature_chunk`` 1).

    Raises
    ------
    MemoryBudgetError
        When even the smallest batch does not fit: the assignment, the Laplace start or the
        dosage samples alone are too large for the budget.
    """
    n_cells = data.assignment.shape[0]
    avail, source = available_memory(config)
    budget = int(avail * fraction)
    peak_of = lambda b: cis_peak_bytes(data, b, config, laplace=laplace)  # noqa: E731
    smallest = peak_of(min(n_cells, CIS_MIN_BATCH))
    if smallest["peak"] > budget:
        parts = ", ".join(f"{k} {v / 1024**3:.2f} GB" for k, v in smallest.items() if k != "peak")
        raise MemoryBudgetError(
            f"The cis fit of {n_cells:,} cells x {data.assignment.shape[1]:,} guides with "
            f"{config.n_samples} dosage samples per cell is too large for the memory budget: "
            f"estimated peak {smallest['peak'] / 1024**3:.2f} GB ({parts}) at the smallest "
            f"batch of {min(n_cells, CIS_MIN_BATCH)} cells, budget {budget / 1024**3:.2f} GB "
            f"(half of {avail / 1024**3:.2f} GB, {source}). Raise settings.max_memory_gb, pass "
            "fewer n_samples, or fit fewer cells."
        )
    batch = config.batch_size or min(n_cells, CIS_MAX_BATCH)
    if config.batch_size is None:
        while batch > CIS_MIN_BATCH and peak_of(batch)["peak"] > budget:
            batch = max(int(np.ceil(batch / 2)), CIS_MIN_BATCH)
    peak = peak_of(batch)["peak"]
    if peak > budget:
        logger.warning(
            "cis memory plan: estimated peak %.2f GB exceeds the budget %.2f GB (%s); pass a "
            "smaller batch_size or raise settings.max_memory_gb",
            peak / 1024**3,
            budget / 1024**3,
            source,
        )
    logger.info(
        "cis memory plan: batch_size=%d, est. peak %.2f GB of %.2f GB available (%s)",
        batch,
        peak / 1024**3,
        avail / 1024**3,
        source,
    )
    return Plan(replace(config, batch_size=int(batch)), 1, peak, avail, source)


#: Bytes per entry of a trans results table and posterior frame (floats, flags, labels).
SCREEN_TABLE_BYTES = 12
#: Columns of a trans results table and of its posterior frame (additive Hill; upper bound).
SCREEN_TABLE_COLUMNS = 120
#: Per-cell dosage columns of a cis fit (mean, sd, q05, q50, q95) in float64.
SCREEN_CIS_COLUMNS = 5


def screen_result_bytes(
    *,
    n_targets: int,
    n_obs: int,
    n_features: int,
    n_draws: int,
    cells_per_target: int,
    sparse_draws: bool,
    n_permutations: int,
    grid: int = 60,
) -> int:
    """Memory the stored results of ``n_targets`` targets of a screen take, in bytes.

    Per target: the cis fit's per-cell columns (every cell of the screen) and dosage draws
    (dense ``n_obs x n_draws`` float32, or sparse: the target's cells only), the trans fit's
    results table and posterior frame (:data:`SCREEN_TABLE_COLUMNS` x
    :data:`SCREEN_TABLE_BYTES` per feature), three curve bands (``grid`` float32 per feature)
    and the permutation null (``n_permutations`` float64 per feature).

    Examples
    --------
    >>> gb = screen_result_bytes(n_targets=500, n_obs=100_000, n_features=8_000, n_draws=100,
    ...     cells_per_target=1_200, sparse_draws=False, n_permutations=50) / 1e9
    >>> round(gb, 1)
    32.2
    """
    if sparse_draws:
        draws = cells_per_target * n_draws * 8 + (n_obs + 1) * 8
    else:
        draws = n_obs * n_draws * 4
    cis = SCREEN_CIS_COLUMNS * n_obs * 8 + draws
    trans = n_features * (
        SCREEN_TABLE_COLUMNS * SCREEN_TABLE_BYTES + 3 * grid * 4 + n_permutations * 8
    )
    return int(n_targets * (cis + trans))
