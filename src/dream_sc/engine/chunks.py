"""Fit a feature-independent model chunk by chunk with reproducible randomness.

Cell-level randomness (minibatches, dosage draws) comes from generators seeded by
``(seed, step)`` only, so every chunk sees the same cells at the same step; feature-level noise
comes from :class:`~dream_sc.models.guide.FeatureNoise` streams seeded by ``(seed, feature)``.
Adam and the element-wise gradient clipping act per parameter element. Together this makes a
chunked fit equal a joint fit, feature by feature.

Chunks are independent tasks: :func:`fit_chunks` hands them to a backend (in this process, or a
``dask.distributed`` cluster, see :mod:`dream_sc.engine.backends`) as plain data plus a module-level
build function (:class:`ChunkRecipe`), so where a chunk runs does not change its result.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ..models.batching import ChunkProblem
from ..models.guide import FeatureNoise, MeanFieldGuide
from .backends._base import LocalBackend, resolve_threads
from .chunk_store import check_chunk_files, chunk_fingerprint, load_done, save_done
from .config import FitConfig
from .svi import NonFiniteLossError, run_svi

logger = logging.getLogger("dream_sc")


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
    #: steps run by each chunk (``-1``: all ``n_steps``; see ``FitConfig.tolerance``)
    chunk_steps_run: list[int] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """All chunks converged."""
        return bool(all(self.chunk_converged))


@dataclass
class ChunkRecipe:
    """A picklable description of how to build every chunk's problem (any backend).

    The Pyro model of a chunk is a closure and may not pickle, so remote backends ship plain
    data and build the :class:`ChunkProblem` where the chunk runs.

    Attributes
    ----------
    build
        A module-level function ``(shared, part, config) -> ChunkProblem`` (``config``: the
        chunk's :class:`~dream_sc.engine.config.FitConfig`, with its device and batch size).
    shared
        Inputs every chunk needs (cell-level arrays, priors, settings); picklable. Remote
        backends send it once to every worker.
    part
        Runs where the call was made: global feature indices -> the chunk's own picklable
        inputs (its data slice, per-feature parameters).
    names
        Feature names (error messages name the features of a failing chunk).
    """

    build: Callable[[Any, Any, FitConfig], ChunkProblem]
    shared: Any
    part: Callable[[np.ndarray], Any]
    names: np.ndarray | None = None


@dataclass
class ChunkTask:
    """Settings of one chunk's fit (small and picklable: what a task carries besides data)."""

    number: int
    n_chunks: int
    features: np.ndarray
    ids: np.ndarray  # per-feature noise seeds
    config: FitConfig  # the fit's (progress off on remote backends)
    prefix: str
    description: str
    threads: int | None
    names: np.ndarray | None = None
    checkpoint: str | None = None  # this chunk's SVI checkpoint file
    fingerprint: dict | None = None  # of the whole fit (see chunk_fingerprint)

    @property
    def device(self) -> torch.device:
        """Torch device of the fit."""
        return self.config.device

    @property
    def context(self) -> str:
        """Where an error happened, for messages: the chunk and its features."""
        feats = self.features
        where = (
            f" in feature chunk {self.number + 1}/{self.n_chunks} "
            f"(features {feats[0]}..{feats[-1]})"
        )
        if self.names is not None:
            shown = ", ".join(str(n) for n in self.names[:MAX_NAMED])
            more = len(self.names) - MAX_NAMED
            where += f" [{shown}{f', and {more} more' if more > 0 else ''}]"
        return where


@dataclass
class ChunkOutcome:
    """What one chunk's fit returns (numpy only, so it pickles cheaply)."""

    summary: dict[str, tuple[np.ndarray, np.ndarray]]
    loss: np.ndarray
    converged: bool
    seconds: float
    corr: np.ndarray | None
    n_steps_run: int | None = None  # None: all n_steps (no convergence stop)


#: Feature names listed in the error message of a failing chunk.
MAX_NAMED = 10
#: One chunk fit at a time per process: Pyro's param store and torch's intra-op thread count
#: are process-wide, so tasks running in several threads of one worker must not interleave.
_TASK_LOCK = threading.Lock()


def _before_chunk(task: ChunkTask) -> None:
    """Hook called before every chunk fit (tests use it to simulate a lost worker)."""


@contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` intra-op threads (torch's CPU reductions depend on the count)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def run_chunk(problem_of: Callable[[], ChunkProblem], task: ChunkTask) -> ChunkOutcome:
    """Fit one chunk in a private Pyro param store with the task's torch thread count."""
    with _TASK_LOCK, torch_threads(task.threads), pyro.get_param_store().scope():
        _before_chunk(task)
        try:
            problem = problem_of()
            guide = MeanFieldGuide(
                problem.sites, prefix=task.prefix, device=task.device, correlated=problem.correlated
            )
            cfg = task.config
            guide.noise = FeatureNoise(
                cfg.seed, task.ids, guide.noise_width, cfg.n_steps, device=cfg.device
            )
            result = run_svi(
                problem.model,
                guide,
                guide.parameters,
                problem.make_batch,
                cfg,
                description=f"{task.description} [{task.number + 1}/{task.n_chunks}]",
                loss_scale=problem.loss_scale,
                context=task.context,
                checkpoint=task.checkpoint,
                lr_scales=guide.lr_scales(),
                noise=guide.noise,
                fingerprint=task.fingerprint,
            )
        except NonFiniteLossError:
            raise  # its message already names the chunk
        except Exception as err:
            err.add_note(f"dream_sc: raised{task.context}")
            raise
        return ChunkOutcome(
            guide.summary(),
            result.loss,
            result.converged,
            result.seconds,
            guide.correlation(),
            result.n_steps_run,
        )


def run_recipe_chunk(build: Callable, shared, part, task: ChunkTask) -> ChunkOutcome:
    """Task function of remote backends: build the chunk's problem from plain data and fit it."""
    return run_chunk(lambda: build(shared, part, task.config), task)


def fit_chunks(
    build: Callable[[np.ndarray], ChunkProblem] | ChunkRecipe,
    chunks: list[np.ndarray],
    n_features: int,
    config: FitConfig,
    *,
    description: str,
    prefix: str,
    checkpoint: str | Path | None = None,
    feature_keys: np.ndarray | None = None,
    backend=None,
    fingerprint: dict | None = None,
) -> ChunkedFit:
    """Fit every chunk and stitch the per-feature posteriors together.

    Parameters
    ----------
    build
        A :class:`ChunkRecipe` (runs on any backend), or a function
        ``global feature indices -> ChunkProblem`` (in-process only).
    chunks
        Global feature indices of each chunk.
    n_features
        Total number of features.
    config
        The fit's :class:`~dream_sc.engine.config.FitConfig` (seed, steps, learning rate,
        device, progress, ``checkpoint_every``, ``checkpoint_mismatch``).
    description
        Progress label.
    prefix
        Param-store prefix.
    checkpoint
        Path prefix for checkpoints (``config.checkpoint`` or a prefix derived from it): every
        finished chunk is saved, the running chunk every ``config.checkpoint_every`` steps; a rerun with the same path skips finished chunks and
        resumes the interrupted one. Removed when all chunks are done. With a remote backend
        finished chunks are saved by the caller and running chunks by the workers (the path
        must then be on a file system the workers share). Every file is data only and carries
        the fit's fingerprint; all existing files are checked before any chunk runs; files of
        another fit, damaged or old-format files raise a ``ValueError`` naming the file and
        what changed before any chunk runs (``config.checkpoint_mismatch="raise"``) or are
        deleted first (``"restart"``).
    feature_keys
        Stable key of every feature (:func:`stable_keys` of the names) seeding its noise, so
        results do not depend on feature order either; default: the feature index.
    backend
        Where chunks run: a backend of :func:`dream_sc.engine.backends.resolve_backend` (``None``:
        in this process). Every backend gives identical results: each chunk's randomness
        comes from its own seeds and it runs with the backend's torch thread count.
    fingerprint
        What the fit depends on (data digests, settings; see :mod:`dream_sc._checkpoints`);
        ``seed``, ``n_steps``, ``lr`` and the chunking are added here.

    Returns
    -------
    :class:`ChunkedFit`.
    """
    runner = LocalBackend(resolve_threads()) if backend is None else backend
    recipe = build if isinstance(build, ChunkRecipe) else None
    if recipe is None and runner.name != "local":
        raise TypeError(f"backend={runner.name!r} needs a ChunkRecipe (picklable chunk inputs).")
    loc: dict[str, np.ndarray] = {}
    scale: dict[str, np.ndarray] = {}
    n_chunks = len(chunks)
    losses: list = [None] * n_chunks
    conv: list = [False] * n_chunks
    steps_run: list = [-1] * n_chunks
    feature_conv = np.zeros(n_features, dtype=bool)
    corr: np.ndarray | None = None
    seconds = 0.0
    done_files = [
        Path(f"{checkpoint}.chunk{number}.done.pt") if checkpoint else None
        for number in range(n_chunks)
    ]
    full_fingerprint = chunk_fingerprint(fingerprint, config, chunks)
    if checkpoint:
        check_chunk_files(checkpoint, full_fingerprint, config.checkpoint_mismatch)
    task_config = replace(config, progress=config.progress and runner.name == "local")

    def task_of(number: int, features: np.ndarray) -> ChunkTask:
        names = recipe.names if recipe is not None else None
        return ChunkTask(
            number,
            n_chunks,
            features,
            features if feature_keys is None else feature_keys[features],
            task_config,
            prefix,
            description,
            runner.threads,
            names=None if names is None else np.asarray(names)[features],
            checkpoint=str(Path(f"{checkpoint}.chunk{number}.pt")) if checkpoint else None,
            fingerprint=full_fingerprint if checkpoint else None,
        )

    def store(number: int, outcome: ChunkOutcome) -> None:
        nonlocal corr, seconds
        features = chunks[number]
        for name, (site_loc, site_scale) in outcome.summary.items():
            if name not in loc:
                loc[name] = np.zeros((n_features, *site_loc.shape[1:]), dtype=np.float32)
                scale[name] = np.zeros_like(loc[name])
            loc[name][features] = site_loc
            scale[name][features] = site_scale
        if outcome.corr is not None:
            if corr is None:
                corr = np.zeros((n_features, *outcome.corr.shape[1:]), dtype=np.float32)
            corr[features] = outcome.corr
        losses[number] = outcome.loss
        conv[number] = outcome.converged
        steps_run[number] = -1 if outcome.n_steps_run is None else int(outcome.n_steps_run)
        feature_conv[features] = outcome.converged
        seconds += outcome.seconds
        logger.debug(
            "%s chunk %d: %.1fs, converged=%s",
            description,
            number,
            outcome.seconds,
            outcome.converged,
        )

    todo = []
    for number, features in enumerate(chunks):
        done_file = done_files[number]
        if done_file is not None and done_file.exists():
            store(
                number,
                ChunkOutcome(**load_done(done_file, features, full_fingerprint), seconds=0.0),
            )
        else:
            todo.append(number)

    if recipe is None:
        items = ((n, (chunks[n], task_of(n, chunks[n]))) for n in todo)

        def fn(_shared, item):
            features, task = item
            return run_chunk(lambda: build(features), task)

        shared = None
    else:
        items = ((n, (recipe.build, recipe.part(chunks[n]), task_of(n, chunks[n]))) for n in todo)
        fn, shared = _recipe_task, recipe.shared
    for number, outcome in runner.map(
        fn, shared, items, description=description, progress=config.progress
    ):
        store(number, outcome)
        done_file = done_files[number]
        if done_file is not None:
            save_done(done_file, chunks[number], outcome, full_fingerprint)
    for f in done_files:
        if f is not None:
            f.unlink(missing_ok=True)
    return ChunkedFit(
        loc,
        scale,
        np.sum(losses, axis=0),
        conv,
        feature_conv,
        seconds,
        list(chunks),
        corr,
        steps_run,
    )


def _recipe_task(shared, item) -> ChunkOutcome:
    """``(build, part, task)`` item of a recipe fit -> its outcome (module level: picklable)."""
    build, part, task = item
    return run_recipe_chunk(build, shared, part, task)
