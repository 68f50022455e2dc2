"""Fit a feature-independent model chunk by chunk with reproducible randomness.

Cell-level randomness (minibatches, dosage draws) comes from generators seeded by
``(seed, step)`` only, so every chunk sees the same cells at the same step; feature-level noise
comes from :class:`~dream_sc.models.guide.FeatureNoise` streams seeded by ``(seed, feature)``.
Adam and the element-wise gradient clipping act per parameter element. Together this makes a
chunked fit equal a joint fit, feature by feature.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch

from .guide import FeatureNoise, MeanFieldGuide, Site
from .inference import run_svi

logger = logging.getLogger("dream_sc")


@dataclass
class ChunkProblem:
    """What a chunk needs: its Pyro model, its latent sites, and how to make a batch."""

    model: Callable[[dict], None]
    sites: Sequence[Site]
    make_batch: Callable[[int], dict]
    loss_scale: float
    correlated: bool = False  # full correlation among each feature's latent values


@dataclass
class ChunkedFit:
    """Posterior ``loc``/``scale`` of every site over all features, plus run diagnostics."""

    loc: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]
    loss: np.ndarray
    chunk_converged: list[bool]
    feature_converged: np.ndarray
    seconds: float
    chunks: list[np.ndarray] = field(default_factory=list)
    corr: np.ndarray | None = None  # [T, D, D] correlation Cholesky (sites sorted by name)

    @property
    def converged(self) -> bool:
        """All chunks converged."""
        return bool(all(self.chunk_converged))


def step_rng(seed: int, step: int, tag: int) -> np.random.Generator:
    """Generator for the cell-level randomness of one step (independent of feature chunks)."""
    return np.random.Generator(np.random.PCG64([int(seed), int(step), int(tag)]))


def stable_keys(names) -> np.ndarray:
    """A stable integer per name (CRC32): seeds per-feature noise independently of order."""
    return np.array([zlib.crc32(str(n).encode()) for n in names], dtype=np.int64)


def name_order(names) -> np.ndarray:
    """Positions of the cells sorted by name (makes cell-level draws order-independent)."""
    return np.argsort(np.asarray(names, dtype=str), kind="stable")


def minibatch_rows(
    seed: int, step: int, n_cells: int, batch_size: int, order: np.ndarray | None = None
) -> np.ndarray:
    """Cells of step ``step`` (all cells, in order, when the batch covers them).

    With ``order`` (see :func:`name_order`) the cells are drawn by name rank, so the same
    cells are chosen whatever the row order of the data.
    """
    if batch_size >= n_cells:
        return np.arange(n_cells)
    chosen = step_rng(seed, step, 1).choice(n_cells, size=batch_size, replace=False)
    return np.sort(chosen if order is None else order[chosen])


def fit_chunks(
    build: Callable[[np.ndarray], ChunkProblem],
    chunks: list[np.ndarray],
    n_features: int,
    *,
    seed: int,
    n_steps: int,
    lr: float,
    device: torch.device,
    progress: bool,
    description: str,
    prefix: str,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    feature_keys: np.ndarray | None = None,
) -> ChunkedFit:
    """Fit every chunk and stitch the per-feature posteriors together.

    Parameters
    ----------
    build
        ``global feature indices -> ChunkProblem``.
    chunks
        Global feature indices of each chunk.
    n_features
        Total number of features.
    seed, n_steps, lr, device, progress
        SVI settings.
    description
        Progress label.
    prefix
        Param-store prefix.
    checkpoint
        Path prefix for checkpoints: every finished chunk is saved, the running chunk every
        ``checkpoint_every`` steps; a rerun with the same path skips finished chunks and
        resumes the interrupted one. Removed when all chunks are done.
    checkpoint_every
        Steps between checkpoints of the running chunk.
    feature_keys
        Stable key of every feature (:func:`stable_keys` of the names) seeding its noise, so
        results do not depend on feature order either; default: the feature index.

    Returns
    -------
    :class:`ChunkedFit`.
    """
    loc: dict[str, np.ndarray] = {}
    scale: dict[str, np.ndarray] = {}
    losses, conv = [], []
    feature_conv = np.zeros(n_features, dtype=bool)
    corr: np.ndarray | None = None
    seconds = 0.0
    done_files = []
    for number, features in enumerate(chunks):
        done_file = Path(f"{checkpoint}.chunk{number}.done.pt") if checkpoint else None
        running = Path(f"{checkpoint}.chunk{number}.pt") if checkpoint else None
        if done_file is not None:
            done_files.append(done_file)
        if done_file is not None and done_file.exists():
            saved = torch.load(done_file, weights_only=False)
            if not np.array_equal(saved["features"], features):
                raise ValueError(
                    f"Checkpoint {str(done_file)!r} was written for other features; delete the "
                    "checkpoint files or pass another `checkpoint=` path."
                )
            summary, loss, converged, secs = (
                saved["summary"],
                saved["loss"],
                saved["converged"],
                0.0,
            )
            chunk_corr = saved.get("corr")
        else:
            pyro.clear_param_store()
            problem = build(features)
            guide = MeanFieldGuide(
                problem.sites, prefix=prefix, device=device, correlated=problem.correlated
            )
            ids = features if feature_keys is None else feature_keys[features]
            guide.noise = FeatureNoise(seed, ids, guide.noise_width, n_steps)
            context = f" in feature chunk {number + 1}/{len(chunks)} (features {features[0]}..{features[-1]})"
            result = run_svi(
                problem.model,
                guide,
                guide.parameters,
                problem.make_batch,
                n_steps=n_steps,
                lr=lr,
                progress=progress,
                description=f"{description} [{number + 1}/{len(chunks)}]",
                loss_scale=problem.loss_scale,
                context=context,
                checkpoint=running,
                checkpoint_every=checkpoint_every,
                lr_scales=guide.lr_scales(),
            )
            summary, loss, converged, secs = (
                guide.summary(),
                result.loss,
                result.converged,
                result.seconds,
            )
            chunk_corr = guide.correlation()
            if done_file is not None:
                torch.save(
                    {
                        "features": features,
                        "summary": summary,
                        "loss": loss,
                        "converged": converged,
                        "corr": chunk_corr,
                    },
                    done_file,
                )
        for name, (site_loc, site_scale) in summary.items():
            if name not in loc:
                loc[name] = np.zeros((n_features, *site_loc.shape[1:]), dtype=np.float32)
                scale[name] = np.zeros_like(loc[name])
            loc[name][features] = site_loc
            scale[name][features] = site_scale
        if chunk_corr is not None:
            if corr is None:
                corr = np.zeros((n_features, *chunk_corr.shape[1:]), dtype=np.float32)
            corr[features] = chunk_corr
        losses.append(loss)
        conv.append(converged)
        feature_conv[features] = converged
        seconds += secs
        logger.debug("%s chunk %d: %.1fs, converged=%s", description, number, secs, converged)
    for f in done_files:
        f.unlink(missing_ok=True)
    pyro.clear_param_store()
    return ChunkedFit(
        loc, scale, np.sum(losses, axis=0), conv, feature_conv, seconds, list(chunks), corr
    )
