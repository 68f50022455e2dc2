"""Dose-response curves: one module per curve function behind one registry.

Every layer asks :func:`get_curve` instead of branching on a curve's name. Adding a curve means
one new module here (a :class:`~dream_sc.models.curves._base.Curve` subclass and its ``CURVE``
instance), its line in :data:`CURVES` (or :func:`register_curve` from outside the package) and
its tests. The shared maths (Hill fractions, Gaussian moments, the mean-link correction) is in
``_math.py``, the shared prior pieces in ``_priors.py``.

Examples
--------
>>> from dream_sc.models.curves import CURVE_NAMES, get_curve
>>> list(CURVE_NAMES)
['single_hill', 'additive_hill', 'polynomial']
>>> curve = get_curve("additive_hill")
>>> curve.components, curve.dose_params, curve.bytes_per_entry
(('1', '2'), ('log_k1', 'log_k2'), 160)
"""

from __future__ import annotations

from collections.abc import KeysView
from typing import Literal, get_args

import torch

from . import additive_hill, polynomial, single_hill
from ._base import Curve, SitePrior, summary_stats
from ._math import (
    PROBIT_FACTOR,
    gaussian_powers,
    hill_fraction,
    hill_terms,
    mean_scale_correction,
    polynomial_slope,
)

#: The built-in curve functions (``function=`` of ``fit_trans``).
CurveFunction = Literal["single_hill", "additive_hill", "polynomial"]

#: Curve name -> curve, in the order of :data:`CurveFunction` (then registered ones).
CURVES: dict[str, Curve] = {m.CURVE.name: m.CURVE for m in (single_hill, additive_hill, polynomial)}
#: The names of the registered curves (a live view: registered curves appear in it).
CURVE_NAMES: KeysView[str] = CURVES.keys()
#: Former name of :data:`CURVE_NAMES`.
FUNCTIONS = CURVE_NAMES

assert tuple(CURVES) == get_args(CurveFunction)


def get_curve(name: str) -> Curve:
    """The curve of a function name.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    """
    try:
        return CURVES[str(name)]
    except KeyError:
        raise ValueError(f"function must be one of {', '.join(CURVES)}; got {name!r}.") from None


def register_curve(curve: Curve) -> Curve:
    """Register a curve under ``curve.name`` (e.g. one defined outside the package).

    Raises
    ------
    ValueError
        The name is empty or taken.
    """
    if not curve.name or curve.name in CURVES:
        raise ValueError(f"Cannot register a curve named {curve.name!r} (empty or taken).")
    CURVES[curve.name] = curve
    return curve


def unregister_curve(name: str) -> None:
    """Remove a curve registered with :func:`register_curve` (built-in curves stay)."""
    if name in get_args(CurveFunction):
        raise ValueError(f"The built-in curve {name!r} cannot be unregistered.")
    CURVES.pop(name, None)


def evaluate_curve(
    function: str,
    params: dict[str, torch.Tensor],
    log_x: torch.Tensor,
    log_x_ref: float,
    half_range: float,
    log_x_var: torch.Tensor | None = None,
    mean_link: str | None = None,
) -> torch.Tensor:
    """Link-scale curve for every (dose, feature).

    Parameters
    ----------
    function
        A registered curve name (:data:`CURVE_NAMES`).
    params
        Natural parameters with a trailing feature axis ``[..., T]``: ``eta_ref``, ``v1``,
        ``log_k1``, ``n1`` (+ ``v2``, ``log_k2``, ``n2``) or ``coef`` ``[..., T, D]``.
    log_x
        Natural-log dosage ``[..., B]``.
    log_x_ref
        Natural-log reference (NTC) dosage.
    half_range
        Half the observed log2 dosage range (polynomial scaling).
    log_x_var
        Variance of the natural-log dosage ``[..., B]`` (uncertain dosages): the expected
        link value is returned (see :mod:`dream_sc.models.curves._math`). ``None``: exact
        dosages.
    mean_link
        With ``log_x_var``: ``"log"`` / ``"logit"`` return instead the link of the expected
        *mean* (count rate, probability), so the likelihood sees the right average of an
        uncertain cell (:func:`mean_scale_correction`, variance of the link value by the delta
        method). Without it a log-link curve under-predicts uncertain cells by
        ``exp(-var / 2)``, most near the EC50, and the fit moves the EC50 to compensate.

    Returns
    -------
    Tensor ``[..., B, T]``.
    """
    return get_curve(function).evaluate(params, log_x, log_x_ref, half_range, log_x_var, mean_link)


__all__ = [
    "CURVES",
    "CURVE_NAMES",
    "FUNCTIONS",
    "PROBIT_FACTOR",
    "Curve",
    "CurveFunction",
    "SitePrior",
    "evaluate_curve",
    "gaussian_powers",
    "get_curve",
    "hill_fraction",
    "hill_terms",
    "mean_scale_correction",
    "polynomial_slope",
    "register_curve",
    "summary_stats",
    "unregister_curve",
]
