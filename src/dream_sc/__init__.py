"""dream_sc: dose-response analysis of CRISPRi/CRISPRa single-cell screens across modalities."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, get, io, pl, pp, tl
from ._settings import settings

try:
    __version__ = version("dream_sc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["datasets", "get", "io", "pl", "pp", "settings", "tl", "__version__"]
