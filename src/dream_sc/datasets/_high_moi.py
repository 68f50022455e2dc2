"""High-MOI screens in which every target has its own responding genes.

:func:`~dream_sc.datasets.simulate_screen` makes every feature respond to the primary target
only. :func:`simulate_high_moi` wraps it (``moi="high"``: guides, dosages of every target gene,
cell lines, size factors and the target genes' counts come from it unchanged) and redraws the
trans genes so that each target moves its own disjoint set of genes, the curves of all targets
a cell carries adding on the log scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from ._modalities import gamma_poisson
from ._simulate import simulate_screen


def hill(x: np.ndarray, K: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``x^n / (K^n + x^n)`` (dosage ``x`` on the natural scale)."""
    return 1.0 / (1.0 + (K / x) ** n)


def simulate_high_moi(
    n_cells: int = 2000,
    n_genes: int = 200,
    n_targets: int = 5,
    *,
    guides_per_target: int = 4,
    guides_per_cell: float = 8.0,
    n_ntc_guides: int = 5,
    responders_per_target: int = 5,
    guide_umis: bool = False,
    seed: int = 0,
) -> MuData:
    """Simulate a high-MOI CRISPRi/a screen with per-target responders and known truth.

    Each trans gene responds to at most one target ``t``; its log mean moves by
    ``v * (H(x_t) - H(x_ntc_t))`` with ``H`` a Hill function of the dosage ``x_t`` of the
    target gene (``K`` between 1/8 and 1/2 of the control dosage, slope 1.5-3, ``|v|`` 1-2.5,
    random sign), so the control dosage is the baseline. A cell's expected count multiplies
    the effects of all the targets it carries.

    Parameters
    ----------
    n_cells, n_genes, n_targets
        Screen size (``n_genes`` includes the target genes, which come first).
    guides_per_target, guides_per_cell, n_ntc_guides
        As in :func:`~dream_sc.datasets.simulate_screen` (``max(1, Poisson)`` guides a cell).
    responders_per_target
        Trans genes moved by each target (at most ``(n_genes - n_targets) // n_targets``).
    guide_umis
        Also add a ``guides`` modality of guide UMI counts (carried guides: negative binomial
        with mean 40; others: ambient Poisson(0.3)) with ``var["target"]``, and leave the
        guide calls to :func:`~dream_sc.pp.assign_guides` (``obsm["guide_assignment"]``,
        ``obs["guide"]``/``["target"]`` removed; ``obsm["true_guide_assignment"]`` keeps them).
    seed
        Seed; same seed, same screen.

    Returns
    -------
    MuData with ``rna`` (and ``guides``); ``obs`` / ``obsm`` as from ``simulate_screen``;
    ``uns["truth"]["pairs"]``: DataFrame (``target``, ``feature``, ``responsive``, ``v``,
    ``K``, ``n``, ``log2_fc``: log2 fold change of the guide-carrying dosage range) over every
    target x trans gene; ``uns["truth"]["guide_targets"]``.

    Examples
    --------
    >>> mdata = simulate_high_moi(n_cells=300, n_genes=30, n_targets=3, seed=0)
    >>> mdata.obsm["guide_assignment"].shape
    (300, 17)
    >>> int(mdata.uns["truth"]["pairs"]["responsive"].sum())
    15
    """
    n_trans = n_genes - n_targets
    if responders_per_target < 0 or responders_per_target * n_targets > n_trans:
        raise ValueError(
            f"responders_per_target={responders_per_target} x {n_targets} targets needs that "
            f"many of the {n_trans} trans genes; lower it or raise n_genes."
        )
    mdata = simulate_screen(
        n_cells=n_cells,
        n_genes=n_genes,
        n_junctions=0,
        n_isoform_genes=0,
        seed=seed,
        n_targets=n_targets,
        guides_per_target=guides_per_target,
        n_ntc_guides=n_ntc_guides,
        moi="high",
        guides_per_cell=guides_per_cell,
        frac_responsive=0.0,
    )
    rng = np.random.default_rng([int(seed), 27])
    rna = mdata["rna"]
    truth = mdata.uns["truth"]
    targets = list(truth["targets"])
    trans_names = rna.var_names[n_targets:]
    doses = mdata.obsm["true_target_dose"][targets].to_numpy()
    x_ntc = np.array([truth["x_ntc"][t] for t in targets])
    order = rng.permutation(n_trans)
    owner = np.full(n_trans, -1)
    for k in range(n_targets):
        owner[order[k * responders_per_target : (k + 1) * responders_per_target]] = k
    moving = owner >= 0
    K = x_ntc[np.maximum(owner, 0)] * 2.0 ** rng.uniform(-3.0, -1.0, n_trans)
    n = rng.uniform(1.5, 3.0, n_trans)
    v = rng.uniform(1.0, 2.5, n_trans) * rng.choice([-1.0, 1.0], n_trans)
    v[~moving] = 0.0
    var = rna.var.iloc[n_targets:]
    codes = mdata.obs["cell_line"].cat.codes.to_numpy()
    delta = rna.varm["true_technical"].iloc[n_targets:].to_numpy().T  # lines x genes
    eta = var["true_a"].to_numpy()[None, :] + delta[codes]
    eta += np.log(mdata.obs["true_size_factor"].to_numpy())[:, None]
    cols = np.flatnonzero(moving)
    own = owner[cols]
    x = doses[:, own]
    eta[:, cols] += v[cols] * (hill(x, K[cols], n[cols]) - hill(x_ntc[own], K[cols], n[cols]))
    counts = gamma_poisson(rng, np.exp(eta), var["true_dispersion"].to_numpy())
    X = np.asarray(rna.X.toarray() if hasattr(rna.X, "toarray") else rna.X).copy()
    X[:, n_targets:] = counts
    rna.X = X.astype(rna.X.dtype)
    lo, hi = np.quantile(doses, [0.05, 0.95], axis=0)
    span = hill(hi[own], K[cols], n[cols]) - hill(lo[own], K[cols], n[cols])
    log2_fc = np.zeros(n_trans)
    log2_fc[cols] = v[cols] * span / np.log(2.0)
    pairs = pd.DataFrame(
        {
            "target": np.repeat(targets, n_trans),
            "feature": np.tile(np.asarray(trans_names, dtype=object), n_targets),
        }
    )
    k_of = np.repeat(np.arange(n_targets), n_trans)
    g_of = np.tile(np.arange(n_trans), n_targets)
    hit = owner[g_of] == k_of
    pairs["responsive"] = hit
    pairs["v"] = np.where(hit, v[g_of], 0.0)
    pairs["K"] = np.where(hit, K[g_of], np.nan)
    pairs["n"] = np.where(hit, n[g_of], np.nan)
    pairs["log2_fc"] = np.where(hit, log2_fc[g_of], 0.0)
    rna.var["true_target"] = [""] * n_targets + [targets[o] if o >= 0 else "" for o in owner]
    rna.var["true_responsive"] = np.concatenate([np.zeros(n_targets, bool), moving])
    truth["pairs"] = pairs
    truth["simulator"] = "simulate_high_moi"
    from ..pp import sum_factors

    sum_factors(mdata, "rna", key_added="sum_factor", technical_key="cell_line")
    if guide_umis:
        _guide_umis(mdata, rng)
    return mdata


def _guide_umis(mdata: MuData, rng: np.random.Generator) -> None:
    """Add a ``guides`` UMI-count modality and remove the calls (the user makes them)."""
    table = mdata.obsm["guide_assignment"]
    carried = table.to_numpy() > 0
    umis = rng.poisson(0.3, size=carried.shape)
    umis[carried] = gamma_poisson(rng, np.full(int(carried.sum()), 40.0), np.array(0.5))
    mapping = pd.Series(mdata.uns["truth"]["guide_targets"])
    var = pd.DataFrame({"target": mapping.loc[table.columns].to_numpy()}, index=table.columns)
    guides = AnnData(umis.astype(np.int64), obs=pd.DataFrame(index=mdata.obs_names.copy()), var=var)
    true_table = table.copy()
    mods = {**{k: mdata.mod[k] for k in mdata.mod}, "guides": guides}
    obs = mdata.obs.drop(columns=["guide", "target"])
    obsm = {k: mdata.obsm[k] for k in mdata.obsm if k != "guide_assignment"}
    uns = dict(mdata.uns)
    new = MuData(mods)
    for col in obs.columns:
        new.obs[col] = obs[col].to_numpy()
    for key, value in obsm.items():
        new.obsm[key] = value
    new.obsm["true_guide_assignment"] = true_table
    new.uns.update(uns)
    mdata._init_as_actual(new)
