"""The cis step on the engine: one full-data problem (no feature chunks), fitted by SVI.

The model, its Laplace start and the posterior draws are maths (:mod:`dream_sc.models.cis`,
:mod:`~dream_sc.models.cis_laplace`, :mod:`~dream_sc.models.cis_dosage`); this module runs them
with the fit's :class:`~dream_sc.engine.config.FitConfig` through the shared SVI loop.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, init_to_value

from ..models import cis_laplace
from ..models.cis import CisData, CisModel, CisPosterior, cis_priors, initial_values
from ..models.cis_dosage import draw_sites, sample_cell_dosage
from .batching import StepRows
from .chunks import torch_threads
from .config import FitConfig
from .svi import run_svi

#: A cis fit of at most this many cells runs on one torch thread (see :func:`cis_threads`).
ONE_THREAD_CELLS = 20_000


def cis_threads(n_cells: int) -> int | None:
    """Torch threads of a cis fit: one up to :data:`ONE_THREAD_CELLS` cells, else unchanged.

    A screen target's fit (a few thousand cells) works on tensors of ``cells x 24`` quadrature
    nodes and a few dozen guide-level values: a step is Python and Pyro overhead, the tensors
    are too small for a second thread to help, and threads waiting on each other made the fit
    5-10 times slower on a busy machine (``benchmarks/README.md``, bench_cis_target). Below
    32,768 values per reduction torch does not split a sum between threads, so the numbers
    are those of any thread count (checked on the benchmark screen).
    """
    return 1 if n_cells <= ONE_THREAD_CELLS else None


def cell_dosage_draws(
    data: CisData, post: CisPosterior, config: FitConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell dosage draws of a fitted cis model on :func:`cis_threads` threads.

    :func:`~dream_sc.models.cis_dosage.sample_cell_dosage` with the fit's ``n_samples``,
    ``seed`` and device (``config``).
    """
    with torch_threads(cis_threads(len(data.y))):
        return sample_cell_dosage(data, post, config.n_samples, config.seed, config.device)


def fit_cis_model(
    data: CisData,
    config: FitConfig,
    *,
    n_draws: int = 2000,
    laplace: bool = True,
    fingerprint: dict | None = None,
) -> CisPosterior:
    """Fit the guide-level cis model by SVI and return joint posterior draws of every site.

    Runs on :func:`cis_threads` torch threads; see :func:`_fit_cis_model`.
    """
    with torch_threads(cis_threads(len(data.y))):
        return _fit_cis_model(
            data, config, n_draws=n_draws, laplace=laplace, fingerprint=fingerprint
        )


def _fit_cis_model(
    data: CisData,
    config: FitConfig,
    *,
    n_draws: int = 2000,
    laplace: bool = True,
    fingerprint: dict | None = None,
) -> CisPosterior:
    """Fit the guide-level cis model by SVI and return joint posterior draws of every site.

    With ``laplace`` the variational posterior starts at the Laplace approximation
    (:func:`laplace_start`) instead of a small sphere around the moment estimates.
    ``config`` is the fit's configuration with the cell batch size set; its ``checkpoint``
    prefix names the SVI checkpoint ``<prefix>.cis.pt``. ``fingerprint``: see
    :func:`~dream_sc.engine.svi.run_svi`.
    """
    seed, device, checkpoint = config.seed, config.device, config.checkpoint
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    n_cells = data.assignment.shape[0]
    model = CisModel(data, device)

    step_rows = StepRows(config, n_cells)

    def make_batch(step: int) -> dict:
        return {"cell_index": step_rows(step), "n_cells": n_cells}

    guide = AutoMultivariateNormal(
        model, init_loc_fn=init_to_value(values=initial_values(data, model)), init_scale=0.05
    )
    guide(make_batch(0))  # creates the variational parameters
    if laplace and not cis_laplace.laplace_start(guide, model, seed, device):
        warnings.warn(
            "The Laplace start of the cis fit failed (no usable curvature at the mode); the fit "
            f"starts from the moment estimates instead, which needs more steps than {config.n_steps}: "
            "check the cis fit's convergence or pass n_steps=1500.",
            RuntimeWarning,
            stacklevel=3,
        )

    def parameters() -> list[torch.Tensor]:
        store = pyro.get_param_store()
        return [store.get_param(name).unconstrained() for name in sorted(store.keys())]

    fit = run_svi(
        model,
        guide,
        parameters,
        make_batch,
        config,
        description="cis",
        loss_scale=float(n_cells),
        context=" in the cis fit",
        checkpoint=None if checkpoint is None else f"{checkpoint}.cis.pt",
        fingerprint=fingerprint,
    )
    with torch.no_grad():
        draws = draw_sites(guide, model, make_batch(0), n_draws, seed)
        as_t = {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in draws.items()}
        derived = model.derived(as_t)
    draws["guide_effect_all"] = derived["b"].cpu().numpy().astype(np.float64)
    draws["tech_effect_all"] = derived["delta"].cpu().numpy()
    draws["log_r_within"] = derived["log_r"].cpu().numpy()
    pyro.clear_param_store()
    return CisPosterior(draws, fit, cis_priors(model))
