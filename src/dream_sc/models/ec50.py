"""Response-scale EC50s: the dose where the expected value itself is half-way (pure torch).

Curves live on the link scale, and ``K`` (``ec50``) is where the *link-scale* curve is half-way
between its asymptotes. On a log or logit link that is not where the expected count or
proportion is half-way: for a single Hill term on a log link with log-fold amplitude ``v``
(``v > 0``) the mean at ``K`` is the geometric mean of the asymptotes, below their arithmetic
mean. Bulk dose-response tools (e.g. CurveCurator) fit the response itself and report the
half-way point of the response, so this module computes that EC50 per posterior draw:

- curves with a closed form (``Curve.response_log_ec50``), e.g. ``single_hill`` on a family
  with a scalar link: half-way between the curve's asymptotes
  (dose 0 and saturation), in closed form. The Hill fraction ``h`` solves
  ``natural(eta0 + v h) = (natural(eta0) + natural(eta0 + v)) / 2`` (log link:
  ``v h = log((1 + e^v) / 2)``; see :meth:`~dream_sc.models.families._base.Family.half_way_fraction`)
  and the dose is ``log x = log K + logit(h) / n``;
- other curves (e.g. ``additive_hill`` and ``polynomial``; any curve of a grouped family, whose proportions
  couple the categories): numerically, the lowest dose of the observed range ``[lo, hi]`` where
  the natural-scale curve crosses the half-way level between its values at ``lo`` and ``hi``
  (bracketed on a log grid, then bisection; grouped families: linear interpolation on the
  grid). NaN where the curve does not change over the range.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .curves import evaluate_curve, get_curve
from .curves.single_hill import single_hill_response_log_ec50
from .families import get_family

#: Points of the log grid that brackets the crossing (then bisection to float64 precision).
BRACKET_POINTS = 61
BISECTIONS = 50
#: Features evaluated together on the bracketing grid (bounds ``[S, grid, block]`` memory).
FEATURE_BLOCK = 128
#: A summary needs at least this fraction of draws with a crossing (else NaN).
MIN_FINITE = 0.5

__all__ = [
    "crossing_log_dose",
    "response_ec50_columns",
    "response_ec50_draws",
    "single_hill_response_log_ec50",
]


def _elementwise_eta(
    function: str, params: dict, log_x: torch.Tensor, log_x_ref: float, half_range: float
) -> torch.Tensor:
    """Link-scale curve of draw/feature ``(s, t)`` at its own dose ``log_x[s, t]``."""
    single = {k: (v.unsqueeze(-2) if k == "coef" else v.unsqueeze(-1)) for k, v in params.items()}
    return evaluate_curve(function, single, log_x.unsqueeze(-1), log_x_ref, half_range)[..., 0, 0]


def crossing_log_dose(
    distribution: str,
    function: str,
    params: dict[str, torch.Tensor],
    lo: float,
    hi: float,
    log_x_ref: float,
    half_range: float,
    group: torch.Tensor | None = None,
    n_groups: int = 0,
) -> torch.Tensor:
    """Natural-log dose ``[S, T]`` where the natural-scale curve is half-way over ``[lo, hi]``.

    The lowest crossing of ``(natural(lo) + natural(hi)) / 2``; NaN where there is none.
    """
    family = get_family(distribution)
    params = {k: v.double() for k, v in params.items()}
    log_grid = torch.linspace(
        float(np.log(lo)), float(np.log(hi)), BRACKET_POINTS, dtype=torch.float64
    )
    eta = evaluate_curve(function, params, log_grid, log_x_ref, half_range)  # [S, G, T]
    natural = family.natural_scale(eta, group, n_groups)
    target = 0.5 * (natural[:, :1] + natural[:, -1:])
    gap = natural - target  # [S, G, T]
    sign0 = torch.sign(gap[:, :1])
    crossed = (gap[:, 1:] * sign0 <= 0) & (sign0 != 0)  # [S, G-1, T]
    found = crossed.any(1)
    j = crossed.float().argmax(1) + 1  # first grid point past the crossing
    left = log_grid[j - 1]
    right = log_grid[j]
    if family.grouped:  # linear interpolation: categories' proportions are coupled
        g_left = gap.gather(1, (j - 1).unsqueeze(1))[:, 0]
        g_right = gap.gather(1, j.unsqueeze(1))[:, 0]
        frac = g_left / (g_left - g_right).where(g_left != g_right, torch.ones_like(g_left))
        out = left + frac * (right - left)
    else:
        target, sign0 = target[:, 0], sign0[:, 0]
        for _ in range(BISECTIONS):
            mid = 0.5 * (left + right)
            value = family.natural_scale(
                _elementwise_eta(function, params, mid, log_x_ref, half_range), None, 0
            )
            before = (value - target) * sign0 > 0  # still on the starting side
            left = torch.where(before, mid, left)
            right = torch.where(before, right, mid)
        out = 0.5 * (left + right)
    return torch.where(found, out, torch.full_like(out, float("nan")))


def response_ec50_draws(
    distribution: str,
    function: str,
    params: dict[str, torch.Tensor],
    lo: float,
    hi: float,
    log_x_ref: float,
    half_range: float,
    group: torch.Tensor | None = None,
    n_groups: int = 0,
) -> torch.Tensor:
    """Response-scale EC50 draws ``[S, T]`` (dosage scale; NaN where there is none)."""
    closed = get_curve(function).response_log_ec50(get_family(distribution), params, log_x_ref)
    if closed is not None:  # a closed form (single Hill on a scalar link)
        return closed.exp()
    n_feat = params["eta_ref"].shape[-1]
    if get_family(distribution).grouped:  # categories of one group must stay together
        blocks = [slice(0, n_feat)]
    else:
        blocks = [slice(s, s + FEATURE_BLOCK) for s in range(0, n_feat, FEATURE_BLOCK)]
    parts = [
        crossing_log_dose(
            distribution,
            function,
            {k: v[:, b] for k, v in params.items()},
            lo,
            hi,
            log_x_ref,
            half_range,
            group,
            n_groups,
        )
        for b in blocks
    ]
    return torch.cat(parts, dim=-1).exp()


def response_ec50_columns(
    distribution: str,
    function: str,
    params: dict[str, torch.Tensor],
    lo: float,
    hi: float,
    log_x_ref: float,
    half_range: float,
    group: torch.Tensor | None = None,
    n_groups: int = 0,
    *,
    move: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """``ec50_response_mean``, ``_q05``, ``_q95`` over the draws that have a crossing.

    NaN where fewer than half of the draws have one. ``move`` maps natural-log EC50 draws
    ``[S, T]`` to moved ones (e.g. :meth:`~dream_sc.models.trans_summary.DoseAxis.apply`, for
    curves whose parameters carry no dose of their own to move).
    """
    draws = response_ec50_draws(
        distribution, function, params, lo, hi, log_x_ref, half_range, group, n_groups
    )
    if move is not None:
        draws = move(draws.log()).exp()
    finite = torch.isfinite(draws)
    enough = (finite.double().mean(0) >= MIN_FINITE).numpy()
    q = torch.nanquantile(draws, torch.tensor([0.05, 0.95], dtype=draws.dtype), dim=0).numpy()
    mean = torch.nanmean(draws, dim=0).numpy()
    nan = np.nan
    return {
        "ec50_response_mean": np.where(enough, mean, nan),
        "ec50_response_q05": np.where(enough, q[0], nan),
        "ec50_response_q95": np.where(enough, q[1], nan),
    }
