"""Dose-response curves on the link scale (pure torch).

All curves are parameterised around the reference dosage ``x_ref`` (the NTC dosage):

``eta(x) = eta_ref + sum_k v_k * (H(x; K_k, n_k) - H(x_ref; K_k, n_k))``

with the Hill fraction ``H(x; K, n) = x^n / (K^n + x^n) = sigmoid(n (log x - log K))``. So
``eta_ref`` is the value at the NTC dosage (well identified by the control cells) and ``v_k`` is
the change from dose 0 to saturation of component ``k``. Link-scale curves keep every mean inside
its domain without clamping: exp for counts, sigmoid for probabilities, softmax for categories.

The polynomial is ``eta(x) = eta_ref + sum_{d=1..D} c_d u^d`` with
``u = (log2 x - log2 x_ref) / half_range`` (centred and scaled so coefficients are comparable).
"""

from __future__ import annotations

from typing import Literal

import torch

CurveFunction = Literal["single_hill", "additive_hill", "polynomial"]
FUNCTIONS: tuple[str, ...] = ("single_hill", "additive_hill", "polynomial")


def hill_fraction(log_x: torch.Tensor, log_k: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``x^n / (K^n + x^n)`` computed stably as ``sigmoid(n (log x - log K))``."""
    return torch.sigmoid(n * (log_x - log_k))


def hill_terms(
    log_x: torch.Tensor, log_x_ref: float, v: torch.Tensor, log_k: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """``v * (H(x) - H(x_ref))``; ``log_x`` is ``[..., B, 1]``, parameters ``[..., 1, T]``."""
    ref = torch.as_tensor(log_x_ref, dtype=log_x.dtype, device=log_x.device)
    return v * (hill_fraction(log_x, log_k, n) - hill_fraction(ref, log_k, n))


def evaluate_curve(
    function: str,
    params: dict[str, torch.Tensor],
    log_x: torch.Tensor,
    log_x_ref: float,
    half_range: float,
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

    Returns
    -------
    Tensor ``[..., B, T]``.
    """
    lx = log_x.unsqueeze(-1)
    eta_ref = params["eta_ref"].unsqueeze(-2)
    if function == "polynomial":
        coef = params["coef"]  # [..., T, D]
        u = (lx - log_x_ref) / (torch.log(torch.tensor(2.0)) * half_range)  # [..., B, 1]
        powers = torch.stack([u**d for d in range(1, coef.shape[-1] + 1)], dim=-1)  # [..., B, 1, D]
        return eta_ref + (powers * coef.unsqueeze(-3)).sum(-1)
    out = eta_ref + hill_terms(
        lx,
        log_x_ref,
        params["v1"].unsqueeze(-2),
        params["log_k1"].unsqueeze(-2),
        params["n1"].unsqueeze(-2),
    )
    if function == "additive_hill":
        out = out + hill_terms(
            lx,
            log_x_ref,
            params["v2"].unsqueeze(-2),
            params["log_k2"].unsqueeze(-2),
            params["n2"].unsqueeze(-2),
        )
    return out
