"""Many-target screens in which every target has its own responsive genes (low or high MOI).

:func:`~dream_sc.datasets.simulate_screen` makes every feature respond to the primary cis
gene only; a genome-scale screen has hundreds of targets, each changing its own set of genes
by its own amount, and some changing nothing. This simulator draws that structure:

- per target a number of responsive genes: none for a share ``null_fraction`` of the
  targets, ten times (``strong_factor``) the typical number for a share ``strong_fraction``,
  a log-normal number with a wide spread for the rest, scaled so that the mean over all
  targets is ``mean_responsive``;
- per responsive (target, gene) pair a single-Hill curve on the log scale anchored at the
  control dosage, ``eta = a + v (H(x; K, n) - H(x_ntc; K, n))``, so control cells and cells
  of other targets sit exactly at the gene's baseline;
- at high MOI a cell carries several guides and every target it carries moves its genes:
  the curves add on the log scale.

Counts are sampled in blocks of cells straight into float32 CSR (never a dense cells × genes
array), so 100,000 cells × 8,000 genes take minutes and about 2 GB.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse
from scipy.special import expit

from .._registration import set_registration
from ._design import (
    assign_high_moi,
    cell_names,
    draw_cell_lines,
    draw_sum_factors,
    draw_x_ntc,
    make_guides,
)
from ._modalities import _by_chunks, _log_uniform, _technical, feature_names, gamma_poisson
from ._normalise import estimate_size_factors

_LN2 = float(np.log(2.0))


def _responsive_counts(
    rng: np.random.Generator,
    n_targets: int,
    n_available: int,
    *,
    mean_responsive: float,
    null_fraction: float,
    strong_fraction: float,
    strong_factor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Responsive genes per target and its kind (``"null"``, ``"typical"``, ``"strong"``)."""
    kind = np.full(n_targets, "typical", dtype=object)
    order = rng.permutation(n_targets)
    n_null = int(round(null_fraction * n_targets))
    n_strong = int(round(strong_fraction * n_targets))
    kind[order[:n_null]] = "null"
    kind[order[n_null : n_null + n_strong]] = "strong"
    n_typical = n_targets - n_null - n_strong
    # mean over all targets = (n_typical * m + n_strong * factor * m) / n_targets
    weight = (n_typical + n_strong * strong_factor) / max(n_targets, 1)
    typical_mean = mean_responsive / max(weight, 1e-12)
    sigma = 0.8  # wide spread: the 10th-90th percentiles differ about 8-fold
    scale = np.exp(rng.normal(-0.5 * sigma**2, sigma, size=n_targets))
    mean = np.where(kind == "strong", strong_factor * typical_mean, typical_mean) * scale
    counts = np.where(kind == "null", 0, np.maximum(1, rng.poisson(mean)))
    return np.minimum(counts, n_available).astype(np.int64), kind.astype(str)


def _guide_matrix(
    rng: np.random.Generator,
    guides: pd.DataFrame,
    n_cells: int,
    *,
    moi: str,
    control_fraction: float,
    guides_per_cell: float,
    control_label: str,
) -> sparse.csr_matrix:
    """Cells × guides 0/1 assignment (one guide per cell at low MOI)."""
    if moi == "high":
        return sparse.csr_matrix(assign_high_moi(rng, len(guides), n_cells, guides_per_cell))
    is_control = (guides["target"] == control_label).to_numpy()
    n_control = int(round(control_fraction * n_cells))
    picks = np.concatenate(
        [
            rng.choice(np.flatnonzero(is_control), size=n_control),
            rng.choice(np.flatnonzero(~is_control), size=n_cells - n_control),
        ]
    )
    picks = rng.permutation(picks)
    ones = np.ones(n_cells, dtype=np.int8)
    return sparse.csr_matrix((ones, (np.arange(n_cells), picks)), shape=(n_cells, len(guides)))


def simulate_many_targets(
    n_cells: int = 20_000,
    n_genes: int = 2_000,
    n_targets: int = 100,
    *,
    seed: int = 0,
    moi: Literal["low", "high"] = "low",
    guides_per_target: int = 3,
    n_control_guides: int = 10,
    control_fraction: float = 0.1,
    guides_per_cell: float = 8.0,
    cell_lines: Sequence[str] = ("K562",),
    mean_responsive: float = 45.0,
    null_fraction: float = 0.2,
    strong_fraction: float = 0.1,
    strong_factor: float = 10.0,
    guide_log2_range: tuple[float, float] = (-3.0, -0.5),
    dose_noise: float = 0.3,
    effect_range: tuple[float, float] = (0.4, 1.5),
    baseline_median: float = 0.06,
    baseline_sd: float = 2.0,
    technical_sd: float = 0.3,
    control_label: str = "ntc",
    responders_per_target: int | None = None,
    target_names: Sequence[str] | None = None,
) -> MuData:
    """Simulate a many-target CRISPR screen in which every target has its own responders.

    Parameters
    ----------
    n_cells, n_genes, n_targets
        Size of the screen; the first ``n_targets`` genes are the targets' own (cis) genes.
    seed
        Seed of the :class:`numpy.random.Generator`; same arguments, same screen.
    moi
        ``"low"``: one guide per cell, a share ``control_fraction`` of them control guides.
        ``"high"``: ``max(1, Poisson(guides_per_cell))`` distinct guides per cell drawn from
        all guides (control guides included), their effects adding up per target.
    guides_per_target, n_control_guides
        Guides per target (``<TARGET>_1``, ...) and control guides (``NTC_1``, ...).
    control_fraction
        Share of control cells at low MOI (unused at high MOI).
    guides_per_cell
        Mean guides per cell at high MOI.
    cell_lines
        Technical groups, assigned at random; the first is the reference.
    mean_responsive
        Mean number of responsive genes per target over all targets.
    null_fraction, strong_fraction, strong_factor
        Share of targets without any effect, and of targets with ``strong_factor`` times the
        typical number of responsive genes.
    guide_log2_range
        Range of the guides' log2 effects on their target's dosage (CRISPRi by default).
    dose_noise
        Cell-to-cell sd of a cell's log2 dosage around its guides' value.
    effect_range
        Range of ``|v|``, the link-scale (natural log) change of a responsive gene between
        the control dosage and full knock-down; its sign is random.
    baseline_median, baseline_sd
        Log-normal distribution of the other genes' mean counts per unit size factor (median
        and sd of the natural log; capped at 500): few genes carry most of a cell's counts, as
        in real libraries. The defaults give about 85% zeros at ~0.4 counts per gene; on few
        genes a larger median and a smaller sd give libraries deep and even enough for
        precise size factors.
    technical_sd
        Sd of the non-reference lines' technical effects (log scale).
    control_label
        Target label of the control guides.
    responders_per_target
        Exactly this many responsive genes per target, each moved by one target only
        (disjoint sets); ``mean_responsive``, ``null_fraction`` and ``strong_fraction`` are
        then unused. ``None``: the varied numbers above, sets drawn independently per target.
    target_names
        Names of the targets (their cis genes); default ``TGT_0001``, ...

    Returns
    -------
    MuData with one ``rna`` modality (negbinom, float32 CSR) and global ``obs`` columns
    ``guide``, ``target`` (low MOI; at high MOI ``+``-joined guide sets and ``"multiple"``
    unless a single target is carried), ``n_guides``, ``cell_line``, ``sum_factor``
    (library size over its mean, as a user would start) and ``true_size_factor``; high MOI
    adds ``obsm["guide_assignment"]`` (cells × guides DataFrame of 0/1). Truth:
    ``obsm["true_log2_dose_change"]`` (CSR cells × targets: log2 change of each target's
    dosage, zero where not carried), ``uns["truth"]``: ``guides`` (``target``,
    ``log2_effect``), ``x_ntc`` (control dosage per target), ``targets``, ``target_kind``
    (``null``/``typical``/``strong``), ``pairs`` (one row per responsive target × gene:
    ``target``, ``feature``, ``v``, ``K``, ``n``, ``log_fc_strongest`` = link-scale change at
    the target's strongest guide), ``guide_targets``, ``control_label``, ``moi``, ``seed``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_many_targets(n_cells=600, n_genes=80, n_targets=5, seed=0)
    >>> mdata["rna"].shape
    (600, 80)
    """
    _check_arguments(n_cells, n_genes, n_targets, moi, null_fraction, strong_fraction)
    _check_responders(responders_per_target, n_targets, n_genes, target_names)
    rng = np.random.default_rng(seed)
    if target_names is None:
        targets = [str(t) for t in feature_names("TGT", n_targets, 4)]
    else:
        targets = [str(t) for t in target_names]
    guides = make_guides(
        rng,
        targets,
        guides_per_target=guides_per_target,
        n_ntc_guides=n_control_guides,
        log2_range=guide_log2_range,
        control_label=control_label,
    )
    x_ntc = draw_x_ntc(rng, targets, 1.0)
    assignment = _guide_matrix(
        rng,
        guides,
        n_cells,
        moi=moi,
        control_fraction=control_fraction,
        guides_per_cell=guides_per_cell,
        control_label=control_label,
    )
    # log2 dosage change per cell and target: sum of the carried guides' effects + cell noise
    guide_codes = pd.Categorical(guides["target"], categories=targets).codes
    on_target = guide_codes >= 0
    to_target = sparse.csr_matrix(
        (
            guides["log2_effect"].to_numpy()[on_target],
            (np.flatnonzero(on_target), guide_codes[on_target]),
        ),
        shape=(len(guides), n_targets),
    )
    carried = (assignment @ sparse.csr_matrix(to_target != 0, dtype=np.int8)).tocsr()
    change = (assignment @ to_target).tocsr()
    change = _with_cell_noise(rng, change, carried, dose_noise)

    genes = [*targets, *feature_names("gene_", n_genes - n_targets, 4)]
    if responders_per_target is None:
        counts, kind = _responsive_counts(
            rng,
            n_targets,
            n_genes - n_targets,
            mean_responsive=mean_responsive,
            null_fraction=null_fraction,
            strong_fraction=strong_fraction,
            strong_factor=strong_factor,
        )
        pools = None
    else:  # disjoint sets of exactly this many genes
        counts = np.full(n_targets, int(responders_per_target), dtype=np.int64)
        kind = np.where(counts > 0, "typical", "null").astype(str)
        order = n_targets + rng.permutation(n_genes - n_targets)
        k = int(responders_per_target)
        pools = [order[j * k : (j + 1) * k] for j in range(n_targets)]
    pairs = _draw_pairs(
        rng, targets, counts, n_targets, n_genes, x_ntc, guides, effect_range, pools
    )
    base = np.minimum(rng.normal(np.log(baseline_median), baseline_sd, n_genes), np.log(500.0))
    base[:n_targets] = np.log([x_ntc[t] for t in targets])
    # dispersion falls with expression as in real data (a DESeq2-like trend, log-normal
    # scatter): the genes that carry a library are the least noisy ones
    trend = np.minimum(2.0, 0.02 + 0.2 / np.exp(base))
    dispersion = trend * np.exp(rng.normal(0.0, 0.3, n_genes))
    dispersion[:n_targets] = _log_uniform(rng, 0.02, 0.3, n_targets)
    lines = draw_cell_lines(rng, n_cells, tuple(cell_lines))
    delta = _technical(rng, len(cell_lines), n_genes, technical_sd)
    true_sf = draw_sum_factors(rng, n_cells)
    log_sf = np.log(true_sf)
    codes = np.asarray(lines.codes)
    log_x_ntc = np.log([x_ntc[t] for t in targets])
    by_target = [pairs[pairs["target_index"] == j] for j in range(n_targets)]

    def block(rows: slice, gen: np.random.Generator) -> tuple[np.ndarray]:
        eta = np.repeat(base[None, :], rows.stop - rows.start, axis=0)
        eta += delta[codes[rows]]
        eta += log_sf[rows, None]
        sub = change[rows].tocsc()
        for j in np.flatnonzero(np.diff(sub.indptr)):
            cells = sub.indices[sub.indptr[j] : sub.indptr[j + 1]]
            log2_change = sub.data[sub.indptr[j] : sub.indptr[j + 1]]
            eta[cells, j] += _LN2 * log2_change  # the target's own gene follows its dosage
            curves = by_target[j]
            if curves.empty:
                continue
            genes_j = curves["feature_index"].to_numpy()
            K, n = curves["K"].to_numpy(), curves["n"].to_numpy()
            x = np.exp(log_x_ntc[j] + _LN2 * log2_change)
            moved = _hill(x, K, n) - _hill(np.exp(log_x_ntc[j : j + 1]), K, n)
            eta[np.ix_(cells, genes_j)] += moved * curves["v"].to_numpy()
        np.exp(eta, out=eta)
        return (gamma_poisson(gen, eta, dispersion),)

    (x,) = _by_chunks(rng, n_cells, block)
    return _assemble(
        x,
        genes=genes,
        guides=guides,
        assignment=assignment,
        change=change,
        lines=lines,
        true_sf=true_sf,
        dispersion=dispersion,
        pairs=pairs,
        truth={
            "x_ntc": x_ntc,
            "targets": targets,
            "target_kind": dict(zip(targets, kind, strict=True)),
            "control_label": control_label,
            "moi": moi,
            "seed": int(seed),
        },
    )


def _hill(x: np.ndarray, K: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``x^n / (K^n + x^n)`` for doses (rows) and curves (columns)."""
    return expit(n[None, :] * (np.log(x)[:, None] - np.log(K)[None, :]))


def _with_cell_noise(
    rng: np.random.Generator, change: sparse.csr_matrix, carried: sparse.csr_matrix, sd: float
) -> sparse.csr_matrix:
    """Add a Normal(0, sd) cell effect to every carried (cell, target) log2 change."""
    carried = carried.tocsr()
    carried.sort_indices()
    out = carried.astype(np.float64)
    out.data = np.asarray(change[carried.nonzero()]).ravel() + rng.normal(0.0, sd, carried.nnz)
    return out


def _draw_pairs(
    rng: np.random.Generator,
    targets: list[str],
    counts: np.ndarray,
    n_targets: int,
    n_genes: int,
    x_ntc: dict[str, float],
    guides: pd.DataFrame,
    effect_range: tuple[float, float],
    pools: list[np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per responsive (target, gene) pair with its single-Hill curve.

    ``pools``: the genes of each target (disjoint sets); ``None`` draws them per target.
    """
    rows = []
    for j, (target, k) in enumerate(zip(targets, counts, strict=True)):
        if k == 0:
            continue
        if pools is None:
            genes = n_targets + rng.choice(n_genes - n_targets, size=int(k), replace=False)
        else:
            genes = pools[j]
        effects = guides.loc[guides["target"] == target, "log2_effect"].to_numpy()
        lo, hi = float(effects.min()), float(effects.max())
        # K between the strongest guide's and the weakest guide's dosage (on the link scale)
        K = x_ntc[target] * 2.0 ** rng.uniform(lo, hi, size=int(k))
        n = rng.uniform(1.0, 4.0, size=int(k))
        v = rng.choice([-1.0, 1.0], size=int(k)) * rng.uniform(*effect_range, size=int(k))
        x_low = np.array([x_ntc[target] * 2.0**lo])
        strongest = (_hill(x_low, K, n) - _hill(np.array([x_ntc[target]]), K, n))[0] * v
        rows.append(
            pd.DataFrame(
                {
                    "target": target,
                    "target_index": j,
                    "feature_index": genes,
                    "v": v,
                    "K": K,
                    "n": n,
                    "log_fc_strongest": strongest,
                }
            )
        )
    if not rows:
        columns = ["target", "target_index", "feature_index", "v", "K", "n", "log_fc_strongest"]
        return pd.DataFrame(columns=columns)
    return pd.concat(rows, ignore_index=True)


def _assemble(
    x: sparse.csr_matrix,
    *,
    genes: list[str],
    guides: pd.DataFrame,
    assignment: sparse.csr_matrix,
    change: sparse.csr_matrix,
    lines: pd.Categorical,
    true_sf: np.ndarray,
    dispersion: np.ndarray,
    pairs: pd.DataFrame,
    truth: dict,
) -> MuData:
    n_cells = x.shape[0]
    obs_names = cell_names(n_cells)
    var = pd.DataFrame({"true_dispersion": dispersion}, index=pd.Index(genes))
    rna = AnnData(X=x, obs=pd.DataFrame(index=obs_names), var=var)
    set_registration(rna, distribution="negbinom")
    with warnings.catch_warnings():
        # mudata 0.3 announces a change of its update() default; irrelevant here
        warnings.simplefilter("ignore", FutureWarning)
        mdata = MuData({"rna": rna})
    control = truth["control_label"]
    names = guides.index.to_numpy()
    guide_target = guides["target"].to_numpy()
    guide_label, target_label = [], []
    for row in range(n_cells):
        on = assignment.indices[assignment.indptr[row] : assignment.indptr[row + 1]]
        guide_label.append("+".join(names[np.sort(on)]))
        hit = sorted({str(t) for t in guide_target[on]} - {control})
        target_label.append(hit[0] if len(hit) == 1 else (control if not hit else "multiple"))
    mdata.obs["guide"] = guide_label
    mdata.obs["target"] = target_label
    mdata.obs["n_guides"] = np.diff(assignment.indptr).astype(np.int64)
    mdata.obs["cell_line"] = pd.Categorical(np.asarray(lines), categories=lines.categories)
    estimate_size_factors(mdata, true_sf)  # as a user would: pp.sum_factors' default
    if truth["moi"] == "high":
        mdata.obsm["guide_assignment"] = pd.DataFrame(
            assignment.toarray().astype(np.float32), index=obs_names, columns=guides.index
        )
    mdata.obsm["true_log2_dose_change"] = change.astype(np.float32)
    pairs = pairs.assign(feature=[genes[i] for i in pairs["feature_index"]])
    mdata.uns["truth"] = {
        **truth,
        "guides": guides.copy(),
        "guide_targets": {str(g): str(t) for g, t in guides["target"].items()},
        "pairs": pairs.drop(columns=["target_index", "feature_index"]).reset_index(drop=True),
    }
    return mdata


def _check_responders(responders_per_target, n_targets, n_genes, target_names) -> None:
    if target_names is not None:
        names = [str(t) for t in target_names]
        if len(names) != n_targets or len(set(names)) != n_targets:
            raise ValueError(
                f"target_names must hold {n_targets} distinct names (one per target); got "
                f"{names[:5]}{'...' if len(names) > 5 else ''}."
            )
    if responders_per_target is None:
        return
    n_trans = n_genes - n_targets
    if responders_per_target < 0 or responders_per_target * n_targets > n_trans:
        raise ValueError(
            f"responders_per_target={responders_per_target} x {n_targets} targets needs that "
            f"many of the {n_trans} trans genes; lower it or raise n_genes."
        )


def _check_arguments(n_cells, n_genes, n_targets, moi, null_fraction, strong_fraction) -> None:
    if moi not in ("low", "high"):
        raise ValueError(f"moi must be 'low' or 'high'; got {moi!r}.")
    if n_targets < 1 or n_genes <= n_targets:
        raise ValueError(
            f"n_genes ({n_genes}) must exceed n_targets ({n_targets}) >= 1: the first n_targets "
            "genes are the targets' own genes."
        )
    if n_cells < 1:
        raise ValueError(f"n_cells must be positive; got {n_cells}.")
    if not 0 <= null_fraction + strong_fraction <= 1 or min(null_fraction, strong_fraction) < 0:
        raise ValueError(
            "null_fraction and strong_fraction must be non-negative and sum to at most 1; got "
            f"{null_fraction} and {strong_fraction}."
        )
