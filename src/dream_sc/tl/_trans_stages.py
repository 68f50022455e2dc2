"""Two-stage trans fits: score every feature first, fit curves only for the discoveries.

Stage one is the conditional-randomisation score test of :mod:`dream_sc.tl._null`: it needs the
technical fit's noise and the cis dosages, never a curve, so it runs over every feature before
any SVI. Stage two fits curves (and their EC50s and intervals) for the features whose stage-one
q-value lies below ``curve_qvalue`` (and at least ``alpha``), plus the top-scoring feature so
that every fit has a curve to show. The significance columns of every feature come from stage
one and are exactly those of a fit with ``curves="all"``; only the curve columns of the features
left out are NaN (``fitted`` False, ``tested`` True).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from mudata import MuData

from ..engine.config import FitConfig
from ..models.significance import decoy_qvalues
from ._null import rescore_null
from ._trans_job import TransJob, prepare_trans_job

#: ``curves=`` values of fit_trans / fit_screen.
CURVES = ("all", "discoveries")
#: Default stage-one q-value below which a feature gets its curve in stage two.
CURVE_QVALUE = 0.25


def check_curves(curves: str, curve_qvalue: float, test: bool) -> None:
    """Raise before any work when the stage settings are unusable."""
    if curves not in CURVES:
        raise ValueError(f"curves must be one of {CURVES}; got {curves!r}.")
    if isinstance(curve_qvalue, bool) or not isinstance(curve_qvalue, int | float):
        raise ValueError(f"curve_qvalue must be a number in (0, 1]; got {curve_qvalue!r}.")
    if not 0 < float(curve_qvalue) <= 1:
        raise ValueError(f"curve_qvalue must be a number in (0, 1]; got {curve_qvalue!r}.")
    if curves == "discoveries" and not test:
        raise ValueError(
            "curves='discoveries' selects the curves to fit by the significance test; pass "
            "test=True (and n_permutations >= 1) or curves='all'."
        )


def stage_one(job: TransJob, n_permutations: int) -> dict:
    """Scores, permutation null and q-values of every feature of ``job`` (no curve fitted).

    Returns the :func:`~dream_sc.tl._null.rescore_null` result with ``qvalue`` added.
    """
    found = rescore_null(job, n_permutations)
    null = np.asarray(found["null"])
    found["qvalue"] = decoy_qvalues(found["score"], null.ravel(), int(null.shape[0]))
    return found


def curve_selection(found: dict, *, alpha: float, curve_qvalue: float) -> np.ndarray:
    """Features (over the job's fitted features) whose curves stage two fits.

    Those with a stage-one q-value below ``max(curve_qvalue, alpha)``, and the top-scoring one.

    Examples
    --------
    >>> found = {"qvalue": np.array([0.01, 0.5, 0.2, 0.9]), "score": np.array([9.0, 1, 3, 0])}
    >>> curve_selection(found, alpha=0.1, curve_qvalue=0.25).tolist()
    [True, False, True, False]
    >>> found = {"qvalue": np.array([0.6, 0.5]), "score": np.array([1.0, 2.0])}
    >>> curve_selection(found, alpha=0.1, curve_qvalue=0.25).tolist()
    [False, True]
    """
    q = np.asarray(found["qvalue"], dtype=np.float64)
    keep = q < max(float(curve_qvalue), float(alpha))
    score = np.asarray(found["score"], dtype=np.float64)
    if len(score) and np.isfinite(score).any():
        keep[int(np.nanargmax(np.where(np.isfinite(score), score, -np.inf)))] = True
    return keep


def curve_job(mdata: MuData, job: TransJob, keep: np.ndarray, config: FitConfig) -> TransJob:
    """The trans job of the features ``keep`` (a mask over ``job``'s fitted features).

    Prepared exactly as ``fit_trans(features=...)`` of those features would prepare it, with
    the fit's own (unplanned) ``config``; ``job`` itself is returned when ``keep`` is all True.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return job
    names = tuple(str(n) for n in job.data.var_names[np.flatnonzero(job.fitted)[keep]])
    sub = prepare_trans_job(mdata, replace(job.settings, features=names), config)
    sub.backend = job.backend
    return sub


def expand(columns: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """Columns over the curve features as columns over all tested features.

    Features without a curve hold NaN (numbers), False (flags) or ``"not_fitted"`` (labels).
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return columns
    out = {}
    for name, values in columns.items():
        values = np.asarray(values)
        if values.dtype == bool:
            full = np.zeros(len(keep), bool)
        elif values.dtype.kind in "OUS":
            full = np.full(len(keep), "not_fitted", dtype=object)
        else:
            full = np.full(len(keep), np.nan, dtype=np.result_type(values.dtype, np.float32))
        full[keep] = values
        out[name] = full
    return out
