"""Per-guide two-component mixture of guide UMI counts (background vs. guide present).

Like Cell Ranger's protospacer calling: for one guide, the UMI counts of all cells are a mixture
of a Poisson background (ambient guide reads, ``Poisson(lam)``) and a discretised log-normal for
cells that carry the guide (``floor(Y)``, ``log Y ~ Normal(mu, sigma)``). The parameters are
fitted by EM on the histogram of counts; the M-step of the log-normal uses weighted moments of
``log(u + 0.5)`` (the centre of the discretisation bin). The UMI threshold is the smallest count
from which on every larger count is more likely to come from the guide component; a guide whose
fitted component is not clearly above the background (median ``exp(mu) < lam + 5 sqrt(lam) + 3``)
or holds less than half a cell gets no threshold (``inf``: no cell is called).

Memory and time depend on the number of distinct counts, not on the largest count: the EM runs
on the histogram, and the threshold search stops where the background becomes negligible (see
:func:`_threshold`), so a single count of ``2**40`` costs no more than a count of 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class MixtureFit:
    """Fitted mixture of one guide; ``threshold`` is ``inf`` when no cell carries the guide."""

    weight: float
    lam: float
    mu: float
    sigma: float
    threshold: float
    n_iter: int


def _signal_pmf(values: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    upper = stats.norm.cdf((np.log(values + 1.0) - mu) / sigma)
    with np.errstate(divide="ignore"):
        lower = stats.norm.cdf((np.log(values.astype(float)) - mu) / sigma)
    return np.clip(upper - lower, 1e-300, None)


def _posterior(values, weight, lam, mu, sigma) -> np.ndarray:
    log_signal = np.log(weight) + np.log(_signal_pmf(values, mu, sigma))
    log_background = np.log1p(-weight) + stats.poisson.logpmf(values, lam)
    return 1.0 / (1.0 + np.exp(np.clip(log_background - log_signal, -700, 700)))


def fit_guide_mixture(counts: np.ndarray, *, max_iter: int = 200, tol: float = 1e-8) -> MixtureFit:
    """Fit the mixture to one guide's UMI counts (one value per cell).

    Parameters
    ----------
    counts
        Non-negative integer UMI counts of the guide in every cell.
    max_iter
        Maximum EM iterations.
    tol
        Stop when the mean log-likelihood changes by less than this.

    Returns
    -------
    The fitted :class:`MixtureFit`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> u = np.concatenate([rng.poisson(0.3, 900), rng.lognormal(np.log(80), 0.5, 100).astype(int)])
    >>> fit = fit_guide_mixture(u)
    >>> 2 <= fit.threshold <= 20
    True
    """
    counts = np.asarray(counts, dtype=np.int64)
    values, freq = np.unique(counts, return_counts=True)
    n = freq.sum()
    if values.size == 0 or values.max() == 0:
        return MixtureFit(0.0, 0.0, 0.0, 1.0, np.inf, 0)
    # initial split: counts far above the bulk are the guide component
    bulk = float(np.average(values, weights=freq * (values <= np.quantile(counts, 0.5))))
    high = values > max(10.0 * bulk, 3.0)
    if not np.any(high):
        high = values == values.max()
    weight = float(np.clip(freq[high].sum() / n, 1e-4, 0.5))
    lam = max(bulk, 1e-3)
    logs = np.log(values[high] + 0.5)
    mu = float(np.average(logs, weights=freq[high]))
    sigma = max(float(np.sqrt(np.average((logs - mu) ** 2, weights=freq[high]))), 0.25)
    previous = -np.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007
        resp = _posterior(values, weight, lam, mu, sigma)
        w_sig, w_bg = freq * resp, freq * (1.0 - resp)
        weight = float(np.clip(w_sig.sum() / n, 1e-8, 1 - 1e-8))
        lam = max(float((w_bg * values).sum() / max(w_bg.sum(), 1e-12)), 1e-6)
        if w_sig.sum() < 1e-6:
            break
        logs = np.log(values + 0.5)
        mu = float((w_sig * logs).sum() / w_sig.sum())
        sigma = max(float(np.sqrt((w_sig * (logs - mu) ** 2).sum() / w_sig.sum())), 0.1)
        loglik = float(
            np.sum(
                freq
                * np.logaddexp(
                    np.log(weight) + np.log(_signal_pmf(values, mu, sigma)),
                    np.log1p(-weight) + stats.poisson.logpmf(values, lam),
                )
            )
            / n
        )
        if abs(loglik - previous) < tol:
            break
        previous = loglik
    return MixtureFit(weight, lam, mu, sigma, _threshold(values, weight, lam, mu, sigma, n), n_iter)


#: Longest integer grid searched for the threshold; beyond it only observed counts are checked.
GRID_CAP = 1_000_000


def _background_negligible(weight: float, lam: float) -> int:
    """Smallest count ``u >= lam`` with ``log Poisson(u; lam) < log(weight) - 700``.

    From there on every count is on the guide side: the guide term of :func:`_posterior` is at
    least ``log(weight) - 690.8`` (its pmf is clipped at ``1e-300``), and the Poisson log-pmf
    falls monotonically above ``lam``. Found by doubling and bisection on ``math.lgamma``, so
    the cost does not grow with the counts.
    """
    target = math.log(weight) - 700.0
    log_lam = math.log(lam)

    def negligible(u: int) -> bool:
        return u * log_lam - lam - math.lgamma(u + 1.0) < target

    low = max(math.ceil(lam), 1)
    if negligible(low):
        return low
    high = 2 * low
    while not negligible(high):
        low, high = high, 2 * high
    while high - low > 1:  # negligible(high), not negligible(low)
        middle = (low + high) // 2
        low, high = (low, middle) if negligible(middle) else (middle, high)
    return high


def _threshold(values, weight, lam, mu, sigma, n) -> float:
    """Smallest count from which on the guide component is the more likely one.

    The posterior is evaluated on the integers ``0 .. min(max count, B)`` where ``B`` is the
    count above which the background is negligible (:func:`_background_negligible`; every
    larger count is on the guide side, so the result equals that of the full grid). Only when
    ``B`` exceeds :data:`GRID_CAP` (a background of about a million UMIs) are the observed
    counts above the cap checked instead of every integer. Memory is therefore bounded by
    ``GRID_CAP`` plus the number of distinct counts, never by the largest count.
    """
    if weight * n < 0.5 or np.exp(mu) < lam + 5.0 * np.sqrt(lam) + 3.0:
        return np.inf  # no guide component clearly separated from the background
    top = int(values.max())
    bound = _background_negligible(weight, lam)
    end = min(top, bound, GRID_CAP)
    grid = np.arange(end + 1, dtype=np.int64)
    if top > end and bound > end:
        grid = np.concatenate([grid, values[values > end].astype(np.int64)])
    guide_side = _posterior(grid, weight, lam, mu, sigma) >= 0.5
    if not guide_side[-1]:
        return np.inf
    below = np.flatnonzero(~guide_side)
    return float(grid[below[-1]] + 1) if below.size else 0.0
