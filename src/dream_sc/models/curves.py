"""Dose-response curves on the link scale (pure torch).

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

from typing import Literal

import numpy as np
import torch

CurveFunction = Literal["single_hill", "additive_hill", "polynomial"]
FUNCTIONS: tuple[str, ...] = ("single_hill", "additive_hill", "polynomial")


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


def _polynomial_slope(coef: torch.Tensor, u: torch.Tensor, u_var: torch.Tensor) -> torch.Tensor:
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
        ``"single_hill"``, ``"additive_hill"`` or ``"polynomial"``.
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
        link value is returned (see the module docstring). ``None``: exact dosages.
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
    lx = log_x.unsqueeze(-1)
    lv = None if log_x_var is None else log_x_var.unsqueeze(-1)
    eta_ref = params["eta_ref"].unsqueeze(-2)
    if function == "polynomial":
        coef = params["coef"]  # [..., T, D]
        unit = float(np.log(2.0)) * half_range
        u = (lx - log_x_ref) / unit  # [..., B, 1]
        u_var = None if lv is None else lv / unit**2
        powers = gaussian_powers(u, u_var, coef.shape[-1])  # [..., B, 1, D]
        out = eta_ref + (powers * coef.unsqueeze(-3)).sum(-1)
        if u_var is None or mean_link is None:
            return out
        slope = _polynomial_slope(coef, u, u_var) / unit  # per natural-log dosage
        return mean_scale_correction(out, slope.square() * lv, mean_link)
    if lv is not None and mean_link is not None:  # value and slope from one sigmoid
        out, slope = eta_ref, 0.0
        ref = torch.as_tensor(log_x_ref, dtype=lx.dtype, device=lx.device)
        for c in ("1", "2") if function == "additive_hill" else ("1",):
            v, log_k, n = (params[f"{k}{c}"].unsqueeze(-2) for k in ("v", "log_k", "n"))
            nk = n * torch.rsqrt(1.0 + PROBIT_FACTOR * n.square() * lv)
            h = torch.sigmoid(nk * (lx - log_k))
            out = out + v * (h - hill_fraction(ref, log_k, n))
            slope = slope + v * nk * h * (1.0 - h)
        return mean_scale_correction(out, slope.square() * lv, mean_link)
    out = eta_ref + hill_terms(
        lx,
        log_x_ref,
        params["v1"].unsqueeze(-2),
        params["log_k1"].unsqueeze(-2),
        params["n1"].unsqueeze(-2),
        lv,
    )
    if function == "additive_hill":
        out = out + hill_terms(
            lx,
            log_x_ref,
            params["v2"].unsqueeze(-2),
            params["log_k2"].unsqueeze(-2),
            params["n2"].unsqueeze(-2),
            lv,
        )
    return out
