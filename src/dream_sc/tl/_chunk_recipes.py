"""Picklable chunk recipes of the technical and trans fits (any backend, see ``engine.backends``).

Each fit's chunks are described by plain data: ``shared`` inputs (cell-level arrays, priors,
settings) sent once, a per-chunk ``part`` (the chunk's data slice and per-feature inputs) and
a module-level build function that turns them into the chunk's Pyro problem where it runs.
The local backend runs exactly the same functions in this process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._lazy import materialise, narrow
from ..engine.batching import StepRows
from ..engine.chunks import ChunkRecipe
from ..engine.config import FitConfig
from ..models.batching import ChunkProblem
from ..models.observation import ObservationData
from ..models.technical import TechnicalInit, technical_problem
from ..models.trans import TransInputs, TransPriors, trans_problem


@dataclass
class ChunkData:
    """A chunk's observations: cells x chunk features.

    ``X`` / ``total`` are in memory, or lazy views of an out-of-core modality
    (:class:`~dream_sc._lazy.LazyMatrix`) that are read in :meth:`observations`, i.e. where the
    chunk runs.
    """

    distribution: str
    X: object
    total: object | None
    group_index: np.ndarray | None

    def observations(self, config: FitConfig) -> ObservationData:
        """The chunk's :class:`ObservationData` on the fit's device (out-of-core: read here)."""
        return ObservationData.build(
            self.distribution,
            materialise(self.X),
            total=materialise(self.total),
            group_index=self.group_index,
        ).to(config.device)


def chunk_data(data, cols: np.ndarray) -> ChunkData:
    """The columns ``cols`` of a :class:`~dream_sc._data.ModalityData` (lazy when out of core)."""
    return ChunkData(
        data.distribution,
        narrow(data.X, cols),
        narrow(data.total, cols),
        None if data.group_index is None else data.group_index[cols],
    )


# --- trans ---------------------------------------------------------------------------------


@dataclass
class TransShared:
    """Inputs of every trans chunk."""

    function: str
    priors: TransPriors
    inputs: TransInputs


@dataclass
class TransPart:
    """One trans chunk: its fitted-feature indices, data, technical effects and noise."""

    features: np.ndarray
    data: ChunkData
    effects: np.ndarray
    noise: dict[str, np.ndarray]
    init: dict[str, np.ndarray] | None = None  # warm start of the chunk's sites


def build_trans_chunk(shared: TransShared, part: TransPart, config: FitConfig) -> ChunkProblem:
    """The trans problem of one chunk (runs where the chunk runs)."""
    obs = part.data.observations(config)
    rows = StepRows(config, obs.n_cells, shared.inputs.order)
    return trans_problem(
        obs,
        shared.function,
        shared.priors,
        part.features,
        shared.inputs,
        effects=part.effects,
        noise=part.noise,
        rows=rows,
        init=part.init,
    )


def trans_recipe(
    job, inputs: TransInputs, priors: TransPriors, init: dict[str, np.ndarray] | None = None
) -> ChunkRecipe:
    """Recipe of a :class:`~dream_sc.tl._trans_job.TransJob` fit with ``inputs``/``priors``.

    ``init``: warm start of every fitted feature's sites (see ``TransJob.initial_values``).
    """
    fitted_cols = np.flatnonzero(job.fitted)

    def part(idx: np.ndarray) -> TransPart:
        return TransPart(
            idx,
            chunk_data(job.data, fitted_cols[idx]),
            job.effects(idx),
            job.noise(idx),
            None if init is None else {k: v[idx] for k, v in init.items()},
        )

    shared = TransShared(job.function, priors, inputs)
    return ChunkRecipe(build_trans_chunk, shared, part, np.asarray(job.data.var_names[job.fitted]))


# --- technical -----------------------------------------------------------------------------


@dataclass
class TechnicalShared:
    """Inputs of every technical chunk."""

    init: TechnicalInit
    codes: np.ndarray  # [N] technical group of every fitted cell
    n_groups: int
    sum_factor: np.ndarray | None  # [N] negbinom
    order: np.ndarray


@dataclass
class TechnicalPart:
    """One technical chunk: its feature indices and data."""

    features: np.ndarray
    data: ChunkData


def build_technical_chunk(
    shared: TechnicalShared, part: TechnicalPart, config: FitConfig
) -> ChunkProblem:
    """The technical problem of one chunk (runs where the chunk runs)."""
    sf, device = shared.sum_factor, config.device
    obs = part.data.observations(config)
    return technical_problem(
        obs,
        shared.init,
        part.features,
        group=torch.as_tensor(shared.codes, device=device),
        n_groups=shared.n_groups,
        log_sf=None
        if sf is None
        else torch.as_tensor(np.log(sf), dtype=torch.float32, device=device),
        rows=StepRows(config, obs.n_cells, shared.order),
    )


def technical_recipe(
    data,
    init: TechnicalInit,
    codes: np.ndarray,
    n_groups: int,
    sum_factor: np.ndarray | None,
    *,
    order: np.ndarray,
) -> ChunkRecipe:
    """Recipe of a technical fit of the modality ``data``."""
    shared = TechnicalShared(init, codes, n_groups, sum_factor, order)
    return ChunkRecipe(
        build_technical_chunk,
        shared,
        lambda features: TechnicalPart(features, chunk_data(data, features)),
        np.asarray(data.var_names),
    )
