"""The log joint of several targets' cis models at once (pure torch): one set of tensor operations.

A screen target's cis fit works on ~1,200 cells x 24 quadrature nodes and ~30 guide-level
values; a step of its SVI is almost all Python, Pyro and autograd overhead. :class:`CisBlock`
evaluates the log joint of :class:`~dream_sc.models.cis.CisModel` for ``K`` targets together:
each target's latent vector is a row of a zero-padded ``[K, D]`` matrix, its sites are gathered
from that row by index (padding reads a constant 0 and is masked out of every prior), and the
cells of all targets are concatenated, each cell carrying its target's row. The result is the
vector of the ``K`` log joints: the targets stay independent (no value of one enters another's
term), so the gradient of their sum is each target's own gradient. Only the standard model is
covered (the escaper mixture is fitted one target at a time).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .cis import (
    LN2,
    N_QUADRATURE,
    REFERENCE_EFFECT_SCALE,
    SIGMA_PRIOR,
    TECHNICAL_EFFECT_PRIOR_SD,
    X_NTC_PRIOR_SD,
    CisModel,
)
from .likelihoods import _lgamma_ratio

#: Sites of one value per target, in the model's order.
SCALARS = ("log2_x_ntc", "target_mean", "log_target_scale", "log_sigma_loc", "log_phi_within")
#: Sites of several values per target: guide_z [n_cis], ref_effect [n_ref],
#: guide_log_sigma [n_guides], tech_effect [n_groups - 1].
VECTORS = ("guide_z", "ref_effect", "guide_log_sigma", "tech_effect")


def _student_t3(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Log density of StudentT(df=3, 0, scale) (as torch's StudentT computes it)."""
    df = 3.0
    y = x / scale
    z = (
        np.log(scale)
        + 0.5 * np.log(df)
        + 0.5 * np.log(np.pi)
        + float(torch.lgamma(torch.tensor(0.5 * df)))
        - float(torch.lgamma(torch.tensor(0.5 * (df + 1.0))))
    )
    return -0.5 * (df + 1.0) * torch.log1p(y**2 / df) - z


def _normal(x: torch.Tensor, loc, scale) -> torch.Tensor:
    """Log density of Normal(loc, scale) (scale a float or a tensor)."""
    log_scale = np.log(scale) if isinstance(scale, float) else torch.log(scale)
    return -((x - loc) ** 2) / (2 * scale**2) - log_scale - 0.5 * np.log(2 * np.pi)


class CisBlock:
    """The cis models of ``K`` targets with their guide layouts, evaluated together.

    Parameters
    ----------
    models
        One :class:`~dream_sc.models.cis.CisModel` per target (float32, full-batch, no escapers).
    layouts
        Per target: ``(site, size)`` of its latent vector in order (the guide's layout).
    """

    def __init__(self, models: Sequence[CisModel], layouts: Sequence[Sequence[tuple[str, int]]]):
        self.k = len(models)
        device, dtype = models[0].device, models[0].dtype
        self.device, self.dtype = device, dtype
        self.dims = [sum(size for _, size in layout) for layout in layouts]
        self.d_max = max(self.dims)
        pad = self.d_max  # index of the constant 0 appended to every latent row
        sizes = {name: [] for name in VECTORS}
        offsets: list[dict[str, tuple[int, int]]] = []
        for layout in layouts:
            at, where = 0, {}
            for name, size in layout:
                where[name] = (at, size)
                at += size
            offsets.append(where)
            for name in VECTORS:
                sizes[name].append(where.get(name, (0, 0))[1])
        long = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
        real = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        self.scalar_index = long([[w[name][0] for name in SCALARS] for w in offsets])  # [K, 5]
        self.vector_index, self.vector_mask = {}, {}
        for name in VECTORS:
            width = max(1, max(sizes[name]))
            index = np.full((self.k, width), pad, dtype=np.int64)
            for row, where in enumerate(offsets):
                if name in where:
                    start, size = where[name]
                    index[row, :size] = np.arange(start, start + size)
            self.vector_index[name] = long(index)
            self.vector_mask[name] = real(index != pad)
        self.n_cis = real([m.n_cis for m in models])
        # b of guide g: column of [m + tau z (n_cis cols) | ref (n_ref cols) | 0]
        n_cis_max, n_ref_max = (self.vector_index[n].shape[1] for n in ("guide_z", "ref_effect"))
        g_max = self.vector_index["guide_log_sigma"].shape[1]
        b_index = np.full((self.k, g_max), n_cis_max + n_ref_max, dtype=np.int64)
        for row, m in enumerate(models):
            b_index[row, m.cis_idx.cpu().numpy()] = np.arange(m.n_cis)
            b_index[row, m.ref_idx.cpu().numpy()] = n_cis_max + np.arange(m.n_ref)
        self.b_index = long(b_index)
        self.x0 = real([m.x0 for m in models])
        self.phi_loc = real([m.phi_prior_loc for m in models])
        self.phi_scale = real([m.phi_prior_scale for m in models])
        e_max = self.vector_index["tech_effect"].shape[1]
        effect_prior = np.zeros((self.k, e_max))
        for row, m in enumerate(models):
            effect_prior[row, : m.n_effects] = m.effect_prior[1:].cpu().numpy()
        self.effect_prior = real(effect_prior)
        # the cells of every target, concatenated
        self.n_cells = [m.n_cells for m in models]
        self.cell_target = long(np.repeat(np.arange(self.k), self.n_cells))
        self.y = torch.cat([m.y for m in models])
        self.log_sf = torch.cat([m.log_sf for m in models])
        self.group = torch.cat([m.group for m in models])
        assignments = [m.A.cpu().numpy() for m in models]
        one_hot = all(((a == 0) | (a == 1)).all() and (a.sum(1) == 1).all() for a in assignments)
        if one_hot:  # low MOI: each cell's guide, gathered instead of a product
            self.cell_guide = long(np.concatenate([a.argmax(1) for a in assignments]))
            self.A = None
        else:
            dense = np.zeros((len(self.y), g_max), dtype=np.float32)
            start = 0
            for a in assignments:
                dense[start : start + len(a), : a.shape[1]] = a
                start += len(a)
            self.A = real(dense)
            self.cell_guide = None
        nodes, weights = np.polynomial.hermite_e.hermegauss(N_QUADRATURE)
        self.nodes = real(nodes)
        self.log_w = real(np.log(weights / weights.sum()))

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """Log joint ``[K]`` of every target at its latent row of ``z`` ``[K, d_max]``."""
        zp = torch.cat([z, torch.zeros_like(z[:, :1])], dim=1)  # the padding reads 0
        x_ntc, m, log_tau, log_sigma_loc, log_phi = zp.gather(1, self.scalar_index).unbind(1)
        v = {name: zp.gather(1, self.vector_index[name]) for name in VECTORS}
        mask = self.vector_mask
        lp = _normal(x_ntc, self.x0, X_NTC_PRIOR_SD)
        lp = lp + _normal(m, 0.0, 2.0) + _normal(log_tau, 0.0, 0.75)
        lp = lp + (_student_t3(v["guide_z"], 1.0) * mask["guide_z"]).sum(-1)
        lp = lp + (_student_t3(v["ref_effect"], REFERENCE_EFFECT_SCALE) * mask["ref_effect"]).sum(
            -1
        )
        lp = lp + _normal(log_sigma_loc, SIGMA_PRIOR[0], SIGMA_PRIOR[1])
        glp = _normal(v["guide_log_sigma"], log_sigma_loc[:, None], 0.5)
        lp = lp + (glp * mask["guide_log_sigma"]).sum(-1)
        tlp = _normal(v["tech_effect"], self.effect_prior, TECHNICAL_EFFECT_PRIOR_SD)
        lp = lp + (tlp * mask["tech_effect"]).sum(-1)
        lp = lp + _normal(log_phi, self.phi_loc, self.phi_scale)
        return lp + self.log_likelihood(x_ntc, m, log_tau, log_phi, v)

    def log_likelihood(self, x_ntc, m, log_tau, log_phi, v) -> torch.Tensor:
        """Marginal log-likelihood ``[K]`` of each target's cis counts (all its cells)."""
        tau = torch.where(self.n_cis > 1, log_tau.exp(), torch.ones_like(log_tau))
        cis = m[:, None] + tau[:, None] * v["guide_z"]
        values = torch.cat([cis, v["ref_effect"], torch.zeros_like(m[:, None])], dim=1)
        b = values.gather(1, self.b_index)  # [K, G]
        sigma2 = (2 * v["guide_log_sigma"]).exp()
        delta = torch.cat([torch.zeros_like(m[:, None]), v["tech_effect"]], dim=1)
        t = self.cell_target
        if self.cell_guide is not None:
            mu = x_ntc[t] + b[t, self.cell_guide]
            sigma = sigma2[t, self.cell_guide].clamp_min(1e-12).sqrt()
        else:
            weight = self.A.sum(-1).clamp(min=1.0)
            mu = x_ntc[t] + (b[t] * self.A).sum(-1)
            sigma = (((sigma2[t] * self.A).sum(-1)) / weight).clamp_min(1e-12).sqrt()
        log_r = (-log_phi)[t]
        base_eta = self.log_sf + delta[t, self.group]
        log2_x = mu[:, None] + sigma[:, None] * self.nodes
        x = base_eta[:, None] + LN2 * log2_x - log_r[:, None]
        r = log_r.exp()
        kernel = self.y[:, None] * x - (
            self.y[:, None] + r[:, None]
        ) * torch.nn.functional.softplus(x)
        cell_ll = torch.logsumexp(kernel + self.log_w, dim=-1) + _lgamma_ratio(r, self.y)
        total = torch.zeros(self.k, dtype=cell_ll.dtype, device=cell_ll.device)
        total = total.index_add(0, t, cell_ll)
        return torch.nan_to_num(total, nan=-torch.inf)
