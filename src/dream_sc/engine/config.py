"""One frozen fit configuration, resolved once per fit and passed whole down to the SVI loop.

The ``tl`` functions take the fit settings as keyword arguments (the public contract);
:meth:`FitConfig.resolve` turns them into a :class:`FitConfig` once, filling what was not given
from :data:`STEP_DEFAULTS` (the step's own defaults) and ``ds.settings``. Everything below
``tl`` (the memory planner, the chunk scheduler, the SVI loop, checkpoints) reads the
configuration instead of taking the settings one by one, and :meth:`FitConfig.as_record` is
what the run record's ``params`` hold of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from .._checkpoints import recorded_seed
from .._settings import settings

logger = logging.getLogger("dream_sc")

#: Defaults of every step, used where an argument is ``None``. ``n_samples`` ``None`` in the
#: technical step means exact posterior summaries; cis and trans fall back to
#: ``settings.n_samples``.
STEP_DEFAULTS: dict[str, dict[str, Any]] = {
    "technical": {"n_steps": 200, "lr": 0.05, "n_samples": None},
    "cis": {"n_steps": 300, "lr": 0.05, "n_samples": "settings"},
    "trans": {"n_steps": 300, "lr": 0.03, "n_samples": "settings"},
}


@dataclass(frozen=True)
class FitConfig:
    """The settings of one fit's optimisation, resolved (no ``None`` left to look up).

    Attributes
    ----------
    seed
        Run seed (minibatches, per-feature noise, posterior draws).
    n_steps, lr
        SVI steps and peak learning rate.
    batch_size
        Cells per step (``None``: the memory planner's choice; a planned fit carries the
        planned size, see :meth:`with_plan`).
    n_samples
        Posterior draws behind the summaries (``None``: exact summaries, technical step only).
    device
        Torch device of the fit.
    max_memory_gb
        Memory budget of the planner (``None``: probed, see :mod:`dream_sc.engine.memory`).
    progress
        Progress bars.
    checkpoint, checkpoint_every, checkpoint_mismatch
        Checkpoint path prefix (``None``: no checkpoints), steps between checkpoints, and what
        to do with files of another run (see :mod:`dream_sc._checkpoints`).
    tolerance
        Stop on convergence: the relative improvement of the smoothed loss per check window
        below which a fit (every feature chunk on its own) stops early, after a short
        learning-rate annealing (see :func:`dream_sc.engine.svi.run_svi`). ``None`` (default):
        exactly ``n_steps`` steps.

    Examples
    --------
    >>> cfg = FitConfig.resolve("technical", seed=1, device="cpu", progress=False)
    >>> cfg.n_steps, cfg.lr, cfg.n_samples
    (200, 0.05, None)
    """

    seed: int = 0
    n_steps: int = 300
    lr: float = 0.05
    batch_size: int | None = None
    n_samples: int | None = None
    device: torch.device = torch.device("cpu")
    max_memory_gb: float | None = None
    progress: bool = False
    checkpoint: str | None = None
    checkpoint_every: int = 100
    checkpoint_mismatch: str = "raise"
    tolerance: float | None = None

    @classmethod
    def resolve(cls, step: str, **given: Any) -> FitConfig:
        """The configuration of a ``step`` fit from the arguments ``given`` (``None``: default).

        ``n_steps``/``lr``/``n_samples`` come from :data:`STEP_DEFAULTS`; ``seed`` from
        ``settings.seed``, then the seed recorded in ``checkpoint``'s files, then a fresh seed;
        ``device`` from ``settings.device`` (``"auto"``: CUDA when available);
        ``max_memory_gb``, ``progress`` and ``checkpoint_every`` from ``ds.settings``.
        """
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"FitConfig has no setting(s) {sorted(unknown)}.")
        values = {k: v for k, v in given.items() if v is not None}
        for name, default in STEP_DEFAULTS[step].items():
            values.setdefault(name, default)
        if STEP_DEFAULTS[step]["n_samples"] == "settings":  # cis, trans: always a count
            n = values["n_samples"]
            values["n_samples"] = int(settings.n_samples if n == "settings" else n)
        checkpoint = values.get("checkpoint")
        values["seed"] = resolve_seed(values.get("seed"), checkpoint)
        values["device"] = resolve_device(values.get("device"))
        values.setdefault("max_memory_gb", settings.max_memory_gb)
        values.setdefault("progress", settings.progress_bar)
        values.setdefault("checkpoint_every", settings.checkpoint_every)
        values["progress"] = bool(values["progress"])
        tolerance = values.get("tolerance")
        if tolerance is not None and (
            isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance <= 0
        ):
            raise ValueError(f"tolerance must be a positive number or None; got {tolerance!r}.")
        return cls(**values)

    @classmethod
    def from_record(cls, params: Mapping[str, Any], **changes: Any) -> FitConfig:
        """The configuration a run record's ``params`` hold (stored ``""`` reads as ``None``).

        What records do not hold (``max_memory_gb``, ``checkpoint_every``) comes from
        ``ds.settings``; ``changes`` replace fields (e.g. ``device``, ``progress``).
        """

        def value(name: str, cast: Any) -> Any:
            raw = params.get(name)
            return None if raw is None or (isinstance(raw, str) and raw == "") else cast(raw)

        out = cls(
            seed=value("seed", int),
            n_steps=value("n_steps", int),
            lr=value("lr", float),
            batch_size=value("batch_size", int),
            n_samples=value("n_samples", int),
            tolerance=value("tolerance", float),
            max_memory_gb=settings.max_memory_gb,
            checkpoint_every=settings.checkpoint_every,
        )
        return replace(out, **changes)

    def with_plan(self, batch_size: int) -> FitConfig:
        """The same configuration with the memory planner's cell batch size."""
        return replace(self, batch_size=int(batch_size))

    def as_record(self) -> dict[str, Any]:
        """The settings a run record's ``params`` hold (seed, steps, lr, samples, device).

        Plus ``tolerance`` when set.
        """
        out = asdict(self)
        out["device"] = str(self.device)
        keys = ("seed", "n_steps", "lr", "n_samples", "device")
        if self.tolerance is not None:  # records of fixed-step fits stay as they were
            keys += ("tolerance",)
        return {k: out[k] for k in keys}


def resolve_seed(seed: int | None, checkpoint: str | None = None) -> int:
    """``seed`` -> ``settings.seed`` -> the seed of ``checkpoint``'s files -> a fresh seed.

    A checkpointed run whose seed was drawn resumes with that seed (an interrupted run without
    ``seed=`` would otherwise be refused as a run with another seed).
    """
    if seed is None:
        seed = settings.seed
    if seed is None and checkpoint is not None:
        seed = recorded_seed(checkpoint)
        if seed is not None:
            logger.info("resuming with seed %d, recorded in checkpoint %s", seed, checkpoint)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31 - 1))
    return int(seed)


def resolve_device(device: Any) -> torch.device:
    """``"auto"`` picks CUDA when available; ``"cuda"`` without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    device = device or settings.device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {device!r}.")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available; use 'cpu'.")
    return torch.device(device)
