"""Posterior draws of a cis fit: guide-level sites and every cell's dosage (pure torch/numpy)."""

from __future__ import annotations

import numpy as np
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoMultivariateNormal

from .cis import (
    CELL_CHUNK,
    GRID_HALF_WIDTH,
    GRID_POINTS,
    LN2,
    CisData,
    CisModel,
    CisPosterior,
)


def draw_sites(guide: AutoMultivariateNormal, model: CisModel, batch: dict, n: int, seed: int):
    """``n`` joint posterior draws of every guide-level site (numpy generator, reproducible)."""
    posterior = guide.get_posterior()
    loc = posterior.loc.detach().cpu().numpy()
    tril = posterior.scale_tril.detach().cpu().numpy()
    rng = np.random.Generator(np.random.PCG64([seed, 7]))
    flat = loc + rng.standard_normal((n, len(loc))) @ tril.T
    prototype = poutine.trace(poutine.block(model, hide=["obs"])).get_trace(batch)
    draws, offset = {}, 0
    median = guide.median()
    for name, site in prototype.nodes.items():
        if site["type"] != "sample" or name not in median:
            continue
        shape = tuple(site["value"].shape)
        size = int(np.prod(shape))
        draws[name] = flat[:, offset : offset + size].reshape((n, *shape))
        # the latent vector is laid out in model order: check it against the guide's median
        expected = median[name].detach().cpu().numpy()
        if not np.allclose(loc[offset : offset + size].reshape(shape), expected):
            raise RuntimeError(f"Unexpected latent layout of the cis guide at site {name!r}.")
        offset += size
    if offset != len(loc):
        raise RuntimeError("Unexpected latent layout of the cis guide.")
    return draws


def _nb_grid_kernel(y: torch.Tensor, eta: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """:func:`nb_log_pmf` without its ``lgamma`` terms (constant along a cell's dosage grid).

    They depend on the cell's count and the dispersion but not on its dosage, so they cancel
    when a cell's grid weights are normalised; they were most of the cost of the per-cell draws.
    """
    x = eta - log_r
    sp = torch.nn.functional.softplus(x)
    return y * x - (y + log_r.exp()) * sp


def _grid_log_weights(model, idx, delta, log_r, u, log_prior, mu, sigma) -> torch.Tensor:
    """Unnormalised log posterior of cells ``idx`` on their dosage grids ``mu + sigma u``."""
    log2_x = mu[:, None] + sigma[:, None] * u  # [chunk, P]
    eta = model.log_sf[idx, None] + delta[model.group[idx], None] + LN2 * log2_x
    return log_prior + _nb_grid_kernel(model.y[idx, None], eta, log_r)


def sample_cell_dosage(
    data: CisData, post: CisPosterior, n_samples: int, seed: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior samples of every cell's log2 dosage ``[N, n_samples]`` and the draws used.

    The second value holds the rows of ``post.draws`` behind the columns. Sample ``s`` uses
    joint draw ``s`` of the guide-level values, so one column is one coherent posterior world
    (guides' shared uncertainty included); within it a cell's dosage is drawn exactly from its
    grid posterior ``Normal(mu_i, sigma_i) x NB(y_i | ...)``. Cells are processed in chunks of
    :data:`CELL_CHUNK` so memory stays bounded at atlas size.

    With the escaper option (``data.escapers``) a cell of a cis guide is first drawn escaped or
    knocked down with its posterior odds ``pi Z_escaped : (1 - pi) Z_knocked`` (``Z`` the grid
    marginal likelihoods of the two components), then its dosage from that component's grid;
    ``post.cell_escape`` receives each cell's share of escaped draws.
    """
    model = CisModel(data, device)
    x_ntc, b = post.draws["log2_x_ntc"], post.draws["guide_effect_all"]
    n_draws = len(x_ntc)
    rng = np.random.Generator(np.random.PCG64([seed, 11]))
    picks = rng.choice(n_draws, size=n_samples, replace=n_samples > n_draws)
    u = torch.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, GRID_POINTS, dtype=torch.float32)
    h = float(u[1] - u[0])
    u = u.to(device)
    log_prior = -0.5 * u**2
    out = np.empty((model.n_cells, n_samples), dtype=np.float32)
    sigma2 = np.exp(2 * post.draws["guide_log_sigma"])
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    escaped_share = np.zeros(model.n_cells) if model.escapers else None
    with torch.no_grad():
        for j, s in enumerate(picks):
            d = {"b": t(b[s]), "sigma2": t(sigma2[s])}
            if model.escapers:
                d["escape"] = t(1 / (1 + np.exp(-post.draws["escape_logit"][s])))
            delta = t(post.draws["tech_effect_all"][s])
            log_r = t(post.draws["log_r_within"][s])
            uniforms = t(rng.random((2, model.n_cells)))
            pick_component = t(rng.random(model.n_cells)) if model.escapers else None
            for lo in range(0, model.n_cells, CELL_CHUNK):
                idx = torch.arange(lo, min(lo + CELL_CHUNK, model.n_cells), device=device)
                v = {"log2_x_ntc": t(x_ntc[s])}
                mu, sigma = model.cell_prior(v, d, idx)
                grid = (model, idx, delta, log_r, u, log_prior)
                logw = _grid_log_weights(*grid, mu, sigma)
                if model.escapers:
                    pi, mu_e, sigma_e = model.escaper_prior(v, d, idx)
                    logw_e = _grid_log_weights(*grid, mu_e, sigma_e)
                    p = pi.clamp(1e-6, 1 - 1e-6)
                    odds = (
                        torch.log(p)
                        + torch.logsumexp(logw_e, -1)
                        - torch.log1p(-p)
                        - torch.logsumexp(logw, -1)
                    )
                    escape = model.is_cis_cell[idx] & (pick_component[idx] < torch.sigmoid(odds))
                    logw = torch.where(escape[:, None], logw_e, logw)
                    mu, sigma = torch.where(escape, mu_e, mu), torch.where(escape, sigma_e, sigma)
                    escaped_share[lo : lo + len(idx)] += escape.cpu().numpy() / n_samples
                cdf = torch.cumsum(torch.softmax(logw, dim=-1), dim=-1)
                k = torch.searchsorted(cdf, uniforms[0, idx, None]).squeeze(-1)
                k = k.clamp(max=GRID_POINTS - 1)
                value = mu + sigma * (u[k] + (uniforms[1, idx] - 0.5) * h)
                out[lo : lo + len(idx), j] = value.cpu().numpy()
    post.cell_escape = escaped_share
    return out, picks
