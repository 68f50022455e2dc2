"""The naive guide-level dose-response fit that dream_sc has to beat.

What a careful analyst does without a model of the cells:

1. correct every count for its cell's size factor and technical group:
   ``y_it / s_i / exp(delta_{c(i),t})`` (``delta`` = the true technical effects of a simulation
   or dream_sc's fitted ones; the reference group has ``delta = 0``);
2. average the corrected expression over the cells of each guide (pseudobulk means);
3. guide dosage = the guide's mean corrected cis expression (every NTC guide is its own point);
   a cell's dosage = its guide's dosage, or (noisier) its own corrected cis counts;
4. per gene, fit ``log m_g = a + v * x_g^n / (K^n + x_g^n)`` to the guides' (dosage, mean)
   pairs with :func:`scipy.optimize.curve_fit` (least squares on the log scale, unweighted;
   ``K`` within 4x of the guide dosage range, ``n`` in [0.5, 10], ``|v|`` within twice the
   range of the log means so the curve cannot shoot off between or beyond the guides),
   compare with the flat model ``log m_g = a`` by an F-test and turn the p-values into
   Benjamini-Hochberg q-values.

It ignores the per-cell noise, the uncertainty of the dosage, the unequal number of cells per
guide and the uncertainty of the technical effects, so its F-test is expected to be
anti-conservative.

Usage (one screen, prints the per-gene table)::

    python benchmarks/naive_baseline.py --cells 3000 --genes 300 --seed 0
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.stats import f as f_dist

HILL_PARAMS = ("a", "v", "K", "n")
N_BOUNDS = (0.5, 10.0)
K_STRETCH = 4.0  # K may lie this factor beyond the observed guide dosage range
V_STRETCH = 2.0  # |v| and a are bounded by this multiple of the range of the log guide means


# ----------------------------------------------------------------------------- statistics
def bh_qvalues(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (monotone, capped at 1); NaN p-values stay NaN.

    Examples
    --------
    >>> bh_qvalues(np.array([0.01, 0.04, 0.03, 0.5])).round(3).tolist()
    [0.04, 0.053, 0.053, 0.5]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def hill(x: np.ndarray, a: float, v: float, K: float, n: float) -> np.ndarray:
    """``a + v * x^n / (K^n + x^n)`` (log-scale guide mean as a function of dosage ``x``)."""
    x = np.asarray(x, dtype=np.float64)
    return a + v / (1.0 + (K / x) ** n)


def _grid_start(log_dose: np.ndarray, y: np.ndarray, n_k: int = 8) -> np.ndarray:
    """Best (a, v, K, n) per gene on a (K, n) grid with a and v by least squares (vectorised).

    ``y`` is guides x genes. Returns genes x 4.
    """
    lo, hi = log_dose.min(), log_dose.max()
    ks = np.exp(np.linspace(lo, hi, n_k))
    x = np.exp(log_dose)
    best_rss = np.full(y.shape[1], np.inf)
    best = np.zeros((y.shape[1], 4))
    ybar = y.mean(0)
    for K in ks:
        for n in (1.0, 2.0, 4.0):
            h = 1.0 / (1.0 + (K / x) ** n)
            hc = h - h.mean()
            denom = float(hc @ hc)
            if denom < 1e-12:
                continue
            v = hc @ (y - ybar) / denom
            a = ybar - v * h.mean()
            rss = ((y - a - np.outer(h, v)) ** 2).sum(0)
            better = rss < best_rss
            best_rss[better] = rss[better]
            best[better] = np.column_stack([a, v, np.full(y.shape[1], K), np.full(y.shape[1], n)])[
                better
            ]
    return best


def fit_hill_curves(
    dose: np.ndarray,
    means: np.ndarray,
    *,
    features: pd.Index | None = None,
    pseudocount: float = 0.01,
) -> pd.DataFrame:
    """Per-gene Hill fit of log guide means on guide dosage, F-test against a flat line.

    Parameters
    ----------
    dose
        Guide dosages (length G, positive).
    means
        Guide means, G x T (technically corrected expression per unit size factor).
    features
        Feature names (index of the result).
    pseudocount
        Added to the means before the log, relative to each gene's mean over guides
        (``log(m + pseudocount * mean(m))``), so a guide with zero mean stays finite.

    Returns
    -------
    DataFrame indexed by feature: ``a``, ``v``, ``K``, ``n`` (curve
    ``exp(a + v x^n / (K^n + x^n))`` on the scale of ``means``), ``rss_hill``, ``rss_flat``,
    ``F``, ``pvalue``, ``qvalue`` (BH), ``log2_response`` (``v / log 2``), ``fit_ok``
    (curve_fit converged; otherwise the best grid start is kept). Genes with zero mean in every
    guide, or with fewer than 5 guides, get NaN p-values.
    """
    dose = np.asarray(dose, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or means.shape[0] != dose.size:
        raise ValueError(f"means must be guides x genes with {dose.size} rows; got {means.shape}.")
    if not np.all(np.isfinite(dose)) or np.any(dose <= 0):
        raise ValueError("dose must hold positive finite guide dosages.")
    n_guides, n_genes = means.shape
    features = pd.RangeIndex(n_genes) if features is None else pd.Index(features)
    level = means.mean(0)
    usable = np.isfinite(level) & (level > 0)
    y = np.log(means + pseudocount * np.where(usable, level, 1.0))
    log_dose = np.log(dose)
    start = _grid_start(log_dose, np.where(usable, y, 0.0))
    k_lo, k_hi = dose.min() / K_STRETCH, dose.max() * K_STRETCH
    start[:, 2] = np.clip(start[:, 2], k_lo * 1.0001, k_hi / 1.0001)
    # amplitude within V_STRETCH x the observed range of the log means (no wild extrapolation)
    spread = V_STRETCH * (y.max(0) - y.min(0)) + 1e-6
    start[:, 1] = np.clip(start[:, 1], -spread * 0.9999, spread * 0.9999)
    start[:, 0] = np.clip(start[:, 0], y.min(0) - spread * 0.9999, y.max(0) + spread * 0.9999)
    params = start.copy()
    ok = np.zeros(n_genes, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in np.flatnonzero(usable):
            lower = [y[:, t].min() - spread[t], -spread[t], k_lo, N_BOUNDS[0]]
            upper = [y[:, t].max() + spread[t], spread[t], k_hi, N_BOUNDS[1]]
            try:
                popt, _ = curve_fit(
                    hill, dose, y[:, t], p0=start[t], bounds=(lower, upper), max_nfev=2000
                )
            except (RuntimeError, ValueError):
                continue
            rss_new = ((y[:, t] - hill(dose, *popt)) ** 2).sum()
            rss_old = ((y[:, t] - hill(dose, *start[t])) ** 2).sum()
            if np.isfinite(rss_new) and rss_new <= rss_old:
                params[t] = popt
            ok[t] = True
    fitted = np.column_stack([hill(dose, *params[t]) for t in range(n_genes)]) if n_genes else y
    rss_hill = ((y - fitted) ** 2).sum(0)
    rss_flat = ((y - y.mean(0)) ** 2).sum(0)
    df1, df2 = len(HILL_PARAMS) - 1, n_guides - len(HILL_PARAMS)
    with np.errstate(divide="ignore", invalid="ignore"):
        F = (
            ((rss_flat - rss_hill) / df1) / (rss_hill / df2)
            if df2 > 0
            else np.full(n_genes, np.nan)
        )
    F = np.where(usable, np.maximum(F, 0.0), np.nan)
    pvalue = np.where(np.isfinite(F), f_dist.sf(F, df1, max(df2, 1)), np.nan)
    out = pd.DataFrame(params, index=features, columns=list(HILL_PARAMS))
    out.loc[~usable, list(HILL_PARAMS)] = np.nan
    out["rss_hill"] = np.where(usable, rss_hill, np.nan)
    out["rss_flat"] = np.where(usable, rss_flat, np.nan)
    out["F"] = F
    out["pvalue"] = pvalue
    out["qvalue"] = bh_qvalues(pvalue)
    out["log2_response"] = out["v"] / np.log(2.0)
    out["fit_ok"] = ok
    return out


def hill_curve(params: pd.DataFrame, dose: np.ndarray) -> pd.DataFrame:
    """Evaluate fitted naive curves (natural scale) at ``dose``: features x doses.

    Examples
    --------
    >>> p = pd.DataFrame({"a": [0.0], "v": [np.log(4.0)], "K": [2.0], "n": [1.0]}, index=["g"])
    >>> hill_curve(p, np.array([2.0])).iloc[0, 0]
    2.0
    """
    x = np.atleast_1d(np.asarray(dose, dtype=np.float64))
    a, v, K, n = (params[c].to_numpy(dtype=np.float64)[:, None] for c in HILL_PARAMS)
    values = np.exp(a + v / (1.0 + (K / x[None, :]) ** n))
    return pd.DataFrame(values, index=params.index, columns=pd.Index(x, name="dose"))


# ----------------------------------------------------------------------------- corrections
def technical_effects(
    mdata: MuData,
    *,
    modality: str = "rna",
    source: Literal["true", "dream"] = "true",
    key: str = "dream_technical",
) -> pd.DataFrame:
    """Technical effects (log scale) as features x groups, reference group column all 0.

    ``source="true"``: ``mdata[modality].varm["true_technical"]`` of a simulation;
    ``"dream"``: the posterior means ``effect_<group>_mean`` of :func:`dream_sc.tl.fit_technical`.
    """
    adata = mdata[modality]
    if source == "true":
        if "true_technical" not in adata.varm:
            raise KeyError(f"{modality!r} has no varm['true_technical'] (not a simulation).")
        table = adata.varm["true_technical"]
        return pd.DataFrame(
            np.asarray(table, dtype=np.float64),
            index=adata.var_names,
            columns=pd.Index(table.columns.astype(str)),
        )
    if source == "dream":
        if key not in adata.uns or key not in adata.varm:
            raise KeyError(f"No technical fit {key!r} in {modality!r}; run ds.tl.fit_technical.")
        groups = [str(g) for g in adata.uns[key]["groups"]]
        frame = adata.varm[key]
        out = pd.DataFrame(0.0, index=adata.var_names, columns=pd.Index(groups))
        for g in groups[1:]:
            out[g] = frame[f"effect_{g}_mean"].to_numpy(dtype=np.float64)
        return out
    raise ValueError(f"source must be 'true' or 'dream'; got {source!r}.")


def _cis_cells(
    obs: pd.DataFrame, cis_target: str, target_key: str, control_label: str
) -> np.ndarray:
    target = obs[target_key].astype(str).to_numpy()
    return (target == control_label) | (target == cis_target)


def guide_pseudobulk(
    counts,
    sum_factor: np.ndarray,
    group: np.ndarray,
    guide: np.ndarray,
    effects: np.ndarray,
) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """Per-guide means of ``counts / sum_factor / exp(effects[group])``.

    Parameters
    ----------
    counts
        Cells x features counts (dense or scipy sparse; kept sparse).
    sum_factor
        Size factor per cell.
    group
        Integer technical group per cell (column of ``effects``).
    guide
        Guide label per cell.
    effects
        Features x groups technical effects on the log scale.

    Returns
    -------
    ``(guides, n_cells, means)``: guide labels (sorted), cells per guide and guides x features
    means of the corrected expression.
    """
    codes, guides = pd.factorize(np.asarray(guide), sort=True)
    n_cells = len(codes)
    n_groups = effects.shape[1]
    scaled = sparse.csr_matrix(counts, dtype=np.float64).multiply(1.0 / sum_factor[:, None]).tocsr()
    # sum over cells of (guide, group) combination, then scale each group by exp(-effect)
    combo = codes * n_groups + np.asarray(group)
    indicator = sparse.csr_matrix(
        (np.ones(n_cells), (combo, np.arange(n_cells))), shape=(len(guides) * n_groups, n_cells)
    )
    sums = np.asarray((indicator @ scaled).todense()).reshape(len(guides), n_groups, -1)
    corrected = (sums * np.exp(-effects.T)[None, :, :]).sum(1)
    size = np.bincount(codes, minlength=len(guides))
    return pd.Index(guides, name="guide"), size, corrected / size[:, None]


def _modality_inputs(mdata, modality, cells, technical, technical_key, sum_factor_key, layer):
    adata = mdata[modality]
    idx = adata.obs_names.get_indexer(cells)
    if np.any(idx < 0):
        raise KeyError(f"Some cells are missing from modality {modality!r}.")
    counts = adata.layers[layer] if layer else adata.X
    counts = counts[idx]
    obs = mdata.obs.loc[cells]
    groups = obs[technical_key].astype(str).to_numpy()
    group_code = pd.Index(technical.columns).get_indexer(groups)
    if np.any(group_code < 0):
        raise KeyError(
            f"Technical groups {sorted(set(groups) - set(technical.columns))} have no effects."
        )
    effects = technical.reindex(adata.var_names).to_numpy(dtype=np.float64)
    sf = obs[sum_factor_key].to_numpy(dtype=np.float64)
    return adata, counts, sf, group_code, effects


# ----------------------------------------------------------------------------- pipeline
@dataclass
class NaiveResult:
    """Output of :func:`naive_fit`.

    Attributes
    ----------
    genes
        Per gene: Hill parameters, ``pvalue``, ``qvalue``, ... (see :func:`fit_hill_curves`),
        indexed by var_names (the cis gene excluded).
    guides
        Per guide: ``target``, ``n_cells``, ``dose`` (naive guide dosage).
    cells
        Per used cell: ``guide``, ``dose_guide`` (its guide's dosage), ``dose_cell`` (its own
        corrected cis counts plus ``cell_pseudocount``).
    means
        Guides x genes corrected pseudobulk means.
    """

    genes: pd.DataFrame
    guides: pd.DataFrame
    cells: pd.DataFrame
    means: pd.DataFrame

    def curve(self, dose: np.ndarray) -> pd.DataFrame:
        """Fitted curves (natural scale) at ``dose``: genes x doses."""
        return hill_curve(self.genes, dose)


def naive_fit(
    mdata: MuData,
    *,
    cis_feature: str,
    technical: pd.DataFrame,
    modality: str = "rna",
    cis_target: str | None = None,
    guide_key: str = "guide",
    target_key: str = "target",
    control_label: str = "ntc",
    technical_key: str = "cell_line",
    sum_factor_key: str = "sum_factor",
    layer: str | None = None,
    exclude: list[str] | None = None,
    pseudocount: float = 0.01,
    cell_pseudocount: float = 0.5,
) -> NaiveResult:
    """Naive guide-level dose-response fit of every gene of a count modality (low MOI).

    Parameters
    ----------
    mdata
        The screen.
    cis_feature
        The targeted gene (var name); its corrected guide means are the guide dosages.
    technical
        Features x technical groups effects on the log scale (reference column 0), e.g. from
        :func:`technical_effects`.
    modality
        Count modality.
    cis_target
        Target label of the cis gene (default ``cis_feature``).
    guide_key, target_key, control_label, technical_key, sum_factor_key, layer
        obs columns, control label and data layer.
    exclude
        Further features not to fit (the cis gene is always excluded).
    pseudocount
        Relative pseudocount of the log guide means (see :func:`fit_hill_curves`).
    cell_pseudocount
        Added to a cell's own cis count for its per-cell naive dosage (so zero counts stay > 0).

    Returns
    -------
    :class:`NaiveResult`.
    """
    cis_target = cis_feature if cis_target is None else cis_target
    obs = mdata.obs
    use = _cis_cells(obs, cis_target, target_key, control_label)
    cells = obs.index[use]
    adata, counts, sf, group_code, effects = _modality_inputs(
        mdata, modality, cells, technical, technical_key, sum_factor_key, layer
    )
    guide = obs.loc[cells, guide_key].astype(str).to_numpy()
    guides, n_cells, means = guide_pseudobulk(counts, sf, group_code, guide, effects)
    cis = adata.var_names.get_loc(cis_feature)
    dose = means[:, cis]
    if np.any(dose <= 0):
        raise ValueError(
            f"Guides {list(guides[dose <= 0])} have no {cis_feature} counts; their naive dosage is 0."
        )
    skip = {cis_feature, *(exclude or [])}
    keep = np.array([f not in skip for f in adata.var_names])
    genes = fit_hill_curves(
        dose, means[:, keep], features=adata.var_names[keep], pseudocount=pseudocount
    )
    first_target = obs.loc[cells].groupby(guide_key, observed=True)[target_key].first().astype(str)
    guide_table = pd.DataFrame(
        {"target": first_target.reindex(guides).to_numpy(), "n_cells": n_cells, "dose": dose},
        index=guides,
    )
    cis_counts = counts[:, cis]
    cis_counts = np.asarray(
        cis_counts.todense() if sparse.issparse(cis_counts) else cis_counts
    ).ravel()
    cell_dose = (cis_counts + cell_pseudocount) / sf / np.exp(effects[cis, group_code])
    cell_table = pd.DataFrame(
        {
            "guide": guide,
            "dose_guide": guide_table["dose"].reindex(guide).to_numpy(),
            "dose_cell": cell_dose,
        },
        index=cells,
    )
    mean_table = pd.DataFrame(means, index=guides, columns=adata.var_names)
    return NaiveResult(genes=genes, guides=guide_table, cells=cell_table, means=mean_table)


def main() -> None:  # pragma: no cover - command line
    import dream_sc as ds

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--genes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guides-per-target", type=int, default=10)
    parser.add_argument("--dose-noise", type=float, default=0.3)
    parser.add_argument("--frac-responsive", type=float, default=0.3)
    args = parser.parse_args()
    mdata = ds.datasets.simulate_screen(
        n_cells=args.cells,
        n_genes=args.genes,
        n_junctions=0,
        n_isoform_genes=0,
        seed=args.seed,
        guides_per_target=args.guides_per_target,
        dose_noise=args.dose_noise,
        frac_responsive=args.frac_responsive,
    )
    truth = mdata.uns["truth"]
    res = naive_fit(
        mdata,
        cis_feature=truth["cis_feature"],
        technical=technical_effects(mdata),
        exclude=list(truth["targets"]),
    )
    res.genes["true_responsive"] = mdata["rna"].var["true_responsive"].reindex(res.genes.index)
    pd.set_option("display.width", 160)
    print(res.guides.join(truth["guides"]["dose"].rename("true_dose")))
    print(res.genes.sort_values("pvalue").head(20))
    print(
        f"q < 0.1: {(res.genes['qvalue'] < 0.1).sum()} of {len(res.genes)} genes; "
        f"responsive: {int(res.genes['true_responsive'].sum())}"
    )


if __name__ == "__main__":
    main()
