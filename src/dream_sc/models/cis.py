"""Step 2: guide effects and per-cell dosage of the cis gene (pure torch/Pyro).

``log2 x_i ~ Normal(log2 x_ntc + sum_g A_ig b_g, sigma_i)``,
``y_i ~ NB(s_i exp(delta_c(i)) x_i, r_cis)``.

Guides targeting the cis gene share a heavy-tailed hierarchical prior
(``b_g = m + tau z_g``, ``z_g ~ StudentT(3)``), so a dead or very strong guide is not shrunk
away. Reference guides (non-targeting, and in high-MOI screens guides of other genes) centre on
0 with a tight heavy-tailed prior: a clearly active control guide escapes it and is reported.
Low MOI is the special case where ``A`` has one 1 per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from . import likelihoods as L
from .chunked import minibatch_rows
from .guide import MeanFieldGuide, Site
from .inference import FitResult, run_svi

LN2 = float(np.log(2.0))
#: Prior sd of log2 x_ntc around the technical baseline of the cis gene.
X_NTC_PRIOR_SD = 0.5
#: Scale of the StudentT(3) prior of reference-guide effects (log2).
REFERENCE_EFFECT_SCALE = 0.1
#: Prior of the per-guide cell-to-cell spread (log of the log2-scale sd).
SIGMA_PRIOR = (np.log(0.3), 0.5)


@dataclass
class CisData:
    """Inputs of the cis model for the cells of one fit (numpy)."""

    y: np.ndarray  # [N] cis counts
    log_sf: np.ndarray  # [N]
    tech_offset: np.ndarray  # [N] technical effect of the cell's group (log scale)
    assignment: np.ndarray  # [N, G] guide assignment (0/1 or counts)
    is_cis_guide: np.ndarray  # [G] bool
    log_r: float  # NB log inverse dispersion of the cis gene
    log2_x_ntc_prior: float  # technical baseline of the cis gene, log2


@dataclass
class CisPosterior:
    """Posterior locations/scales of every site, and the run diagnostics."""

    loc: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]
    fit: FitResult
    priors: dict


def _initial_effects(data: CisData) -> np.ndarray:
    """Per-guide log2 effects from pooled normalised counts (ridge least squares)."""
    norm = np.log2((data.y + 0.5) / np.exp(data.log_sf + data.tech_offset)) - data.log2_x_ntc_prior
    A = data.assignment
    gram = A.T @ A + 1.0 * np.eye(A.shape[1])
    return np.linalg.solve(gram, A.T @ norm)


def fit_cis_model(
    data: CisData,
    *,
    n_steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: bool,
    checkpoint: str | None = None,
) -> CisPosterior:
    """Fit the cis model by SVI and return the mean-field posterior of every site."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    n_cells, n_guides = data.assignment.shape
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    y, log_sf, offset = t(data.y)[:, None], t(data.log_sf), t(data.tech_offset)
    A = t(data.assignment)
    cis_idx = torch.as_tensor(np.flatnonzero(data.is_cis_guide), device=device)
    ref_idx = torch.as_tensor(np.flatnonzero(~data.is_cis_guide), device=device)
    n_cis, n_ref = len(cis_idx), len(ref_idx)
    log_r = torch.tensor(data.log_r, device=device)
    x0 = float(data.log2_x_ntc_prior)

    b0 = _initial_effects(data)
    m0 = float(np.mean(b0[data.is_cis_guide])) if n_cis else 0.0
    tau0 = float(max(np.std(b0[data.is_cis_guide]), 0.3)) if n_cis > 1 else 1.0
    z0 = (b0[data.is_cis_guide] - m0) / tau0
    per_cell0 = x0 + data.assignment @ np.where(data.is_cis_guide, b0, 0.0)
    sites = [
        Site("log2_x_ntc", (), x0, 0.05, per_feature=False),
        Site("target_mean", (), m0, 0.1, per_feature=False),
        Site("log_target_scale", (), np.log(tau0), 0.1, per_feature=False),
        Site("guide_z", (n_cis,), z0, 0.1, per_feature=False),
        Site("ref_effect", (n_ref,), 0.0, 0.02, per_feature=False),
        Site("log_sigma_loc", (), SIGMA_PRIOR[0], 0.1, per_feature=False),
        Site("guide_log_sigma", (n_guides,), SIGMA_PRIOR[0], 0.1, per_feature=False),
        Site("log2_x", (n_cells,), per_cell0, 0.2, per_feature=False, cell_local=True),
    ]
    sites = [s for s in sites if not (s.shape and s.shape[0] == 0)]

    def effects(target_mean, log_tau, z, ref):
        b = torch.zeros(n_guides, device=device)
        if n_cis:
            b = b.index_put((cis_idx,), target_mean + log_tau.exp() * z)
        if n_ref:
            b = b.index_put((ref_idx,), ref)
        return b

    def model(batch: dict) -> None:
        x_ntc = pyro.sample("log2_x_ntc", dist.Normal(x0, X_NTC_PRIOR_SD))
        m = pyro.sample("target_mean", dist.Normal(0.0, 2.0))
        log_tau = pyro.sample("log_target_scale", dist.Normal(0.0, 0.75))
        z = (
            pyro.sample("guide_z", dist.StudentT(3.0, 0.0, 1.0).expand([n_cis]).to_event(1))
            if n_cis
            else None
        )
        ref = (
            pyro.sample(
                "ref_effect",
                dist.StudentT(3.0, 0.0, REFERENCE_EFFECT_SCALE).expand([n_ref]).to_event(1),
            )
            if n_ref
            else None
        )
        s_loc = pyro.sample("log_sigma_loc", dist.Normal(*SIGMA_PRIOR))
        log_sigma = pyro.sample(
            "guide_log_sigma", dist.Normal(s_loc, 0.5).expand([n_guides]).to_event(1)
        )
        b = effects(m, log_tau, z, ref)
        with pyro.plate("cells", n_cells, subsample=batch["cell_index"], dim=-1) as idx:
            a = A[idx]
            weight = a.sum(-1).clamp(min=1.0)
            sigma = ((a * (2 * log_sigma).exp()).sum(-1) / weight).sqrt()
            log2_x = pyro.sample("log2_x", dist.Normal(x_ntc + a @ b, sigma))
            eta = (log_sf[idx] + offset[idx] + LN2 * log2_x)[:, None]
            ll = L.negbinom_log_prob(eta, log_r.reshape(1), y[idx], include_constant=False)
        pyro.factor("obs", ll.sum() * (n_cells / len(idx)))

    def make_batch(step: int) -> dict:
        rows = minibatch_rows(seed, step, n_cells, batch_size)
        return {"cell_index": torch.as_tensor(rows, device=device), "n_cells": n_cells}

    guide = MeanFieldGuide(sites, prefix="cis", device=device)
    fit = run_svi(
        model,
        guide,
        guide.parameters,
        make_batch,
        n_steps=n_steps,
        lr=lr,
        progress=progress,
        description="cis",
        loss_scale=float(n_cells),
        context=" in the cis fit",
        checkpoint=None if checkpoint is None else f"{checkpoint}.cis.pt",
    )
    summary = guide.summary()
    pyro.clear_param_store()
    priors = {
        "log2_x_ntc": {"dist": "normal", "loc": x0, "scale": X_NTC_PRIOR_SD},
        "target_mean": {"dist": "normal", "loc": 0.0, "scale": 2.0},
        "target_scale": {"dist": "lognormal", "loc": 0.0, "scale": 0.75},
        "guide_z": {"dist": "studentt", "df": 3.0, "loc": 0.0, "scale": 1.0},
        "reference_effect": {
            "dist": "studentt",
            "df": 3.0,
            "loc": 0.0,
            "scale": REFERENCE_EFFECT_SCALE,
        },
        "sigma_loc": {
            "dist": "lognormal",
            "loc": float(SIGMA_PRIOR[0]),
            "scale": float(SIGMA_PRIOR[1]),
        },
        "guide_sigma": {"dist": "lognormal", "loc": "sigma_loc", "scale": 0.5},
    }
    return CisPosterior(
        {k: v[0] for k, v in summary.items()}, {k: v[1] for k, v in summary.items()}, fit, priors
    )


def sample_guide_effects(
    post: CisPosterior, is_cis_guide: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior draws of ``log2 x_ntc`` ``[n]`` and guide effects ``b`` ``[n, G]``."""
    rng = np.random.Generator(np.random.PCG64([seed, 7]))

    def draw(name: str, shape: tuple = ()) -> np.ndarray:
        loc, scale = post.loc.get(name), post.scale.get(name)
        if loc is None:
            return np.zeros((n, *shape))
        return loc + scale * rng.standard_normal((n, *np.shape(loc)))

    x_ntc = draw("log2_x_ntc")
    b = np.zeros((n, len(is_cis_guide)))
    if is_cis_guide.any():
        m, log_tau = draw("target_mean"), draw("log_target_scale")
        z = draw("guide_z")
        b[:, is_cis_guide] = m[:, None] + np.exp(log_tau)[:, None] * z
    if (~is_cis_guide).any():
        b[:, ~is_cis_guide] = draw("ref_effect")
    return x_ntc, b
