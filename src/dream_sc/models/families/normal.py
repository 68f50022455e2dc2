"""Normal family: continuous values (NaN = missing), identity link, noise sd per feature."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import sparse

from ..._validation import check_continuous
from ..guide import Site
from ._base import Family, FamilyData, LinkMoments
from ._kernels import _HALF_LOG_2PI, _as_param, _standardised, _sum_observed


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=np.float64)


def normal_log_prob(
    mean: torch.Tensor,
    log_sigma: torch.Tensor | float,
    y: torch.Tensor,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Gaussian log-likelihood with missing values (NaN) masked out, per feature.

    .. math::

        \log p(y) = -\tfrac12 z^2 - \log σ \;[- \tfrac12\log 2π],
        \qquad z = (y - \mathrm{mean}) / σ

    NaN entries of ``y`` are replaced by 0 before any arithmetic, so neither the value nor the
    gradient ever sees a NaN.

    Parameters
    ----------
    mean
        Mean, broadcastable to ``y`` (typically ``[B, T]``).
    log_sigma
        Log standard deviation: scalar, ``[T]`` or ``[B, T]``.
    y
        Dense ``[B, T]`` observations, NaN = missing.
    include_constant
        Add ``-log(2π)/2`` per observed entry (``scipy.stats.norm.logpdf`` summed).

    Returns
    -------
    ``[T]`` log-likelihood summed over observed cells.

    Examples
    --------
    >>> import torch
    >>> y = torch.tensor([[0.0], [float("nan")]], dtype=torch.float64)
    >>> normal_log_prob(torch.zeros(2, 1, dtype=torch.float64), 0.0, y, include_constant=True)
    tensor([-0.9189], dtype=torch.float64)
    """
    y = torch.as_tensor(y)
    log_sigma = _as_param(log_sigma, y)
    mask, z = _standardised(mean, log_sigma, y)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    ll = torch.where(mask, -0.5 * z * z, zero).sum(0) - _sum_observed(log_sigma, mask)
    if include_constant:
        ll = ll - _HALF_LOG_2PI * mask.sum(0).to(ll.dtype)
    return ll


class Normal(Family):
    """Gaussian values (``"normal"``); missing values (NaN) are skipped."""

    name = "normal"
    continuous = True
    noise_scaled = True
    default_min_effect = 0.1  # noise sd
    value_label = "value"
    response_label = "Δ mean over dosage range"
    noise_columns = (("sigma", "log_sigma"),)

    def read(self, X, *, registration, var, load_layer, modality, what) -> FamilyData:  # noqa: D102
        check_continuous(X, what)
        return FamilyData()

    def tensors(self, X, total):  # noqa: D102
        dense = X.toarray() if sparse.issparse(X) else np.asarray(X)
        return torch.as_tensor(dense, dtype=torch.float32), None

    def gather(self, y, total, rows):  # noqa: D102
        return y[rows], None

    def log_likelihood(self, obs, eta, y, total, *, log_sigma=None, **noise):  # noqa: D102
        return normal_log_prob(eta, log_sigma, y)

    def link_moments(  # noqa: D102
        self, X, *, group, n_groups, sum_factor, total, group_index
    ) -> LinkMoments:
        dense = _dense(X)
        link = np.zeros((n_groups, X.shape[1]))
        resid = np.full_like(dense, np.nan, dtype=np.float64)
        for c in range(n_groups):
            rows = group == c
            with np.errstate(all="ignore"):
                link[c] = np.nanmean(dense[rows], axis=0) if rows.any() else np.nan
            resid[rows] = dense[rows] - link[c]
        overall = np.nanmean(dense, axis=0)
        link = np.where(np.isfinite(link), link, overall)
        link = np.nan_to_num(link)
        with np.errstate(all="ignore"):
            sd = np.nanstd(resid, axis=0)
        counts = np.sum(np.isfinite(dense), axis=0)
        informative = (counts >= 2) & (np.nan_to_num(sd) > 0)
        median_sd = np.median(sd[informative]) if informative.any() else 1.0
        log_sigma = np.log(np.where(informative, np.maximum(np.nan_to_num(sd), 1e-3), median_sd))
        return LinkMoments(link, informative, log_sigma=log_sigma)

    def technical_noise(self, init, features, n_feat, as_tensor):  # noqa: D102
        sites = [Site("log_sigma", (n_feat,), init.log_sigma[features], 0.05)]
        sigma_loc = as_tensor(init.log_sigma[features])

        def sample() -> dict:
            return {"log_sigma": pyro.sample("log_sigma", dist.Normal(sigma_loc, 1.0).to_event(1))}

        return sites, sample

    def noise_priors(self, init) -> dict:  # noqa: D102
        return {
            "sigma": {"dist": "lognormal", "loc": init.log_sigma.astype(np.float64), "scale": 1.0}
        }

    def fixed_noise(self, tech, features):  # noqa: D102
        out = super().fixed_noise(tech, features)
        out["log_sigma"] = tech.log_sigma[features]
        return out

    def noise_unit(self, tech, features):
        """The noise sd of step 1."""
        return np.exp(tech.log_sigma[features])

    def guide_link_means(  # noqa: D102
        self, X, *, total, group_index, ind, codes, group, sf, eff, mean_delta
    ) -> np.ndarray:
        dense = _dense(X)
        out = np.vstack(
            [
                np.nanmean(dense[codes == g], axis=0)
                if (codes == g).any()
                else np.full(dense.shape[1], np.nan)
                for g in range(ind.shape[0])
            ]
        )
        return out - mean_delta

    def dense_kernel(self, gathered, noise):
        """``-(y - eta)^2 / (2 sigma^2)`` over observed values."""
        y, _ = gathered
        observed = torch.isfinite(y)
        values = torch.where(observed, y, torch.zeros_like(y))
        precision = torch.exp(-2.0 * noise["log_sigma"])
        return lambda eta: (
            -0.5
            * (torch.where(observed, (values - eta) ** 2, torch.zeros_like(eta)) * precision).sum(0)
        )

    def cells_with_data(self, X, *, total, group_index):
        """Cells with a finite value."""
        return np.isfinite(X.toarray() if sparse.issparse(X) else np.asarray(X)).sum(0)

    def observed_parts(self, X, *, total, size_factor):
        """The value itself (denominator 1 where observed, 0 where missing)."""
        finite = np.isfinite(X)
        return np.where(finite, X, 0.0), finite.astype(np.float64)

    def score_residuals(self, y, onehot, *, log_sf, trials, noise):  # noqa: D102
        """Gaussian working model (Student-t data are scored as Normal)."""
        seen = np.isfinite(y)
        filled = np.where(seen, y, 0.0)
        mean = (onehot.T @ filled) / np.maximum(onehot.T @ (seen * 1.0), 1.0)
        var = np.exp(2 * np.asarray(noise["log_sigma"], dtype=np.float64))[None, :]
        return np.where(seen, (filled - onehot @ mean) / var, 0.0), seen / var


FAMILY = Normal()
