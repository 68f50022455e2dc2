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

from dataclasses import dataclass

import numpy as np

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


def _weights(points: GuidePoints, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (guide, feature) weights ``1 / noise variance`` and the zero-filled means."""
    ok = np.isfinite(points.means)
    y = np.where(ok, points.means, 0.0)
    n = points.n_cells[:, None]
    mean_n = float(np.mean(points.n_cells[points.n_cells > 0])) if (points.n_cells > 0).any() else 1
    sd = (np.asarray(scale, float) / 3.29)[None, :]
    w = np.where(ok, (n / mean_n) / np.maximum(sd, 1e-6) ** 2, 0.0)
    return w, y


def _flat_sse(w: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sw = w.sum(0)
    mean = (w * y).sum(0) / np.maximum(sw, 1e-300)
    return mean, (w * (y - mean) ** 2).sum(0)


def fit_single_hill(points: GuidePoints, priors, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Best grid Hill curve of every feature: ``eta_ref``, ``v``, ``log_k``, ``n``, ``gain``."""
    w, y = _weights(points, scale)
    n_feat = y.shape[1]
    x = points.log_dose
    lo = priors.log_k_loc - 1.96 * priors.log_k_scale
    hi = priors.log_k_loc + 1.96 * priors.log_k_scale
    flat_mean, flat = _flat_sse(w, y)
    span = np.nanmax(points.means, 0) - np.nanmin(points.means, 0) if n_feat else np.zeros(0)
    v_bound = 2.0 * np.nan_to_num(span, nan=0.0) + 1e-6
    best = np.full(n_feat, np.inf)
    out = {
        "eta_ref": flat_mean.copy(),
        "v": np.zeros(n_feat),
        "log_k": np.full(n_feat, priors.log_k_loc),
        "n": np.full(n_feat, 2.0),
    }
    sw, swy, swyy = w.sum(0), (w * y).sum(0), (w * y * y).sum(0)
    for log_k in np.linspace(lo, hi, GRID_K):
        for hill_n in GRID_N:
            h = _sigmoid(hill_n * (x - log_k)) - _sigmoid(hill_n * (priors.log_x_ref - log_k))
            hc = h[:, None]
            swh, swhh, swhy = (w * hc).sum(0), (w * hc * hc).sum(0), (w * hc * y).sum(0)
            det = sw * swhh - swh**2
            good = det > 1e-9 * np.maximum(sw * swhh, 1e-300)
            v = np.where(good, (sw * swhy - swh * swy) / np.where(good, det, 1.0), 0.0)
            a = (swy - v * swh) / np.maximum(sw, 1e-300)
            sse = swyy - a * swy - v * swhy
            penalty = ((log_k - priors.log_k_loc) / priors.log_k_scale) ** 2 + (
                (np.log(hill_n) - np.log(2.0)) / 0.6
            ) ** 2
            score = np.where(good & (np.abs(v) <= v_bound), sse + penalty, np.inf)
            take = score < best
            best = np.where(take, score, best)
            out["eta_ref"] = np.where(take, a, out["eta_ref"])
            out["v"] = np.where(take, v, out["v"])
            out["log_k"] = np.where(take, log_k, out["log_k"])
            out["n"] = np.where(take, hill_n, out["n"])
    out["gain"] = np.where(np.isfinite(best), flat - best, 0.0)
    return out


def fit_polynomial(points: GuidePoints, priors, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Ridge fit ``eta_ref + sum_d c_d u^d`` of every feature: ``eta_ref``, ``coef``, ``gain``."""
    w, y = _weights(points, scale)
    unit = float(np.log(2.0)) * priors.half_range
    u = (points.log_dose - priors.log_x_ref) / unit
    design = np.stack([u**d for d in range(priors.degree + 1)], axis=1)  # [G, D+1]
    s2 = np.maximum(np.asarray(scale, float), 1e-6) ** 2
    gram = np.einsum("gt,gi,gj->tij", w, design, design)
    ridge = np.zeros_like(gram)
    idx = np.arange(1, priors.degree + 1)
    ridge[:, idx, idx] = 1.0 / s2[:, None]
    ridge[:, 0, 0] = 1e-9
    rhs = np.einsum("gt,gi,gt->ti", w, design, y)
    beta = np.linalg.solve(gram + ridge, rhs[..., None])[..., 0]
    resid = y - design @ beta.T
    _, flat = _flat_sse(w, y)
    return {"eta_ref": beta[:, 0], "coef": beta[:, 1:], "gain": flat - (w * resid**2).sum(0)}


def _sigmoid(a: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(a, dtype=np.float64)))


def _amplitude_latent(v: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z, log lambda)`` with ``v = scale * lambda * z`` (``lambda`` from ``|v| / scale``)."""
    ratio = np.abs(v) / np.maximum(scale, 1e-12)
    log_lam = np.clip(np.log(np.maximum(ratio, 1e-12)), *LOG_LAMBDA_RANGE)
    return v / (scale * np.exp(log_lam)), log_lam


def warm_start(function: str, points: GuidePoints, priors) -> dict[str, np.ndarray]:
    """Initial posterior means of the trans sites for every fitted feature.

    Parameters
    ----------
    function
        ``"single_hill"``, ``"additive_hill"`` or ``"polynomial"``.
    points
        Guide-level observations (:class:`GuidePoints`).
    priors
        The fit's :class:`~dream_sc.models.trans.TransPriors` (amplitude scales, ``log K``
        prior, reference dosage, polynomial degree).

    Returns
    -------
    ``site name -> array`` with a leading feature axis, for the sites of
    :func:`~dream_sc.models.trans.site_list`; sites not listed keep their default start.

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
    scale = np.asarray(priors.amplitude_scale, dtype=np.float64)
    fixed = np.asarray(priors.eta_ref_loc, dtype=np.float64)
    if function == "polynomial":
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
