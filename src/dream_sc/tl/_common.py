"""Plumbing shared by the ``tl`` functions: progress bars, run records, summaries."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pandas as pd

from .._settings import settings
from ..engine.config import FitConfig
from ..models.trans_summary import Z90

logger = logging.getLogger("dream_sc")


def resolve_progress(progress: bool | None) -> bool:
    """``None`` follows ``settings.progress_bar``."""
    return settings.progress_bar if progress is None else bool(progress)


def versions() -> dict[str, str]:
    """Versions of the packages that determine a result."""
    out = {}
    for pkg in ("dream_sc", "torch", "pyro-ppl", "numpy", "anndata", "mudata"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return out


def clean_params(params: dict) -> dict:
    """Make a parameter dict h5-serialisable (None -> "", sequences -> lists of str)."""
    out = {}
    for key, value in params.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, bool | int | float | str | np.integer | np.floating):
            out[key] = value
        elif isinstance(value, list | tuple):
            out[key] = [str(v) for v in value]
        elif isinstance(value, dict):
            out[key] = clean_params(value)
        else:
            out[key] = str(value)
    return out


def normal_summary(
    name: str,
    loc: np.ndarray,
    scale: np.ndarray,
    *,
    log_scale: bool = False,
    config: FitConfig | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Mean, sd and 5/50/95% quantiles of a Normal (or log-Normal) posterior.

    Parameters
    ----------
    name
        Parameter name (column prefix).
    loc, scale
        Posterior location and scale on the unconstrained scale.
    log_scale
        The parameter is ``exp`` of the Normal variable (report on the natural scale).
    config
        The fit's configuration: ``config.n_samples`` ``None`` (or no ``config``) gives exact
        values; an integer Monte Carlo estimates from that many posterior draws (sample sd,
        ``numpy.quantile``), drawn with ``rng``.
    rng
        Generator of the draws (required when ``config.n_samples`` is set).
    """
    loc = np.asarray(loc, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    n_samples = None if config is None else config.n_samples
    if n_samples is not None:
        if rng is None:
            raise ValueError("normal_summary: n_samples needs a random generator `rng`.")
        draws = loc + scale * rng.standard_normal((int(n_samples), *loc.shape))
        if log_scale:
            draws = np.exp(draws)
        q05, q50, q95 = np.quantile(draws, [0.05, 0.5, 0.95], axis=0)
        return {
            f"{name}_mean": draws.mean(axis=0),
            f"{name}_sd": draws.std(axis=0, ddof=1) if n_samples > 1 else np.zeros_like(loc),
            f"{name}_q05": q05,
            f"{name}_q50": q50,
            f"{name}_q95": q95,
        }
    q05, q50, q95 = loc - Z90 * scale, loc, loc + Z90 * scale
    if log_scale:
        mean = np.exp(loc + scale**2 / 2)
        sd = mean * np.sqrt(np.expm1(scale**2))
        q05, q50, q95 = np.exp(q05), np.exp(q50), np.exp(q95)
    else:
        mean, sd = loc, scale
    return {
        f"{name}_mean": mean,
        f"{name}_sd": sd,
        f"{name}_q05": q05,
        f"{name}_q50": q50,
        f"{name}_q95": q95,
    }


def frame(columns: dict[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    """A float DataFrame indexed by ``index``."""
    return pd.DataFrame(
        {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}, index=index
    )
