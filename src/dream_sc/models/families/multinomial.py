"""Multinomial family: category counts, features sharing ``var[group_key]`` form one group.

The link is a softmax within each group (features are coupled: one likelihood value per
group). With ``overdispersed=True`` the Dirichlet-multinomial (total concentration per group,
learned in step 1 and fixed in step 3) replaces the multinomial.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from ..._validation import check_counts
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
from ._kernels import Counts, _as_param, _check_matrix, _lgamma_ratio, _per_feature, _sparse


class _GroupLogSumExp(torch.autograd.Function):
    """Segmented logsumexp over the columns of each group, with a two-buffer backward.

    Forward: ``lse[c, g] = m + log Σ_{j∈g} exp(η_cj - m)`` with ``m`` the segment maximum
    (``scatter_reduce('amax')``); empty groups get 0. Backward:
    ``∂/∂η_cj = softmax_g(η_c)_j · grad[c, g(j)]``.
    """

    @staticmethod
    def forward(ctx, eta, group, n_groups):  # noqa: D102
        n_cells = eta.shape[0]
        shift = torch.full((n_cells, n_groups), -math.inf, dtype=eta.dtype, device=eta.device)
        shift = shift.scatter_reduce(
            1, group.expand(n_cells, -1), eta, reduce="amax", include_self=True
        )
        empty = torch.isinf(shift)
        shift = shift.masked_fill_(empty, 0.0)
        terms = torch.sub(eta, shift.index_select(1, group)).exp_()
        total = torch.zeros_like(shift).index_add_(1, group, terms)
        del terms
        lse = total.add_(empty.to(eta.dtype)).log_().add_(shift)
        ctx.save_for_backward(eta, group, lse)
        return lse

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        eta, group, lse = ctx.saved_tensors
        out = torch.sub(eta, lse.index_select(1, group)).exp_()
        return out.mul_(grad.index_select(1, group)), None, None


def _group_logsumexp(eta: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``[B, G]`` logsumexp of ``eta``'s columns within each group (0 for empty groups)."""
    return _GroupLogSumExp.apply(eta, group, n_groups)


def _check_groups(eta: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    group = torch.as_tensor(group_index, dtype=torch.long, device=eta.device)
    if group.shape != eta.shape[1:]:
        raise ValueError(
            f"`group_index` must have one entry per feature ({eta.shape[1]}), "
            f"got shape {tuple(group.shape)}."
        )
    return group


def multinomial_log_prob(
    eta: torch.Tensor,
    y: Counts,
    group_index: torch.Tensor,
    n_groups: int,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Multinomial log-likelihood of category counts grouped into variable-size groups.

    Feature ``j`` is a category of group ``g(j)``; for cell ``c`` with group total
    ``N_cg = Σ_{j∈g} y_cj``:

    .. math::

        \log p = Σ_{j∈g} y_{cj}\,η_{cj} - N_{cg}\,\mathrm{logsumexp}_{j∈g}(η_{cj})
                 \;[+ \log\Gamma(N_{cg}+1) - Σ_{j∈g}\log\Gamma(y_{cj}+1)]

    Groups are handled without padding (segmented ``amax`` + ``index_add``); cells with
    ``N_cg = 0`` contribute 0; ``y·η`` is only evaluated at non-zero counts.

    Parameters
    ----------
    eta
        ``[B, T]`` unnormalised log-probabilities (logits) of each category feature.
    y
        Counts, dense ``[B, T]`` or :class:`~dream_sc.models.sparse.SparseCounts`.
    group_index
        ``[T]`` int64 group of each feature, values in ``[0, n_groups)``.
    n_groups
        Number of groups ``G``.
    include_constant
        Add the multinomial coefficient (``scipy.stats.multinomial.logpmf`` summed).

    Returns
    -------
    ``[G]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> eta = torch.zeros(1, 3, dtype=torch.float64)
    >>> y = torch.tensor([[1.0, 1.0, 4.0]], dtype=torch.float64)
    >>> multinomial_log_prob(eta, y, torch.tensor([0, 0, 1]), 2)  # 2 draws from 2 categories
    tensor([-1.3863,  0.0000], dtype=torch.float64)
    """
    _check_matrix(eta, "eta", y)
    group = _check_groups(eta, group_index)
    ys = _sparse(y, eta)
    n_cells = eta.shape[0]
    g_nz = group.index_select(0, ys.col)
    totals = torch.zeros(n_cells * n_groups, dtype=eta.dtype, device=eta.device)
    totals = totals.index_add(0, ys.row * n_groups + g_nz, ys.val).reshape(n_cells, n_groups)
    lse = _group_logsumexp(eta, group, n_groups)
    y_eta = ys.val * eta.reshape(-1).index_select(0, ys.flat_index())
    ll = _per_feature(y_eta, g_nz, n_groups) - (totals * lse).sum(0)
    if include_constant:
        ll = ll + torch.lgamma(totals + 1.0).sum(0)
        ll = ll - _per_feature(torch.lgamma(ys.val + 1.0), g_nz, n_groups)
    return ll


def dirichletmultinomial_log_prob(
    eta: torch.Tensor,
    log_conc: torch.Tensor | float,
    y: Counts,
    group_index: torch.Tensor,
    n_groups: int,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Dirichlet-multinomial log-likelihood (over-dispersed multinomial), per group.

    With ``π = softmax_g(η)``, group concentration ``α0 = exp(log_conc[g])``,
    ``α_j = α0 π_j`` and ``R(a, m) = lgamma(a + m) - lgamma(a)``:

    .. math::

        \log p = Σ_{j∈g} R(α_j, y_{cj}) - R(α_0, N_{cg})
                 \;[+ \log\Gamma(N_{cg}+1) - Σ_{j∈g}\log\Gamma(y_{cj}+1)]

    ``R(α_j, 0) = 0``, so the category terms are only evaluated at non-zero counts.

    Parameters
    ----------
    eta
        ``[B, T]`` category logits.
    log_conc
        Log total concentration per group: scalar, ``[G]`` or ``[B, G]``.
    y
        Counts, dense ``[B, T]`` or :class:`~dream_sc.models.sparse.SparseCounts`.
    group_index
        ``[T]`` int64 group of each feature, values in ``[0, n_groups)``.
    n_groups
        Number of groups ``G``.
    include_constant
        Add the multinomial coefficient (``scipy.stats.dirichlet_multinomial.logpmf`` summed).

    Returns
    -------
    ``[G]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> eta = torch.zeros(1, 2, dtype=torch.float64)
    >>> y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    >>> dirichletmultinomial_log_prob(eta, 0.0, y, torch.tensor([0, 0]), 1)
    tensor([-0.6931], dtype=torch.float64)
    """
    _check_matrix(eta, "eta", y)
    group = _check_groups(eta, group_index)
    log_conc = _as_param(log_conc, eta)
    ys = _sparse(y, eta)
    n_cells = eta.shape[0]
    g_nz = group.index_select(0, ys.col)
    cell_group = ys.row * n_groups + g_nz
    totals = torch.zeros(n_cells * n_groups, dtype=eta.dtype, device=eta.device)
    totals = totals.index_add(0, cell_group, ys.val).reshape(n_cells, n_groups)
    lse = _group_logsumexp(eta, group, n_groups)
    lc_full = torch.broadcast_to(log_conc, (n_cells, n_groups))
    log_alpha = (
        lc_full.reshape(-1).index_select(0, cell_group)
        + eta.reshape(-1).index_select(0, ys.flat_index())
        - lse.reshape(-1).index_select(0, cell_group)
    )
    ll = _per_feature(_lgamma_ratio(log_alpha.exp(), ys.val), g_nz, n_groups)
    ll = ll - _lgamma_ratio(lc_full.exp(), totals).sum(0)
    if include_constant:
        ll = ll + torch.lgamma(totals + 1.0).sum(0)
        ll = ll - _per_feature(torch.lgamma(ys.val + 1.0), g_nz, n_groups)
    return ll


def dirichletmultinomial_moments(
    X, group: np.ndarray, n_groups: int, group_index: np.ndarray
) -> tuple:
    """Moment estimate of the Dirichlet-multinomial log total concentration of every group.

    With ``N_i`` the cell's group total and ``π`` the pooled proportions of the technical
    group, ``Var(y_ij) = N_i π_j (1 - π_j) (1 + (N_i - 1) rho)``, ``rho = 1 / (1 + α0)``;
    pooling all categories of the group and all technical groups:

    ``rho = [Σ_ij (y_ij - N_i π_j)^2 - Σ_i N_i (1 - Σ_j π_j^2)]
    / Σ_i N_i (N_i - 1) (1 - Σ_j π_j^2)``.

    Returns
    -------
    ``(log_conc [T], informative [T])``, the group's value repeated for its categories.
    """
    n_features = X.shape[1]
    n_cat_groups = int(group_index.max()) + 1
    indicator = sparse.csr_matrix(
        (np.ones(n_features), (np.arange(n_features), group_index)),
        shape=(n_features, n_cat_groups),
    )
    num, den = np.zeros(n_cat_groups), np.zeros(n_cat_groups)
    for c in range(n_groups):
        y = rows_csr(X, np.flatnonzero(group == c)).astype(np.float64).tocoo()
        totals = np.asarray((y.tocsr() @ indicator).todense())  # [cells, G]
        y1 = np.bincount(y.col, weights=y.data, minlength=n_features)
        y2 = np.bincount(y.col, weights=y.data**2, minlength=n_features)
        yn = np.bincount(
            y.col, weights=y.data * totals[y.row, group_index[y.col]], minlength=n_features
        )
        t1, t2 = totals.sum(0), (totals**2).sum(0)
        pi = np.divide(y1, t1[group_index], out=np.zeros(n_features), where=t1[group_index] > 0)
        resid = y2 - 2.0 * pi * yn + pi * pi * t2[group_index]
        het = 1.0 - np.bincount(group_index, weights=pi * pi, minlength=n_cat_groups)
        het = np.where(t1 > 0, het, 0.0)
        num += np.bincount(group_index, weights=resid, minlength=n_cat_groups) - het * t1
        den += het * (t2 - t1)
    log_conc, ok = rho_to_log_conc(num, den)
    return log_conc[group_index], ok[group_index]


def _segment_softmax(eta: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Softmax over the last axis within groups of features."""
    index = group.expand_as(eta)
    like = {"dtype": eta.dtype, "device": eta.device}
    gmax = torch.full((*eta.shape[:-1], n_groups), -torch.inf, **like).scatter_reduce(
        -1, index, eta, "amax"
    )
    expd = torch.exp(eta - gmax.gather(-1, index))
    denom = torch.zeros((*eta.shape[:-1], n_groups), **like).scatter_add(-1, index, expd)
    return expd / denom.gather(-1, index)


class Multinomial(Family):
    """Category counts within groups (``"multinomial"``); Dirichlet-multinomial if over-dispersed."""

    name = "multinomial"
    options = ("group_key",)
    grouped = True
    overdispersible = True
    default_min_effect = 0.03  # proportion difference
    value_label = "usage (proportion of group)"
    response_label = "Δ proportion over dosage range"

    def registration_options(self, *, total_layer, group_key, layers, modality):  # noqa: D102
        self.check_options(total_layer=total_layer, group_key=group_key)
        return total_layer, group_key or "group"

    def read(self, X, *, registration, var, load_layer, modality, what) -> FamilyData:  # noqa: D102
        check_counts(X, what)
        group_key = registration.get("group_key") or "group"
        if group_key not in var.columns:
            raise KeyError(
                f"Multinomial modality {modality!r} needs var[{group_key!r}] naming each "
                "feature's group; register it with `group_key=`."
            )
        if var[group_key].isna().any():
            raise ValueError(
                f"var[{group_key!r}] of multinomial modality {modality!r} has "
                f"{int(var[group_key].isna().sum())} missing values; every feature needs "
                "its group (drop features without one)."
            )
        codes, uniques = pd.factorize(var[group_key].astype(str), sort=False)
        return FamilyData(
            group_index=codes.astype(np.int64), group_names=np.asarray(uniques, dtype=object)
        )

    def log_likelihood(self, obs, eta, y, total, *, log_conc=None, **noise):  # noqa: D102
        if log_conc is not None:
            group_conc = log_conc.index_select(-1, obs.group_first)
            return dirichletmultinomial_log_prob(eta, group_conc, y, obs.group_index, obs.n_groups)
        return multinomial_log_prob(eta, y, obs.group_index, obs.n_groups)

    def link_moments(  # noqa: D102
        self, X, *, group, n_groups, sum_factor, total, group_index
    ) -> LinkMoments:
        y_sum = group_sums(X, group, n_groups)  # [C, T]
        totals = np.zeros((n_groups, int(group_index.max()) + 1))
        np.add.at(totals.T, group_index, y_sum.T)
        size = np.bincount(group_index)
        share = (y_sum + 0.5) / (totals[:, group_index] + 0.5 * size[group_index])
        return LinkMoments(np.log(share), totals.sum(0)[group_index] > 0)

    def concentration_moments(self, X, *, total, group, n_groups, group_index):  # noqa: D102
        return dirichletmultinomial_moments(X, group, n_groups, group_index)

    def guide_link_means(  # noqa: D102
        self, X, *, total, group_index, ind, codes, group, sf, eff, mean_delta
    ) -> np.ndarray:
        y = summed(ind, X)
        tot = np.zeros((ind.shape[0], group_index.max() + 1))
        np.add.at(tot.T, group_index, y.T)
        share = (y + 0.5) / (tot[:, group_index] + 1.0)
        return np.where(tot[:, group_index] > 0, np.log(share) - mean_delta, np.nan)

    def natural_scale(self, eta, group, n_groups):  # noqa: D102
        return _segment_softmax(eta, group, n_groups)

    def half_way_fraction(self, eta0, v):
        """``None``: a category's proportion depends on its group's other curves."""
        return None

    def cells_with_data(self, X, *, total, group_index):
        """Cells with at least one count in the feature's group."""
        X = sparse.csc_matrix(X)
        out = np.zeros(X.shape[1], int)
        for g in np.unique(group_index):
            members = group_index == g
            out[members] = int((np.asarray(X[:, members].sum(1)).ravel() > 0).sum())
        return out

    def observed_parts(self, X, *, total, size_factor):
        """Category counts over the cell's total of the drawn categories."""
        return X, np.repeat(X.sum(1, keepdims=True), X.shape[1], axis=1)

    def normalise(self, ratio, delta):  # noqa: D102
        w = ratio * np.exp(-delta)
        return w / w.sum(-1, keepdims=True)

    def score_trials(self, X, cols, *, total, group_index):  # noqa: D102
        """Each category against the rest of its group: trials = the group's counts."""
        part = X[:, cols]
        y = np.asarray(part.toarray() if sparse.issparse(part) else part, dtype=np.float64)
        codes, inverse = np.unique(group_index[cols], return_inverse=True)
        sums = np.zeros((y.shape[0], len(codes)))
        np.add.at(sums.T, inverse, y.T)
        return sums[:, inverse]

    def score_residuals(self, y, onehot, *, log_sf, trials, noise):  # noqa: D102
        return trial_residuals(y, onehot, trials, noise.get("log_conc"))


FAMILY = Multinomial()
