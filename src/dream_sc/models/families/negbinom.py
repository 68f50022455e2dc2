"""Negative binomial family: raw counts with a size factor per cell, log link.

Mean ``mu = s_i exp(eta)``, variance ``mu + phi mu^2`` (``phi`` the dispersion, learned per
feature in step 1 and fixed in step 3 as the inverse dispersion ``r = 1 / phi``).
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from scipy import sparse

from ..._validation import check_counts
from ..guide import Site
from ._base import Family, FamilyData, LinkMoments, group_sums, summed
from ._kernels import (
    Counts,
    _as_param,
    _check_matrix,
    _lgamma_ratio_grad,
    _lgamma_ratio_value,
    _sparse,
)

#: Prior on the log dispersion (variance = mu + phi mu^2): from Poisson-like (phi ~ 0.005) to
#: very over-dispersed (phi ~ 10) within two standard deviations.
LOG_PHI_PRIOR = (np.log(0.1), 2.0)
LN2 = float(np.log(2.0))


def negbinom_log_prob(
    eta: torch.Tensor,
    log_r: torch.Tensor | float,
    y: Counts,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Negative binomial log-likelihood (mean / inverse-dispersion form), per feature.

    With ``mu = exp(eta)``, ``r = exp(log_r)`` (variance ``mu + mu² / r``) and
    ``x = eta - log_r``:

    .. math::

        \log p(y) = \log\Gamma(y + r) - \log\Gamma(r) - r\,\mathrm{softplus}(x)
                    + y\,(x - \mathrm{softplus}(x)) \;[- \log\Gamma(y + 1)]

    The first term ``-r·softplus(x) = r log r - r log(r + mu)`` is the whole contribution of a
    zero count and is computed in bulk; the rest only at non-zero entries. ``softplus`` keeps
    tiny means (``eta`` ≈ -30) and the Poisson limit (``r`` up to 1e8 and beyond) exact.

    Parameters
    ----------
    eta
        ``[B, T]`` log mean per cell and feature.
    log_r
        Log inverse dispersion: scalar, ``[T]`` or ``[B, T]``.
    y
        Counts, dense ``[B, T]`` or :class:`~dream_sc.models.sparse.SparseCounts`.
    include_constant
        Add ``-lgamma(y + 1)`` so the result equals ``scipy.stats.nbinom.logpmf`` summed.

    Returns
    -------
    ``[T]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> eta = torch.zeros(2, 1, dtype=torch.float64)
    >>> y = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    >>> negbinom_log_prob(eta, torch.zeros(1), y, include_constant=True)
    tensor([-2.7726], dtype=torch.float64)
    """
    _check_matrix(eta, "eta", y)
    ys = _sparse(y, eta)
    log_r = _negbinom_log_r(_as_param(log_r, eta), eta.shape)
    return _NegBinom.apply(eta, log_r, ys.col, ys.flat_index(), ys.val, include_constant)


def _negbinom_log_r(log_r: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Bring ``log_r`` to ``[T]`` (per feature) or ``[B, T]`` (autograd handles the expand)."""
    n_cells, n_features = shape
    if log_r.dim() <= 1 or (log_r.dim() == 2 and log_r.shape[0] == 1):
        if log_r.numel() in (1, n_features):
            return log_r.reshape(-1).expand(n_features)
    elif log_r.dim() == 2 and log_r.shape[0] == n_cells and log_r.shape[1] in (1, n_features):
        return log_r.expand(n_cells, n_features)
    raise ValueError(
        f"`log_r` must be a scalar, [T], [1, T], [B, 1] or [B, T] with B, T = {n_cells}, "
        f"{n_features}; got shape {tuple(log_r.shape)}."
    )


class _NegBinom(torch.autograd.Function):
    """Fused NB log-likelihood with a hand-written backward.

    Per entry ``ll = -r sp(x)`` plus, at non-zeros, ``y (x - sp(x)) + R(r, y)`` with
    ``x = eta - log r``, ``sp = softplus``, ``R(r, y) = lgamma(r + y) - lgamma(r)``.
    Gradients: ``d/deta = -r σ(x) + y σ(-x)`` and
    ``d/dlog r = r (σ(x) - sp(x)) + r R'(r, y) - y σ(-x)`` (non-zero terms only where y > 0).
    Only two dense ``[B, T]`` buffers are alive at any time; ``lgamma``/``digamma`` of ``r``
    are evaluated once per feature when ``log_r`` is ``[T]``.
    """

    @staticmethod
    def _nonzero_terms(eta, log_r, col, flat):
        if log_r.dim() == 1:
            lr_nz = log_r.index_select(0, col)
        else:
            lr_nz = log_r.reshape(-1).index_select(0, flat)
        x_nz = eta.reshape(-1).index_select(0, flat) - lr_nz
        return x_nz, lr_nz.exp()

    @staticmethod
    def forward(ctx, eta, log_r, col, flat, val, include_constant):  # noqa: D102
        per_feature = log_r.dim() == 1
        r = log_r.exp()
        x = eta - log_r  # kept for the backward pass (saves recomputing it there)
        sp = F.softplus(x)
        sp_sum = sp.sum(0) if per_feature else None
        ll = -(r * sp_sum) if per_feature else -(r * sp).sum(0)
        del sp
        x_nz, r_nz = _NegBinom._nonzero_terms(eta, log_r, col, flat)
        lgamma_r = torch.lgamma(r).index_select(0, col) if per_feature else None
        # y * log(mu / (r + mu)) = y * logsigmoid(x), plus lgamma(y + r) - lgamma(r)
        extra = torch.addcmul(_lgamma_ratio_value(r_nz, val, lgamma_r), val, F.logsigmoid(x_nz))
        if include_constant:
            extra = extra - torch.lgamma(val + 1.0)
        ctx.save_for_backward(eta, log_r, col, flat, val, sp_sum)
        ctx.x = x
        return ll.index_add(0, col, extra)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        eta, log_r, col, flat, val, sp_sum = ctx.saved_tensors
        need_eta, need_log_r = ctx.needs_input_grad[:2]
        per_feature = log_r.dim() == 1
        r = log_r.exp()
        x, ctx.x = ctx.x, None  # an internal buffer: turned into sigmoid(x) in place, once
        sig = x.sigmoid_() if x is not None else torch.sigmoid(eta - log_r)
        x_nz, r_nz = _NegBinom._nonzero_terms(eta, log_r, col, flat)
        grad_nz = grad.index_select(0, col)
        y_sig_neg = val * torch.sigmoid(-x_nz)
        grad_eta = grad_log_r = None
        if need_log_r:
            digamma_r = torch.digamma(r).index_select(0, col) if per_feature else None
            nz_term = grad_nz * (r_nz * _lgamma_ratio_grad(r_nz, val, digamma_r) - y_sig_neg)
            if per_feature:
                grad_log_r = (grad * r * (sig.sum(0) - sp_sum)).index_add(0, col, nz_term)
            else:
                grad_log_r = (sig - F.softplus(eta - log_r)).mul_(r * grad)
                grad_log_r.view(-1).index_add_(0, flat, nz_term)
        if need_eta:
            grad_eta = sig.mul_(-(r * grad))  # sig is no longer needed: reuse its buffer
            grad_eta.view(-1).index_add_(0, flat, grad_nz * y_sig_neg)
        return grad_eta, grad_log_r, None, None, None, None


def _dense(x) -> torch.Tensor:
    return x.to_dense() if hasattr(x, "to_dense") else x


class NegBinom(Family):
    """Negative binomial counts (``"negbinom"``)."""

    name = "negbinom"
    mean_link = "log"
    size_factors = True
    cis_capable = True
    lazy_input = True
    fused_hill = True  # models/fused.py
    default_min_effect = 0.2  # log2 fold change
    value_label = "expression (counts per unit size factor)"
    response_label = "log2 fold change over dosage range"
    noise_columns = (("dispersion", "log_phi"),)

    def read(self, X, *, registration, var, load_layer, modality, what) -> FamilyData:  # noqa: D102
        check_counts(X, what)
        return FamilyData()

    def log_likelihood(self, obs, eta, y, total, *, log_r=None, **noise):  # noqa: D102
        return negbinom_log_prob(eta, log_r, y)

    def link_moments(  # noqa: D102
        self, X, *, group, n_groups, sum_factor, total, group_index
    ) -> LinkMoments:
        y_sum = group_sums(X, group, n_groups)
        s_sum = np.bincount(group, weights=sum_factor, minlength=n_groups)[:, None]
        rate = (y_sum + 0.5) / (s_sum + 0.5 / max(np.mean(sum_factor), 1e-8))
        link = np.log(rate)
        informative = y_sum.sum(0) > 0
        sq = X.multiply(X) if sparse.issparse(X) else np.asarray(X) ** 2
        y2 = np.asarray(sq.sum(0)).ravel()
        n = X.shape[0]
        mean = y_sum.sum(0) / n
        var = np.maximum(y2 / n - mean**2, 0)
        s2 = np.mean(sum_factor**2)
        mu = np.exp(link[0]) * np.mean(sum_factor)
        phi = (var - mean - mu**2 * (s2 / np.mean(sum_factor) ** 2 - 1)) / np.maximum(mu**2, 1e-8)
        log_phi = np.log(np.clip(phi, 0.01, 10.0))
        return LinkMoments(link, informative, log_phi=log_phi)

    def technical_noise(self, init, features, n_feat, as_tensor):  # noqa: D102
        sites = [Site("log_phi", (n_feat,), init.log_phi[features], 0.1)]

        def sample() -> dict:
            log_phi = pyro.sample(
                "log_phi", dist.Normal(*LOG_PHI_PRIOR).expand([n_feat]).to_event(1)
            )
            return {"log_r": -log_phi}

        return sites, sample

    def noise_priors(self, init) -> dict:  # noqa: D102
        return {
            "dispersion": {
                "dist": "lognormal",
                "loc": float(LOG_PHI_PRIOR[0]),
                "scale": float(LOG_PHI_PRIOR[1]),
            }
        }

    def fixed_noise(self, tech, features):  # noqa: D102
        return {"log_r": -tech.log_phi[features]}

    def guide_link_means(  # noqa: D102
        self, X, *, total, group_index, ind, codes, group, sf, eff, mean_delta
    ) -> np.ndarray:
        y = summed(ind, X)
        w = np.zeros((ind.shape[0], eff.shape[1]))
        np.add.at(w, (codes, group), sf)
        denom = w @ np.exp(eff.T)
        return np.log((y + 0.5) / np.maximum(denom, 1e-12))

    def natural_scale(self, eta, group, n_groups):  # noqa: D102
        return eta.exp()

    def response_scale(self, eta, natural):
        """log2 fold changes."""
        return eta / LN2

    def half_way_fraction(self, eta0, v):
        """``h = log((1 + e^v) / 2) / v`` (log link; ``1/2`` in the limit ``v -> 0``)."""
        small = v.abs() < 1e-6
        safe = torch.where(small, torch.ones_like(v), v)
        h = (torch.logaddexp(torch.zeros_like(safe), safe) - LN2) / safe
        return torch.where(small, 0.5 + v / 8.0, h)

    def dense_kernel(self, gathered, noise):
        """``y x - (y + r) softplus(x)`` with ``x = eta - log r`` (``lgamma`` terms constant).

        The kernel overwrites ``eta`` (three passes over the block instead of seven).
        """
        y, _ = gathered
        counts, log_r = _dense(y), noise["log_r"]
        weight = counts + log_r.exp()

        def kernel(eta: torch.Tensor) -> torch.Tensor:
            x = eta.sub_(log_r)
            ll = counts * x
            ll.sub_(torch.nn.functional.softplus(x).mul_(weight))
            return ll.sum(0, dtype=torch.float64)

        return kernel

    def observed_parts(self, X, *, total, size_factor):
        """Counts over the size factor."""
        return X, np.repeat(size_factor[:, None], X.shape[1], axis=1)

    def normalise(self, ratio, delta):  # noqa: D102
        return ratio * np.exp(-delta)

    def score_residuals(self, y, onehot, *, log_sf, trials, noise):  # noqa: D102
        s = np.exp(np.asarray(log_sf, dtype=np.float64))
        mu = (onehot.T @ y) / np.maximum(onehot.T @ s, 1e-12)[:, None]  # [C, T]
        m = s[:, None] * (onehot @ mu)
        phi = np.exp(-np.asarray(noise["log_r"], dtype=np.float64))[None, :]
        return (y - m) / (1.0 + phi * m), m / (1.0 + phi * m)

    def cells_detected(self, X, *, total, group_index):  # noqa: D102
        nonzero = X != 0
        return np.asarray(nonzero.sum(0)).ravel().astype(int)


FAMILY = NegBinom()
