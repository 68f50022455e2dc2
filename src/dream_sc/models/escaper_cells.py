"""Escaper cells re-weighted by their transcriptome (pure numpy/torch).

On a screen with escapers (``fit_cis(escapers=True)``) the cis fit draws every cell of a
targeting guide from a two-component posterior, escaped (control dosage) or knocked down, from
its cis counts alone: with a few cis UMIs per cell most cells stay ambiguous. The cell's
responsive features say more: a cell whose responsive genes sit at their control level escaped.

Given a first trans fit, each stored draw ``x_is`` of a targeting cell is weighted by the
likelihood of the cell's counts of a set of *evidence* features under their fitted curves
(posterior-mean parameters, step-1 technical effects and NB dispersion),

``w_is ∝ prod_{t in E} NB(y_it | s_i exp(delta_{c(i), t} + f_t(x_is)), r_t)``,

an importance re-weighting of the cis posterior ``p(x_i | cis counts)`` towards
``p(x_i | cis counts, y_iE)``; the cell's log-dosage mean and variance for the trans fit are the
weighted moments of its draws. The evidence features must not be the features refitted on the
re-weighted dosages (their own noise would then move the dosages towards the noise and steepen
their curves): :func:`split_halves` splits the evidence in two, each half refitted on dosages
weighted by the other.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

#: Cells per block of the likelihood evaluation (``block x draws x features`` values at once).
CELL_BLOCK = 256


def negbinom_cell_draws(
    y: np.ndarray,
    eta_at: callable,
    log_draws: np.ndarray,
    offset: np.ndarray,
    log_r: np.ndarray,
) -> np.ndarray:
    """Log-likelihood ``[N, S]`` of every cell's counts at each of its dosage draws.

    Parameters
    ----------
    y
        Counts ``[N, E]`` of the evidence features.
    eta_at
        Callable mapping natural-log dosages ``[B]`` (float64 tensor) to the curves' link
        values ``[B, E]`` (without technical effects and size factors).
    log_draws
        Natural-log dosage draws ``[N, S]``.
    offset
        ``log s_i + delta_{c(i), t}`` per cell and feature ``[N, E]``.
    log_r
        NB log inverse dispersion ``[E]``.

    Returns
    -------
    ``[N, S]`` summed over the evidence features (constants in ``y`` dropped: they cancel in
    the weights).

    Examples
    --------
    >>> import numpy as np, torch
    >>> ll = negbinom_cell_draws(
    ...     np.array([[0.0], [9.0]]),
    ...     lambda lx: lx[:, None],
    ...     np.log(np.array([[1.0, 9.0], [1.0, 9.0]])),
    ...     np.zeros((2, 1)),
    ...     np.array([5.0]),
    ... )
    >>> (ll[:, 0] > ll[:, 1]).tolist()  # zero counts favour dosage 1, nine counts dosage 9
    [True, False]
    """
    n, s = log_draws.shape
    out = np.empty((n, s))
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    log_r_t = t(log_r)
    r = log_r_t.exp()
    with torch.no_grad():
        for lo in range(0, n, CELL_BLOCK):
            hi = min(n, lo + CELL_BLOCK)
            eta = eta_at(t(log_draws[lo:hi]).reshape(-1)).reshape(hi - lo, s, -1)
            eta = eta + t(offset[lo:hi])[:, None, :]
            yy = t(y[lo:hi])[:, None, :]
            x = eta - log_r_t
            sp = torch.nn.functional.softplus(x)
            ll = torch.lgamma(yy + r) - r * sp + yy * (x - sp)
            out[lo:hi] = ll.sum(-1).numpy()
    return out


def weighted_moments(
    log_draws: np.ndarray, log_lik: np.ndarray, cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and variance of each cell's log draws weighted by ``exp(log_lik)``, and the ESS.

    Cells outside the mask ``cells`` keep equal weights (their plain mean and variance, ESS =
    number of draws).

    Examples
    --------
    >>> import numpy as np
    >>> draws = np.log(np.array([[1.0, 4.0], [1.0, 4.0]]))
    >>> ll = np.array([[0.0, -50.0], [0.0, -50.0]])
    >>> mean, var, ess = weighted_moments(draws, ll, np.array([True, False]))
    >>> np.round(np.exp(mean), 3).tolist(), np.round(ess, 3).tolist()
    ([1.0, 2.0], [1.0, 2.0])
    """
    log_lik = np.where(np.asarray(cells, bool)[:, None], log_lik, 0.0)
    w = np.exp(log_lik - log_lik.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    mean = (w * log_draws).sum(1)
    var = (w * (log_draws - mean[:, None]) ** 2).sum(1)
    return mean, var, 1.0 / np.square(w).sum(1)


def split_halves(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of the evidence features by their stable keys (order-independent).

    Features are sorted by key and alternately assigned, so the split does not depend on the
    order of the features in the data.

    Examples
    --------
    >>> a, b = split_halves(np.array([30, 10, 20, 40]))
    >>> a.tolist(), b.tolist()
    ([1, 0], [2, 3])
    """
    order = np.argsort(np.asarray(keys), kind="stable")
    return order[0::2], order[1::2]


def plug_in_curve(
    curve, params: Mapping[str, torch.Tensor], log_x_ref: float, half_range: float
) -> callable:
    """``log dosage [B] -> link values [B, E]`` of a curve at fixed (posterior-mean) values."""
    p64 = {k: v.double() for k, v in params.items()}
    return lambda log_x: curve.evaluate(p64, log_x, log_x_ref, half_range, None, "log")
