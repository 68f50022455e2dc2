"""Refined parameter intervals of responsive features.

The plumbing between a :class:`~dream_sc.tl._trans_job.TransJob` and the pure model code of
:mod:`dream_sc.models.refine`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..models.curves import get_curve
from ..models.ec50 import response_ec50_columns
from ..models.families import get_family
from ..models.refine import (
    adaptive_importance_sampling,
    curve_params,
    to_curve_coordinates,
    trans_log_target,
)
from ..models.trans_summary import draw_latent, parameter_summaries
from ._trans_job import TransJob

logger = logging.getLogger("dream_sc")

#: Features with at least this posterior probability of a response are refined.
REFINE_MIN_PROB = 0.5
#: Features refined together (memory: one ``[cells, chunk]`` predictor per draw)...
REFINE_CHUNK = 256
#: ...at most this many cells x features, so a chunk's offsets and data stay cached (32 MB).
REFINE_CHUNK_ENTRIES = 8_000_000
#: Variational draws the first proposal is moment-matched to.
START_DRAWS = 500


def can_refine(job: TransJob) -> bool:
    """Curves refined by default (with coordinates), per-feature likelihoods (not the multinomial)."""
    curve = get_curve(job.function)
    refinable = curve.coordinates is not None and curve.refine_default
    return refinable and not get_family(job.data.distribution).grouped


def refined_columns(
    job: TransJob,
    columns: dict[str, np.ndarray],
    loc: dict,
    scale: dict,
    corr: np.ndarray | None,
    *,
    n_draws: int = 500,
    min_prob: float = REFINE_MIN_PROB,
    enabled: bool = True,
    only: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Replace the parameter, EC50 (both scales) and inflection columns of responsive features.

    Features with ``prob_dose_dependent >= min_prob`` get their curve-parameter summaries from
    the exact posterior, reached by adaptive importance sampling from the variational one (see
    :mod:`dream_sc.models.refine`); EC50s are then moved along the dosage axis exactly like the
    variational ones (a polynomial's response-scale EC50 draws directly, Hill curves' through
    their ``K``). Response, score and curve columns are left as they are (significance is
    calibrated on variational scores of real and permuted fits alike).

    Returns the updated columns, plus ``refined`` (bool) and ``refine_ess`` (effective sample
    size of the final importance-sampling round; NaN where not refined). With
    ``enabled=False`` only these two columns are added. ``only`` (boolean over the fitted
    features, e.g. the significant ones) restricts the refinement further.
    """
    out = {k: v.copy() for k, v in columns.items()}
    out["refined"] = np.zeros(job.n_features, bool)
    out["refine_ess"] = np.full(job.n_features, np.nan)
    if not enabled or not can_refine(job):
        return out
    candidate = columns["prob_dose_dependent"] >= min_prob
    if only is not None:
        candidate &= np.asarray(only, dtype=bool)
    selected = np.flatnonzero(candidate)
    if len(selected) == 0:
        return out
    keys = job.keys
    rounds = (n_draws // 4, n_draws // 4)
    chunk = int(np.clip(REFINE_CHUNK_ENTRIES // max(len(job.rows), 1), 16, REFINE_CHUNK))
    for start in range(0, len(selected), chunk):
        idx = selected[start : start + chunk]
        latent = draw_latent(loc, scale, idx, START_DRAWS, job.streams, keys, corr)
        begin = to_curve_coordinates(job.function, latent, job.priors.amplitude_scale[idx])
        target = trans_log_target(
            job.observations(idx),
            job.function,
            job.priors,
            idx,
            job.inputs,
            effects=job.effects(idx),
            noise=job.noise(idx),
        )
        draws = adaptive_importance_sampling(
            target, begin, keys[idx], root=job.streams, rounds=rounds, n_final=n_draws
        )
        theta = torch.as_tensor(draws.resample(job.n_samples, keys[idx], job.streams))
        params = {k: v.float() for k, v in curve_params(job.function, theta).items()}
        if job.dose_axis is not None:
            params = job.dose_axis.apply_to_params(job.function, params)
        for name, values in parameter_summaries(job.function, params, job.grid).items():
            out[name][idx] = values
        for name, values in response_ec50_columns(
            job.data.distribution,
            job.function,
            params,
            job.grid.lo,
            job.grid.hi,
            job.priors.log_x_ref,
            job.priors.half_range,
            move=None if job.dose_axis is None else job.dose_axis.response_ec50_move(job.function),
        ).items():
            out[name][idx] = values
        out["refined"][idx] = True
        out["refine_ess"][idx] = draws.ess
    logger.info(
        "refined the parameter intervals of %d responsive features (median ESS %.0f of %d)",
        len(selected),
        float(np.median(out["refine_ess"][selected])),
        n_draws,
    )
    return out
