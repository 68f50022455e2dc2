"""Hill-type dose-response curves of the simulator: drawing parameters, evaluating, shapes.

A curve lives on the link scale of its likelihood (log for counts, logit for proportions,
identity for continuous values)::

    eta(x) = a + v1 * H(x; K1, n1) + v2 * H(x; K2, n2),   H(x; K, n) = x^n / (K^n + x^n)

Flat curves have ``v1 = v2 = 0``; an absent component has the placeholder ``K = n = 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit

SHAPES: tuple[str, ...] = ("flat", "increasing", "decreasing", "non_monotonic")
PARAM_NAMES: tuple[str, ...] = ("a", "v1", "K1", "n1", "v2", "K2", "n2")
_KINDS = np.array(["increasing", "decreasing", "non_monotonic"], dtype=object)
_KIND_PROBS = (0.35, 0.35, 0.30)
_HILL_N_RANGE = (1.0, 4.0)
_N_GRID = 128
_MAX_TRIES = 100
#: An additive curve counts as non-monotonic when its smaller excursion is at least this
#: fraction of the larger one (smaller wiggles are ignored by :func:`classify_shape`).
NON_MONOTONIC_REL = 0.1
_ADDITIVE_MIN_REL = 0.3


@dataclass(frozen=True)
class DoseWindow:
    """Dosage range of the primary cis gene that the curves are designed for.

    ``lo``/``hi`` bound the range over which responses are measured (5th/95th percentile of
    the true dose over the cells of a primary cis fit), ``k_lo``/``k_hi`` the range K is drawn
    from (10th/90th percentile) and ``x_ntc`` is the baseline dose of the primary cis gene.
    """

    lo: float
    hi: float
    k_lo: float
    k_hi: float
    x_ntc: float

    def grid(self, n: int = _N_GRID) -> np.ndarray:
        """Log-spaced dose grid over ``[lo, hi]``."""
        return np.geomspace(self.lo, self.hi, n)


def hill(x: np.ndarray, K: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Hill fraction ``x^n / (K^n + x^n)`` for doses ``x`` (rows) and features (columns)."""
    logx = np.log(np.asarray(x, dtype=np.float64)).reshape(-1, 1)
    return expit(np.asarray(n) * (logx - np.log(np.asarray(K))))


@dataclass
class HillCurves:
    """Link-scale curve parameters of ``F`` features (arrays of length ``F``)."""

    a: np.ndarray
    v1: np.ndarray
    K1: np.ndarray
    n1: np.ndarray
    v2: np.ndarray
    K2: np.ndarray
    n2: np.ndarray
    function: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))

    @classmethod
    def flat(cls, baseline_link: np.ndarray) -> HillCurves:
        """Flat curves at the given link-scale levels."""
        base = np.asarray(baseline_link, dtype=np.float64).copy()
        n = base.size
        return cls(
            a=base,
            v1=np.zeros(n),
            K1=np.ones(n),
            n1=np.ones(n),
            v2=np.zeros(n),
            K2=np.ones(n),
            n2=np.ones(n),
            function=np.full(n, "flat", dtype=object),
        )

    def __len__(self) -> int:
        return self.a.size

    @property
    def moving(self) -> np.ndarray:
        """Boolean mask of features with a non-zero Hill component."""
        return (self.v1 != 0) | (self.v2 != 0)

    def assign(self, index: np.ndarray, other: HillCurves) -> None:
        """Overwrite the features at ``index`` with the curves of ``other``."""
        for name in (*PARAM_NAMES, "function"):
            getattr(self, name)[index] = getattr(other, name)

    def link(self, x: np.ndarray) -> np.ndarray:
        """Link-scale curve values, doses as rows and features as columns."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        out = np.repeat(self.a[None, :], x.size, axis=0)
        cols = np.flatnonzero(self.moving)
        if cols.size:
            moving = self.v1[cols] * hill(x, self.K1[cols], self.n1[cols])
            second = cols[self.v2[cols] != 0]
            moving += self.a[cols]
            out[:, cols] = moving
            if second.size:
                out[:, second] += self.v2[second] * hill(x, self.K2[second], self.n2[second])
        return out

    def set_baseline(self, baseline_link: np.ndarray, x_ntc: float) -> None:
        """Choose ``a`` so that the curve passes through ``baseline_link`` at ``x_ntc``."""
        at_ntc = self.link(np.array([x_ntc]))[0] - self.a
        self.a = np.asarray(baseline_link, dtype=np.float64) - at_ntc

    def to_frame(self, index: pd.Index) -> pd.DataFrame:
        """Truth columns ``true_function`` and ``true_<param>`` for a ``.var`` table."""
        data: dict[str, np.ndarray] = {"true_function": self.function.astype(str)}
        for name in PARAM_NAMES:
            data[f"true_{name}"] = getattr(self, name).astype(np.float64)
        return pd.DataFrame(data, index=index)


def classify_shape(values: np.ndarray, *, abs_tol: float) -> np.ndarray:
    """Shape of each column of ``values`` (grid × features) over the grid.

    ``flat`` when the curve moves by at most ``abs_tol``; ``non_monotonic`` when it both rises
    and falls, the smaller excursion being at least :data:`NON_MONOTONIC_REL` of the larger;
    otherwise the dominant direction.
    """
    steps = np.diff(np.asarray(values, dtype=np.float64), axis=0)
    rise = np.clip(steps, 0.0, None).sum(axis=0)
    fall = np.clip(-steps, 0.0, None).sum(axis=0)
    big = np.maximum(rise, fall)
    small = np.minimum(rise, fall)
    shape = np.where(rise >= fall, "increasing", "decreasing").astype(object)
    shape[small >= NON_MONOTONIC_REL * big] = "non_monotonic"
    shape[big <= abs_tol] = "flat"
    return shape


def _draw_k(rng: np.random.Generator, size: tuple[int, ...], window: DoseWindow) -> np.ndarray:
    return np.exp(rng.uniform(np.log(window.k_lo), np.log(window.k_hi), size=size))


def _rise_fall(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    steps = np.diff(values, axis=0)
    return np.clip(steps, 0.0, None).sum(axis=0), np.clip(-steps, 0.0, None).sum(axis=0)


def _draw_single(
    rng: np.random.Generator, kinds: np.ndarray, mag: np.ndarray, window: DoseWindow
) -> HillCurves:
    """Single-Hill curves whose response over the window is ``±mag`` (|v| capped at 4·mag)."""
    m = kinds.size
    curves = HillCurves.flat(np.zeros(m))
    curves.K1 = _draw_k(rng, (m,), window)
    curves.n1 = rng.uniform(*_HILL_N_RANGE, size=m)
    ends = hill(np.array([window.lo, window.hi]), curves.K1, curves.n1)
    span = np.maximum(ends[1] - ends[0], 0.25)
    sign = np.where(kinds == "increasing", 1.0, -1.0)
    curves.v1 = sign * mag / span
    curves.function[:] = "single_hill"
    return curves


def _draw_additive(rng: np.random.Generator, mag: np.ndarray, window: DoseWindow) -> HillCurves:
    """Bump/dip curves (v1, v2 of opposite sign, K1 < K2) with excursion ``mag``.

    Draws are repeated (vectorised) until the smaller excursion over the window is at least
    30% of the larger one, so the non-monotonicity is visible in the data.
    """
    m = mag.size
    curves = HillCurves.flat(np.zeros(m))
    curves.function[:] = "additive_hill"
    grid = window.grid()
    todo = np.arange(m)
    for attempt in range(_MAX_TRIES):
        k = todo.size
        if k == 0:
            break
        K = np.sort(_draw_k(rng, (k, 2), window), axis=1)
        n = rng.uniform(*_HILL_N_RANGE, size=(k, 2))
        ratio = rng.uniform(0.7, 1.5, size=k)
        sign = rng.choice(np.array([-1.0, 1.0]), size=k)
        unit = sign * (hill(grid, K[:, 0], n[:, 0]) - ratio * hill(grid, K[:, 1], n[:, 1]))
        rise, fall = _rise_fall(unit)
        excursion = unit.max(axis=0) - unit.min(axis=0)
        ok = (np.minimum(rise, fall) >= _ADDITIVE_MIN_REL * np.maximum(rise, fall)) & (
            excursion > 1e-3
        )
        if attempt == _MAX_TRIES - 1:
            ok[:] = excursion > 0
        idx = todo[ok]
        scale = mag[idx] / excursion[ok]
        curves.K1[idx], curves.K2[idx] = K[ok, 0], K[ok, 1]
        curves.n1[idx], curves.n2[idx] = n[ok, 0], n[ok, 1]
        curves.v1[idx] = sign[ok] * scale
        curves.v2[idx] = -sign[ok] * ratio[ok] * scale
        todo = todo[~ok]
    return curves


def draw_hill_curves(
    rng: np.random.Generator,
    n_features: int,
    *,
    frac_responsive: float,
    window: DoseWindow,
    magnitude: tuple[float, float],
    baseline_link: np.ndarray,
) -> HillCurves:
    """Draw curves: ``round(frac_responsive * n_features)`` responsive, the rest flat.

    Responsive curves are single-Hill increasing, single-Hill decreasing or additive
    non-monotonic (probabilities 0.35/0.35/0.30) with a link-scale response over the window
    drawn uniformly from ``magnitude``. Every curve passes through ``baseline_link`` at the
    baseline dose ``window.x_ntc``.
    """
    curves = HillCurves.flat(np.zeros(n_features))
    n_resp = int(round(frac_responsive * n_features))
    responsive = rng.choice(n_features, size=n_resp, replace=False)
    kinds = rng.choice(_KINDS, size=n_resp, p=_KIND_PROBS)
    mag = rng.uniform(*magnitude, size=n_resp)
    single = kinds != "non_monotonic"
    if single.any():
        curves.assign(responsive[single], _draw_single(rng, kinds[single], mag[single], window))
    if (~single).any():
        curves.assign(responsive[~single], _draw_additive(rng, mag[~single], window))
    curves.set_baseline(baseline_link, window.x_ntc)
    return curves


def enforce_min_change(
    curves: HillCurves,
    index: np.ndarray,
    natural: Callable[[np.ndarray], np.ndarray],
    *,
    min_change: float,
    window: DoseWindow,
) -> None:
    """Scale the amplitudes of ``index`` until their natural-scale range is ``>= min_change``.

    ``natural`` maps link-scale curve values (grid × all features) to the natural scale. The
    curve keeps its value at the baseline dose.
    """
    grid = window.grid()
    baseline = curves.link(np.array([window.x_ntc]))[0]
    todo = np.asarray(index)
    for _ in range(60):
        values = natural(curves.link(grid))[:, todo]
        short = (values.max(axis=0) - values.min(axis=0)) < min_change
        todo = todo[short]
        if todo.size == 0:
            break
        curves.v1[todo] *= 1.15
        curves.v2[todo] *= 1.15
        curves.set_baseline(baseline, window.x_ntc)
