"""A dose-dependent shift shared by every feature, estimated across features and removed.

When size factors depend on the dosage - library sizes that grow with an activated cis gene
and its responders, a perturbation that changes cell size - every feature without a dose
response gets the same spurious offset ``Delta_i ~ gamma' B(x_i)`` in its linear predictor.
Each feature's efficient score then carries ``V_t gamma`` (to first order: ``dU_t / d offset =
-V_t``), so with thousands of flat features the shift is called as a small response of each.

``gamma`` is estimated robustly across all features of a fit from their per-feature
estimates ``beta_t = V_t^{-1} U_t`` (an M-estimator: Huber, then Tukey-biweight iterations in
the Mahalanobis distance ``(beta_t - gamma)' V_t (beta_t - gamma) / phi_t``, which is about
``chi2(d)`` for a flat feature; responders get weight 0), and removed from every score:
``U_t <- U_t - V_t gamma``. The permutation null repeats the estimation for every permuted
dosage, so real and null scores go through the same procedure and stay exchangeable; a
permuted dosage carries no shift, and its ``gamma`` is estimation noise of order
``1 / sqrt(T)`` of a feature's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Huber iterations (from the coordinate-wise median) before the biweight iterations.
HUBER_STEPS = 3
#: Tukey-biweight iterations.
BIWEIGHT_STEPS = 8
#: Huber threshold and biweight cut-off on the squared distance, per basis dimension.
HUBER_K2 = 4.0
BIWEIGHT_C2 = 4.685**2


@dataclass
class Shift:
    """Shared shift of every basis: ``gamma`` ``[P, d]`` and its covariance ``[P, d, d]``."""

    gamma: np.ndarray
    cov: np.ndarray


def estimate_shift(u: np.ndarray, v: np.ndarray, dispersion: np.ndarray) -> Shift:
    """Robust common shift ``gamma`` per basis from the score parts of every feature.

    Parameters
    ----------
    u
        Score vectors ``[P, T, d]`` (see :func:`dream_sc.models.null.score_parts`).
    v
        Information matrices ``[P, T, d, d]``.
    dispersion
        Pearson dispersion ``[T]``.
    """
    n_bases, _, d = u.shape
    phi = np.asarray(dispersion, dtype=np.float64)
    ok = np.isfinite(u).all(axis=(0, 2)) & np.isfinite(v).all(axis=(0, 2, 3)) & (phi > 0)
    if ok.sum() < 2 * d + 1:
        return Shift(np.zeros((n_bases, d)), np.zeros((n_bases, d, d)))
    u, v, phi = u[:, ok], v[:, ok], phi[ok]
    vs = v / phi[None, :, None, None]
    us = u / phi[None, :, None]
    beta = np.linalg.solve(v, u[..., None])[..., 0]  # [P, T, d]
    gamma = np.median(beta, axis=1)  # [P, d]
    for step in range(HUBER_STEPS + BIWEIGHT_STEPS):
        r = beta - gamma[:, None, :]
        dist2 = np.einsum("ptk,ptkj,ptj->pt", r, vs, r)
        if step < HUBER_STEPS:
            k2 = HUBER_K2 * d
            w = np.minimum(1.0, np.sqrt(k2 / np.maximum(dist2, 1e-300)))
        else:
            c2 = BIWEIGHT_C2 * d
            w = np.where(dist2 < c2, (1.0 - dist2 / c2) ** 2, 0.0)
        a = np.einsum("pt,ptkj->pkj", w, vs)
        b = np.einsum("pt,ptk->pk", w, us)
        a = a + 1e-12 * np.trace(a, axis1=1, axis2=2)[:, None, None] * np.eye(d)
        gamma = np.linalg.solve(a, b[..., None])[..., 0]
    return Shift(gamma, np.linalg.inv(a))


def remove_shift(u: np.ndarray, v: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Score vectors with the shared shift removed: ``U_t - V_t gamma`` ``[P, T, d]``."""
    return u - np.einsum("ptkj,pj->ptk", v, gamma)


def shift_profile(
    gamma: np.ndarray, basis: np.ndarray, log_dose: np.ndarray, quantiles=(0.05, 0.95)
) -> float:
    """Change of the shared offset between two dosage quantiles, in log2 units.

    ``basis`` ``[N, d]`` and ``log_dose`` ``[N]`` (natural log) of the cells; the offset of a
    cell is ``basis_i' gamma`` (natural-log scale). The change is the mean offset of the cells
    above the upper quantile minus that of the cells below the lower one: positive when flat
    features appear to rise with the dosage.
    """
    offset = basis @ np.asarray(gamma, dtype=np.float64)
    lo, hi = np.quantile(log_dose, quantiles)
    low = offset[log_dose <= lo]
    high = offset[log_dose >= hi]
    if len(low) == 0 or len(high) == 0:
        return 0.0
    return float((high.mean() - low.mean()) / np.log(2.0))
