"""Targets of a screen fitted in parallel worker processes (``fit_screen(n_jobs=...)``).

Targets are independent given the technical fit, and a target's fit writes only entries under
its own keys, so a worker can fit a target on a copy of the screen and hand back exactly those
entries (:func:`~dream_sc.tl._screen_store.capture`); the calling process writes them in target
order. Each task carries only the slice of the screen its target reads (its cells and the
control cells its fits and its test read, :mod:`~dream_sc.tl._target_cells`, as the bytes of an
h5mu file: a MuData is not sent through a pipe), so a worker's memory follows those cells, not
the screen; the per-cell results are put back on the screen's cells here. Slices are cut as workers need them
(a few ahead), never all at once. Workers use ``threads`` torch threads each; they are started
by a fork server where the platform has one (dream_sc is imported there once, then forked),
else spawned.

Targets in parallel pay off where a machine has more cores than one fit keeps busy, or on a
shared machine, where multi-threaded torch spends much of its time waiting for descheduled
threads. On an idle 2-core machine two single-threaded workers fitted the example screen no
faster than one two-threaded process (29.1 s against 28.3 s, ``benchmarks/bench_screen.py``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from mudata import MuData

#: Tasks handed to the pool ahead of the free workers, per worker (slices cut in advance).
AHEAD = 2


def default_threads(n_jobs: int) -> int:
    """Torch threads per worker: the process's threads shared out, at least one."""
    import torch

    return max(1, torch.get_num_threads() // n_jobs)


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["dream_sc"])
        return ctx
    return multiprocessing.get_context("spawn")


def _init_worker(threads: int) -> None:
    import torch

    from .._settings import settings

    torch.set_num_threads(threads)
    settings.torch_threads = threads


def fit_and_hand_back(
    mdata: MuData, fit_one: Callable, target: str, keys: Sequence[str], kwargs: dict
) -> tuple[dict, dict]:
    """Fit ``target`` on a worker's copy of the screen; return its entries and its timing.

    The entries under ``keys`` are removed from the copy afterwards, even when the fit fails,
    so the copy is the screen it was for the next target.
    """
    from ._screen_store import capture, drop

    kwargs = dict(kwargs)
    modality, prefixes = kwargs["modality"], kwargs.pop("prefixes")
    try:
        timing = fit_one(mdata, target=target, **kwargs)
        pieces: dict[str, dict] = {}
        for key in keys:
            for where, entries in capture(mdata, modality, key, prefixes).items():
                pieces.setdefault(where, {}).update(entries)
    finally:
        for key in keys:
            drop(mdata, modality, key, prefixes)
    return pieces, timing


def _fit_in_worker(
    fit_one: Callable, target: str, payload: bytes, keys: Sequence[str], kwargs: dict
) -> tuple:
    """Fit ``target`` on its slice of the screen (``payload``: h5mu bytes)."""
    from ._target_cells import read_mudata_bytes

    try:
        return fit_and_hand_back(read_mudata_bytes(payload), fit_one, target, keys, kwargs)
    finally:
        del payload
        release_memory()


def release_memory() -> None:
    """Hand the worker's freed heap back to the system (glibc ``malloc_trim``; else nothing).

    A worker receives every slice through a pipe: tens of megabytes per task, freed after it.
    glibc then raises its mmap threshold and keeps later blocks of that size on the heap,
    whose free pages it does not return by itself; a worker's resident memory grew by ~30 MB
    per target at 100,000 cells x 2,000 genes (while the same fits in one process did not).
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def sliced_tasks(
    mdata: MuData, targets: Sequence[str], kwargs: Callable[[str], dict]
) -> Iterator[tuple[str, Any, bytes, dict]]:
    """``(target, cells, payload, kwargs)`` per target, each slice cut when asked for."""
    from ._target_cells import target_slice

    for target in targets:
        kw = kwargs(target)
        cells, payload = target_slice(mdata, target, kw)
        yield target, cells, payload, kw


def on_screen_cells(mdata: MuData) -> Callable[[dict, Any], dict]:
    """``expand(pieces, cells)``: a slice's captured entries on ``mdata``'s cells."""
    from ._screen_store import index_digest
    from ._target_cells import expand_pieces

    names = mdata.obs_names
    digest = index_digest(names)
    return lambda pieces, cells: expand_pieces(pieces, cells, names, digest)


def fit_targets_in_parallel(
    mdata: MuData,
    targets: Sequence[str],
    *,
    n_jobs: int,
    threads: int,
    fit_one: Callable,
    keys: Callable[[str], Sequence[str]],
    kwargs: Callable[[str], dict],
) -> Iterator[tuple[str, dict, dict]]:
    """Fit ``targets`` in ``n_jobs`` worker processes.

    Parameters
    ----------
    mdata
        The screen after its technical fit (each task carries its target's slice of it).
    targets
        Targets to fit.
    n_jobs, threads
        Worker processes and torch threads per worker.
    fit_one
        Module-level function ``fit_one(mdata, target=..., **kwargs) -> timing`` (picklable).
    keys
        The result keys a target's fit writes.
    kwargs
        Keyword arguments of ``fit_one`` per target (with ``prefixes``: every key of the run).

    Yields
    ------
    ``(target, pieces, timing)`` as targets finish (any order).
    """
    workers = min(n_jobs, len(targets))
    expand = on_screen_cells(mdata)
    tasks = sliced_tasks(mdata, targets, kwargs)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_context(),
        initializer=_init_worker,
        initargs=(threads,),
    ) as pool:
        pending: dict = {}

        def submit() -> None:
            task = next(tasks, None)
            if task is not None:
                target, cells, payload, kw = task
                future = pool.submit(
                    _fit_in_worker, fit_one, target, payload, list(keys(target)), kw
                )
                pending[future] = (target, cells)

        for _ in range(AHEAD * workers):
            submit()
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    target, cells = pending.pop(future)
                    pieces, timing = future.result()
                    submit()
                    yield target, expand(pieces, cells), timing
        finally:
            for future in pending:
                future.cancel()


def in_target_order(
    results: Iterable[tuple[str, dict, dict]],
    order: Sequence[str],
    on_arrival: Callable[[str, dict, dict], None],
) -> Iterator[tuple[str, dict]]:
    """``(target, pieces)`` in ``order``, each as soon as it and every target before it are back.

    ``results`` yields ``(target, pieces, timing)`` in any order; ``on_arrival`` is called for
    each as it arrives (progress, checkpoint). A piece is held only until the targets before it
    are back, so memory does not grow with the screen (all pieces of 500 targets held to the
    end were ~30 MB per target at 100,000 cells).
    """
    waiting: dict[str, dict] = {}
    queue = iter(order)
    upcoming = next(queue, None)
    for target, pieces, timing in results:
        on_arrival(target, pieces, timing)
        waiting[target] = pieces
        while upcoming is not None and upcoming in waiting:
            yield upcoming, waiting.pop(upcoming)
            upcoming = next(queue, None)


def targets_elsewhere(
    mdata: MuData,
    targets: Sequence[str],
    *,
    n_jobs: int,
    on_dask: bool,
    client: Any,
    threads: int,
    fit_one: Callable,
    keys: Callable[[str], Sequence[str]],
    kwargs: Callable[[str], dict],
) -> Iterator[tuple[str, dict, dict]] | None:
    """Targets fitted as dask tasks (``on_dask``) or in ``n_jobs`` worker processes.

    ``None`` when they are fitted here, one after the other (``n_jobs = 1``, or a single
    target to fit). The iterator yields ``(target, pieces, timing)`` as targets finish; see
    :func:`fit_targets_in_parallel` and :func:`~dream_sc.tl._screen_dask.fit_targets_on_dask`.
    """
    common = {"threads": threads, "fit_one": fit_one, "keys": keys, "kwargs": kwargs}
    if on_dask and len(targets):
        from ._screen_dask import fit_targets_on_dask

        return fit_targets_on_dask(mdata, targets, client=client, **common)
    if n_jobs > 1 and len(targets) > 1:
        return fit_targets_in_parallel(mdata, targets, n_jobs=n_jobs, **common)
    return None


def check_n_jobs(n_jobs: Any, backend: str) -> int:
    """``n_jobs`` as a positive int (``-1``: every CPU); only with the local backend."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
        raise ValueError(f"n_jobs must be a positive integer or -1; got {n_jobs!r}.")
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive integer or -1; got {n_jobs!r}.")
    if n_jobs > 1 and backend != "local":
        raise ValueError(
            "n_jobs > 1 fits targets in local worker processes; with backend='dask' the "
            "cluster already runs the feature chunks in parallel: leave n_jobs=1."
        )
    return n_jobs


def check_target_batch(target_batch: Any) -> int:
    """``target_batch`` of ``fit_screen`` as a positive int."""
    if isinstance(target_batch, bool) or not isinstance(target_batch, int) or target_batch < 1:
        raise ValueError(f"target_batch must be a positive integer; got {target_batch!r}.")
    return int(target_batch)
