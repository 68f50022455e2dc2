"""Shared maths of the dose-response curves on the link scale (pure torch).

All curves are parameterised around the reference dosage ``x_ref`` (the NTC dosage):

``eta(x) = eta_ref + sum_k v_k * (H(x; K_k, n_k) - H(x_ref; K_k, n_k))``

with the Hill fraction ``H(x; K, n) = x^n / (K^n + x^n) = sigmoid(n (log x - log K))``. So
``eta_ref`` is the value at the NTC dosage (well identified by the control cells) and ``v_k`` is
the change from dose 0 to saturation of component ``k``. Link-scale curves keep every mean inside
its domain without clamping: exp for counts, sigmoid for probabilities, softmax for categories.

The polynomial is ``eta(x) = eta_ref + sum_{d=1..D} c_d u^d`` with
``u = (log2 x - log2 x_ref) / half_range`` (centred and scaled so coefficients are comparable).

**Uncertain dosage.** When a cell's log dosage is only known as ``log x ~ Normal(m, v)`` (its
posterior from step 2), :func:`evaluate_curve` with ``log_x_var=v`` returns the expected link
value ``E[eta(x)]``: exact for the polynomial (Gaussian moments of ``u``), and for Hill terms
the probit approximation ``E[sigmoid(a)] ~ sigmoid(E[a] / sqrt(1 + pi Var[a] / 8))`` with
``a = n (log x - log K)``. This marginalises the dosage uncertainty in closed form instead of
sampling one dosage per cell and step, which optimises an expected log-likelihood over noisy
dosages and attenuates curves (EC50s pulled towards the middle of the dosage range). With
``mean_link`` (``"log"``, ``"logit"``) the link of the expected *mean* is returned instead
(``E[eta] + Var[eta] / 2`` for counts), which is what the likelihood needs: the expected link
value under-predicts an uncertain cell on a log link and shifts the fitted EC50s.
"""

from __future__ import annotations

import numpy as np
import torch

PROBIT_FACTOR = float(np.pi / 8.0)


def hill_fraction(
    log_x: torch.Tensor,
    log_k: torch.Tensor,
    n: torch.Tensor,
    log_x_var: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x^n / (K^n + x^n)`` computed stably as ``sigmoid(n (log x - log K))``.

    With ``log_x_var`` the expectation over ``log x ~ Normal(log_x, log_x_var)`` (probit
    approximation).
    """
    a = n * (log_x - log_k)
    if log_x_var is not None:
        a = a * torch.rsqrt(1.0 + PROBIT_FACTOR * n.square() * log_x_var)
    return torch.sigmoid(a)


def hill_terms(
    log_x: torch.Tensor,
    log_x_ref: float,
    v: torch.Tensor,
    log_k: torch.Tensor,
    n: torch.Tensor,
    log_x_var: torch.Tensor | None = None,
) -> torch.Tensor:
    """``v * (H(x) - H(x_ref))``; ``log_x`` is ``[..., B, 1]``, parameters ``[..., 1, T]``."""
    ref = torch.as_tensor(log_x_ref, dtype=log_x.dtype, device=log_x.device)
    return v * (hill_fraction(log_x, log_k, n, log_x_var) - hill_fraction(ref, log_k, n))


def gaussian_powers(mean: torch.Tensor, var: torch.Tensor | None, degree: int) -> torch.Tensor:
    """``E[u^d]`` for ``d = 1..degree`` and ``u ~ Normal(mean, var)``, stacked on a new last axis.

    Uses ``E[u^d] = mean E[u^(d-1)] + (d-1) var E[u^(d-2)]``; ``var=None`` gives plain powers.
    """
    moments = [torch.ones_like(mean), mean]
    for d in range(2, degree + 1):
        nxt = mean * moments[d - 1]
        if var is not None:
            nxt = nxt + (d - 1) * var * moments[d - 2]
        moments.append(nxt)
    return torch.stack(moments[1 : degree + 1], dim=-1)


def polynomial_slope(coef: torch.Tensor, u: torch.Tensor, u_var: torch.Tensor) -> torch.Tensor:
    """``d E[sum_d c_d u^d] / d E[u]`` (``u`` normal): ``sum_d d c_d E[u^(d-1)]``."""
    moments = torch.ones_like(u).unsqueeze(-1)
    if coef.shape[-1] > 1:  # E[u^d], d = 1..D-1
        moments = torch.cat([moments, gaussian_powers(u, u_var, coef.shape[-1] - 1)], -1)
    degree = torch.arange(1, coef.shape[-1] + 1, dtype=coef.dtype, device=coef.device)
    return (moments * coef.unsqueeze(-3) * degree).sum(-1)


def mean_scale_correction(
    eta: torch.Tensor, var_eta: torch.Tensor, mean_link: str | None
) -> torch.Tensor:
    """Link value of the expected *mean* when the link value has mean ``eta``, variance ``var_eta``.

    Log link: ``log E[e^eta] = eta + var / 2`` (log-normal); logit link:
    ``logit E[sigmoid(eta)] ~ eta / sqrt(1 + pi var / 8)`` (probit approximation); otherwise
    unchanged (identity link: the expected mean is the mean link value).
    """
    if mean_link == "log":
        return eta + 0.5 * var_eta
    if mean_link == "logit":
        return eta * torch.rsqrt(1.0 + PROBIT_FACTOR * var_eta)
    return eta
