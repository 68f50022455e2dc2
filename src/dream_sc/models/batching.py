"""A chunk's problem and its reproducible cell-level randomness (pure numpy/torch).

Cell-level randomness (minibatches, dosage draws) comes from generators seeded by
``(seed, step)`` only, so every feature chunk sees the same cells at the same step; the engine
(:mod:`dream_sc.engine.chunks`) relies on it to make a chunked fit equal a joint fit.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .guide import Site


@dataclass
class ChunkProblem:
    """What a chunk needs: its Pyro model, its latent sites, and how to make a batch."""

    model: Callable[[dict], None]
    sites: Sequence[Site]
    make_batch: Callable[[int], dict]
    loss_scale: float
    correlated: bool = False  # full correlation among each feature's latent values


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


#: Steps of minibatch rows moved to an accelerator in one copy (host devices take one step at a
#: time: nothing to copy there).
DEVICE_ROW_BLOCK = 50


class StepRows:
    """Minibatch rows of each step as tensors on the fit's device.

    The rows are :func:`minibatch_rows` exactly; on an accelerator they are drawn for
    ``DEVICE_ROW_BLOCK`` steps at once and moved in one copy, so the optimisation loop does not
    copy an index vector to the device at every step.

    Parameters
    ----------
    seed, n_cells, batch_size, order
        As for :func:`minibatch_rows`.
    device
        Torch device of the fit.
    """

    def __init__(
        self,
        seed: int,
        n_cells: int,
        batch_size: int,
        order: np.ndarray | None,
        device: torch.device | str,
    ) -> None:
        self.seed, self.n_cells, self.batch_size, self.order = seed, n_cells, batch_size, order
        self.device = torch.device(device)
        self.block = 1 if self.device.type == "cpu" else DEVICE_ROW_BLOCK
        self._full = torch.arange(n_cells, device=self.device) if batch_size >= n_cells else None
        self._start = -1
        self._rows: torch.Tensor | None = None

    def __call__(self, step: int) -> torch.Tensor:
        """Rows of step ``step`` (a device tensor)."""
        if self._full is not None:
            return self._full
        if self._rows is None or not self._start <= step < self._start + self.block:
            self._start = step - step % self.block
            steps = range(self._start, self._start + self.block)
            rows = np.stack(
                [
                    minibatch_rows(self.seed, s, self.n_cells, self.batch_size, self.order)
                    for s in steps
                ]
            )
            self._rows = torch.as_tensor(rows, device=self.device)
        return self._rows[step - self._start]
