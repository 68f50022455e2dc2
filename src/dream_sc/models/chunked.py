"""Fit a feature-independent model chunk by chunk with reproducible randomness.

Cell-level randomness (minibatches, dosage draws) comes from generators seeded by
``(seed, step)`` only, so every chunk sees the same cells at the same step; feature-level noise
comes from :class:`~dream_sc.models.guide.FeatureNoise` streams seeded by ``(seed, feature)``.
Adam and the element-wise gradient clipping act per parameter element. Together this makes a
chunked fit equal a joint fit, feature by feature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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

    @property
    def converged(self) -> bool:
        """All chunks converged."""
        return bool(all(self.chunk_converged))


def step_rng(seed: int, step: int, tag: int) -> np.random.Generator:
    """Generator for the cell-level randomness of one step (independent of feature chunks)."""
    return np.random.Generator(np.random.PCG64([int(seed), int(step), int(tag)]))


def minibatch_rows(seed: int, step: int, n_cells: int, batch_size: int) -> np.ndarray:
    """Cells of step ``step`` (all cells, in order, when the batch covers them)."""
    if batch_size >= n_cells:
        return np.arange(n_cells)
    rows = step_rng(seed, step, 1).choice(n_cells, size=batch_size, replace=False)
    return np.sort(rows)


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

    Returns
    -------
    :class:`ChunkedFit`.
    """
    loc: dict[str, np.ndarray] = {}
    scale: dict[str, np.ndarray] = {}
    losses, conv = [], []
    feature_conv = np.zeros(n_features, dtype=bool)
    seconds = 0.0
    for number, features in enumerate(chunks):
        pyro.clear_param_store()
        problem = build(features)
        guide = MeanFieldGuide(problem.sites, prefix=prefix, device=device)
        guide.noise = FeatureNoise(seed, features, guide.noise_width, n_steps)
        context = f" in feature chunk {number + 1}/{len(chunks)} (features {features[0]}..{features[-1]})"
        result = run_svi(
            problem.model, guide, guide.parameters, problem.make_batch, n_steps=n_steps, lr=lr,
            progress=progress, description=f"{description} [{number + 1}/{len(chunks)}]",
            loss_scale=problem.loss_scale, context=context,
        )
        summary = guide.summary()
        for name, (site_loc, site_scale) in summary.items():
            if name not in loc:
                loc[name] = np.zeros((n_features, *site_loc.shape[1:]), dtype=np.float32)
                scale[name] = np.zeros_like(loc[name])
            loc[name][features] = site_loc
            scale[name][features] = site_scale
        losses.append(result.loss)
        conv.append(result.converged)
        feature_conv[features] = result.converged
        seconds += result.seconds
        logger.debug("%s chunk %d: %.1fs, converged=%s", description, number, result.seconds, result.converged)
    pyro.clear_param_store()
    return ChunkedFit(loc, scale, np.sum(losses, axis=0), conv, feature_conv, seconds, list(chunks))
