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

from .._lazy import concat_blocks, feature_blockwise
from .batching import ChunkProblem, RowsOfStep
from .families import CONCENTRATION_RANGE, get_family
from .families.binomial import betabinomial_moments
from .families.multinomial import dirichletmultinomial_moments
from .families.negbinom import LOG_PHI_PRIOR
from .guide import Site
from .observation import ObservationData

__all__ = [
    "BASELINE_PRIOR_SD",
    "CONCENTRATION_RANGE",
    "LOG_CONC_PRIOR_SD",
    "LOG_PHI_PRIOR",
    "TechnicalInit",
    "betabinomial_moments",
    "dirichletmultinomial_moments",
    "moment_init",
    "technical_problem",
]

#: Prior sd of the baseline around its moment estimate, on the link scale.
BASELINE_PRIOR_SD = 2.0
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
    overdispersed: bool = False,
) -> TechnicalInit:
    """Closed-form estimates of baseline, group effects and noise for every feature.

    Parameters
    ----------
    distribution
        Likelihood name.
    X
        Observations (cells x features), scipy sparse or dense, or an out-of-core
        :class:`~dream_sc._lazy.LazyMatrix` (read feature block by feature block).
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
    family = get_family(distribution)
    # per-feature estimates: an out-of-core matrix is read block by block (see dream_sc._lazy)
    moments = concat_blocks(
        feature_blockwise(
            lambda Xb, tb, _: family.link_moments(
                Xb,
                group=group,
                n_groups=n_groups,
                sum_factor=sum_factor,
                total=tb,
                group_index=group_index,
            ),
            X,
            total,
        )
    )
    baseline, delta = _split_reference(moments.link, moments.informative)
    delta_scale, baseline_scale = _prior_scales(family, delta, moments)
    log_conc = conc_ok = None
    if overdispersed and family.overdispersible:
        log_conc, conc_ok = _concentration(family, X, total, group, n_groups, group_index)
        conc_ok = conc_ok & moments.informative
        log_conc = np.where(conc_ok, log_conc, np.log(CONCENTRATION_RANGE[1])).astype(np.float32)
    f32 = lambda a: None if a is None else a.astype(np.float32)  # noqa: E731
    return TechnicalInit(
        baseline.astype(np.float32),
        delta.astype(np.float32),
        f32(moments.log_phi),
        f32(moments.log_sigma),
        moments.informative,
        delta_scale,
        baseline_scale.astype(np.float32),
        log_conc,
        conc_ok,
    )


def _split_reference(link: np.ndarray, informative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Baseline (reference group) and group effects ``[T, C-1]`` (0 without information)."""
    n_groups, n_features = link.shape
    baseline = link[0]
    delta = (link[1:] - link[0]).T if n_groups > 1 else np.zeros((n_features, 0))
    return baseline, np.where(informative[:, None], delta, 0.0)


def _prior_scales(family, delta: np.ndarray, moments) -> tuple[float, np.ndarray]:
    """Group-effect prior scale (robust spread of the estimates) and baseline prior scales."""
    informative = moments.informative
    if family.noise_scaled:
        sd = np.exp(moments.log_sigma)
        delta_scale = _robust_scale((delta / sd[:, None])[informative].ravel())
        return delta_scale, BASELINE_PRIOR_SD * 5 * sd
    delta_scale = _robust_scale(delta[informative].ravel())
    return delta_scale, np.full(delta.shape[0], BASELINE_PRIOR_SD)


def _concentration(family, X, total, group, n_groups, group_index) -> tuple:
    """Moment estimate of the log concentration of an over-dispersed family."""
    return concat_blocks(
        feature_blockwise(
            lambda Xb, tb, _: family.concentration_moments(
                Xb, total=tb, group=group, n_groups=n_groups, group_index=group_index
            ),
            X,
            total,
        )
    )


def technical_problem(
    obs: ObservationData,
    init: TechnicalInit,
    features: np.ndarray,
    *,
    group: torch.Tensor,
    n_groups: int,
    log_sf: torch.Tensor | None,
    rows: RowsOfStep,
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
    rows
        Minibatch rows of every step (e.g. :class:`dream_sc.engine.batching.StepRows`).
    """
    family = obs.family
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
    noise_sites, sample_noise = family.technical_noise(init, features, n_feat, t)
    sites.extend(noise_sites)
    conc_loc = None
    if init.log_conc is not None:
        conc_loc = t(init.log_conc[features])
        sites.append(Site("log_conc", (n_feat,), init.log_conc[features], 0.1))

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
        if family.size_factors:
            eta = eta + log_sf[rows, None]
        kwargs = sample_noise()
        if conc_loc is not None:
            kwargs["log_conc"] = pyro.sample(
                "log_conc", dist.Normal(conc_loc, LOG_CONC_PRIOR_SD).to_event(1)
            )
        ll = obs.log_likelihood(eta, rows, **kwargs)
        pyro.factor("obs", ll * (n_cells / len(rows)))

    def make_batch(step: int) -> dict:
        return {"rows": rows(step), "n_cells": n_cells}

    return ChunkProblem(model, sites, make_batch, loss_scale=float(n_cells))
