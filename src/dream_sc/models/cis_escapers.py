"""Does a guide have escapers? A likelihood-ratio test on its cells' cis counts (pure torch).

A guide's cells are compared under two models of their log2 dosage, the cis counts being
``NB(exp(base_eta) x, r)`` with each cell's dosage integrated out as in the cis fit
(:func:`dream_sc.models.cis.cell_log_marginal`):

- no escapers: ``log2 x ~ Normal(mu, sigma)``;
- escapers: with probability ``pi`` the cell sits at the control dosage
  ``Normal(log2 x_ntc, sigma_ref)`` (fixed from the control cells), else ``Normal(mu, sigma)``.

Both are maximised over their free values (``mu``, ``sigma`` and ``pi``) by L-BFGS; twice the
log-likelihood gain is referred to ``0.5 chi2_1`` (``pi = 0`` lies on the boundary).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .cis import cell_log_marginal, escape_mixture

#: Starting escape fractions of the mixture fit (the best end point is kept).
MIXTURE_STARTS = (0.1, 0.4)


@dataclass
class EscapeTest:
    """Result of :func:`escape_lrt` for one guide."""

    escape_fraction: float  # maximum-likelihood escape fraction
    log_lr: float  # log-likelihood gain of the escaper model (>= 0)
    pvalue: float
    mu: float  # log2 dosage of the knocked-down cells under the escaper model


def _maximise(objective, start: list[float]) -> tuple[float, np.ndarray]:
    z = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([z], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = -objective(z)
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return float(objective(z)), z.detach().numpy()


def escape_lrt(
    y: np.ndarray,
    base_eta: np.ndarray,
    *,
    log2_x_ntc: float,
    sigma_ref: float,
    log_r: float,
    mu0: float,
    sigma0: float,
) -> EscapeTest:
    """Likelihood-ratio test of escapers among the cells of one guide.

    Parameters
    ----------
    y
        Cis counts of the guide's cells.
    base_eta
        ``log s_i + delta_c(i)`` per cell (natural log; the dosage multiplies ``exp``).
    log2_x_ntc, sigma_ref
        Control dosage (log2) and the control cells' spread (log2 sd): the escaped cells.
    log_r
        NB log inverse dispersion within a cell.
    mu0, sigma0
        Starting log2 mean and sd of the guide's cells.
    """
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    y_t, eta_t, log_r_t = t(y), t(base_eta), t(log_r)
    n = len(y)
    ref_mu, ref_sigma = t(np.full(n, log2_x_ntc)), t(np.full(n, sigma_ref))
    escaped = cell_log_marginal(y_t, eta_t, ref_mu, ref_sigma, log_r_t)
    mixed = torch.ones(n, dtype=torch.bool)

    def knocked(z: torch.Tensor) -> torch.Tensor:
        return cell_log_marginal(
            y_t, eta_t, z[0].expand(n), z[1].exp().clamp(1e-3, 10.0).expand(n), log_r_t
        )

    def single(z: torch.Tensor) -> torch.Tensor:
        return knocked(z).sum()

    def mixture(z: torch.Tensor) -> torch.Tensor:
        pi = torch.sigmoid(z[2]).expand(n)
        return escape_mixture(knocked(z), escaped, pi, mixed).sum()

    ll0, _ = _maximise(single, [mu0, float(np.log(sigma0))])
    best = None
    for p in MIXTURE_STARTS:
        ll1, z1 = _maximise(mixture, [mu0, float(np.log(sigma0)), float(np.log(p / (1 - p)))])
        if best is None or ll1 > best[0]:
            best = (ll1, z1)
    ll1, z1 = best
    gain = max(ll1 - ll0, 0.0)
    pvalue = float(min(1.0, 0.5 * stats.chi2.sf(2 * gain, 1))) if gain > 0 else 1.0
    return EscapeTest(
        escape_fraction=float(1 / (1 + np.exp(-z1[2]))),
        log_lr=float(gain),
        pvalue=pvalue,
        mu=float(z1[0]),
    )
