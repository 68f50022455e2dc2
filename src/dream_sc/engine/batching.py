"""Minibatches of a fit: which cells every SVI step sees, on the fit's device.

The cells of step ``s`` come from the stream ``(s, 1)`` of the run's root sequence
(:meth:`~dream_sc.engine.config.FitConfig.streams`, :func:`~dream_sc.models.streams.keyed_rng`)
only, so every feature chunk of a fit sees the same cells at the same step and a chunked fit
equals a joint one.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.streams import keyed_rng
from .config import FitConfig

#: Steps of minibatch rows moved to an accelerator in one copy (host devices take one step at a
#: time: nothing to copy there).
DEVICE_ROW_BLOCK = 50


def minibatch_rows(
    config: FitConfig, step: int, n_cells: int, order: np.ndarray | None = None
) -> np.ndarray:
    """Cells of step ``step`` (all cells, in order, when ``config.batch_size`` covers them).

    With ``order`` (see :func:`~dream_sc.models.batching.name_order`) the cells are drawn by
    name rank, so the same cells are chosen whatever the row order of the data.
    """
    size = int(config.batch_size)
    if size >= n_cells:
        return np.arange(n_cells)
    chosen = keyed_rng(config.streams(), step, 1).choice(n_cells, size=size, replace=False)
    return np.sort(chosen if order is None else order[chosen])


class StepRows:
    """Minibatch rows of each step as tensors on the fit's device.

    The rows are :func:`minibatch_rows` exactly; on an accelerator they are drawn for
    ``DEVICE_ROW_BLOCK`` steps at once and moved in one copy, so the optimisation loop does not
    copy an index vector to the device at every step.

    Parameters
    ----------
    config
        The fit's configuration (seed, planned ``batch_size``, device).
    n_cells
        Cells of the fit.
    order
        As for :func:`minibatch_rows`.
    """

    def __init__(self, config: FitConfig, n_cells: int, order: np.ndarray | None = None) -> None:
        self.config, self.n_cells, self.order = config, n_cells, order
        self.device = torch.device(config.device)
        self.block = 1 if self.device.type == "cpu" else DEVICE_ROW_BLOCK
        full = config.batch_size >= n_cells
        self._full = torch.arange(n_cells, device=self.device) if full else None
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
                [minibatch_rows(self.config, s, self.n_cells, self.order) for s in steps]
            )
            self._rows = torch.as_tensor(rows, device=self.device)
        return self._rows[step - self._start]
