"""Laplace start of the cis fit: the guide moved to the posterior mode and its curvature.

See :func:`laplace_start`; the model is :class:`dream_sc.models.cis.CisModel` (pure torch/Pyro).
"""

from __future__ import annotations

import numpy as np
import pyro
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoMultivariateNormal
from torch.distributions import transform_to

from .cis import LAPLACE_ITERATIONS, LAPLACE_MAX_CELLS, LAPLACE_NEWTON_STEPS, CisModel


def laplace_start(
    guide: AutoMultivariateNormal, model: CisModel, seed: int, device: torch.device
) -> bool:
    """Move the guide to the Laplace approximation of the posterior (mode and curvature).

    The posterior mode of the guide-level values is found by L-BFGS, polished by a few damped
    Newton steps, on the full-data log joint (the cells' dosages integrated out as in the fit;
    at most :data:`LAPLACE_MAX_CELLS` cells, a seeded subsample beyond), and the guide's
    covariance is set to the inverse Hessian there.
    SVI from this start only has to correct the shape of the posterior: the spread of the
    cells' dosages and the within-cell dispersion trade off along a long, flat ridge that SVI
    from a small sphere walks along for thousands of steps (``log sigma`` still moving after
    3,000 steps on the bundled example), while L-BFGS reaches its end in a few dozen
    iterations. Returns ``False`` (guide untouched) when the mode or the curvature is not
    usable (non-finite, or a Hessian that is not positive definite).
    """
    n_cells = model.n_cells
    if n_cells > LAPLACE_MAX_CELLS:
        rng = np.random.Generator(np.random.PCG64([int(seed), 11]))
        rows = np.sort(rng.choice(n_cells, LAPLACE_MAX_CELLS, replace=False))
    else:
        rows = np.arange(n_cells)
    batch = {"cell_index": torch.as_tensor(rows, device=device), "n_cells": n_cells}
    # float64: the ridge is so flat that float32 rounding (which varies with the thread count)
    # moves the mode along it and can make the Hessian indefinite
    model64 = CisModel(model.data, device, dtype=torch.float64)

    def neg_log_joint(z: torch.Tensor) -> torch.Tensor:
        values = {site["name"]: value for site, value in guide._unpack_latent(z)}
        return -model64.log_joint(values, batch) / n_cells  # = the conditioned trace's

    z = guide.loc.detach().double().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [z], lr=1.0, max_iter=LAPLACE_ITERATIONS, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = neg_log_joint(z)
        loss.backward()
        return loss

    try:
        optimizer.step(closure)
        mode, hessian = _newton_polish(neg_log_joint, z.detach())
        cov = torch.linalg.inv(hessian * n_cells)
        chol = torch.linalg.cholesky(0.5 * (cov + cov.T))
    except (RuntimeError, ValueError):  # torch.linalg errors are RuntimeErrors
        return False
    if not (torch.isfinite(mode).all() and torch.isfinite(chol).all()):
        return False
    sd = torch.diagonal(chol).float()
    unit = (chol / torch.diagonal(chol)[:, None]).float()
    store = pyro.get_param_store()
    with torch.no_grad():
        for name, value, constraint in (
            ("loc", mode, constraints.real),
            ("scale", sd, AutoMultivariateNormal.scale_constraint),
            ("scale_tril", unit, AutoMultivariateNormal.scale_tril_constraint),
        ):
            param = store.get_param(f"{guide._pyro_name}.{name}").unconstrained()
            param.copy_(transform_to(constraint).inv(value.to(param.device)))
    return True


def _newton_polish(objective, z: torch.Tensor, n_iter: int = LAPLACE_NEWTON_STEPS):
    """Damped chord-Newton steps from ``z`` (L-BFGS stops short on the flat ridge).

    The Hessian is computed once at the start and reused by every step (each step then costs
    one gradient), and once more at the end. Returns the mode and the (symmetrised, float64)
    Hessian of ``objective`` there.
    """

    def hessian_at(point: torch.Tensor) -> torch.Tensor:
        h = torch.autograd.functional.hessian(objective, point).double()
        return 0.5 * (h + h.T)

    hessian = hessian_at(z)
    value = float(objective(z))
    for _ in range(n_iter):
        zz = z.clone().requires_grad_(True)
        grad = torch.autograd.grad(objective(zz), zz)[0].double()
        step = torch.linalg.solve(hessian, grad).to(z.dtype)
        for damping in (1.0, 0.5, 0.25, 0.125):
            trial = z - damping * step
            trial_value = float(objective(trial))
            if trial_value <= value:
                z, value = trial, trial_value
                break
        else:
            break
    return z, hessian_at(z)
