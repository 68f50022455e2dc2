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


def moment_init(
    distribution: str,
    X,
    *,
    group: np.ndarray,
    n_groups: int,
    sum_factor: np.ndarray | None = None,
    total=None,
    group_index: np.ndarray | None = None,
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
        delta_scale = _robust_scale((delta / sd[:, None])[informative].ravel())
        baseline_scale = BASELINE_PRIOR_SD * 5 * sd
    else:
        delta_scale = _robust_scale(delta[informative].ravel())
        baseline_scale = np.full(n_features, BASELINE_PRIOR_SD)
    return TechnicalInit(
        baseline.astype(np.float32),
        delta.astype(np.float32),
        None if log_phi is None else log_phi.astype(np.float32),
        None if log_sigma is None else log_sigma.astype(np.float32),
        informative,
        delta_scale,
        baseline_scale.astype(np.float32),
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
        ll = obs.log_likelihood(eta, rows, **kwargs)
        pyro.factor("obs", ll * (n_cells / len(rows)))

    def make_batch(step: int) -> dict:
        rows = minibatch_rows(seed, step, n_cells, batch_size, order)
        return {"rows": torch.as_tensor(rows, device=device), "n_cells": n_cells}

    return ChunkProblem(model, sites, make_batch, loss_scale=float(n_cells))
