"""The ``dask.distributed`` backend: one task per feature chunk on a cluster."""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

from tqdm.auto import tqdm

from ._base import Backend
from ._malloc import run_tuned

logger = logging.getLogger("dream_sc")

EXTRA_HINT = 'pip install "dream_sc[dask]"'


def import_distributed():
    """The ``distributed`` module, or an ImportError naming the ``dream_sc[dask]`` extra."""
    try:
        import distributed
    except ImportError as err:
        raise ImportError(
            f"backend='dask' needs dask.distributed, which is not installed; install the "
            f"optional extra with `{EXTRA_HINT}`."
        ) from err
    return distributed


class DaskBackend(Backend):
    """Runs every task on a ``dask.distributed`` cluster.

    Parameters
    ----------
    client
        A :class:`distributed.Client`; ``None`` uses the current default client.
    threads
        torch intra-op threads of every task.

    Notes
    -----
    ``shared`` is scattered once to every worker (``broadcast=True``); each task then carries
    only its own chunk (data slice and per-feature inputs); with ``scatter_items`` each item is
    scattered to a worker itself (large items do not pass through the scheduler), and with
    ``window`` only that many tasks are in flight (the items are read as tasks finish). Tasks get unique keys (a run id
    plus the chunk number), so a rerun never picks up stale results. A worker that dies takes
    its running tasks with it and the scheduler reruns them elsewhere (the shared inputs are
    replicated on the other workers); results are keyed by chunk, so none is lost or counted
    twice. The first task that raises cancels the rest and its error is raised here. Tasks run
    with glibc's mmap threshold raised (see :mod:`dream_sc.engine.backends._malloc`): the nanny's
    ``MALLOC_TRIM_THRESHOLD_`` otherwise makes chunk fits about twice as slow.
    """

    name = "dask"

    def __init__(self, client=None, threads: int = 1) -> None:
        super().__init__(threads)
        distributed = import_distributed()
        if client is None:
            try:
                client = distributed.get_client()
            except ValueError as err:
                raise ValueError(
                    "backend='dask' found no running dask.distributed client; create one "
                    "first (e.g. `from distributed import Client, LocalCluster; client = "
                    "Client(LocalCluster(n_workers=2, threads_per_worker=1))`) or pass "
                    "`client=`."
                ) from err
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client; got {type(client).__name__}.")
        self.client = client

    def record(self) -> dict:  # noqa: D102
        out = super().record()
        info = self.client.scheduler_info() if self.client.scheduler is not None else {}
        out["n_workers"] = len(info.get("workers", {}))
        return out

    def n_workers(self) -> int:
        """Workers of the cluster now (0 when none has joined yet)."""
        return len(self.client.scheduler_info().get("workers", {}))

    def map(  # noqa: D102
        self,
        fn,
        shared: Any,
        items,
        *,
        description: str,
        progress: bool,
        window: int | None = None,
        scatter_items: bool = False,
    ):
        distributed = import_distributed()
        client = self.client
        run = uuid.uuid4().hex[:8]
        label = description.replace(" ", "_")
        shared_future = (
            None if shared is None else client.scatter(shared, broadcast=True, hash=False)
        )
        items = iter(items)
        futures: dict = {}

        def submit():
            nxt = next(items, None)
            if nxt is None:
                return None
            number, item = nxt
            if scatter_items:  # straight to a worker, not through the scheduler
                item = client.scatter([item], hash=False)[0]
            future = client.submit(
                run_tuned,
                fn,
                shared_future,
                item,
                key=f"dream_sc-{label}-{run}-chunk{number}",
                pure=False,
            )
            futures[future.key] = (number, future)
            return future

        first = []
        while window is None or len(first) < window:
            future = submit()
            if future is None:
                break
            first.append(future)
        show = progress and sys.stderr.isatty()
        total = len(futures) if window is None else None
        bar = tqdm(total=total, desc=f"{description} (dask)", disable=not show, leave=False)
        done = 0
        queue = distributed.as_completed(first)
        try:
            for future in queue:
                number = futures[future.key][0]
                if future.status == "error":
                    future.result()  # raises the task's exception here
                result = future.result()
                del futures[future.key]
                if window is not None:
                    more = submit()
                    if more is not None:
                        queue.add(more)
                yield number, result
                done += 1
                bar.update(1)
        finally:
            bar.close()
            if futures:
                client.cancel([f for _, f in futures.values()])
            if shared_future is not None:
                client.cancel([shared_future])
            logger.debug("%s: %d dask tasks gathered", description, done)
