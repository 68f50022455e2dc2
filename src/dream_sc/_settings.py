"""Package-wide settings: verbosity, seed, device, progress bars, plotting."""

from __future__ import annotations

import logging
from typing import Literal

logger = logging.getLogger("dream_sc")

_VERBOSITY_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class DreamSettings:
    """Global defaults read by every ``dream_sc`` function.

    Attributes
    ----------
    verbosity
        ``None`` (default): leave the ``"dream_sc"`` logger to the application's logging
        configuration (it propagates to the root logger like any library logger; with no
        configuration Python shows warnings and errors). 0 = errors, 1 = warnings, 2 = info,
        3 = debug (per-step ELBO): sets the logger's level and, when neither it nor the root
        logger has a handler yet, adds one writing ``dream_sc: message`` lines to stderr.
    seed
        Default seed used when a function is called with ``seed=None``. ``None`` draws a
        fresh random seed, which is always recorded in the run record.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    progress_bar
        Show tqdm progress bars around SVI loops.
    autoshow
        Plot functions call :func:`matplotlib.pyplot.show` when ``show=None``.
    n_samples
        Default number of posterior samples kept per fit.
    max_memory_gb
        Memory budget for the planner; ``None`` reads it from cgroups/SLURM/psutil.
    checkpoint_every
        SVI steps between checkpoints of fits run with ``checkpoint=``.
    torch_threads
        Intra-op torch threads of every feature-chunk fit, locally and on Dask workers alike
        (CPU reductions depend on the thread count, so equal counts give identical results);
        ``None``: torch's current count in the calling process. Recorded in ``params``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> ds.settings.verbosity = 1
    >>> ds.settings.seed = 0
    """

    def __init__(self) -> None:
        self._verbosity: int | None = None
        self.seed: int | None = None
        self.device: Literal["auto", "cpu", "cuda"] = "auto"
        self.progress_bar: bool = True
        self.autoshow: bool = True
        self.n_samples: int = 100
        self.max_memory_gb: float | None = None
        self.checkpoint_every: int = 100
        self.torch_threads: int | None = None

    @property
    def verbosity(self) -> int | None:
        """Logging verbosity of the ``dream_sc`` logger (0-3), ``None`` when not set."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int | None) -> None:
        if value is not None and value not in _VERBOSITY_LEVELS:
            raise ValueError(f"verbosity must be None or one of 0, 1, 2, 3; got {value!r}.")
        self._verbosity = value
        self._apply_verbosity()

    def _apply_verbosity(self) -> None:
        """Level (and, if nothing would show the messages, a stderr handler) of the logger.

        The logger always propagates, so handlers of the application (or pytest's ``caplog``)
        on the root logger see every message; ``None`` hands the level back to them.
        """
        if self._verbosity is None:
            logger.setLevel(logging.NOTSET)
            return
        logger.setLevel(_VERBOSITY_LEVELS[self._verbosity])
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logger.addHandler(handler)

    def __repr__(self) -> str:
        fields = [
            "verbosity",
            "seed",
            "device",
            "progress_bar",
            "autoshow",
            "n_samples",
            "max_memory_gb",
            "checkpoint_every",
            "torch_threads",
        ]
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in fields)
        return f"DreamSettings({inner})"


settings = DreamSettings()
