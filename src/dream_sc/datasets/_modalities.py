"""Per-modality samplers of the simulator: counts, junctions, isoforms and a continuous score.

Every builder draws the feature truth (curves on the link scale, technical effects, nuisance
parameters), samples the data for all cells in fixed-size chunks of cells (vectorised over
cells and features) and returns a registered :class:`~anndata.AnnData` with the truth in
``.var`` and ``.varm["true_technical"]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scipy.special import expit, logit

from .._registration import set_registration
from ._curves import DoseWindow, HillCurves, classify_shape, draw_hill_curves, enforce_min_change
from ._design import Design

_CHUNK = 2048
_MAX_WORKERS = 4
_MISSING_FRACTION = 0.1
#: Multinomial categories whose proportion moves by less than this are called flat.
MULTINOMIAL_MIN_CHANGE = 0.02
#: Minimal natural-scale change over the window of a responsive binomial/multinomial feature.
MIN_PROPORTION_CHANGE = 0.15


def feature_names(prefix: str, n: int, width: int) -> pd.Index:
    """``<prefix>0001``, ... zero-padded to at least ``width`` digits."""
    width = max(width, len(str(n)))
    return pd.Index([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)])


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=size))


def gamma_poisson(rng: np.random.Generator, mean: np.ndarray, dispersion: np.ndarray) -> np.ndarray:
    """Negative binomial draws (variance ``mean + dispersion * mean**2``) as gamma-Poisson."""
    shape = 1.0 / np.asarray(dispersion, dtype=np.float64)
    rate = rng.standard_gamma(np.broadcast_to(shape, np.shape(mean)))
    rate *= mean
    rate /= shape
    return rng.poisson(rate)


def _technical(rng: np.random.Generator, n_lines: int, n_features: int, sd: float) -> np.ndarray:
    """Technical effects (lines × features), Normal(0, sd), zero for the reference line."""
    delta = rng.normal(0.0, sd, size=(n_lines, n_features))
    delta[0] = 0.0
    return delta


def _technical_frame(delta: np.ndarray, var_names: pd.Index, design: Design) -> pd.DataFrame:
    columns = pd.Index([str(c) for c in design.cell_line.categories])
    return pd.DataFrame(delta.T.copy(), index=var_names, columns=columns)


def _csr_parts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Row-major nonzeros of a dense block: float32 data, int32 columns, row counts, width."""
    mask = values != 0
    flat = np.flatnonzero(mask)
    cols = (flat % max(values.shape[1], 1)).astype(np.int32)
    data = values.ravel()[flat].astype(np.float32)
    return data, cols, mask.sum(axis=1), values.shape[1]


def _n_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cores))


def _by_chunks(
    rng: np.random.Generator,
    n_cells: int,
    block: Callable[[slice, np.random.Generator], tuple[np.ndarray, ...]],
) -> list[sparse.csr_matrix]:
    """Run ``block`` on chunks of cells; stack each returned matrix as one float32 CSR.

    Every chunk gets its own generator spawned from ``rng``, so chunks can run in threads
    (numpy releases the GIL while sampling) and the result does not depend on their number.
    """
    starts = list(range(0, n_cells, _CHUNK))
    seeds = np.random.SeedSequence(rng.integers(0, 2**32, size=4)).spawn(len(starts))

    def run(i: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        rows = slice(starts[i], min(starts[i] + _CHUNK, n_cells))
        return [_csr_parts(m) for m in block(rows, np.random.default_rng(seeds[i]))]

    workers = min(_n_workers(), len(starts))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            chunks = list(pool.map(run, range(len(starts))))
    else:
        chunks = [run(i) for i in range(len(starts))]
    result = []
    for j in range(len(chunks[0])):
        store = [chunk[j] for chunk in chunks]
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(np.concatenate([part[2] for part in store]), out=indptr[1:])
        if indptr[-1] < np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)
        data = np.concatenate([part[0] for part in store])
        indices = np.concatenate([part[1] for part in store]).astype(indptr.dtype, copy=False)
        shape = (n_cells, store[0][3])
        result.append(sparse.csr_matrix((data, indices, indptr), shape=shape))
    return result


def _anndata(design: Design, x: object, var: pd.DataFrame, delta: np.ndarray) -> AnnData:
    adata = AnnData(X=x, obs=pd.DataFrame(index=design.obs_names.copy()), var=var)
    adata.varm["true_technical"] = _technical_frame(delta, var.index, design)
    return adata


def _truth_var(
    curves: HillCurves, index: pd.Index, shape: np.ndarray, responsive: np.ndarray
) -> pd.DataFrame:
    var = curves.to_frame(index)
    var.insert(0, "true_shape", np.asarray(shape, dtype=object).astype(str))
    var.insert(0, "true_responsive", np.asarray(responsive, dtype=bool))
    return var


def build_rna(
    rng: np.random.Generator,
    design: Design,
    window: DoseWindow,
    *,
    n_genes: int,
    frac_responsive: float,
    technical_sd: float,
) -> AnnData:
    """Counts of the target genes (first features) and ``n_genes - n_targets`` trans genes."""
    n_targets = len(design.targets)
    n_trans = n_genes - n_targets
    base = _log_uniform(rng, 0.1, 50.0, n_trans) * design.depth
    trans = draw_hill_curves(
        rng,
        n_trans,
        frac_responsive=frac_responsive,
        window=window,
        magnitude=(0.7, 2.5),
        baseline_link=np.log(base),
    )
    dispersion = np.concatenate(
        [_log_uniform(rng, 0.02, 0.3, n_targets), _log_uniform(rng, 0.01, 1.0, n_trans)]
    )
    delta = _technical(rng, len(design.cell_line.categories), n_genes, technical_sd)
    log_dose = np.log(design.doses)
    log_sf = np.log(design.sum_factor)
    codes = design.line_codes

    def block(rows: slice, gen: np.random.Generator) -> tuple[np.ndarray]:
        eta = np.concatenate([log_dose[rows], trans.link(design.primary_dose[rows])], axis=1)
        eta += delta[codes[rows]]
        eta += log_sf[rows, None]
        return (gamma_poisson(gen, np.exp(eta, out=eta), dispersion),)

    (x,) = _by_chunks(rng, design.n_cells, block)
    cis = HillCurves.flat(np.log([design.x_ntc[t] for t in design.targets]))
    cis.function[:] = "cis"
    names = pd.Index(list(design.targets)).append(feature_names("gene_", n_trans, 4))
    cis_shape = np.array(["increasing"] + ["flat"] * (n_targets - 1), dtype=object)
    var = pd.concat(
        [
            _truth_var(cis, names[:n_targets], cis_shape, np.zeros(n_targets, bool)),
            _truth_var(
                trans,
                names[n_targets:],
                classify_shape(trans.link(window.grid()), abs_tol=1e-9),
                trans.moving,
            ),
        ]
    )
    var["true_dispersion"] = dispersion
    adata = _anndata(design, x, var, delta)
    set_registration(adata, distribution="negbinom")
    return adata


def build_splicing(
    rng: np.random.Generator,
    design: Design,
    window: DoseWindow,
    *,
    n_junctions: int,
    frac_responsive: float,
    technical_sd: float,
    genes: pd.Index,
    concentration: np.ndarray | None = None,
) -> AnnData:
    """Junction usage: trials (NB, many zeros) in ``layers["total"]``, binomial successes.

    With ``concentration`` (one value per junction) each cell's success probability is drawn
    from ``Beta(c p, c (1 - p))`` around the curve's ``p``: beta-binomial successes, stored
    in ``var["true_concentration"]``.
    """
    psi = rng.uniform(0.1, 0.9, size=n_junctions)
    curves = draw_hill_curves(
        rng,
        n_junctions,
        frac_responsive=frac_responsive,
        window=window,
        magnitude=(0.8, 2.5),
        baseline_link=logit(psi),
    )
    enforce_min_change(
        curves,
        np.flatnonzero(curves.moving),
        expit,
        min_change=MIN_PROPORTION_CHANGE,
        window=window,
    )
    total_mean = _log_uniform(rng, 0.2, 20.0, n_junctions) * design.depth
    total_dispersion = rng.uniform(0.2, 1.0, size=n_junctions)
    gene = rng.choice(np.asarray(genes, dtype=object), size=n_junctions)
    delta = _technical(rng, len(design.cell_line.categories), n_junctions, technical_sd)
    codes = design.line_codes

    def block(rows: slice, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        total = gamma_poisson(gen, design.sum_factor[rows, None] * total_mean, total_dispersion)
        p = expit(curves.link(design.primary_dose[rows]) + delta[codes[rows]])
        if concentration is not None:
            p = _beta_around(gen, p, concentration)
        return gen.binomial(total, p), total

    successes, total = _by_chunks(rng, design.n_cells, block)
    names = feature_names("sj_", n_junctions, 4)
    shape = classify_shape(curves.link(window.grid()), abs_tol=1e-9)
    var = _truth_var(curves, names, shape, curves.moving)
    var.insert(0, "gene", np.asarray(gene).astype(str))
    var["true_total_mean"] = total_mean
    if concentration is not None:
        var["true_concentration"] = np.asarray(concentration, dtype=np.float64)
    adata = _anndata(design, successes, var, delta)
    adata.layers["total"] = total
    set_registration(adata, distribution="binomial", total_layer="total")
    return adata


def _beta_around(gen: np.random.Generator, p: np.ndarray, concentration: np.ndarray) -> np.ndarray:
    """Per-entry ``Beta(c p, c (1 - p))`` draws (mean ``p``; ``c`` broadcast over features)."""
    c = np.broadcast_to(concentration, p.shape)
    tiny = np.finfo(np.float64).tiny
    return gen.beta(np.maximum(c * p, tiny), np.maximum(c * (1.0 - p), tiny))


def _dirichlet_around(
    gen: np.random.Generator, p: np.ndarray, concentration: np.ndarray, codes: np.ndarray
) -> np.ndarray:
    """Per (cell, group) ``Dirichlet(c_g p)`` proportions as normalised gamma draws.

    ``concentration`` holds one value per group; groups whose draws all underflow to 0 keep
    ``p``.
    """
    g = gen.standard_gamma(np.maximum(concentration[codes] * p, np.finfo(np.float64).tiny))
    n_groups = int(codes.max()) + 1 if codes.size else 0
    sums = np.zeros((p.shape[0], n_groups))
    np.add.at(sums.T, codes, g.T)
    denom = sums[:, codes]
    return np.where(denom > 0, g / np.where(denom > 0, denom, 1.0), p)


def softmax_groups(eta: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Softmax of ``eta`` (rows × features) within the feature groups given by ``codes``."""
    indicator = np.zeros((codes.size, n_groups))
    indicator[np.arange(codes.size), codes] = 1.0
    e = np.exp(eta - eta.max(axis=1, keepdims=True))
    return e / (e @ indicator)[:, codes]


def _multinomial_groups(
    rng: np.random.Generator, totals: np.ndarray, p: np.ndarray, codes: np.ndarray
) -> np.ndarray:
    """Multinomial counts per (cell, group) by sequential conditional binomials.

    Loops only over the position of a category within its group (at most 4 here).
    """
    pos = np.zeros(codes.size, dtype=np.intp)
    last = np.ones(codes.size, dtype=bool)
    for j in range(1, codes.size):
        if codes[j] == codes[j - 1]:
            pos[j] = pos[j - 1] + 1
            last[j - 1] = False
    out = np.zeros(p.shape, dtype=np.int64)
    remaining = totals.astype(np.int64)
    mass = np.ones(totals.shape)
    for k in range(int(pos.max()) + 1 if pos.size else 0):
        cols = np.flatnonzero(pos == k)
        grp = codes[cols]
        left = mass[:, grp]
        cond = np.clip(
            np.divide(p[:, cols], left, out=np.ones_like(left), where=left > 1e-12), 0, 1
        )
        cond[:, last[cols]] = 1.0
        draw = rng.binomial(remaining[:, grp], cond)
        out[:, cols] = draw
        remaining[:, grp] -= draw
        mass[:, grp] -= p[:, cols]
    return out


def _group_sizes(rng: np.random.Generator, n_groups: int) -> np.ndarray:
    """2-4 categories per group; with 3+ groups every size occurs at least once."""
    sizes = rng.integers(2, 5, size=n_groups)
    if n_groups >= 3:
        sizes[rng.choice(n_groups, size=3, replace=False)] = [2, 3, 4]
    return sizes


def _isoform_curves(
    rng: np.random.Generator,
    sizes: np.ndarray,
    codes: np.ndarray,
    window: DoseWindow,
    frac_responsive: float,
) -> tuple[HillCurves, np.ndarray]:
    """Flat transcript curves except one moving transcript per responsive group."""
    n_groups = sizes.size
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    curves = HillCurves.flat(rng.normal(0.0, 1.0, size=codes.size))
    n_resp = int(round(frac_responsive * n_groups))
    groups = np.sort(rng.choice(n_groups, size=n_resp, replace=False))
    movers = starts[groups] + rng.integers(0, sizes[groups])
    drawn = draw_hill_curves(
        rng,
        n_resp,
        frac_responsive=1.0,
        window=window,
        magnitude=(1.0, 2.5),
        baseline_link=curves.a[movers],
    )
    curves.assign(movers, drawn)
    enforce_min_change(
        curves,
        movers,
        lambda eta: softmax_groups(eta, codes, n_groups),
        min_change=MIN_PROPORTION_CHANGE,
        window=window,
    )
    group_responsive = np.zeros(n_groups, dtype=bool)
    group_responsive[groups] = True
    return curves, group_responsive


def build_isoform(
    rng: np.random.Generator,
    design: Design,
    window: DoseWindow,
    *,
    n_groups: int,
    frac_responsive: float,
    technical_sd: float,
    concentration: np.ndarray | None = None,
) -> AnnData:
    """Transcript counts: NB totals per gene split by a multinomial over its 2-4 transcripts.

    With ``concentration`` (one value per gene) each cell's transcript proportions are drawn
    from ``Dirichlet(c π)`` around the curve's proportions ``π``: Dirichlet-multinomial counts,
    the gene's value stored for each transcript in ``var["true_concentration"]``.
    """
    sizes = _group_sizes(rng, n_groups)
    codes = np.repeat(np.arange(n_groups), sizes)
    curves, group_responsive = _isoform_curves(rng, sizes, codes, window, frac_responsive)
    delta = _technical(rng, len(design.cell_line.categories), codes.size, technical_sd)
    group_mean = (delta @ np.eye(n_groups)[codes]) / sizes
    delta = delta - group_mean[:, codes]
    total_mean = _log_uniform(rng, 2.0, 40.0, n_groups) * design.depth
    total_dispersion = rng.uniform(0.1, 0.6, size=n_groups)
    line = design.line_codes

    def block(rows: slice, gen: np.random.Generator) -> tuple[np.ndarray]:
        totals = gamma_poisson(gen, design.sum_factor[rows, None] * total_mean, total_dispersion)
        eta = curves.link(design.primary_dose[rows]) + delta[line[rows]]
        p = softmax_groups(eta, codes, n_groups)
        if concentration is not None:
            p = _dirichlet_around(gen, p, concentration, codes)
        return (_multinomial_groups(gen, totals, p, codes),)

    (x,) = _by_chunks(rng, design.n_cells, block)
    natural = softmax_groups(curves.link(window.grid()), codes, n_groups)
    shape = classify_shape(natural, abs_tol=MULTINOMIAL_MIN_CHANGE)
    names = feature_names("tx_", codes.size, 4)
    var = _truth_var(curves, names, shape, shape != "flat")
    var.insert(0, "group", feature_names("iso_gene_", n_groups, 3)[codes].to_numpy())
    var["true_group_responsive"] = group_responsive[codes]
    var["true_total_mean"] = total_mean[codes]
    if concentration is not None:
        var["true_concentration"] = np.asarray(concentration, dtype=np.float64)[codes]
    adata = _anndata(design, x, var, delta)
    set_registration(adata, distribution="multinomial", group_key="group")
    return adata


def build_score(
    rng: np.random.Generator,
    design: Design,
    window: DoseWindow,
    *,
    n_scores: int,
    frac_responsive: float,
    technical_sd: float,
) -> AnnData:
    """Continuous readouts ``eta(x) + delta + Normal(0, sigma)``, 10% missing (NaN)."""
    curves = draw_hill_curves(
        rng,
        n_scores,
        frac_responsive=frac_responsive,
        window=window,
        magnitude=(0.7, 2.5),
        baseline_link=rng.normal(0.0, 1.0, size=n_scores),
    )
    sigma = _log_uniform(rng, 0.2, 1.0, n_scores)
    delta = _technical(rng, len(design.cell_line.categories), n_scores, technical_sd)
    n = design.n_cells
    y = curves.link(design.primary_dose) + delta[design.line_codes]
    y += rng.normal(0.0, 1.0, size=(n, n_scores)) * sigma
    y[rng.random((n, n_scores)) < _MISSING_FRACTION] = np.nan
    names = feature_names("score_", n_scores, 3)
    shape = classify_shape(curves.link(window.grid()), abs_tol=1e-9)
    var = _truth_var(curves, names, shape, curves.moving)
    var["true_sigma"] = sigma
    adata = _anndata(design, y.astype(np.float32), var, delta)
    set_registration(adata, distribution="normal")
    return adata
