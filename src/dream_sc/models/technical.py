"""Step 1: per-feature technical-group effects and noise, learned on control cells.

Pure torch/Pyro. The linear predictor of cell ``i`` and feature ``t`` is

``eta_it = [log s_i] + baseline_t + delta_{c(i), t}``  (``delta`` of the reference group = 0)

on the link scale of the modality (log mean, logit, category logit, identity). Moment
estimates give the initial values and centre the priors, so SVI converges in a few hundred
steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import sparse

from .chunked import ChunkProblem, minibatch_rows
from .guide import Site
from .observation import ObservationData

#: Prior on the log dispersion (variance = mu + phi mu^2): from Poisson-like (phi ~ 0.005) to
#: very over-dispersed (phi ~ 10) within two standard deviations.
LOG_PHI_PRIOR = (np.log(0.1), 2.0)
#: Prior sd of the baseline around its moment estimate, on the link scale.
BASELINE_PRIOR_SD = 2.0
#: Range of the concentration (beta-binomial ``a + b``, Dirichlet total) of over-dispersed
#: binomial / multinomial features: from strongly over-dispersed to practically binomial. The
#: upper end is also the neutral value of features without information about it.
CONCENTRATION_RANGE = (0.5, 1e4)
#: Prior sd of the log concentration around its moment estimate.
LOG_CONC_PRIOR_SD = 1.0


@dataclass
class TechnicalInit:
    """Moment estimates per feature (link scale) and the data-driven prior scales."""

    baseline: np.ndarray  # [T]
    delta: np.ndarray  # [T, C-1]
    log_phi: np.ndarray | None  # [T] negbinom
    log_sigma: np.ndarray | None  # [T] normal / studentt
    informative: np.ndarray  # [T] bool
    delta_scale: float
    baseline_scale: np.ndarray  # [T]
    log_conc: np.ndarray | None = None  # [T] over-dispersed binomial / multinomial
    conc_informative: np.ndarray | None = None  # [T] bool: moment estimate available
    # [dask hunk] the float64 values ``delta_scale`` was estimated from (feature-major), so
    # moment estimates computed by column blocks can re-estimate it exactly over all features
    effect_values: np.ndarray | None = None


def _group_sums(matrix, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Column sums per group: ``[C, T]``."""
    indicator = sparse.csr_matrix(
        (np.ones(len(group)), (group, np.arange(len(group)))), shape=(n_groups, len(group))
    )
    out = indicator @ matrix
    return np.asarray(out.toarray() if sparse.issparse(out) else out, dtype=np.float64)


def _robust_scale(values: np.ndarray, floor: float = 0.05, cap: float = 2.0) -> float:
    """Prior scale of group effects: ``sqrt(median^2 + (1.5 MAD-sd)^2)`` of the moment estimates."""
    values = values[np.isfinite(values)]
    if values.size < 3:
        return 0.5
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    # a shift shared by all features (e.g. a deeper cell line) must not be shrunk: the width
    # covers the common shift as well as the spread around it
    return float(np.clip(np.sqrt(median**2 + (1.5 * mad) ** 2), floor, cap))


def _rho_to_log_conc(numerator: np.ndarray, denominator: np.ndarray) -> tuple:
    """Log concentration ``log(1/rho - 1)`` from an intra-class correlation ``rho = num/den``.

    Clipped to :data:`CONCENTRATION_RANGE`; where ``den`` is 0 (no cell with two or more
    trials, or a proportion of exactly 0 or 1) the neutral upper end is used.
    """
    lo, hi = CONCENTRATION_RANGE
    ok = denominator > 0
    rho = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=ok)
    rho = np.clip(rho, 1.0 / (1.0 + hi), 1.0 / (1.0 + lo))
    return np.where(ok, np.log1p(-rho) - np.log(rho), np.log(hi)), ok


def _rows_csr(matrix, rows: np.ndarray) -> sparse.csr_matrix:
    return sparse.csr_matrix(matrix[rows] if sparse.issparse(matrix) else np.asarray(matrix)[rows])


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
        k, n = _rows_csr(X, rows).astype(np.float64), _rows_csr(total, rows).astype(np.float64)
        col_sum = lambda m: np.asarray(m.sum(0)).ravel()  # noqa: E731
        k1, n1 = col_sum(k), col_sum(n)
        k2, n2, kn = col_sum(k.multiply(k)), col_sum(n.multiply(n)), col_sum(k.multiply(n))
        p = np.divide(k1, n1, out=np.zeros(n_features), where=n1 > 0)
        pq = p * (1.0 - p)
        num += k2 - 2.0 * p * kn + p * p * n2 - pq * n1
        den += pq * (n2 - n1)
    return _rho_to_log_conc(num, den)


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
        y = _rows_csr(X, np.flatnonzero(group == c)).astype(np.float64).tocoo()
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
    log_conc, ok = _rho_to_log_conc(num, den)
    return log_conc[group_index], ok[group_index]


def moment_init(
    distribution: str,
    X,
    *,
    group: np.ndarray,
    n_groups: int,
    sum_factor: np.ndarray | None = None,
    total=None,
    group_index: np.ndarray | None = None,
    overdispersed: bool = False,
) -> TechnicalInit:
    """Closed-form estimates of baseline, group effects and noise for every feature.

    Parameters
    ----------
    distribution
        Likelihood name.
    X
        Observations (cells x features), scipy sparse or dense.
    group
        Technical group per cell (0 = reference).
    n_groups
        Number of technical groups.
    sum_factor
        Size factors (negbinom).
    total
        Trials (binomial).
    group_index
        Category groups (multinomial).
    overdispersed
        Binomial / multinomial: also estimate the log concentration of the beta-binomial /
        Dirichlet-multinomial (:func:`betabinomial_moments`,
        :func:`dirichletmultinomial_moments`).

    Returns
    -------
    :class:`TechnicalInit`.
    """
    n_features = X.shape[1]
    log_phi = log_sigma = None
    if distribution == "negbinom":
        y_sum = _group_sums(X, group, n_groups)
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
    elif distribution == "binomial":
        k_sum = _group_sums(X, group, n_groups)
        n_sum = _group_sums(total, group, n_groups)
        p = (k_sum + 0.5) / (n_sum + 1.0)
        link = np.log(p) - np.log1p(-p)
        informative = n_sum.sum(0) > 0
    elif distribution == "multinomial":
        y_sum = _group_sums(X, group, n_groups)  # [C, T]
        totals = np.zeros((n_groups, int(group_index.max()) + 1))
        np.add.at(totals.T, group_index, y_sum.T)
        size = np.bincount(group_index)
        share = (y_sum + 0.5) / (totals[:, group_index] + 0.5 * size[group_index])
        link = np.log(share)
        informative = totals.sum(0)[group_index] > 0
    else:
        dense = X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
        link = np.zeros((n_groups, n_features))
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
    baseline = link[0]
    delta = (link[1:] - link[0]).T if n_groups > 1 else np.zeros((n_features, 0))
    delta = np.where(informative[:, None], delta, 0.0)
    if distribution in ("normal", "studentt"):
        sd = np.exp(log_sigma)
        effect_values = (delta / sd[:, None])[informative].ravel()  # [dask hunk] named
        baseline_scale = BASELINE_PRIOR_SD * 5 * sd
    else:
        effect_values = delta[informative].ravel()  # [dask hunk] named
        baseline_scale = np.full(n_features, BASELINE_PRIOR_SD)
    delta_scale = _robust_scale(effect_values)
    log_conc = conc_ok = None
    if overdispersed and distribution == "binomial":
        log_conc, conc_ok = betabinomial_moments(X, total, group, n_groups)
    elif overdispersed and distribution == "multinomial":
        log_conc, conc_ok = dirichletmultinomial_moments(X, group, n_groups, group_index)
    if log_conc is not None:
        conc_ok = conc_ok & informative
        log_conc = np.where(conc_ok, log_conc, np.log(CONCENTRATION_RANGE[1])).astype(np.float32)
    return TechnicalInit(
        baseline.astype(np.float32),
        delta.astype(np.float32),
        None if log_phi is None else log_phi.astype(np.float32),
        None if log_sigma is None else log_sigma.astype(np.float32),
        informative,
        delta_scale,
        baseline_scale.astype(np.float32),
        log_conc,
        conc_ok,
        effect_values,  # [dask hunk]
    )


def technical_problem(
    obs: ObservationData,
    init: TechnicalInit,
    features: np.ndarray,
    *,
    group: torch.Tensor,
    n_groups: int,
    log_sf: torch.Tensor | None,
    batch_size: int,
    seed: int,
    order: np.ndarray | None = None,
) -> ChunkProblem:
    """The Pyro model and latent sites of the technical fit for one feature chunk.

    Parameters
    ----------
    obs
        The chunk's observations.
    init
        Moment estimates of all features (indexed by ``features``).
    features
        Global indices of the chunk's features.
    group
        Technical group per cell (device tensor).
    n_groups
        Number of technical groups.
    log_sf
        log size factors (negbinom) or ``None``.
    batch_size
        Cells per SVI step.
    seed
        Run seed (minibatches).
    """
    dist_name = obs.distribution
    n_cells, n_feat = obs.n_cells, len(features)
    device = group.device
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    base_loc = t(init.baseline[features])
    base_scale = t(init.baseline_scale[features])
    sd_unit = t(np.exp(init.log_sigma[features])) if init.log_sigma is not None else None
    delta_scale = init.delta_scale * (sd_unit[:, None] if sd_unit is not None else 1.0)
    sites = [Site("baseline", (n_feat,), init.baseline[features], 0.05)]
    if n_groups > 1:
        sites.append(Site("delta", (n_feat, n_groups - 1), init.delta[features], 0.05))
    if dist_name == "negbinom":
        sites.append(Site("log_phi", (n_feat,), init.log_phi[features], 0.1))
    if dist_name in ("normal", "studentt"):
        sites.append(Site("log_sigma", (n_feat,), init.log_sigma[features], 0.05))
    if dist_name == "studentt":
        sites.append(Site("log_nu", (n_feat,), np.log(10.0), 0.1))
    conc_loc = None
    if init.log_conc is not None:
        conc_loc = t(init.log_conc[features])
        sites.append(Site("log_conc", (n_feat,), init.log_conc[features], 0.1))
    sigma_loc = t(init.log_sigma[features]) if init.log_sigma is not None else None

    def model(batch: dict) -> None:
        rows = batch["rows"]
        base = pyro.sample("baseline", dist.Normal(base_loc, base_scale).to_event(1))
        eta = base.expand(len(rows), n_feat)
        if n_groups > 1:
            delta = pyro.sample(
                "delta",
                dist.Normal(torch.zeros(n_feat, n_groups - 1, device=device), delta_scale)
                .expand([n_feat, n_groups - 1])
                .to_event(2),
            )
            full = torch.cat([torch.zeros(n_feat, 1, device=device), delta], dim=1)  # [T, C]
            eta = eta + full.T[group[rows]]
        kwargs = {}
        if dist_name == "negbinom":
            eta = eta + log_sf[rows, None]
            log_phi = pyro.sample(
                "log_phi", dist.Normal(*LOG_PHI_PRIOR).expand([n_feat]).to_event(1)
            )
            kwargs["log_r"] = -log_phi
        if dist_name in ("normal", "studentt"):
            kwargs["log_sigma"] = pyro.sample("log_sigma", dist.Normal(sigma_loc, 1.0).to_event(1))
        if dist_name == "studentt":
            kwargs["log_nu"] = pyro.sample(
                "log_nu", dist.Normal(np.log(10.0), 1.0).expand([n_feat]).to_event(1)
            )
        if conc_loc is not None:
            kwargs["log_conc"] = pyro.sample(
                "log_conc", dist.Normal(conc_loc, LOG_CONC_PRIOR_SD).to_event(1)
            )
        ll = obs.log_likelihood(eta, rows, **kwargs)
        pyro.factor("obs", ll * (n_cells / len(rows)))

    def make_batch(step: int) -> dict:
        rows = minibatch_rows(seed, step, n_cells, batch_size, order)
        return {"rows": torch.as_tensor(rows, device=device), "n_cells": n_cells}

    return ChunkProblem(model, sites, make_batch, loss_scale=float(n_cells))
