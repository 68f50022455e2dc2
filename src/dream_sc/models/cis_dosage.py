"""Posterior draws of a cis fit: guide-level sites and every cell's dosage (pure torch/numpy)."""

from __future__ import annotations

import numpy as np
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoMultivariateNormal

from .cis import (
    CELL_CHUNK,
    GRID_BLOCK,
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
    return latent_draws(loc, tril, latent_layout(guide, model, batch), n, rng)


def latent_layout(
    guide: AutoMultivariateNormal, model: CisModel, batch: dict
) -> list[tuple[str, tuple[int, ...]]]:
    """``(site, shape)`` of the guide's latent vector in order (checked against its median)."""
    loc = guide.get_posterior().loc.detach().cpu().numpy()
    prototype = poutine.trace(poutine.block(model, hide=["obs"])).get_trace(batch)
    layout, offset = [], 0
    median = guide.median()
    for name, site in prototype.nodes.items():
        if site["type"] != "sample" or name not in median:
            continue
        shape = tuple(site["value"].shape)
        size = int(np.prod(shape))
        # the latent vector is laid out in model order: check it against the guide's median
        expected = median[name].detach().cpu().numpy()
        if not np.allclose(loc[offset : offset + size].reshape(shape), expected):
            raise RuntimeError(f"Unexpected latent layout of the cis guide at site {name!r}.")
        layout.append((name, shape))
        offset += size
    if offset != len(loc):
        raise RuntimeError("Unexpected latent layout of the cis guide.")
    return layout


def latent_draws(
    loc: np.ndarray,
    tril: np.ndarray,
    layout: list[tuple[str, tuple[int, ...]]],
    n: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """``n`` draws of ``Normal(loc, tril tril^T)`` split into the sites of ``layout``."""
    flat = loc + rng.standard_normal((n, len(loc))) @ tril.T
    draws, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape))
        draws[name] = flat[:, offset : offset + size].reshape((n, *shape))
        offset += size
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
    """Unnormalised log posterior of cells ``idx`` on their dosage grids ``mu + sigma u``.

    ``mu``, ``sigma`` are ``[S, chunk]`` (one row per posterior draw), ``delta`` ``[S, C]`` and
    ``log_r`` ``[S]``; returns ``[S, chunk, P]``.
    """
    log2_x = mu[..., None] + sigma[..., None] * u  # [S, chunk, P]
    offset = model.log_sf[idx] + delta[:, model.group[idx]]  # [S, chunk]
    eta = offset[..., None] + LN2 * log2_x
    return log_prior + _nb_grid_kernel(model.y[idx, None], eta, log_r[:, None, None])


def _draw_block_size(n_cells: int) -> int:
    """Posterior draws processed together: :data:`GRID_BLOCK` grid values per block at most."""
    chunk = min(n_cells, CELL_CHUNK)
    return max(1, GRID_BLOCK // max(1, chunk * GRID_POINTS))


def sample_cell_dosage(
    data: CisData, post: CisPosterior, n_samples: int, seed: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior samples of every cell's log2 dosage ``[N, n_samples]`` and the draws used.

    The second value holds the rows of ``post.draws`` behind the columns. Sample ``s`` uses
    joint draw ``s`` of the guide-level values, so one column is one coherent posterior world
    (guides' shared uncertainty included); within it a cell's dosage is drawn exactly from its
    grid posterior ``Normal(mu_i, sigma_i) x NB(y_i | ...)``. Several draws are processed at
    once (at most :data:`GRID_BLOCK` grid values) and cells in chunks of :data:`CELL_CHUNK`, so
    memory stays bounded at atlas size; every value is computed element by element as one draw
    at a time would (same random numbers, same results).

    With the escaper option (``data.escapers``) a cell of a cis guide is first drawn escaped or
    knocked down with its posterior odds ``pi Z_escaped : (1 - pi) Z_knocked`` (``Z`` the grid
    marginal likelihoods of the two components), then its dosage from that component's grid;
    ``post.cell_escape`` receives each cell's share of escaped draws.
    """
    model = CisModel(data, device)
    x_ntc, b = post.draws["log2_x_ntc"], post.draws["guide_effect_all"]
    n_draws, n_cells = len(x_ntc), model.n_cells
    rng = np.random.Generator(np.random.PCG64([seed, 11]))
    picks = rng.choice(n_draws, size=n_samples, replace=n_samples > n_draws)
    u = torch.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, GRID_POINTS, dtype=torch.float32)
    h = float(u[1] - u[0])
    u = u.to(device)
    log_prior = -0.5 * u**2
    out = np.empty((n_cells, n_samples), dtype=np.float32)
    sigma2 = np.exp(2 * post.draws["guide_log_sigma"])
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    escaped_share = np.zeros(n_cells) if model.escapers else None
    block = _draw_block_size(n_cells)
    with torch.no_grad():
        for j0 in range(0, n_samples, block):
            js = picks[j0 : j0 + block]
            d = [{"b": t(b[s]), "sigma2": t(sigma2[s])} for s in js]
            if model.escapers:
                for dd, s in zip(d, js, strict=True):
                    dd["escape"] = t(1 / (1 + np.exp(-post.draws["escape_logit"][s])))
            v = [{"log2_x_ntc": t(x_ntc[s])} for s in js]
            delta = t(np.stack([post.draws["tech_effect_all"][s] for s in js]))
            log_r = t(np.stack([post.draws["log_r_within"][s] for s in js]))
            # the random numbers of each draw in draw order, as one draw at a time takes them
            uniforms, components = [], []
            for _ in js:
                uniforms.append(t(rng.random((2, n_cells))))
                if model.escapers:
                    components.append(t(rng.random(n_cells)))
            uniforms = torch.stack(uniforms)  # [S, 2, N]
            for lo in range(0, n_cells, CELL_CHUNK):
                idx = torch.arange(lo, min(lo + CELL_CHUNK, n_cells), device=device)
                value, escape = _chunk_values(
                    model, idx, v, d, delta, log_r, (u, log_prior, h), uniforms, components
                )
                out[lo : lo + len(idx), j0 : j0 + len(js)] = value.T.cpu().numpy()
                if escape is not None:
                    for row in escape.cpu().numpy():  # in draw order, as one draw at a time
                        escaped_share[lo : lo + len(idx)] += row / n_samples
    post.cell_escape = escaped_share
    return out, picks


def _chunk_values(model, idx, v, d, delta, log_r, grid, uniforms, components):
    """Log2 dosage draws ``[S, chunk]`` of cells ``idx`` (and, with escapers, who escaped)."""
    u, log_prior, h = grid
    # the cells' prior one draw at a time: a batched product would round differently
    priors = [model.cell_prior(vv, dd, idx) for vv, dd in zip(v, d, strict=True)]
    mu = torch.stack([p[0] for p in priors])
    sigma = torch.stack([p[1] for p in priors])
    logw = _grid_log_weights(model, idx, delta, log_r, u, log_prior, mu, sigma)
    escape = None
    if model.escapers:
        esc = [model.escaper_prior(vv, dd, idx) for vv, dd in zip(v, d, strict=True)]
        pi, mu_e, sigma_e = (torch.stack([e[k] for e in esc]) for k in range(3))
        logw_e = _grid_log_weights(model, idx, delta, log_r, u, log_prior, mu_e, sigma_e)
        p = pi.clamp(1e-6, 1 - 1e-6)
        odds = (
            torch.log(p) + torch.logsumexp(logw_e, -1) - torch.log1p(-p) - torch.logsumexp(logw, -1)
        )
        pick = torch.stack(components)[:, idx]
        escape = model.is_cis_cell[idx] & (pick < torch.sigmoid(odds))
        logw = torch.where(escape[..., None], logw_e, logw)
        mu, sigma = torch.where(escape, mu_e, mu), torch.where(escape, sigma_e, sigma)
    cdf = torch.cumsum(torch.softmax(logw, dim=-1), dim=-1)
    k = torch.searchsorted(cdf, uniforms[:, 0, idx, None]).squeeze(-1)
    k = k.clamp(max=GRID_POINTS - 1)
    value = mu + sigma * (u[k] + (uniforms[:, 1, idx] - 0.5) * h)
    return value, escape
