"""Several targets' cis fits in one SVI run (``fit_screen(target_batch=K)``).

Each target is set up exactly as :func:`~dream_sc.engine.cis.fit_cis_model` sets it up alone
(its :class:`~dream_sc.models.cis.CisModel`, its ``AutoMultivariateNormal`` guide at the moment
estimates, its Laplace start, its seed), then the ``K`` guides' parameters are stacked
(zero-padded to the largest latent vector; the padding never reaches a loss and gets exactly
zero gradient) and optimised together: the loss is the sum of the targets' own losses (each
divided by its cells, as alone), so every parameter's gradient is its target's own, and Adam,
the element-wise clipping and the one-cycle schedule act element by element as in
:func:`~dream_sc.engine.svi.run_svi`. Every target draws the noise of its reparameterised
samples from its own generator seeded as its lone fit seeds Pyro, in the same order, so a
batched fit follows the lone fit's path up to float rounding (the vectorised operations round
differently). A step then costs one pass of Python and autograd overhead for ``K`` targets.

The batched path covers the default cis fit (full batch, no escapers, no SVI checkpoint, no
``tolerance``); :func:`fit_cis_models` fits any other target alone.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
import pyro
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoMultivariateNormal, init_to_value
from torch.distributions import transform_to

from ..models import cis_laplace
from ..models.cis import CisData, CisModel, CisPosterior, cis_priors, initial_values
from ..models.cis_batched import CisBlock
from ..models.cis_dosage import latent_draws, latent_layout
from .chunks import torch_threads
from .cis import ONE_THREAD_CELLS, fit_cis_model
from .config import FitConfig
from .svi import FitResult, NonFiniteLossError, _diverged, one_cycle_adam, smoothed_converged

#: Element-wise gradient clip (as :func:`~dream_sc.engine.svi.run_svi`'s default).
CLIP = 5.0


def batchable(data: CisData, config: FitConfig) -> bool:
    """Whether a cis fit can join a batched SVI run (else it is fitted alone)."""
    n_cells = len(data.y)
    full_batch = config.batch_size is None or config.batch_size >= n_cells
    return (
        full_batch
        and not data.escapers
        and config.tolerance is None
        and config.checkpoint is None
        and str(config.device) == "cpu"
    )


def fit_cis_models(
    datas: Sequence[CisData],
    configs: Sequence[FitConfig],
    *,
    n_draws: int = 2000,
    laplace: Sequence[bool] | None = None,
    fingerprints: Sequence[dict | None] | None = None,
) -> list[CisPosterior]:
    """Fit several targets' cis models, the batchable ones in one SVI run.

    Returns one :class:`~dream_sc.models.cis.CisPosterior` per target, in order; the time of
    the shared run is shared out equally (``fit.seconds``). Targets that cannot be batched
    (:func:`batchable`), or a block of one, are fitted alone by
    :func:`~dream_sc.engine.cis.fit_cis_model` (with their ``laplace`` flag and checkpoint
    ``fingerprints``); the batched targets need the same ``n_steps`` and ``lr`` (one schedule).
    """
    n = len(datas)
    laplace = [True] * n if laplace is None else list(laplace)
    fingerprints = [None] * n if fingerprints is None else list(fingerprints)
    together = [i for i in range(n) if batchable(datas[i], configs[i])]
    if len({(configs[i].n_steps, configs[i].lr) for i in together}) > 1 or len(together) < 2:
        together = []
    out: list[CisPosterior | None] = [None] * n
    for i in range(n):
        if i not in together:
            out[i] = fit_cis_model(
                datas[i],
                configs[i],
                n_draws=n_draws,
                laplace=laplace[i],
                fingerprint=fingerprints[i],
            )
    if together:
        small = all(len(datas[i].y) <= ONE_THREAD_CELLS for i in together)
        with torch_threads(1 if small else None):
            posts = _fit_together(
                [datas[i] for i in together],
                [configs[i] for i in together],
                n_draws,
                [laplace[i] for i in together],
            )
        for i, post in zip(together, posts, strict=True):
            out[i] = post
    return out  # type: ignore[return-value]


class _Start:
    """One target's model, its guide's layout and unconstrained parameters after its start."""

    def __init__(self, data: CisData, config: FitConfig, laplace: bool) -> None:
        seed, device = config.seed, config.device
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        self.model = CisModel(data, device)
        self.seed = int(seed)
        batch = {"cell_index": torch.arange(self.model.n_cells, device=device)}
        batch["n_cells"] = self.model.n_cells
        guide = AutoMultivariateNormal(
            self.model,
            init_loc_fn=init_to_value(values=initial_values(data, self.model)),
            init_scale=0.05,
        )
        guide(batch)  # creates the variational parameters (and draws one latent sample)
        if laplace and not cis_laplace.laplace_start(guide, self.model, seed, device):
            warnings.warn(
                "The Laplace start of the cis fit failed (no usable curvature at the mode); the "
                "fit starts from the moment estimates instead, which needs more steps than "
                f"{config.n_steps}: check the cis fit's convergence or pass n_steps=1500.",
                RuntimeWarning,
                stacklevel=4,
            )
        self.layout = latent_layout(guide, self.model, batch)
        store = pyro.get_param_store()
        self.params = [
            store.get_param(f"{guide._pyro_name}.{name}").unconstrained().detach().clone()
            for name in ("loc", "scale", "scale_tril")
        ]
        self.dim = int(self.params[0].shape[0])
        pyro.clear_param_store()


def _fit_together(
    datas: Sequence[CisData], configs: Sequence[FitConfig], n_draws: int, laplace: Sequence[bool]
) -> list[CisPosterior]:
    starts = [_Start(*args) for args in zip(datas, configs, laplace, strict=True)]
    t0 = time.perf_counter()
    block = CisBlock(
        [s.model for s in starts],
        [[(name, int(np.prod(shape))) for name, shape in s.layout] for s in starts],
    )
    k, d_max = len(starts), block.d_max
    device, dtype = starts[0].model.device, starts[0].model.dtype
    loc = torch.zeros((k, d_max), dtype=dtype, device=device)
    scale = torch.zeros((k, d_max), dtype=dtype, device=device)
    tril = torch.zeros((k, d_max, d_max), dtype=dtype, device=device)
    mask = torch.zeros((k, d_max), dtype=dtype, device=device)
    for row, s in enumerate(starts):
        loc[row, : s.dim], scale[row, : s.dim] = s.params[0], s.params[1]
        tril[row, : s.dim, : s.dim] = s.params[2]
        mask[row, : s.dim] = 1.0
    params = [p.requires_grad_(True) for p in (loc, scale, tril)]
    pair = mask[:, :, None] * mask[:, None, :]
    eye = torch.eye(d_max, dtype=dtype, device=device)
    to_scale = transform_to(constraints.softplus_positive)
    # each target's noise from its own generator, seeded as its lone fit seeds Pyro; the lone
    # fit's first guide call (creating the parameters) drew one latent sample: skip it
    generators = []
    for s in starts:
        g = torch.Generator(device=device)
        g.manual_seed(s.seed)
        torch.empty(s.dim, dtype=dtype, device=device).normal_(generator=g)
        generators.append(g)
    n_steps, lr = configs[0].n_steps, configs[0].lr
    optimizer, scheduler = one_cycle_adam(params, [1.0, 1.0, 1.0], n_steps, lr)
    n_cells = torch.as_tensor(block.n_cells, dtype=dtype, device=device)
    dims = torch.as_tensor(block.dims, dtype=dtype, device=device)
    losses = torch.empty((n_steps, k), dtype=torch.float64, device=device)
    for step in range(n_steps):
        eps = torch.zeros((k, d_max), dtype=dtype, device=device)
        for row, (s, g) in enumerate(zip(starts, generators, strict=True)):
            eps[row, : s.dim] = torch.empty(s.dim, dtype=dtype, device=device).normal_(generator=g)
        optimizer.zero_grad(set_to_none=True)
        loc_e = loc * mask
        scale_e = to_scale(scale) * mask + (1.0 - mask)  # padding: scale 1, no gradient
        unit = (tril * pair).tril(-1) + eye
        scale_tril = scale_e[..., None] * unit
        z = loc_e + (scale_tril @ eps[..., None]).squeeze(-1)
        # log q(z): the multivariate normal's log density as torch computes it
        diff = (z - loc_e)[..., None]
        white = torch.linalg.solve_triangular(scale_tril, diff, upper=False).squeeze(-1)
        half_log_det = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_q = -0.5 * (dims * math.log(2 * math.pi) + white.pow(2).sum(-1)) - half_log_det
        loss = (log_q - block.log_joint(z)) / n_cells  # [K]
        losses[step] = loss.detach()
        loss.sum().backward()
        for p in params:
            if p.grad is not None:
                p.grad.nan_to_num_(0.0, 0.0, 0.0).clamp_(-CLIP, CLIP)
        optimizer.step()
        scheduler.step()
    trace = losses.cpu().numpy()
    seconds = (time.perf_counter() - t0) / k
    out = []
    for row, (s, config) in enumerate(zip(starts, configs, strict=True)):
        bad = np.flatnonzero(~np.isfinite(trace[:, row]))
        if bad.size:
            raise NonFiniteLossError(
                _diverged(
                    f"The ELBO became {trace[bad[0], row]} at step {int(bad[0])}", " in the cis fit"
                )
            )
        with torch.no_grad():
            p_loc = loc[row, : s.dim]
            p_scale = to_scale(scale[row, : s.dim])
            p_tril = transform_to(constraints.unit_lower_cholesky)(tril[row, : s.dim, : s.dim])
            posterior_tril = (p_scale[..., None] * p_tril).cpu().numpy()
        fit = FitResult(
            loss=trace[:, row].copy(),
            converged=smoothed_converged(trace[:, row], rtol=1e-3),
            seconds=seconds,
        )
        rng = np.random.Generator(np.random.PCG64([config.seed, 7]))  # as draw_sites
        draws = latent_draws(p_loc.detach().cpu().numpy(), posterior_tril, s.layout, n_draws, rng)
        out.append(_posterior(s.model, draws, fit))
    return out


def _posterior(model: CisModel, draws: dict, fit: FitResult) -> CisPosterior:
    """The draws with the derived values, as :func:`~dream_sc.engine.cis.fit_cis_model`."""
    device = model.device
    with torch.no_grad():
        as_t = {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in draws.items()}
        derived = model.derived(as_t)
    draws["guide_effect_all"] = derived["b"].cpu().numpy().astype(np.float64)
    draws["tech_effect_all"] = derived["delta"].cpu().numpy()
    draws["log_r_within"] = derived["log_r"].cpu().numpy()
    return CisPosterior(draws, fit, cis_priors(model))
