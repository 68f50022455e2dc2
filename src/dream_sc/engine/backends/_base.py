"""The backend interface, the in-process backend and argument resolution."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

#: Accepted values of the ``backend=`` argument.
BACKENDS = ("local", "dask")


class Backend:
    """Runs independent tasks and yields their results.

    Attributes
    ----------
    name
        ``"local"`` or ``"dask"``.
    threads
        torch intra-op threads of every task (the same for every backend, so results agree).
    """

    name = "base"

    def __init__(self, threads: int) -> None:
        self.threads = int(threads)

    def map(
        self,
        fn: Callable[[Any, Any], Any],
        shared: Any,
        items: Iterable[tuple[int, Any]],
        *,
        description: str,
        progress: bool,
        window: int | None = None,
        scatter_items: bool = False,
    ) -> Iterator[tuple[int, Any]]:
        """``(number, fn(shared, item))`` for every ``(number, item)``, as results arrive.

        ``window``: at most this many items in flight (``None``: all); ``scatter_items``: send
        each item to where it runs directly (both only matter on a cluster).
        """
        raise NotImplementedError

    def record(self) -> dict:
        """Entries for a run record's ``params`` (how the fit was run)."""
        return {"backend": self.name, "torch_threads": self.threads}


class LocalBackend(Backend):
    """Runs the tasks one after the other in this process."""

    name = "local"

    def map(self, fn, shared, items, *, description, progress, window=None, scatter_items=False):  # noqa: D102
        for number, item in items:
            yield number, fn(shared, item)


def resolve_threads(threads: int | None = None) -> int:
    """Intra-op torch threads of every chunk fit.

    ``threads``, else ``settings.torch_threads``, else torch's current count in this process.
    """
    from ..._settings import settings

    if threads is None:
        threads = getattr(settings, "torch_threads", None)
    if threads is None:
        threads = torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"torch_threads must be a positive integer; got {threads!r}.")
    return int(threads)


def resolve_backend(backend: str = "local", client=None, *, threads: int | None = None) -> Backend:
    """Check the ``backend``/``client`` arguments of a ``tl`` function and make the backend.

    Raises before any work: an unknown ``backend``, a ``client`` without ``backend="dask"``,
    a missing ``distributed`` package (naming the ``dream_sc[dask]`` extra), no running client.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}."
        )
    n_threads = resolve_threads(threads)
    if backend == "local":
        if client is not None:
            raise ValueError(
                "client= is only used with backend='dask'; pass backend='dask' to run on it."
            )
        return LocalBackend(n_threads)
    from ._dask import DaskBackend

    return DaskBackend(client, n_threads)
