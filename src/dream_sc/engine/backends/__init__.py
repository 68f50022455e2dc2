"""Where feature chunks run: this process (``"local"``) or a ``dask.distributed`` cluster.

A backend has ``map(fn, shared, items)`` semantics: ``fn(shared, item)`` for every
``(number, item)`` pair, yielding ``(number, result)`` as results arrive. ``shared`` holds the
inputs every item needs; the Dask backend sends it once to every worker.
"""

from ._base import BACKENDS, Backend, LocalBackend, resolve_backend, resolve_threads
from ._dask import DaskBackend, import_distributed

__all__ = [
    "BACKENDS",
    "Backend",
    "DaskBackend",
    "LocalBackend",
    "import_distributed",
    "resolve_backend",
    "resolve_threads",
]
