"""Warm starts of the trans fit from guide-level curve fits (pure numpy).

SVI from the prior's centre spends most of its steps walking every responsive feature's
curve to roughly the right place. The guide-level means (technically corrected, on the link
scale, one point per guide at the guide's mean log dosage) already say where that place is:
fitting a curve to those few points per feature costs a fraction of one SVI step, and starting
SVI there lets the fit spend its steps on the posterior's shape instead.

The guide-level fit is a weighted least-squares fit, never a result: it only sets the initial
posterior means of the latent sites of :func:`dream_sc.models.trans.site_list`.

- ``single_hill``: a grid over ``(log K, n)`` inside the prior's range, with the intercept and
  amplitude in closed form (the curve is linear in them given ``K`` and ``n``), plus a penalty
  of the ``log K`` and ``log n`` priors; the best grid point per feature.
- ``additive_hill``: the first component from the single-Hill fit, the second at its prior
  with zero amplitude (SVI opens it where the data ask).
- ``polynomial``: ridge regression of the guide means on the powers of the scaled log dosage.

A feature whose curve does not beat a flat line by more than chance (a likelihood-ratio-like
gain below :data:`GAIN_THRESHOLD` on the noise scale below) keeps the default start, so null
features are not pushed away from the horseshoe's spike.

The noise of a guide mean is taken as ``s_t / 3.29 * sqrt(mean(n) / n_g)``, with ``s_t`` the
amplitude prior scale (5th-95th percentile spread of the guide means): the spread of pure noise
over a normal's 90% range, scaled by the guide's cells. It overstates the noise of responsive
features, which only makes the start more conservative.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .curves import get_curve

#: Gain in (weighted) sum of squares over a flat line, in noise variances, below which a
#: feature keeps the default start (about an AIC penalty for the three curve parameters).
GAIN_THRESHOLD = 6.0
#: Hill coefficients of the grid (the prior ``log n ~ Normal(log 2, 0.6)`` covers 0.6-6.6).
GRID_N = (0.8, 1.4, 2.5, 4.5)
#: ``log K`` grid points across the prior's central 95%.
GRID_K = 21
#: Bounds of ``log lambda`` at the start: amplitudes map to ``lambda = |v| / s`` clipped here.
LOG_LAMBDA_RANGE = (-2.5, 1.5)
#: ``z`` / ``log lambda`` start of features that keep the default start.
DEFAULT_LOG_LAMBDA = -1.0


@dataclass
class GuidePoints:
    """Guide-level observations of every feature.

    Attributes
    ----------
    log_dose
        Natural-log dosage of each guide ``[G]`` (mean over its cells' posterior means).
    n_cells
        Cells per guide ``[G]``.
    means
        Technically corrected link-scale means ``[G, T]`` (NaN: not enough cells/data).
    """

    log_dose: np.ndarray
    n_cells: np.ndarray
    means: np.ndarray

    @classmethod
    def from_cells(
        cls, labels: np.ndarray, log_dose_mean: np.ndarray, means: np.ndarray
    ) -> GuidePoints:
        """Guide dosages from the cells' labels (rows of ``means`` are ``np.unique(labels)``)."""
        _, codes = np.unique(np.asarray(labels), return_inverse=True)
        n = np.bincount(codes, minlength=means.shape[0]).astype(np.float64)
        total = np.bincount(codes, weights=np.asarray(log_dose_mean, float), minlength=len(n))
        return cls(total / np.maximum(n, 1.0), n, np.asarray(means, dtype=np.float64))


def _weights(points: GuidePoints) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (guide, feature) relative weights ``n_g / mean(n)``, zero-filled means, guides used."""
    ok = np.isfinite(points.means)
    y = np.where(ok, points.means, 0.0)
    positive = points.n_cells > 0
    mean_n = float(np.mean(points.n_cells[positive])) if positive.any() else 1.0
    w = np.where(ok, (points.n_cells / mean_n)[:, None], 0.0)
    return w, y, ok.sum(0)


def _noise_variances(
    scale: np.ndarray, best_sse: np.ndarray, n_used: np.ndarray, n_params: int
) -> tuple[np.ndarray, np.ndarray]:
    """Noise variance of a guide mean for the flat-line gate and for choosing the curve.

    The gate uses ``(s / 3.29)^2`` (see the module docstring). The curve is chosen with the
    residual variance of the best unpenalised fit, between ``(s / 50)^2`` and the gate's
    value, so clean data are fitted closely while noisy data lean on the priors.
    """
    gate = (np.maximum(np.asarray(scale, float), 1e-6) / 3.29) ** 2
    residual = best_sse / np.maximum(n_used - n_params, 1)
    choose = np.clip(residual, gate * (3.29 / 50.0) ** 2, gate)
    return gate, choose


def _flat_sse(w: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sw = w.sum(0)
    mean = (w * y).sum(0) / np.maximum(sw, 1e-300)
    return mean, (w * (y - mean) ** 2).sum(0)


def fit_single_hill(points: GuidePoints, priors, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Best grid Hill curve of every feature: ``eta_ref``, ``v``, ``log_k``, ``n``, ``gain``.

    ``gain`` is the drop of the weighted sum of squares from a flat line to the chosen curve,
    in units of the gate's noise variance (:func:`_noise_variances`).
    """
    w, y, n_used = _weights(points)
    x = points.log_dose
    lo = priors.log_k_loc - 1.96 * priors.log_k_scale
    hi = priors.log_k_loc + 1.96 * priors.log_k_scale
    flat_mean, flat = _flat_sse(w, y)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features
        span = np.nanmax(points.means, 0) - np.nanmin(points.means, 0)
    v_bound = 2.0 * np.nan_to_num(span, nan=0.0) + 1e-6
    sw, swy, swyy = w.sum(0), (w * y).sum(0), (w * y * y).sum(0)
    grid = [(k, n) for k in np.linspace(lo, hi, GRID_K) for n in GRID_N]
    sse = np.full((len(grid), y.shape[1]), np.inf)
    a_all, v_all = np.zeros_like(sse), np.zeros_like(sse)
    for p, (log_k, hill_n) in enumerate(grid):
        h = _sigmoid(hill_n * (x - log_k)) - _sigmoid(hill_n * (priors.log_x_ref - log_k))
        hc = h[:, None]
        swh, swhh, swhy = (w * hc).sum(0), (w * hc * hc).sum(0), (w * hc * y).sum(0)
        det = sw * swhh - swh**2
        good = det > 1e-9 * np.maximum(sw * swhh, 1e-300)
        v = np.where(good, (sw * swhy - swh * swy) / np.where(good, det, 1.0), 0.0)
        a = (swy - v * swh) / np.maximum(sw, 1e-300)
        fit_sse = np.maximum(swyy - a * swy - v * swhy, 0.0)
        sse[p] = np.where(good & (np.abs(v) <= v_bound), fit_sse, np.inf)
        a_all[p], v_all[p] = a, v
    best_sse = np.min(sse, axis=0)
    usable = np.isfinite(best_sse)
    gate, choose = _noise_variances(scale, np.where(usable, best_sse, flat), n_used, 3)
    penalty = np.array(
        [
            ((k - priors.log_k_loc) / priors.log_k_scale) ** 2
            + ((np.log(n) - np.log(2.0)) / 0.6) ** 2
            for k, n in grid
        ]
    )
    pick = np.argmin(sse / choose + penalty[:, None], axis=0)
    cols = np.arange(y.shape[1])
    k_grid = np.array([k for k, _ in grid])
    n_grid = np.array([n for _, n in grid])
    return {
        "eta_ref": np.where(usable, a_all[pick, cols], flat_mean),
        "v": np.where(usable, v_all[pick, cols], 0.0),
        "log_k": np.where(usable, k_grid[pick], priors.log_k_loc),
        "n": np.where(usable, n_grid[pick], 2.0),
        "gain": np.where(usable, (flat - sse[pick, cols]) / gate, 0.0),
    }


def fit_polynomial(points: GuidePoints, priors, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Ridge fit ``eta_ref + sum_d c_d u^d`` of every feature: ``eta_ref``, ``coef``, ``gain``.

    The ridge is the coefficients' prior scale ``s`` against the noise variance chosen as for
    the Hill curves (:func:`_noise_variances`); ``gain`` as for :func:`fit_single_hill`.
    """
    w, y, n_used = _weights(points)
    unit = float(np.log(2.0)) * priors.half_range
    u = (points.log_dose - priors.log_x_ref) / unit
    design = np.stack([u**d for d in range(priors.degree + 1)], axis=1)  # [G, D+1]
    scale = np.maximum(np.asarray(scale, float), 1e-6)
    gram = np.einsum("gt,gi,gj->tij", w, design, design)
    rhs = np.einsum("gt,gi,gt->ti", w, design, y)
    eye = np.eye(priors.degree + 1)

    def solve(ridge_diag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ridge = ridge_diag[:, :, None] * eye
        beta = np.linalg.solve(gram + ridge, rhs[..., None])[..., 0]
        return beta, (w * (y - design @ beta.T) ** 2).sum(0)

    tiny = np.full((len(scale), priors.degree + 1), 1e-9)
    _, plain_sse = solve(tiny * gram.diagonal(axis1=1, axis2=2).max(1, keepdims=True))
    gate, noise = _noise_variances(scale, plain_sse, n_used, priors.degree + 1)
    ridge = np.repeat((noise / scale**2)[:, None], priors.degree + 1, axis=1)
    ridge[:, 0] = 1e-9 * gram[:, 0, 0]
    beta, sse = solve(ridge)
    _, flat = _flat_sse(w, y)
    return {"eta_ref": beta[:, 0], "coef": beta[:, 1:], "gain": (flat - sse) / gate}


def _sigmoid(a: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(a, dtype=np.float64)))


def _amplitude_latent(v: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z, log lambda)`` with ``v = scale * lambda * z`` (``lambda`` from ``|v| / scale``)."""
    ratio = np.abs(v) / np.maximum(scale, 1e-12)
    log_lam = np.clip(np.log(np.maximum(ratio, 1e-12)), *LOG_LAMBDA_RANGE)
    return v / (scale * np.exp(log_lam)), log_lam


def warm_start_polynomial(points: GuidePoints, priors) -> dict[str, np.ndarray]:
    """Warm start of the polynomial's sites (``eta_ref``, ``coef_z``, ``log_lambda``)."""
    scale = np.asarray(priors.amplitude_scale, dtype=np.float64)
    fixed = np.asarray(priors.eta_ref_loc, dtype=np.float64)
    fit = fit_polynomial(points, priors, scale)
    keep = fit["gain"] > GAIN_THRESHOLD
    size = np.abs(fit["coef"]).max(1) if fit["coef"].size else np.zeros(len(scale))
    log_lam = np.clip(np.log(np.maximum(size / scale, 1e-12)), *LOG_LAMBDA_RANGE)
    coef_z = fit["coef"] / (scale * np.exp(log_lam))[:, None]
    return {
        "eta_ref": np.where(keep, fit["eta_ref"], fixed),
        "coef_z": np.where(keep[:, None], coef_z, 0.0),
        "log_lambda": np.where(keep, log_lam, DEFAULT_LOG_LAMBDA),
    }


def warm_start_hill(points: GuidePoints, priors) -> dict[str, np.ndarray]:
    """Warm start of the first Hill component's sites and ``eta_ref`` (single-Hill fit).

    Further components (additive Hill) keep their default start: zero amplitude at the prior.
    """
    scale = np.asarray(priors.amplitude_scale, dtype=np.float64)
    fixed = np.asarray(priors.eta_ref_loc, dtype=np.float64)
    fit = fit_single_hill(points, priors, scale)
    keep = fit["gain"] > GAIN_THRESHOLD
    z, log_lam = _amplitude_latent(fit["v"], scale)
    return {
        "eta_ref": np.where(keep, fit["eta_ref"], fixed),
        "z1": np.where(keep, z, 0.0),
        "log_lambda1": np.where(keep, log_lam, DEFAULT_LOG_LAMBDA),
        "log_k1": np.where(keep, fit["log_k"], priors.log_k_loc),
        "log_n1": np.where(keep, np.log(fit["n"]), np.log(2.0)),
    }


def warm_start(function: str, points: GuidePoints, priors) -> dict[str, np.ndarray] | None:
    """Initial posterior means of the trans sites for every fitted feature.

    Parameters
    ----------
    function
        A curve name (:data:`~dream_sc.models.curves.CURVE_NAMES`); the curve's
        :meth:`~dream_sc.models.curves.Curve.warm_start` does the work.
    points
        Guide-level observations (:class:`GuidePoints`).
    priors
        The fit's :class:`~dream_sc.models.trans.TransPriors` (amplitude scales, ``log K``
        prior, reference dosage, polynomial degree).

    Returns
    -------
    ``site name -> array`` with a leading feature axis, for the sites of
    :func:`~dream_sc.models.trans.site_list`; sites not listed keep their default start.
    ``None``: the curve has no warm start (every site starts at its default).

    Examples
    --------
    >>> import numpy as np
    >>> from dream_sc.models.trans import TransPriors
    >>> x = np.log([1.0, 2.0, 4.0, 8.0, 16.0])
    >>> curve = 1.0 + 2.0 / (1.0 + np.exp(-3.0 * (x - np.log(4.0))))
    >>> means = np.stack([curve, np.full(5, 1.0)], axis=1)  # a responder and a flat feature
    >>> priors = TransPriors(np.ones(2), np.array([2.0, 0.1]), np.log(4.0), 0.8, 0.0, np.log(16.0), 2.0, 3)
    >>> start = warm_start("single_hill", GuidePoints(x, np.full(5, 100.0), means), priors)
    >>> np.round(np.exp(start["log_k1"]), 1), start["z1"]
    (array([4., 4.]), array([1., 0.]))
    """
    return get_curve(function).warm_start(points, priors)
