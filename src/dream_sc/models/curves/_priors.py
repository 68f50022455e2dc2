"""Prior pieces shared by the curves (pure numpy/torch/Pyro).

- ``eta_ref ~ Normal(technical baseline, ETA_REF_PRIOR_SD)``: the value at the control dosage,
  common to every curve (:mod:`dream_sc.models.trans` samples it);
- amplitudes ``v = s_t * lambda * z`` with ``z ~ Normal(0, 1)`` and a horseshoe local scale
  ``lambda ~ HalfCauchy(1)`` sampled as ``log lambda`` (:func:`log_half_cauchy`); with ``lambda``
  integrated out, ``u = lambda z`` has the density :func:`horseshoe_log_density`, and a vector
  ``u = lambda z`` of ``D`` coefficients sharing one ``lambda`` (the polynomial) the density
  :func:`shared_horseshoe_log_density`;
- Hill coefficients ``log n ~ Normal(LOG_N_PRIOR)``, additive Hill gaps
  ``log gap ~ Normal(., LOG_GAP_PRIOR_SD)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ExpTransform

LOG_N_PRIOR = (float(np.log(2.0)), 0.6)
ETA_REF_PRIOR_SD = 1.0
#: Prior sd of the log gap ``log(log K2 - log K1)`` between additive Hill components.
LOG_GAP_PRIOR_SD = 0.75


def log_half_cauchy() -> dist.TransformedDistribution:
    """Distribution of ``log lambda`` for ``lambda ~ HalfCauchy(1)`` (real support)."""
    return dist.TransformedDistribution(dist.HalfCauchy(1.0), [ExpTransform().inv])


def normal_prior(loc, sd: float, shape: list[int], like: torch.Tensor) -> dist.Distribution:
    """``Normal(loc, sd)`` over a site of ``shape`` (all dimensions event dimensions).

    ``loc`` takes the dtype and device of ``like`` (a tensor of the fit).
    """
    loc = torch.as_tensor(loc, dtype=like.dtype, device=like.device)
    return dist.Normal(loc, sd).expand(shape).to_event(len(shape))


def normal_log_pdf(x: torch.Tensor, loc, sd: float) -> torch.Tensor:
    """Log density of ``Normal(loc, sd)`` at ``x``."""
    return -0.5 * ((x - loc) / sd) ** 2 - float(np.log(sd) + 0.5 * np.log(2.0 * np.pi))


@lru_cache(maxsize=1)
def _horseshoe_table() -> tuple[np.ndarray, np.ndarray]:
    """``log |u|`` grid and the log marginal density of the standard horseshoe on it."""
    log_lam = np.linspace(-16.0, 16.0, 6401)
    lam = np.exp(log_lam)
    # density of log lambda for lambda ~ HalfCauchy(1): (2 / pi) lambda / (1 + lambda^2)
    w_lam = (2.0 / np.pi) * lam / (1.0 + lam**2) * (log_lam[1] - log_lam[0])
    log_u = np.linspace(np.log(1e-8), np.log(1e6), 3001)
    u = np.exp(log_u)[:, None]
    normal = np.exp(-0.5 * (u / lam) ** 2) / (np.sqrt(2.0 * np.pi) * lam)
    return log_u, np.log(normal @ w_lam)


def horseshoe_log_density(u: np.ndarray) -> np.ndarray:
    """Log marginal density of ``u = lambda * z`` with ``z ~ N(0, 1)``, ``lambda ~ HalfCauchy(1)``.

    Computed once by quadrature over ``log lambda`` and interpolated in ``log |u|``; the
    density has no closed form (it lies between ``log(1 + 4/u²) / sqrt(2 pi³)`` and
    ``2 log(1 + 2/u²) / sqrt(2 pi³)``). ``|u|`` is clamped to ``[1e-8, 1e6]``.
    """
    log_u, log_p = _horseshoe_table()
    a = np.log(np.clip(np.abs(np.asarray(u, dtype=np.float64)), 1e-8, 1e6))
    return np.interp(a, log_u, log_p)


@lru_cache(maxsize=8)
def _shared_horseshoe_table(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``log r`` grid and the log density of a ``dim``-vector ``lambda z`` at norm ``r`` on it."""
    # wider towards 0 than the scalar table: the density grows like r^(1 - dim) near 0
    log_lam = np.linspace(-24.0, 16.0, 8001)
    lam = np.exp(log_lam)
    w_lam = (2.0 / np.pi) * lam / (1.0 + lam**2) * (log_lam[1] - log_lam[0])
    log_r = np.linspace(np.log(1e-8), np.log(1e6), 3001)
    r = np.exp(log_r)[:, None]
    log_normal = -0.5 * (r / lam) ** 2 - dim * (0.5 * np.log(2.0 * np.pi) + log_lam)
    top = log_normal.max(1, keepdims=True)
    return log_r, top[:, 0] + np.log(np.exp(log_normal - top) @ w_lam)


def shared_horseshoe_log_density(u: np.ndarray) -> np.ndarray:
    """Log density of ``u = lambda * z`` (last axis, ``D``) with ``z ~ N(0, I_D)``, ``lambda ~ HalfCauchy(1)``.

    Coefficients that share one horseshoe scale (the polynomial's ``c_d = s lambda z_d``): the
    density depends on ``|u|`` only and is computed once per ``D`` by quadrature over
    ``log lambda``, then interpolated in ``log |u|`` (``|u|`` clamped to ``[1e-8, 1e6]``). For
    ``D = 1`` it is :func:`horseshoe_log_density`.

    Returns
    -------
    Array of the shape of ``u`` without its last axis.
    """
    u = np.asarray(u, dtype=np.float64)
    log_r, log_p = _shared_horseshoe_table(int(u.shape[-1]))
    norm = np.sqrt(np.square(u).sum(-1))
    return np.interp(np.log(np.clip(norm, 1e-8, 1e6)), log_r, log_p)
