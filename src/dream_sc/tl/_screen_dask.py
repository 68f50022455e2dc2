"""Targets of a screen as tasks on a dask cluster (``fit_screen(backend="dask")``).

Each task carries only the slice of the screen its target reads (its cells and the control
cells its fits and its test read, :mod:`~dream_sc.tl._target_cells`, as the bytes of an h5mu file: a MuData does not
pickle), scattered to a worker directly rather than through the scheduler; the task fits the
target there with the local backend and hands back exactly the entries the target's fits
wrote (:func:`~dream_sc.tl._screen_store.capture`). A worker's memory thus follows those
cells, not the screen, and the data sent per task is that slice. Slices are cut here as the
cluster needs them (:data:`AHEAD` tasks per worker in flight), never all at once. Tasks of one
worker process take turns (a lock: torch's thread count is per process), so a worker runs one
target at a time with ``threads`` torch threads: give the cluster one single-threaded worker
per core. The calling process puts the per-cell results back on the screen's cells and writes
the entries in target order, so the result is laid out exactly as a serial run's.

A target's results depend only on the data, its seed and the torch threads of its fit: the
same on a worker as in this process (tested).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from mudata import MuData

from ..engine.backends import resolve_backend
from ._screen_parallel import fit_and_hand_back, on_screen_cells, release_memory, sliced_tasks

#: One target at a time per worker process: torch's thread count is the process's.
_WORKER_LOCK = threading.Lock()
#: Tasks in flight per worker of the cluster (slices cut ahead of the free workers).
AHEAD = 2


def _fit_target_task(shared: None, item: tuple) -> tuple[str, dict, dict]:
    """Fit one target on its slice of the screen; return its entries and timing."""
    from ._target_cells import read_mudata_bytes

    fit_one, target, payload, keys, kwargs, threads = item
    with _WORKER_LOCK:
        mdata = read_mudata_bytes(payload)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            pieces, timing = fit_and_hand_back(mdata, fit_one, target, keys, kwargs)
        finally:
            torch.set_num_threads(before)
            del mdata
            release_memory()  # as n_jobs workers: the slices' pages back to the system
    return target, pieces, timing


def fit_targets_on_dask(
    mdata: MuData,
    targets: Sequence[str],
    *,
    client,
    threads: int,
    fit_one: Callable,
    keys: Callable[[str], Sequence[str]],
    kwargs: Callable[[str], dict],
    progress: bool = False,
) -> Iterator[tuple[str, dict, dict]]:
    """Fit ``targets`` as tasks on the dask cluster of ``client``.

    Parameters
    ----------
    mdata
        The screen after its technical fit (each task carries its target's slice of it).
    targets
        Targets to fit.
    client
        A ``distributed.Client`` (``None``: the current default client).
    threads
        torch threads of every target's fit.
    fit_one
        Module-level function ``fit_one(mdata, target=..., **kwargs) -> timing`` (picklable).
    keys
        The result keys a target's fit writes.
    kwargs
        Keyword arguments of ``fit_one`` per target (with ``prefixes``: every key of the run).
    progress
        Show the cluster's task bar (fit_screen shows its own bar over targets).

    Yields
    ------
    ``(target, pieces, timing)`` as targets finish (any order).
    """
    runner = resolve_backend("dask", client, threads=threads)
    expand = on_screen_cells(mdata)
    cells_of: dict[str, object] = {}

    def items():
        tasks = sliced_tasks(mdata, targets, kwargs)
        for number, (target, cells, payload, kw) in enumerate(tasks):
            cells_of[target] = cells
            yield number, (fit_one, target, payload, list(keys(target)), kw, int(threads))

    workers = max(1, runner.n_workers())
    for _, (target, pieces, timing) in runner.map(
        _fit_target_task,
        None,
        items(),
        description="fit_screen targets",
        progress=progress,
        window=AHEAD * workers,
        scatter_items=True,
    ):
        yield target, expand(pieces, cells_of.pop(target)), timing
