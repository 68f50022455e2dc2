"""``fit_trans(escaper_membership="transcriptome")``: escaper cells weighted by their responses.

After the trans fit on the cis dosages, the curves of the clearly responsive features
(``prob_dose_dependent >= EVIDENCE_PROB``) are refitted on dosages in which every targeting
cell's cis draws are re-weighted by its counts of responsive features
(:mod:`dream_sc.models.escaper_cells`). Cross-fitted: the evidence features are split in two
halves, and each half's curves are refitted on dosages weighted by the *other* half only, so a
feature's own noise never moves the dosages its curve is fitted on. Every other feature (and
the significance test) keeps the fit on the cis dosages; a target without at least two
evidence features is left unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from mudata import MuData

from .._stores.cis import read_cis_samples
from ..engine.chunks import ChunkedFit
from ..engine.config import FitConfig
from ..models.curves import get_curve
from ..models.escaper_cells import (
    negbinom_cell_draws,
    plug_in_curve,
    split_halves,
    weighted_moments,
)
from ..models.families import get_family
from ..models.trans import natural_params
from ._refine import refined_columns
from ._trans_job import TransJob
from ._trans_stages import curve_job

#: ``escaper_membership=`` values of fit_trans.
MEMBERSHIP = ("cis", "transcriptome")
#: Posterior probability of a dose-dependent response above which a feature is evidence.
EVIDENCE_PROB = 0.9


def check_membership(
    mdata: MuData, membership: str, cis_key: str, distribution: str | None = None
) -> None:
    """Raise before any work when ``escaper_membership`` cannot be used with this fit.

    ``distribution`` (the modality's likelihood, once the job is prepared) is checked when
    given.
    """
    if not isinstance(membership, str) or membership not in MEMBERSHIP:
        raise ValueError(f"escaper_membership must be one of {MEMBERSHIP}; got {membership!r}.")
    if membership == "cis" or cis_key not in mdata.uns:  # a missing fit: fit_trans says so
        return
    record = mdata.uns.get(cis_key, {})
    escapers = record.get("params", {}).get("escapers", False) if hasattr(record, "get") else False
    if not bool(escapers):
        raise ValueError(
            f"escaper_membership='transcriptome' needs a cis fit with escapers=True; "
            f"{cis_key!r} was fitted without. Refit with `ds.tl.fit_cis(..., escapers=True)`."
        )
    # the weights are negative binomial count likelihoods with size factors (the family
    # that has them: no name switch outside the registry)
    if distribution is not None and not get_family(distribution).size_factors:
        raise ValueError(
            "escaper_membership='transcriptome' weighs cells by count likelihoods and needs a "
            f"negbinom modality; got {distribution!r}."
        )


def _escape_cells(mdata: MuData, cis_key: str, rows: np.ndarray) -> np.ndarray:
    """Fitted cells of targeting guides (finite, positive escape probability)."""
    prob = mdata.obs[f"{cis_key}_escape_prob"].to_numpy(np.float64)[rows]
    return np.isfinite(prob) & (prob > 0)


def _half_dosages(job: TransJob, fit: ChunkedFit, evidence: np.ndarray, log_draws, cells):
    """Weighted log-dosage mean, variance and ESS of every cell from the features ``evidence``."""
    latent = {k: torch.as_tensor(v[evidence]) for k, v in fit.loc.items()}
    scale = torch.as_tensor(job.priors.amplitude_scale[evidence])
    params = natural_params(job.function, latent, scale, job.priors)
    eta_at = plug_in_curve(
        get_curve(job.function), params, job.priors.log_x_ref, job.priors.half_range
    )
    cols = np.flatnonzero(job.fitted)[evidence]
    y = job.data.X[:, cols]
    y = np.asarray(y.toarray() if hasattr(y, "toarray") else y, dtype=np.float64)
    offset = job.effects(evidence).T[job.inputs.group] + job.inputs.log_sf[:, None]
    log_r = job.noise(evidence)["log_r"]
    ll = negbinom_cell_draws(y, eta_at, log_draws, offset, log_r)
    return weighted_moments(log_draws, ll, cells)


def refit_with_escaper_cells(
    mdata: MuData,
    job: TransJob,
    fit: ChunkedFit,
    columns: dict[str, np.ndarray],
    curves: dict[str, np.ndarray],
    config: FitConfig,
    *,
    n_draws: int,
    enabled: bool,
    only: np.ndarray | None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Cross-fitted refit of the evidence features' curves; the columns and the record.

    Parameters
    ----------
    mdata
        The screen.
    job
        The curve job whose fit is ``fit`` (its features are the columns' rows).
    fit, columns, curves
        The fit on the cis dosages, its summary columns and grid curves; ``fit`` and
        ``curves`` are updated in place with the evidence features' refits.
    config
        The fit's configuration (for the refits' jobs).
    n_draws, enabled, only
        Interval refinement of :func:`~dream_sc.tl._refine.refined_columns`, run on each
        feature's own dosages (the refit's for the evidence features).

    Returns
    -------
    The updated columns (with ``refined`` and ``refine_ess``) and the record
    ``{"n_evidence", "n_cells", "median_ess"}``: evidence features, re-weighted cells and the
    median effective number of draws per re-weighted cell (NaN when nothing was refitted).
    """
    prob = np.nan_to_num(np.asarray(columns["prob_dose_dependent"], np.float64))
    evidence = np.flatnonzero(prob >= EVIDENCE_PROB)
    cis_key = job.settings.cis_key
    cells = _escape_cells(mdata, cis_key, job.rows)
    record = {"n_evidence": len(evidence), "n_cells": int(cells.sum()), "median_ess": np.nan}
    refine = {"n_draws": n_draws, "enabled": enabled}
    if len(evidence) < 2 or not cells.any():
        return refined_columns(
            job, columns, fit.loc, fit.scale, fit.corr, **refine, only=only
        ), record
    others = np.ones(job.n_features, bool) if only is None else np.asarray(only, bool).copy()
    others[evidence] = False
    out = refined_columns(job, columns, fit.loc, fit.scale, fit.corr, **refine, only=others)
    log_draws = np.log(read_cis_samples(mdata, cis_key)[job.rows].astype(np.float64))
    halves = [evidence[h] for h in split_halves(job.keys[evidence])]
    names = pd.Index(job.data.var_names[job.fitted])
    ess_all = []
    for part, (own, other) in enumerate(((halves[0], halves[1]), (halves[1], halves[0]))):
        mean, var, ess = _half_dosages(job, fit, other, log_draws, cells)
        ess_all.append(ess[cells])
        if job.settings.use_dose_mean:
            var = np.zeros_like(var)
        # the other cells keep their inputs exactly (not the ulp-different weighted moments)
        mean = np.where(cells, mean, job.inputs.log_dose_mean)
        var = np.where(cells, var, job.inputs.log_dose_var)
        keep = np.zeros(job.n_features, bool)
        keep[own] = True
        sub = curve_job(mdata, job, keep, config)
        sub.inputs = replace(sub.inputs, log_dose_mean=mean, log_dose_var=var)
        refit = sub.fit(description="trans (escaper cells)", tag=f"escaper{part}")
        sub_cols, sub_curves = sub.summarise(refit.loc, refit.scale, corr=refit.corr)
        rows = names.get_indexer(sub.data.var_names[sub.fitted])
        sub_only = None if only is None else np.asarray(only, bool)[rows]
        sub_cols = refined_columns(
            sub, sub_cols, refit.loc, refit.scale, refit.corr, **refine, only=sub_only
        )
        for name, values in sub_cols.items():
            out[name][rows] = values
        for name, values in sub_curves.items():
            curves[name][rows] = values
        for name in fit.loc:
            fit.loc[name][rows] = refit.loc[name]
            fit.scale[name][rows] = refit.scale[name]
        if fit.corr is not None and refit.corr is not None:
            fit.corr[rows] = refit.corr
        fit.feature_converged[rows] = refit.feature_converged
    record["median_ess"] = float(np.median(np.concatenate(ess_all)))
    return out, record
