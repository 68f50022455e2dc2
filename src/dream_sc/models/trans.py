"""Step 3: a dose-response curve for every feature of a modality (pure torch/Pyro).

For feature ``t`` and cell ``i`` the linear predictor is
``eta_it = [log s_i] + delta_{c(i), t} + f_t(x_i)`` with the technical effects ``delta`` and
the noise (NB dispersion, Normal/Student-t scale) fixed from step 1 and ``f_t`` one of the
curves of :mod:`dream_sc.models.curves`. The dosage uncertainty of step 2 is propagated by
marginalising the curve over each cell's log-dosage posterior (mean and variance of its stored
samples; see :func:`~dream_sc.models.curves.evaluate_curve`).

Priors (all data-driven, computed once from the real data and reused unchanged for permutation
nulls, so null fits are not shrunk differently from the real fit):

- ``eta_ref ~ Normal(technical baseline, 1)`` - value at the control dosage;
- amplitudes ``v = s_t * lambda * z`` with ``z ~ Normal(0, 1)`` and a horseshoe local scale
  ``lambda ~ HalfCauchy(1)`` (non-centred). ``s_t`` is the spread (5th-95th percentile) of the
  technically corrected guide-level means of the feature. The horseshoe puts most mass near 0
  (most features do not respond) while its Cauchy tail leaves real responses unshrunk;
- ``log K ~ Normal`` centred in the observed log-dosage range, sd so that 95% of the mass lies
  within the range extended by a quarter of its width on each side (additive: ``K2 = K1 * exp(gap)``
  so the components are ordered);
- ``log n ~ Normal(log 2, 0.6)`` (n roughly in [0.6, 6.6]);
- polynomial coefficients ``c_d = s_t * lambda * z_d``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pyro
import torch

from .batching import ChunkProblem, RowsOfStep
from .curves import get_curve
from .curves._priors import (
    ETA_REF_PRIOR_SD,
    LOG_GAP_PRIOR_SD,
    LOG_N_PRIOR,
    log_half_cauchy,
    normal_prior,
)
from .fused import FusedCells, fused_available
from .guide import Site
from .observation import ObservationData

__all__ = [
    "ETA_REF_PRIOR_SD",
    "LOG_GAP_PRIOR_SD",
    "LOG_N_PRIOR",
    "TransInputs",
    "TransPriors",
    "dose_priors",
    "log_half_cauchy",
    "natural_params",
    "sample_prior_sites",
    "site_list",
    "trans_problem",
]


@dataclass
class TransPriors:
    """Data-driven priors for all features (arrays indexed by global feature)."""

    eta_ref_loc: np.ndarray
    amplitude_scale: np.ndarray
    log_k_loc: float
    log_k_scale: float
    log_gap_loc: float
    log_x_ref: float
    half_range: float  # half the observed log2 dosage range
    degree: int

    def as_dict(self) -> dict:
        """h5-serialisable record of the priors actually used."""
        return {
            "eta_ref": {
                "dist": "normal",
                "loc": self.eta_ref_loc.astype(np.float64),
                "scale": ETA_REF_PRIOR_SD,
            },
            "amplitude": {"dist": "horseshoe", "scale": self.amplitude_scale.astype(np.float64)},
            "log_k": {"dist": "normal", "loc": self.log_k_loc, "scale": self.log_k_scale},
            "log_gap": {"dist": "normal", "loc": self.log_gap_loc, "scale": LOG_GAP_PRIOR_SD},
            "log_n": {"dist": "normal", "loc": LOG_N_PRIOR[0], "scale": LOG_N_PRIOR[1]},
            "log_x_ref": self.log_x_ref,
            "half_range_log2": self.half_range,
            "degree": self.degree,
        }

    @classmethod
    def from_dict(cls, record: Mapping) -> TransPriors:
        """Inverse of :meth:`as_dict` (e.g. ``uns[key]["priors"]`` of a stored trans fit).

        Examples
        --------
        >>> import numpy as np
        >>> p = TransPriors(np.zeros(2), np.ones(2, np.float32), 1.0, 0.5, -1.0, 0.0, 2.0, 3)
        >>> back = TransPriors.from_dict(p.as_dict())
        >>> back.log_k_loc, back.degree, back.amplitude_scale.dtype
        (1.0, 3, dtype('float32'))
        """
        return cls(
            eta_ref_loc=np.asarray(record["eta_ref"]["loc"]),
            amplitude_scale=np.asarray(record["amplitude"]["scale"], dtype=np.float32),
            log_k_loc=float(record["log_k"]["loc"]),
            log_k_scale=float(record["log_k"]["scale"]),
            log_gap_loc=float(record["log_gap"]["loc"]),
            log_x_ref=float(record["log_x_ref"]),
            half_range=float(record["half_range_log2"]),
            degree=int(record["degree"]),
        )


def dose_priors(log_dose_lo: float, log_dose_hi: float, log_x_ref: float) -> dict:
    """Location/scale of ``log K`` and the additive gap from the observed dosage range."""
    width = max(log_dose_hi - log_dose_lo, 0.2)
    return {
        "log_k_loc": 0.5 * (log_dose_lo + log_dose_hi),
        "log_k_scale": max(0.75 * width / 1.96, 0.1),
        "log_gap_loc": float(np.log(width / 3)),
        "log_x_ref": log_x_ref,
        "half_range": max(width / np.log(2) / 2, 0.1),
    }


def site_list(
    function: str,
    n: int,
    priors: TransPriors,
    features: np.ndarray,
    init: Mapping[str, np.ndarray] | None = None,
) -> list[Site]:
    """Latent sites of a chunk of ``n`` features with their initial values.

    ``init`` (the chunk's rows of :func:`dream_sc.models.warm_start.warm_start`) replaces the
    default starts of the sites it names.
    """
    sites = [Site("eta_ref", (n,), priors.eta_ref_loc[features], 0.05)]
    sites += get_curve(function).sites(n, priors)
    return _with_init(sites, init)


def _with_init(sites: list[Site], init: Mapping[str, np.ndarray] | None) -> list[Site]:
    if not init:
        return sites
    return [
        replace(s, init_loc=np.asarray(init[s.name], dtype=np.float32)) if s.name in init else s
        for s in sites
    ]


def natural_params(function: str, latent: dict, scale: torch.Tensor, priors: TransPriors) -> dict:
    """Curve parameters from latent values (works on tensors with a trailing feature axis)."""
    return {
        "eta_ref": latent["eta_ref"],
        **get_curve(function).natural_params(latent, scale, priors),
    }


def sample_prior_sites(
    function: str, n: int, priors: TransPriors, features: np.ndarray, like: torch.Tensor
) -> dict:
    """Sample every latent site from its prior (used inside the Pyro model).

    The priors' tensors take the dtype and device of ``like`` (a tensor of the fit).
    """
    eta_ref = normal_prior(priors.eta_ref_loc[features], ETA_REF_PRIOR_SD, [n], like)
    latent = {"eta_ref": pyro.sample("eta_ref", eta_ref)}
    latent.update(get_curve(function).sample(n, priors, like))
    return latent


@dataclass
class CellTensors:
    """Cell-level inputs and a chunk's fixed step-1 parameters on the device (float32)."""

    delta: torch.Tensor  # [C, T] technical effects
    group: torch.Tensor  # [N] technical group
    log_sf: torch.Tensor | None  # [N]
    noise: dict[str, torch.Tensor]  # [T] each
    log_x: torch.Tensor  # [N] mean natural-log dosage
    log_x_var: torch.Tensor | None  # [N] its variance (None: plug in the mean)


@dataclass
class TransInputs:
    """Cell-level inputs of the trans fit (shared by all chunks).

    A cell's natural-log dosage is summarised by the mean and variance of its posterior samples
    from step 2; the curve is marginalised over ``Normal(mean, var)`` (variance 0 with
    ``use_dose_mean``, where the mean is the log of the posterior mean dosage).
    """

    log_dose_mean: np.ndarray  # [N]
    log_dose_var: np.ndarray  # [N]
    group: np.ndarray  # [N] technical group
    log_sf: np.ndarray | None  # [N] negbinom
    use_dose_mean: bool
    order: np.ndarray | None = None  # cell positions sorted by name (order-independent batches)

    @classmethod
    def from_samples(
        cls,
        log_dose_samples: np.ndarray,
        group: np.ndarray,
        log_sf: np.ndarray | None,
        use_dose_mean: bool,
        order: np.ndarray | None = None,
    ) -> TransInputs:
        """Summarise posterior samples ``[N, S]`` of the natural-log dosage."""
        samples = np.asarray(log_dose_samples, dtype=np.float64)
        if use_dose_mean:
            mean = np.log(np.mean(np.exp(samples), axis=1))
            var = np.zeros(len(samples))
        else:
            mean, var = samples.mean(axis=1), samples.var(axis=1)
        return cls(mean, var, group, log_sf, use_dose_mean, order)

    def cell_tensors(
        self, obs: ObservationData, effects: np.ndarray, noise: dict[str, np.ndarray]
    ) -> CellTensors:
        """Float32 tensors of the cells and of a chunk's fixed technical effects and noise.

        They go to the device of the chunk's observations ``obs``.
        """
        device = obs.device
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        return CellTensors(
            delta=t(effects).T,
            group=torch.as_tensor(self.group, device=device),
            log_sf=None if self.log_sf is None else t(self.log_sf),
            noise={k: t(v) for k, v in noise.items()},
            log_x=t(self.log_dose_mean),
            log_x_var=None if self.use_dose_mean else t(self.log_dose_var),
        )

    def permuted(self, permutation: np.ndarray) -> TransInputs:
        """Inputs whose cell ``i`` has the dosage of cell ``permutation[i]`` (null fits)."""
        return replace(
            self,
            log_dose_mean=self.log_dose_mean[permutation],
            log_dose_var=self.log_dose_var[permutation],
        )


def trans_problem(
    obs: ObservationData,
    function: str,
    priors: TransPriors,
    features: np.ndarray,
    inputs: TransInputs,
    *,
    effects: np.ndarray,
    noise: dict[str, np.ndarray],
    rows: RowsOfStep,
    init: Mapping[str, np.ndarray] | None = None,
) -> ChunkProblem:
    """Pyro model and sites of the trans fit for one feature chunk.

    Parameters
    ----------
    obs
        Chunk observations.
    function
        Curve family.
    priors
        Priors of all features.
    features
        Global indices of this chunk.
    inputs
        Cell-level inputs.
    effects
        Technical effects of the chunk's features ``[T_chunk, C]`` (reference column 0).
    noise
        Fixed noise parameters of the chunk (``log_r`` / ``log_sigma`` / ``log_nu``).
    rows
        Minibatch rows of every step (e.g. :class:`dream_sc.engine.batching.StepRows`; device
        tensors).
    init
        Warm start of the chunk's sites (default: the priors' centres).
    """
    n_cells, n_feat = obs.n_cells, len(features)
    device = obs.device
    cells = inputs.cell_tensors(obs, effects, noise)
    delta, group, log_sf, noise_t = cells.delta, cells.group, cells.log_sf, cells.noise
    log_x_all, log_x_var_all = cells.log_x, cells.log_x_var
    scale = torch.as_tensor(priors.amplitude_scale[features], dtype=torch.float32, device=device)
    curve = get_curve(function)
    fused = None
    if fused_available(obs.family, function, obs.y):
        fused = FusedCells(
            obs.y,
            delta=delta,
            group=group,
            log_sf=log_sf,
            log_x=log_x_all,
            log_x_var=log_x_var_all,
            log_x_ref=priors.log_x_ref,
            log_r=noise_t["log_r"],
        )

    def model(batch: dict) -> None:
        rows = batch["rows"]
        latent = sample_prior_sites(function, n_feat, priors, features, scale)
        params = natural_params(function, latent, scale, priors)
        if fused is not None:  # one pass: curve, likelihood and gradient (models/fused.py)
            ll = curve.fused_log_likelihood(params, fused.at(rows))
            pyro.factor("obs", ll * (n_cells / len(rows)))
            return
        eta = curve.evaluate(
            params,
            log_x_all[rows],
            priors.log_x_ref,
            priors.half_range,
            None if log_x_var_all is None else log_x_var_all[rows],
            obs.family.mean_link,
        )
        eta = eta + delta[group[rows]]
        if log_sf is not None:
            eta = eta + log_sf[rows, None]
        ll = obs.log_likelihood(eta, rows, **noise_t)
        pyro.factor("obs", ll * (n_cells / len(rows)))

    def make_batch(step: int) -> dict:
        return {"rows": rows(step), "n_cells": n_cells}

    return ChunkProblem(
        model,
        site_list(function, n_feat, priors, features, init),
        make_batch,
        float(n_cells),
        correlated=True,
    )
