"""A chunk's problem and its reproducible cell-level randomness (pure numpy/torch).

Cell-level randomness (minibatches, dosage draws) comes from the streams of
:func:`~dream_sc.models.streams.keyed_rng`
keyed by ``(step, purpose)`` only, so every feature chunk sees the same cells at the same step;
the engine (:mod:`dream_sc.engine.batching`, :mod:`dream_sc.engine.chunks`) relies on it to make
a chunked fit equal a joint fit.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .guide import Site

#: Minibatch rows of every step: step number -> cell indices (a tensor on the fit's device);
#: the engine's :class:`dream_sc.engine.batching.StepRows` is one.
RowsOfStep = Callable[[int], torch.Tensor]


@dataclass
class ChunkProblem:
    """What a chunk needs: its Pyro model, its latent sites, and how to make a batch."""

    model: Callable[[dict], None]
    sites: Sequence[Site]
    make_batch: Callable[[int], dict]
    loss_scale: float
    correlated: bool = False  # full correlation among each feature's latent values


def stable_keys(names) -> np.ndarray:
    """A stable integer per name (CRC32): seeds per-feature noise independently of order."""
    return np.array([zlib.crc32(str(n).encode()) for n in names], dtype=np.int64)


def name_order(names) -> np.ndarray:
    """Positions of the cells sorted by name (makes cell-level draws order-independent)."""
    return np.argsort(np.asarray(names, dtype=str), kind="stable")
