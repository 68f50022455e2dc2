"""The shared SVI loop: OneCycle learning rate, gradient clipping, convergence check."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from .. import _checkpoints as ckpt
from .config import FitConfig

logger = logging.getLogger("dream_sc")
#: Steps between checkpoints when the configuration says 0.
DEFAULT_CHECKPOINT_EVERY = 100


class NonFiniteLossError(FloatingPointError):
    """The ELBO became NaN or infinite."""


@dataclass
class FitResult:
    """Outcome of one SVI run.

    Attributes
    ----------
    loss
        ELBO loss per step (negative ELBO, scaled per observation unit as optimised).
    converged
        Whether the smoothed loss had stopped improving by the end.
    seconds
        Wall time.
    n_steps_run
        Steps actually run (``None``: all ``n_steps``). A fit stopped on convergence
        (``FitConfig.tolerance``) keeps a loss trace of ``n_steps`` entries whose steps after
        ``n_steps_run`` hold the mean loss of its last check window.
    """

    loss: np.ndarray
    converged: bool
    seconds: float
    n_steps_run: int | None = None


def _diverged(what: str, context: str) -> str:
    return (
        f"{what}{context}. Typical causes: extreme values in the data (check for outliers / "
        "wrong layer), or a learning rate too high for this data; try a smaller `lr`, more "
        "`n_steps`, or drop the feature(s)."
    )


def _after_step(step: int) -> None:
    """Hook called after every step (tests use it to simulate an interrupted run)."""


#: ``kind`` of the SVI state files in :mod:`dream_sc._checkpoints`.
SVI_KIND = "svi"


def _svi_fingerprint(fingerprint: Mapping[str, Any] | None, config: FitConfig) -> dict:
    out = {**(fingerprint or {}), "n_steps": int(config.n_steps), "lr": float(config.lr)}
    if config.tolerance is not None:
        out["tolerance"] = float(config.tolerance)
    return out


def check_svi_checkpoint(
    path: str | Path | None, fingerprint: Mapping[str, Any] | None, config: FitConfig
) -> None:
    """Check the SVI checkpoint ``path`` of a coming :func:`run_svi` before any other work.

    Raises the error :func:`run_svi` would raise (another fit, damaged, old format), or with
    ``config.checkpoint_mismatch="restart"`` deletes such a file; nothing happens when there is
    no file.
    """
    if path is not None:
        current = _svi_fingerprint(fingerprint, config)
        ckpt.check_files(
            [Path(path)], kind=SVI_KIND, current=current, mismatch=config.checkpoint_mismatch
        )


def _save_checkpoint(path, step, params, optimizer, scheduler, losses, fingerprint) -> None:
    """Save the optimisation state (data only, written atomically)."""
    state = {
        "step": int(step),
        "params": [p.detach().cpu().clone() for p in params],
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "losses": losses[:step].copy(),
        "torch_rng": torch.get_rng_state(),
    }
    ckpt.write(path, kind=SVI_KIND, fingerprint=fingerprint, tree=state)


def _load_checkpoint(path, params, optimizer, scheduler, losses, fingerprint, mismatch) -> int:
    path = Path(path)
    if not ckpt.check_files([path], kind=SVI_KIND, current=fingerprint, mismatch=mismatch):
        return 0
    saved = ckpt.read(path, kind=SVI_KIND)
    ckpt.check(saved, fingerprint)
    try:
        state = saved.tree
        step = int(state["step"])
        stored = state["params"]
        if len(stored) != len(params) or any(
            a.shape != b.shape for a, b in zip(stored, params, strict=True)
        ):
            raise ValueError("its parameter shapes differ from this fit's")
        with torch.no_grad():
            for p, value in zip(params, stored, strict=True):
                p.copy_(value.to(p.device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        losses[:step] = state["losses"]
        torch.set_rng_state(state["torch_rng"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise ckpt.damaged(path, f"{type(err).__name__}: {err}") from err
    logger.info("resuming from checkpoint %s at step %d", path, step)
    return step


def smoothed_converged(
    loss: np.ndarray, *, window_frac: float = 0.1, rtol: float = 1e-3, n_se: float = 2.0
) -> bool:
    """Convergence check on the smoothed loss.

    Splits the last ``3 * window_frac`` of the steps into three windows and compares their mean
    losses. The fit is not converged only when the loss is still falling: both the last window
    and the one before improved on their predecessor by at least ``rtol`` relative to the loss
    scale and by at least ``n_se`` standard errors of the difference of two window means. The
    noise is estimated from step-to-step differences (``sd(diff) / sqrt(2)``), which a downward
    trend does not inflate. A steadily falling loss fails both comparisons; minibatch noise
    alone rarely passes one (2.3% at two standard errors) and almost never both (the two
    differences share a window, correlation -0.5: about 3 in a million), so a screen fitted
    in many feature chunks does not raise false alarms. (The bundled example's control-cell fit of
    ``rna`` had a flat loss from the moment initialisation on, yet its last window happened to
    lie 2.0 standard errors below the previous one, which the former two-window check reported
    as not converged. At 20,000 cells in minibatches of 1,024, a 600-step fit whose last window
    was 1.5 standard errors below the previous one gave the same curves as a 1,200-step fit.)

    Parameters
    ----------
    loss
        Loss trace.
    window_frac
        Fraction of the trace in each window.
    rtol
        Relative tolerance.
    n_se
        Tolerance in standard errors of the difference of window means.

    Returns
    -------
    True when converged.

    Examples
    --------
    >>> import numpy as np
    >>> smoothed_converged(np.linspace(100.0, 0.0, 200))  # still falling
    False
    >>> noise = np.random.default_rng(0).normal(0.0, 5.0, 200)
    >>> smoothed_converged(1000.0 + noise)
    True
    """
    loss = np.asarray(loss, dtype=np.float64)
    n = len(loss)
    w = max(5, int(n * window_frac))
    if n < 3 * w or not np.all(np.isfinite(loss[-3 * w :])):
        return False
    first, prev, last = (np.mean(loss[n - k * w : n - (k - 1) * w]) for k in (3, 2, 1))
    scale = max(abs(last), 1e-8)
    noise_sd = np.std(np.diff(loss[-3 * w :])) / np.sqrt(2.0)
    se = noise_sd * np.sqrt(2.0 / w)
    tolerance = max(rtol * scale, n_se * se)
    still_falling = (prev - last >= tolerance) and (first - prev >= tolerance)
    return not still_falling


#: Smallest check window of the convergence stop (steps).
MIN_STOP_WINDOW = 10
#: The check window of the convergence stop is this fraction of ``n_steps``.
STOP_WINDOW_FRAC = 0.05


def stop_window(total_steps: int) -> int:
    """Steps per check window of the convergence stop (also the length of the final anneal)."""
    return max(MIN_STOP_WINDOW, int(total_steps * STOP_WINDOW_FRAC))


def tolerance_reached(loss: np.ndarray, tolerance: float, window: int) -> bool:
    """Whether the smoothed loss stopped improving by ``tolerance`` (relative) per window.

    Compares the mean loss of the last ``window`` steps with that of the ``window`` steps
    before: converged when ``(previous - last) < tolerance * |last|`` (the research code's
    ``tolerance`` on a smoothed loss). A loss that went up counts as converged.

    Examples
    --------
    >>> import numpy as np
    >>> tolerance_reached(np.linspace(100.0, 50.0, 40), 1e-3, 10)  # still falling
    False
    >>> tolerance_reached(np.full(40, 50.0), 1e-3, 10)
    True
    """
    loss = np.asarray(loss, dtype=np.float64)
    if len(loss) < 2 * window or not np.all(np.isfinite(loss[-2 * window :])):
        return False
    prev = loss[-2 * window : -window].mean()
    last = loss[-window:].mean()
    return bool(prev - last < tolerance * max(abs(last), 1e-8))


class _Stopper:
    """Convergence stop of :func:`run_svi`: check, then anneal the learning rate and end.

    Checked every ``window`` steps once the warm-up is over and two windows have passed; when
    :func:`tolerance_reached`, the learning rate of every parameter group decays geometrically
    over one more window to the one-cycle schedule's final value (``min_lr``), so the
    parameters settle as they do at the end of a full run, and the fit ends.
    """

    def __init__(self, config: FitConfig, warmup: int, optimizer) -> None:
        self.tolerance = config.tolerance
        self.n_steps = config.n_steps
        self.window = stop_window(config.n_steps)
        self.first_check = warmup + 2 * self.window
        self.optimizer = optimizer
        self.anneal_from: int | None = None
        self.lr_start: list[float] = []
        self.end = config.n_steps

    @property
    def annealing(self) -> bool:
        return self.anneal_from is not None

    def check(self, done: int, losses: np.ndarray) -> None:
        """After step ``done - 1`` (losses synced): start the final anneal when converged."""
        if self.tolerance is None or self.annealing or done < self.first_check:
            return
        if done % self.window or done + self.window >= self.n_steps:
            return
        if tolerance_reached(losses[:done], self.tolerance, self.window):
            self.anneal_from = done
            self.end = done + self.window
            self.lr_start = [g["lr"] for g in self.optimizer.param_groups]

    def set_lr(self, step: int) -> None:
        """Learning rates of annealing step ``step`` (no-op before the stop)."""
        if not self.annealing:
            return
        frac = (step - self.anneal_from + 1) / self.window
        for group, lr0 in zip(self.optimizer.param_groups, self.lr_start, strict=True):
            final = min(float(group.get("min_lr", lr0 / 1000.0)), lr0)
            group["lr"] = lr0 * (final / lr0) ** frac if lr0 > 0 else lr0


#: Steps between copies of the loss trace from the device to the host (and the finiteness
#: check). The loss stays on the device in between, so an accelerator is never made to wait for
#: the host inside the optimisation loop.
LOSS_SYNC_EVERY = 50


class _LossTrace:
    """The loss of every step, kept on the fit's device and copied to ``losses`` in blocks."""

    def __init__(self, losses: np.ndarray, like: torch.Tensor | None, first: int) -> None:
        """``like``: a parameter of the fit (the trace lives on its device; ``None``: host)."""
        device = torch.device("cpu") if like is None else like.device
        self.losses = losses
        self.buffer = torch.empty(len(losses), dtype=torch.float64, device=device)
        self.synced = first  # losses[:synced] are on the host and finite
        self.recorded = first

    def record(self, step: int, loss: torch.Tensor) -> None:
        self.buffer[step] = loss.detach()
        self.recorded = step + 1

    def check(self, context: str) -> None:
        """Copy the new losses to the host; raise at the first non-finite one."""
        if self.recorded <= self.synced:
            return
        block = self.buffer[self.synced : self.recorded].cpu().numpy()
        bad = np.flatnonzero(~np.isfinite(block))
        if bad.size:
            step = self.synced + int(bad[0])
            raise NonFiniteLossError(
                _diverged(f"The ELBO became {block[bad[0]]} at step {step}", context)
            )
        self.losses[self.synced : self.recorded] = block
        self.synced = self.recorded


def one_cycle_adam(
    params: Sequence[torch.Tensor], scales: Sequence[float], total: int, peak: float
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.OneCycleLR]:
    """Adam (one group per tensor, peak rate ``peak * scale``) and its one-cycle schedule.

    ``total``: the steps of the run.

    Warm-up to the peak then cosine annealing, stepped every iteration (:func:`run_svi`; the
    batched cis fits of :mod:`dream_sc.engine.cis_batched` use the same optimiser).
    """
    optimizer = torch.optim.Adam(
        [{"params": [p], "lr": peak * k} for p, k in zip(params, scales, strict=True)], lr=peak
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[peak * k for k in scales],
        total_steps=max(total, 4),
        pct_start=max(0.1, 2.0 / max(total, 4)),
        div_factor=10.0,
        final_div_factor=100.0,
        cycle_momentum=False,
    )
    return optimizer, scheduler


def run_svi(
    model: Callable,
    guide: Callable,
    parameters: Callable[[], list[torch.Tensor]],
    make_batch: Callable[[int], dict],
    config: FitConfig,
    *,
    clip: float = 5.0,
    description: str = "SVI",
    loss_scale: float = 1.0,
    rtol: float = 1e-3,
    context: str = "",
    checkpoint: str | Path | None = None,
    lr_scales: Sequence[float] | None = None,
    noise: Any | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> FitResult:
    """Optimise the ELBO of ``model`` with ``guide``.

    Adam with a one-cycle learning-rate schedule (warm-up to ``lr`` then cosine annealing,
    stepped every iteration), element-wise gradient clipping (keeps features independent, so
    chunked fits equal joint fits), and NaN/inf detection.

    Parameters
    ----------
    model, guide
        Pyro callables taking one ``batch`` dict.
    parameters
        Returns the leaf tensors to optimise (called after the first guide run).
    make_batch
        ``step -> batch`` dict (minibatch indices, dose draws, ...).
    config
        The fit's :class:`~dream_sc.engine.config.FitConfig`: ``n_steps``, peak learning rate
        ``lr``, ``progress`` (a tqdm bar, only on a TTY), ``checkpoint_every`` (steps between
        checkpoints) and ``checkpoint_mismatch`` (``"raise"``: a checkpoint of another fit, or
        a damaged one, raises a ``ValueError`` naming it; ``"restart"``: it is deleted and the
        fit starts from step 0) and ``tolerance`` (``None``: exactly ``n_steps`` steps; a
        number: stop once the smoothed loss improves by less than that fraction per window of
        :func:`stop_window` steps, after one more window of learning-rate annealing; see
        :func:`tolerance_reached`).
    clip
        Element-wise gradient clip value.
    description
        Progress-bar label.
    loss_scale
        The loss is divided by this (e.g. number of observations) for readable traces.
    rtol
        Tolerance of :func:`smoothed_converged`.
    context
        Added to error messages (e.g. which feature chunk).
    checkpoint
        File to save the optimisation state to every ``checkpoint_every`` steps (data only,
        see :mod:`dream_sc._checkpoints`); when it exists with the same fingerprint the run
        resumes from it and ends exactly as an uninterrupted run would. Deleted when the run
        finishes.
    lr_scales
        Multiplier of ``lr`` for each parameter (same order as ``parameters()``); default 1.
    noise
        The guide's :class:`~dream_sc.models.guide.FeatureNoise`, told the step number before
        each step (``None``: the guide has no feature-level noise).
    fingerprint
        What the fit depends on besides ``n_steps`` and ``lr`` (data digests, settings; see
        :mod:`dream_sc._checkpoints`), stored with the checkpoint and compared on resume.

    Returns
    -------
    :class:`FitResult`.

    Raises
    ------
    NonFiniteLossError
        When the loss becomes NaN or infinite.
    """
    n_steps, lr = config.n_steps, config.lr
    checkpoint_every = config.checkpoint_every or DEFAULT_CHECKPOINT_EVERY
    elbo = pyro.infer.Trace_ELBO()
    start = time.perf_counter()
    params = parameters()
    scales = [1.0] * len(params) if lr_scales is None else [float(x) for x in lr_scales]
    if len(scales) != len(params):
        raise ValueError(f"lr_scales has {len(scales)} entries for {len(params)} parameters.")
    optimizer, scheduler = one_cycle_adam(params, scales, n_steps, lr)
    losses = np.empty(n_steps)
    first = 0
    state_fingerprint = _svi_fingerprint(fingerprint, config)
    if checkpoint is not None:
        first = _load_checkpoint(
            checkpoint,
            params,
            optimizer,
            scheduler,
            losses,
            state_fingerprint,
            config.checkpoint_mismatch,
        )
    show = config.progress and sys.stderr.isatty()
    trace = _LossTrace(losses, params[0] if params else None, first)
    stopper = _Stopper(config, int(max(0.1, 2.0 / max(n_steps, 4)) * max(n_steps, 4)), optimizer)
    bar = tqdm(range(first, n_steps), desc=description, disable=not show, leave=False)
    # Distribution argument checks read every tensor back to the host; on an accelerator the
    # loss trace's finiteness check (every LOSS_SYNC_EVERY steps) stands in for them.
    with pyro.validation_enabled(trace.buffer.device.type == "cpu"):
        for step in bar:
            if step >= stopper.end:
                break
            stopper.set_lr(step)
            if noise is not None:
                noise.step = step
            batch = make_batch(step)
            optimizer.zero_grad(set_to_none=True)
            try:
                loss = elbo.differentiable_loss(model, guide, batch) / loss_scale
            except ValueError as err:  # a distribution saw NaN parameters: the fit diverged
                if "invalid values" not in str(err) and "nan" not in str(err).lower():
                    raise
                trace.check(context)  # an earlier non-finite loss is the better diagnosis
                raise NonFiniteLossError(
                    _diverged(f"non-finite parameters at step {step}", context)
                ) from err
            trace.record(step, loss)
            loss.backward()
            for p in params:
                if p.grad is not None:
                    p.grad.nan_to_num_(0.0, 0.0, 0.0).clamp_(-clip, clip)
            optimizer.step()
            if not stopper.annealing:
                scheduler.step()
            done = step + 1
            wants_loss = (show and step % 25 == 0) or (
                logger.isEnabledFor(logging.DEBUG) and step % 50 == 0
            )
            if wants_loss or done % LOSS_SYNC_EVERY == 0:
                trace.check(context)
            if stopper.tolerance is not None and done % stopper.window == 0:
                trace.check(context)
                stopper.check(done, losses)
            if show and step % 25 == 0:
                bar.set_postfix(loss=f"{losses[step]:.4g}")
            if logger.isEnabledFor(logging.DEBUG) and step % 50 == 0:
                logger.debug("%s step %d loss %.6g", description, step, losses[step])
            if (
                checkpoint is not None
                and (done % checkpoint_every == 0)
                and done < n_steps
                and not stopper.annealing  # a resumed run replays the stop from an earlier save
            ):
                trace.check(context)
                _save_checkpoint(
                    checkpoint, done, params, optimizer, scheduler, losses, state_fingerprint
                )
            _after_step(step)
    bar.close()
    trace.check(context)
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    n_run = None
    if stopper.annealing:
        n_run = stopper.end
        losses[n_run:] = losses[n_run - stopper.window : n_run].mean()
        converged = True
        logger.debug("%s stopped on convergence after %d of %d steps", description, n_run, n_steps)
    else:
        converged = smoothed_converged(losses, rtol=rtol)
    seconds = time.perf_counter() - start
    if not math.isfinite(seconds):  # pragma: no cover
        seconds = 0.0
    return FitResult(loss=losses, converged=converged, seconds=seconds, n_steps_run=n_run)
