"""Binomial family: successes in ``X``, trials in a second layer, logit link.

With ``overdispersed=True`` the beta-binomial (concentration ``a + b`` per feature, learned in
step 1 and fixed in step 3) replaces the binomial; the mean model is the same.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, logit

from ..._validation import check_binomial
from ..sparse import paired_csr
from ._base import (
    Family,
    FamilyData,
    LinkMoments,
    group_sums,
    rho_to_log_conc,
    rows_csr,
    summed,
    trial_residuals,
)
from ._kernels import Counts, _as_param, _at, _check_matrix, _lgamma_ratio, _paired, _per_feature


def binomial_log_prob(
    logits: torch.Tensor,
    k: Counts,
    n: Counts,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Binomial log-likelihood on the logit scale, per feature.

    .. math::

        \log p(k \mid n) = k\,\ell - n\,\mathrm{softplus}(\ell)
                           \;[+ \log\Gamma(n+1) - \log\Gamma(k+1) - \log\Gamma(n-k+1)]

    Entries with ``n = 0`` contribute nothing and are skipped; with sparse input only the
    stored entries (the pattern of ``n``) are visited.

    Parameters
    ----------
    logits
        ``[B, T]`` logit of the success probability.
    k
        Successes, dense ``[B, T]`` or :class:`~dream_sc.models.sparse.SparseCounts` on the
        same pattern as ``n`` (see :func:`~dream_sc.models.sparse.paired_sparse`).
    n
        Trials, same type and shape as ``k``.
    include_constant
        Add the log binomial coefficient (``scipy.stats.binom.logpmf`` summed).

    Returns
    -------
    ``[T]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(1, 2, dtype=torch.float64)
    >>> k = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    >>> n = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    >>> binomial_log_prob(logits, k, n, include_constant=True)
    tensor([-0.6931,  0.0000], dtype=torch.float64)
    """
    _check_matrix(logits, "logits", n, "n")
    ks, ns = _paired(k, n, logits)
    l_nz = logits.reshape(-1).index_select(0, ns.flat_index())
    ll = ks.val * l_nz - ns.val * F.softplus(l_nz)
    if include_constant:
        ll = ll + _log_binom_coef(ks.val, ns.val)
    return _per_feature(ll, ns.col, logits.shape[1])


def _log_binom_coef(k: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1.0) - torch.lgamma(k + 1.0) - torch.lgamma(n - k + 1.0)


def betabinomial_log_prob(
    logits: torch.Tensor,
    log_conc: torch.Tensor | float,
    k: Counts,
    n: Counts,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Beta-binomial log-likelihood (over-dispersed binomial), per feature.

    With mean ``p = sigmoid(logits)``, concentration ``c = exp(log_conc)``, ``α = c p``,
    ``β = c (1 - p)`` and ``R(a, m) = lgamma(a + m) - lgamma(a)``:

    .. math::

        \log p(k \mid n) = R(α, k) + R(β, n - k) - R(c, n) \;[+ \log\binom{n}{k}]

    Large ``c`` recovers the binomial; ``R`` stays accurate there. Entries with ``n = 0``
    contribute nothing and are skipped.

    Parameters
    ----------
    logits
        ``[B, T]`` logit of the mean success probability.
    log_conc
        Log concentration ``α + β``: scalar, ``[T]`` or ``[B, T]``.
    k, n
        Successes and trials, as in :func:`binomial_log_prob`.
    include_constant
        Add the log binomial coefficient (``scipy.stats.betabinom.logpmf`` summed).

    Returns
    -------
    ``[T]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(1, 1, dtype=torch.float64)
    >>> k, n = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    >>> betabinomial_log_prob(logits, 0.0, k, n, include_constant=True)  # Beta(1/2, 1/2)
    tensor([-1.3863], dtype=torch.float64)
    """
    _check_matrix(logits, "logits", n, "n")
    log_conc = _as_param(log_conc, logits)
    ks, ns = _paired(k, n, logits)
    flat = ns.flat_index()
    l_nz = logits.reshape(-1).index_select(0, flat)
    lc_nz = _at(log_conc, ns, flat)
    alpha = (lc_nz + F.logsigmoid(l_nz)).exp()
    beta = (lc_nz + F.logsigmoid(-l_nz)).exp()
    ll = (
        _lgamma_ratio(alpha, ks.val)
        + _lgamma_ratio(beta, ns.val - ks.val)
        - _lgamma_ratio(lc_nz.exp(), ns.val)
    )
    if include_constant:
        ll = ll + _log_binom_coef(ks.val, ns.val)
    return _per_feature(ll, ns.col, logits.shape[1])


def betabinomial_moments(X, total, group: np.ndarray, n_groups: int) -> tuple:
    """Moment estimate of the beta-binomial log concentration of every feature.

    Within each technical group ``c`` with pooled proportion ``p``, the successes satisfy
    ``Var(k_i) = n_i p (1 - p) (1 + (n_i - 1) rho)`` with ``rho = 1 / (1 + concentration)``;
    pooling the squared residuals of all groups gives

    ``rho = [Σ (k_i - n_i p)^2 - Σ n_i p (1 - p)] / Σ n_i (n_i - 1) p (1 - p)``.

    Returns
    -------
    ``(log_conc [T], informative [T])``.
    """
    n_features = X.shape[1]
    num, den = np.zeros(n_features), np.zeros(n_features)
    for c in range(n_groups):
        rows = np.flatnonzero(group == c)
        k, n = rows_csr(X, rows).astype(np.float64), rows_csr(total, rows).astype(np.float64)
        col_sum = lambda m: np.asarray(m.sum(0)).ravel()  # noqa: E731
        k1, n1 = col_sum(k), col_sum(n)
        k2, n2, kn = col_sum(k.multiply(k)), col_sum(n.multiply(n)), col_sum(k.multiply(n))
        p = np.divide(k1, n1, out=np.zeros(n_features), where=n1 > 0)
        pq = p * (1.0 - p)
        num += k2 - 2.0 * p * kn + p * p * n2 - pq * n1
        den += pq * (n2 - n1)
    return rho_to_log_conc(num, den)


def _dense(x) -> torch.Tensor:
    return x.to_dense() if hasattr(x, "to_dense") else x


class Binomial(Family):
    """Binomial successes out of trials (``"binomial"``); beta-binomial when over-dispersed."""

    name = "binomial"
    mean_link = "logit"
    options = ("total_layer",)
    overdispersible = True
    lazy_input = True
    default_min_effect = 0.03  # probability difference
    value_label = "PSI (successes / trials)"
    response_label = "Δ PSI over dosage range"

    def registration_options(self, *, total_layer, group_key, layers, modality):  # noqa: D102
        self.check_options(total_layer=total_layer, group_key=group_key)
        total_layer = total_layer or "total"
        if total_layer not in layers:
            raise KeyError(
                f"Binomial modality {modality!r} needs the trials in layer {total_layer!r}; "
                f"layers present: {list(layers)}. Pass `total_layer=`."
            )
        return total_layer, group_key

    def read(self, X, *, registration, var, load_layer, modality, what) -> FamilyData:  # noqa: D102
        total = load_layer(registration.get("total_layer") or "total")
        check_binomial(X, total, what)
        return FamilyData(total=total)

    def tensors(self, X, total):  # noqa: D102
        return paired_csr(X, total)

    def log_likelihood(self, obs, eta, y, total, *, log_conc=None, **noise):  # noqa: D102
        if log_conc is not None:
            return betabinomial_log_prob(eta, log_conc, y, total)
        return binomial_log_prob(eta, y, total)

    def link_moments(  # noqa: D102
        self, X, *, group, n_groups, sum_factor, total, group_index
    ) -> LinkMoments:
        k_sum = group_sums(X, group, n_groups)
        n_sum = group_sums(total, group, n_groups)
        p = (k_sum + 0.5) / (n_sum + 1.0)
        return LinkMoments(np.log(p) - np.log1p(-p), n_sum.sum(0) > 0)

    def concentration_moments(self, X, *, total, group, n_groups, group_index):  # noqa: D102
        return betabinomial_moments(X, total, group, n_groups)

    def guide_link_means(  # noqa: D102
        self, X, *, total, group_index, ind, codes, group, sf, eff, mean_delta
    ) -> np.ndarray:
        k = summed(ind, X)
        n = summed(ind, total)
        p = (k + 0.5) / (n + 1.0)
        return np.where(n > 0, np.log(p) - np.log1p(-p) - mean_delta, np.nan)

    def natural_scale(self, eta, group, n_groups):  # noqa: D102
        return torch.sigmoid(eta)

    def half_way_fraction(self, eta0, v):
        """``h = (logit(mean(p(eta0), p(eta0 + v))) - eta0) / v`` (logit link)."""
        small = v.abs() < 1e-6
        safe = torch.where(small, torch.ones_like(v), v)
        p = 0.5 * (torch.sigmoid(eta0) + torch.sigmoid(eta0 + safe))
        h = (torch.logit(p) - eta0) / safe
        return torch.where(small, torch.full_like(v, 0.5), h)

    def dense_kernel(self, gathered, noise):
        """``k eta - n softplus(eta)`` (binomial only; the beta-binomial has no dense form)."""
        if "log_conc" in noise:
            return None
        y, total = gathered
        k, n = _dense(y), _dense(total)

        def kernel(eta: torch.Tensor) -> torch.Tensor:
            ll = k * eta
            ll.sub_(torch.nn.functional.softplus(eta).mul_(n))
            return ll.sum(0, dtype=torch.float64)

        return kernel

    def cells_with_data(self, X, *, total, group_index):
        """Cells with at least one trial."""
        return np.asarray((total > 0).sum(0)).ravel()

    def observed_parts(self, X, *, total, size_factor):
        """Successes over trials."""
        return X, total

    def normalise(self, ratio, delta):  # noqa: D102
        return expit(logit(ratio) - delta)

    def score_trials(self, X, cols, *, total, group_index):  # noqa: D102
        part = total[:, cols]
        return np.asarray(part.toarray() if hasattr(part, "toarray") else part, dtype=np.float64)

    def score_residuals(self, y, onehot, *, log_sf, trials, noise):  # noqa: D102
        return trial_residuals(y, onehot, trials, noise.get("log_conc"))


FAMILY = Binomial()
