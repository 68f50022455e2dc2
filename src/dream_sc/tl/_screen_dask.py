"""Targets of a screen as tasks on a dask cluster (``fit_screen(backend="dask")``).

The screen (after its technical fit) is sent once to every worker as the bytes of an h5mu file
(a MuData does not pickle) and read there once per run; each task fits one target there with
the local backend, hands back exactly the entries the target's fits wrote
(:func:`~dream_sc.tl._screen_store.capture`) and removes them from the worker's copy, so the
copy is the scattered screen again for the next task. Tasks of one worker process take turns
(a lock: they share that copy), so a worker runs one target at a time with ``threads`` torch
threads: give the cluster one single-threaded worker per core. The calling process writes the
entries in target order, so the result is laid out exactly as a serial run's.

A target's results depend only on the data, its seed and the torch threads of its fit: the
same on a worker as in this process (tested).
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from mudata import MuData

from ..engine.backends import resolve_backend
from ._screen_parallel import fit_and_hand_back, write_screen_file

#: One target at a time per worker process: tasks share the worker's copy of the screen.
_WORKER_LOCK = threading.Lock()
#: The worker's copy of the screen of the current run: ``{"run": id, "mdata": MuData}``.
_WORKER_SCREEN: dict = {}


def _screen_bytes(mdata: MuData) -> bytes:
    """The screen as the bytes of an h5mu file."""
    folder = tempfile.mkdtemp(prefix="dream_sc_screen_")
    path = Path(folder) / "screen.h5mu"
    try:
        write_screen_file(mdata, path)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(folder)


def _worker_screen(run: str, payload: bytes) -> MuData:
    """The worker's copy of the run's screen, read from ``payload`` on first use."""
    if _WORKER_SCREEN.get("run") != run:
        import mudata

        _WORKER_SCREEN.clear()  # an earlier run's screen is not needed any more
        handle, name = tempfile.mkstemp(suffix=".h5mu")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(payload)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                _WORKER_SCREEN.update(run=run, mdata=mudata.read_h5mu(name))
        finally:
            os.unlink(name)
    return _WORKER_SCREEN["mdata"]


def _fit_target_task(shared: tuple[str, bytes], item: tuple) -> tuple[str, dict, dict]:
    """Fit one target on the worker's copy of the screen; return its entries and timing."""
    fit_one, target, keys, kwargs, threads = item
    with _WORKER_LOCK:
        mdata = _worker_screen(*shared)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            pieces, timing = fit_and_hand_back(mdata, fit_one, target, keys, kwargs)
        finally:
            torch.set_num_threads(before)
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
        The screen after its technical fit (sent once to every worker).
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
    items = (
        (number, (fit_one, target, list(keys(target)), kwargs(target), int(threads)))
        for number, target in enumerate(targets)
    )
    shared = (uuid.uuid4().hex, _screen_bytes(mdata))
    for _, (target, pieces, timing) in runner.map(
        _fit_target_task, shared, items, description="fit_screen targets", progress=progress
    ):
        yield target, pieces, timing
