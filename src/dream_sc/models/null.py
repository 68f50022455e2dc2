"""Dose-association score and its conditional-randomisation null (no refit).

For every feature the statistic is the efficient score test of "no dose dependence" in the
generalised linear model

``g(E[y_it]) = offset_i + alpha_{c(i),t} + beta_t' B(x_i)``

with one **free intercept per technical group and feature** (``alpha``), the noise of step 1
(NB dispersion, binomial concentration, normal sd) and a small dose basis ``B`` (centred log
dosage and its square, averaged over each cell's dosage posterior). Under ``beta = 0`` the
model does not involve the dosage at all: the intercepts, the working residuals ``e`` and
weights ``w`` are functions of the observations, the groups and the size factors only. The
statistic is

``S_t = U_t' V_t^{-1} U_t / (d * phi_t)``, with ``U_t = sum_i Bc_it e_it`` and
``V_t = sum_i w_it Bc_it Bc_it'``,

where ``Bc`` is the basis centred within every group with weights ``w`` (this projects the
group intercepts out of the score) and ``phi_t`` the Pearson dispersion of the null model (so
a feature noisier than its step-1 noise model does not score higher). ``S_t`` is about
``F(d, n)``-distributed without a dose response.

The null is **conditional randomisation**: the dosages (posterior mean and variance of every
cell) are permuted among the cells of the same technical group and ``S`` is recomputed with the
same residuals. For a feature without dose response ``y`` is independent of ``x`` given the
group, so its real score and its permuted scores are exchangeable exactly - whatever the
design, including groups that carry dosage information (CRISPRi in one line, CRISPRa in the
other) or unequal guide mixes. For a responsive feature the permutation keeps the group-level
mean shift, but the free intercepts absorb it: its null scores look like those of a flat
feature, so they do not inflate the null (see :func:`exchangeability`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from .families import get_family

#: Degree of the dose basis (log dosage and its square: monotone and U-shaped responses).
BASIS_DEGREE = 2
#: Fewest features with finite real and null scores for the exchangeability check to run.
MIN_CHECK_FEATURES = 4
#: Fraction of real features (highest scores) whose null scores the exchangeability check
#: compares with those of the lower-scoring half.
TOP_FRACTION = 0.1


def dose_basis(
    log_dose_mean: np.ndarray, log_dose_var: np.ndarray | None = None, degree: int = BASIS_DEGREE
) -> np.ndarray:
    """Dose basis ``[N, degree]``: powers of the standardised log dosage.

    With ``log_dose_var`` every power is averaged over the cell's log-dosage posterior
    ``Normal(mean, var)`` (``E[u^2] = m^2 + v``, ``E[u^3] = m^3 + 3 m v``).
    """
    mean = np.asarray(log_dose_mean, dtype=np.float64)
    sd = mean.std()
    sd = sd if sd > 0 else 1.0
    m = (mean - mean.mean()) / sd
    v = np.zeros_like(m) if log_dose_var is None else np.asarray(log_dose_var) / sd**2
    powers = [m, m**2 + v, m**3 + 3 * m * v][:degree]
    basis = np.column_stack(powers)
    return basis - basis.mean(0)


@dataclass
class NullModel:
    """Working residuals ``e`` and weights ``w`` ``[N, T]`` of the no-dose model of a chunk."""

    e: np.ndarray
    w: np.ndarray
    dispersion: np.ndarray  # [T] Pearson dispersion of the null model


def null_model(
    distribution: str,
    y: np.ndarray,
    onehot: np.ndarray,
    *,
    log_sf: np.ndarray | None = None,
    log_r: np.ndarray | None = None,
    total: np.ndarray | None = None,
    log_conc: np.ndarray | None = None,
    log_sigma: np.ndarray | None = None,
) -> NullModel:
    """Fit the no-dose model (one mean per group and feature) and its working residuals.

    Parameters
    ----------
    distribution
        ``negbinom``, ``binomial``, ``multinomial`` (each category against the rest of its
        group, ``total`` = the group's counts), ``normal`` or ``studentt`` (scored as normal).
    y
        Dense observations ``[N, T]`` (NaN = missing for continuous data).
    onehot
        Technical groups ``[N, C]`` (0/1).
    log_sf
        Log size factors ``[N]`` (counts).
    log_r
        Log NB size ``[T]`` (``var = m + m^2 / r``).
    total
        Trials ``[N, T]`` (binomial / multinomial).
    log_conc
        Log concentration ``[T]`` of over-dispersed binomial / multinomial data.
    log_sigma
        Log noise sd ``[T]`` (continuous).
    """
    y = np.asarray(y, dtype=np.float64)
    noise = {"log_r": log_r, "log_conc": log_conc, "log_sigma": log_sigma}
    e, w = get_family(distribution).score_residuals(
        y, onehot, log_sf=log_sf, trials=total, noise=noise
    )
    informative = w > 0
    pearson = np.where(informative, e**2 / np.where(informative, w, 1.0), 0.0).sum(0)
    dof = np.maximum(informative.sum(0) - onehot.shape[1], 1)
    dispersion = np.maximum(pearson / dof, 1e-12)
    return NullModel(e, w, dispersion)


def score_statistics(model: NullModel, onehot: np.ndarray, bases: list[np.ndarray]) -> np.ndarray:
    """Scores ``S`` ``[len(bases), T]`` of one null model for several dose bases.

    ``bases[0]`` is usually the real dosage and the others its permutations; all share the
    residuals of ``model``.
    """
    u, v = score_parts(model, onehot, bases)
    return statistics(u, v, model.dispersion)


def score_parts(
    model: NullModel, onehot: np.ndarray, bases: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Score vectors ``U`` ``[P, T, d]`` and information ``V`` ``[P, T, d, d]`` (``P`` bases).

    The group intercepts are projected out; :func:`statistics` turns them into ``S``.
    """
    e, w = model.e, model.w
    n_groups = onehot.shape[1]
    d = bases[0].shape[1]
    ge = onehot.T @ e  # [C, T]
    gw = np.maximum(onehot.T @ w, 1e-300)
    pairs = [(k, j) for k in range(d) for j in range(k, d)]
    cols_e, cols_w = [], []
    for b in bases:
        cols_e.append(b)
        cols_w.append((onehot[:, :, None] * b[:, None, :]).reshape(len(b), n_groups * d))
        cols_w.append(np.column_stack([b[:, k] * b[:, j] for k, j in pairs]))
    be = (np.hstack(cols_e).T @ e).reshape(len(bases), d, -1)  # [P, d, T]
    bw = np.hstack(cols_w).T @ w
    width = n_groups * d + len(pairs)
    bw = bw.reshape(len(bases), width, -1)
    gwb = bw[:, : n_groups * d].reshape(len(bases), n_groups, d, -1)  # [P, C, d, T]
    wbb = bw[:, n_groups * d :]  # [P, pairs, T]
    mean_b = gwb / gw[None, :, None, :]  # weighted group means of the basis
    u = be - np.einsum("pcdt,ct->pdt", mean_b, ge)
    v = np.zeros((len(bases), d, d, e.shape[1]))
    for idx, (k, j) in enumerate(pairs):
        v[:, k, j] = v[:, j, k] = wbb[:, idx]
    v -= np.einsum("pckt,pcjt->pkjt", gwb, mean_b)
    v = np.moveaxis(v, 3, 1)  # [P, T, d, d]
    u = np.moveaxis(u, 2, 1)  # [P, T, d]
    ridge = 1e-10 * np.maximum(np.trace(v, axis1=-2, axis2=-1), 1e-300)
    v = v + ridge[..., None, None] * np.eye(d)
    return u, v


def constant_rows(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The most common row of ``basis`` and the cells that differ from it.

    ``None`` unless that row is shared by more than half of the cells (then
    :func:`score_parts_collapsed` pays off).
    """
    rows, inverse, counts = np.unique(basis, axis=0, return_inverse=True, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] * 2 <= len(basis):
        return None
    return rows[top], np.flatnonzero(np.asarray(inverse).ravel() != top)


def score_parts_collapsed(
    model: NullModel, onehot: np.ndarray, bases: list[np.ndarray], common: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score_parts` of bases in which most cells share the row ``common``.

    The score and information are sums over cells of basis terms times residuals or weights
    (and group sums of them), so the cells at ``common`` of each group can be merged into one
    cell holding their summed ``e`` and ``w``: per basis only the cells away from
    ``common`` (a target's few hundred cells among thousands of controls) and one merged cell
    per group enter. Equal to :func:`score_parts` up to rounding.
    """
    e, w = model.e, model.w
    ge, gw = onehot.T @ e, onehot.T @ w  # [C, T]
    n_groups = onehot.shape[1]
    us, vs = [], []
    for basis in bases:
        away = np.flatnonzero(np.any(basis != common, axis=1))
        sub_onehot = onehot[away]
        rest_e = ge - sub_onehot.T @ e[away]
        rest_w = gw - sub_onehot.T @ w[away]
        merged = NullModel(
            np.vstack([e[away], rest_e]), np.vstack([w[away], rest_w]), model.dispersion
        )
        cells = np.vstack([sub_onehot, np.eye(n_groups)])
        reduced = np.vstack([basis[away], np.broadcast_to(common, (n_groups, len(common)))])
        u, v = score_parts(merged, cells, [reduced])
        us.append(u)
        vs.append(v)
    return np.concatenate(us), np.concatenate(vs)


#: Test statistics of :func:`statistics`.
TEST_STATISTICS = ("quadratic", "combined")


def statistics(
    u: np.ndarray, v: np.ndarray, dispersion: np.ndarray, kind: str = "quadratic"
) -> np.ndarray:
    """Scores ``[P, T]`` from :func:`score_parts`.

    ``"quadratic"``: ``S = U' V^-1 U / (d phi)``, the score test on the whole dose basis.
    ``"combined"``: the Cauchy combination (ACAT) of that test's asymptotic p-value
    (``chi2(d)`` of ``d S``) and the p-value of the score test on the first basis column
    alone (the log dosage: a monotone response, ``chi2(1)``), returned as ``-log p`` of the
    combination. A monotone response, the common case, is then tested with one degree of
    freedom, while a U-shaped one keeps the full basis; the permutation null calibrates either
    statistic (it is a fixed function of ``U`` and ``V``).
    """
    d = u.shape[-1]
    phi = np.asarray(dispersion)[None, :]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        sol = np.linalg.solve(v, u[..., None])[..., 0]
        stat = np.einsum("ptd,ptd->pt", u, sol) / (d * phi)
        if kind == "combined" and d > 1:
            linear = u[..., 0] ** 2 / (v[..., 0, 0] * phi)
            stat = _cauchy_score(chi2.sf(linear, 1), chi2.sf(d * stat, d))
    return np.where(np.isfinite(stat), np.maximum(stat, 0.0), np.nan)


def _cauchy_score(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """``-log`` of the equal-weight Cauchy combination of two p-values (Liu and Xie 2020)."""
    p1 = np.clip(p1, 1e-300, 1.0)
    p2 = np.clip(p2, 1e-300, 1.0)
    # tan((1/2 - p) pi) = 1 / tan(p pi), stable for small p; arctan2 keeps p in (0, 1]
    t = 0.5 / np.tan(p1 * np.pi) + 0.5 / np.tan(p2 * np.pi)
    return -np.log(np.arctan2(1.0, t) / np.pi)


@dataclass
class Exchangeability:
    """Result of :func:`exchangeability`."""

    top_share: float  # share of top-real features' null scores among the pooled top half
    top_pvalue: float  # one-sided: their null scores are higher than those of the others
    lower_share: float  # share of lower-scoring real scores among the pooled top half
    lower_pvalue: float  # two-sided: real low scores differ from the matching null scores
    n_top: int
    n_lower: int
    passed: bool
    #: False when too few features had finite real and null scores to run the check
    #: (:data:`MIN_CHECK_FEATURES`); it then reports NaN shares and ``passed``
    checked: bool = True

    def as_dict(self) -> dict:
        """h5-serialisable record.

        ``checked`` only when the check could not run, so the records of checked fits stay as
        they were.
        """
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if self.checked:
            del out["checked"]
        return out


def _top_weights(pooled: np.ndarray) -> np.ndarray:
    """1 for values in the top half of ``pooled``, 0.5 for a tie at the boundary, else 0."""
    from scipy.stats import rankdata

    ranks = rankdata(pooled)
    half = len(pooled) / 2 + 0.5
    return np.where(ranks > half, 1.0, np.where(ranks == half, 0.5, 0.0))


def _share_test(
    a: np.ndarray,
    b: np.ndarray,
    rng: np.random.Generator,
    n_resamples: int,
    *,
    two_sided: bool,
) -> tuple[float, float]:
    """Share of ``a`` among the pooled top half and its resampling p-value.

    ``a`` and ``b`` are ``[units, values]``: whole units (features) are reassigned between the
    two sets, so values of one feature stay together.
    """
    pooled = np.concatenate([a, b])
    weight = _top_weights(pooled.ravel()).reshape(pooled.shape).sum(1)
    total = max(weight.sum(), 1e-12)
    observed = weight[: len(a)].sum() / total
    shares = np.empty(n_resamples)
    for r in range(n_resamples):
        shares[r] = weight[rng.permutation(len(pooled))[: len(a)]].sum() / total
    if two_sided:
        centre = len(a) / len(pooled)
        extreme = np.abs(shares - centre) >= abs(observed - centre) - 1e-12
    else:
        extreme = shares >= observed - 1e-12
    return float(observed), float((1 + extreme.sum()) / (1 + n_resamples))


def exchangeability(
    scores: np.ndarray,
    null_scores: np.ndarray,
    *,
    top_fraction: float = TOP_FRACTION,
    level: float = 0.01,
    margin: float = 0.1,
    n_resamples: int = 2000,
    rng: np.random.Generator | None = None,
) -> Exchangeability:
    """Check that null scores behave like the scores of features without a dose response.

    Two pooled top-k comparisons (top half of a pool of two equally large sets; a share of
    about 0.5 means the two sets are exchangeable):

    - **top**: the null scores of the ``top_fraction`` highest-scoring real features against
      the null scores of an equal number of lower-scoring real features (bottom half). A null
      that keeps part of the real signal - e.g. a permutation that leaves a group-level
      association between dosage and response, as within-group permutations do when the
      technical group carries dosage information - gives the top features higher null scores
      (share well above 0.5). Such a null is conservative but loses power, and every FDR
      estimate built on it is inflated.
    - **lower**: the real scores of the lower-scoring half against the null scores in the same
      quantile range of the null, matched through the estimated fraction of features without
      response (``pi0``, Storey's estimator at the null median). A share far from 0.5 means the
      null scores are not distributed like the real scores of flat features (above 0.5: too
      low, anti-conservative).

    p-values come from random reassignment of whole features (top) or values (lower) between
    the two sets (``n_resamples`` times). The check fails when a share departs from 0.5 by more
    than ``margin`` with a p-value below ``level`` (``top`` one-sided, ``lower`` two-sided):
    small departures of a few percent are expected from features whose noise the null model
    describes less well and cost little. With fewer than :data:`MIN_CHECK_FEATURES` features
    whose real and null scores are all finite there is nothing to compare: the result has NaN
    shares, ``passed=True`` and ``checked=False``.

    Parameters
    ----------
    scores
        Real scores ``[T]``.
    null_scores
        Null scores ``[P, T]`` (feature ``t`` in column ``t``).
    rng
        Generator of the reassignments (``None``: ``numpy.random.default_rng(0)``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    null = np.asarray(null_scores, dtype=np.float64)
    ok = np.isfinite(scores) & np.all(np.isfinite(null), axis=0)
    scores, null = scores[ok], null[:, ok]
    n = len(scores)
    if n < MIN_CHECK_FEATURES or null.shape[0] == 0:
        nan = float("nan")
        return Exchangeability(nan, 1.0, nan, 1.0, 0, 0, passed=True, checked=False)
    rng = np.random.default_rng(0) if rng is None else rng
    order = np.argsort(-scores, kind="stable")
    n_top = max(int(round(top_fraction * n)), 1)
    top = order[:n_top]
    lower = order[n // 2 :]
    pick = rng.choice(lower, size=min(n_top, len(lower)), replace=False)
    top_share, top_p = _share_test(
        null[:, top].T, null[:, pick].T, rng, n_resamples, two_sided=False
    )
    # lower half of the real scores against the matching part of the null
    flat_null = null.ravel()
    pi0 = float(np.clip(np.mean(scores <= np.median(flat_null)) / 0.5, 0.05, 1.0))
    cut = np.quantile(flat_null, min(1.0, 0.5 / pi0))
    real_low = scores[lower]
    null_low = flat_null[flat_null <= cut]
    size = min(len(real_low), len(null_low))
    real_low = rng.choice(real_low, size=size, replace=False)[:, None]
    null_low = rng.choice(null_low, size=size, replace=False)[:, None]
    lower_share, lower_p = _share_test(real_low, null_low, rng, n_resamples, two_sided=True)
    return Exchangeability(
        top_share=top_share,
        top_pvalue=top_p,
        lower_share=lower_share,
        lower_pvalue=lower_p,
        n_top=int(n_top),
        n_lower=int(size),
        passed=bool(
            not (top_p < level and top_share > 0.5 + margin)
            and not (lower_p < level and abs(lower_share - 0.5) > margin)
        ),
    )
