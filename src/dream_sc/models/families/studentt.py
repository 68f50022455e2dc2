"""Student-t family: continuous values with heavy tails (NaN = missing), identity link."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from ..guide import Site
from ._kernels import _HALF_LOG_PI, _as_param, _standardised, _sum_observed
from .normal import Normal


def studentt_log_prob(
    mean: torch.Tensor,
    log_sigma: torch.Tensor | float,
    log_nu: torch.Tensor | float,
    y: torch.Tensor,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Student-t log-likelihood with missing values (NaN) masked out, per feature.

    With ``ν = exp(log_nu)`` degrees of freedom and ``z = (y - mean) / σ``:

    .. math::

        \log p(y) = \log\Gamma(\tfrac{ν+1}{2}) - \log\Gamma(\tfrac{ν}{2}) - \tfrac12\log ν
                    - \log σ - \tfrac{ν+1}{2}\log(1 + z^2/ν) \;[- \tfrac12\log π]

    The ``lgamma`` terms depend only on ``ν`` and are evaluated once per parameter entry, then
    multiplied by the number of observed cells.

    Parameters
    ----------
    mean
        Location, broadcastable to ``y``.
    log_sigma
        Log scale: scalar, ``[T]`` or ``[B, T]``.
    log_nu
        Log degrees of freedom: scalar, ``[T]`` or ``[B, T]``.
    y
        Dense ``[B, T]`` observations, NaN = missing.
    include_constant
        Add ``-log(π)/2`` per observed entry (``scipy.stats.t.logpdf`` summed).

    Returns
    -------
    ``[T]`` log-likelihood summed over observed cells.

    Examples
    --------
    >>> import math, torch
    >>> y = torch.zeros(1, 1, dtype=torch.float64)
    >>> studentt_log_prob(y, 0.0, 0.0, y, include_constant=True)  # Cauchy density at 0
    tensor([-1.1447], dtype=torch.float64)
    """
    y = torch.as_tensor(y)
    log_sigma = _as_param(log_sigma, y)
    log_nu = _as_param(log_nu, y)
    mask, z = _standardised(mean, log_sigma, y)
    nu = log_nu.exp()
    kernel = -0.5 * (nu + 1.0) * torch.log1p(z * z / nu)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    norm = torch.lgamma(0.5 * (nu + 1.0)) - torch.lgamma(0.5 * nu) - 0.5 * log_nu
    ll = (
        torch.where(mask, kernel, zero).sum(0)
        + _sum_observed(norm, mask)
        - _sum_observed(log_sigma, mask)
    )
    if include_constant:
        ll = ll - _HALF_LOG_PI * mask.sum(0).to(ll.dtype)
    return ll


class StudentT(Normal):
    """Student-t values (``"studentt"``): a noise sd and degrees of freedom per feature."""

    name = "studentt"
    noise_columns = (("sigma", "log_sigma"), ("nu", "log_nu"))

    def log_likelihood(  # noqa: D102
        self, obs, eta, y, total, *, log_sigma=None, log_nu=None, **noise
    ):
        return studentt_log_prob(eta, log_sigma, log_nu, y)

    def technical_noise(self, init, features, n_feat, as_tensor):  # noqa: D102
        sites, sample_sigma = super().technical_noise(init, features, n_feat, as_tensor)
        sites.append(Site("log_nu", (n_feat,), np.log(10.0), 0.1))

        def sample() -> dict:
            out = sample_sigma()
            out["log_nu"] = pyro.sample(
                "log_nu", dist.Normal(np.log(10.0), 1.0).expand([n_feat]).to_event(1)
            )
            return out

        return sites, sample

    def noise_priors(self, init) -> dict:  # noqa: D102
        priors = super().noise_priors(init)
        priors["nu"] = {"dist": "lognormal", "loc": float(np.log(10.0)), "scale": 1.0}
        return priors

    def fixed_noise(self, tech, features):  # noqa: D102
        out = super().fixed_noise(tech, features)
        out["log_nu"] = tech.log_nu[features]
        return out

    def dense_kernel(self, gathered, noise):
        """No dense form (the sparse-free kernel is used as is)."""
        return None


FAMILY = StudentT()
