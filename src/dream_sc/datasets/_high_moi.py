"""Small high-MOI screens with one fixed set of responders per target (tutorials, tests).

:func:`simulate_high_moi` is a thin wrapper of
:func:`~dream_sc.datasets.simulate_many_targets` with ``moi="high"`` (the one implementation of
high-MOI counts: guides, dosages and the curves of all targets a cell carries adding on the
log scale). It fixes the settings of a small, easy-to-read screen - named targets, two cell
lines, the same number of responders for every target in disjoint gene sets, strong effects,
libraries deep enough on few genes - and adds what a tutorial needs: the truth over every
(target, gene) pair, the dosage of every target gene, and optionally guide UMI counts instead
of guide calls.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from ._design import target_names
from ._many_targets import _LN2, _hill, simulate_many_targets
from ._modalities import gamma_poisson


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
    """Simulate a small high-MOI CRISPRi screen with per-target responders and known truth.

    :func:`~dream_sc.datasets.simulate_many_targets` with ``moi="high"`` and: targets
    ``GFI1B``, ``GEMIN5``, ``DDX6``, ``TGT4``, ...; cell lines ``K562`` and ``HEK293T``;
    exactly ``responders_per_target`` responsive genes per target, each moved by that target
    only; ``|v|`` between 1 and 2.5 (natural log, control dosage to full knock-down); gene
    baselines log-normal with median 3 counts and sd 1 (deep libraries on few genes). A gene
    moved by target ``t`` has log mean ``a + v (H(x_t) - H(x_ntc_t))``; a cell's expected
    count adds the curves of all the targets it carries on the log scale.

    Parameters
    ----------
    n_cells, n_genes, n_targets
        Screen size (``n_genes`` includes the target genes, which come first).
    guides_per_target, guides_per_cell, n_ntc_guides
        Guides per target, mean guides per cell (``max(1, Poisson)`` distinct guides a cell)
        and non-targeting guides ``NTC_1``, ...
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
    MuData as from :func:`~dream_sc.datasets.simulate_many_targets` (``rna``; ``obs``
    ``guide``, ``target``, ``n_guides``, ``cell_line``, ``sum_factor``, ``true_size_factor``;
    ``obsm["guide_assignment"]``), plus ``obsm["true_target_dose"]`` (dosage of every target
    gene), ``rna.var["true_target"]`` / ``["true_responsive"]`` and ``uns["truth"]["pairs"]``
    over every target x trans gene: ``target``, ``feature``, ``responsive``, ``v``, ``K``,
    ``n``, ``log2_fc`` (log2 fold change over the 5th-95th percentile of the target's dosage)
    and ``log_fc_strongest`` (link-scale change at the strongest guide).

    Examples
    --------
    >>> mdata = simulate_high_moi(n_cells=300, n_genes=30, n_targets=3, seed=0)
    >>> mdata.obsm["guide_assignment"].shape
    (300, 17)
    >>> int(mdata.uns["truth"]["pairs"]["responsive"].sum())
    15
    """
    mdata = simulate_many_targets(
        n_cells=n_cells,
        n_genes=n_genes,
        n_targets=n_targets,
        seed=seed,
        moi="high",
        guides_per_target=guides_per_target,
        n_control_guides=n_ntc_guides,
        guides_per_cell=guides_per_cell,
        cell_lines=("K562", "HEK293T"),
        responders_per_target=responders_per_target,
        target_names=target_names(n_targets),
        effect_range=(1.0, 2.5),
        baseline_median=3.0,
        baseline_sd=1.0,
    )
    truth = mdata.uns["truth"]
    targets = list(truth["targets"])
    x_ntc = np.array([truth["x_ntc"][t] for t in targets])
    change = mdata.obsm["true_log2_dose_change"].toarray()
    doses = x_ntc[None, :] * np.exp(_LN2 * change)
    mdata.obsm["true_target_dose"] = pd.DataFrame(doses, index=mdata.obs_names, columns=targets)
    rna = mdata["rna"]
    truth["pairs"] = _every_pair(truth["pairs"], targets, list(rna.var_names[n_targets:]), doses)
    owner = truth["pairs"].loc[truth["pairs"]["responsive"]].set_index("feature")["target"]
    rna.var["true_target"] = [str(owner.get(g, "")) for g in rna.var_names]
    rna.var["true_responsive"] = rna.var_names.isin(owner.index)
    truth["simulator"] = "simulate_high_moi"
    if guide_umis:
        _guide_umis(mdata, np.random.default_rng([int(seed), 27]))
    return mdata


def _every_pair(
    responsive: pd.DataFrame, targets: list[str], trans: list[str], doses: np.ndarray
) -> pd.DataFrame:
    """The truth over every target x trans gene, with the log2 fold change of each curve."""
    pairs = pd.DataFrame(
        {
            "target": np.repeat(targets, len(trans)),
            "feature": np.tile(np.asarray(trans, dtype=object), len(targets)),
        }
    )
    curves = responsive.set_index(["target", "feature"])
    pairs = pairs.join(curves, on=["target", "feature"])
    pairs.insert(2, "responsive", pairs["v"].notna().to_numpy())
    lo, hi = np.quantile(doses, [0.05, 0.95], axis=0)
    column = pd.Index(targets).get_indexer(pairs["target"])
    log2_fc = np.zeros(len(pairs))
    hit = pairs["responsive"].to_numpy()
    K, n = pairs["K"].to_numpy()[hit], pairs["n"].to_numpy()[hit]
    for row, j, k_, n_ in zip(np.flatnonzero(hit), column[hit], K, n, strict=True):
        k_, n_ = np.array([k_]), np.array([n_])
        span = _hill(np.array([hi[j]]), k_, n_) - _hill(np.array([lo[j]]), k_, n_)
        log2_fc[row] = pairs.at[row, "v"] * float(span[0, 0]) / _LN2
    pairs["v"] = pairs["v"].fillna(0.0)
    pairs["log_fc_strongest"] = pairs["log_fc_strongest"].fillna(0.0)
    pairs["log2_fc"] = log2_fc
    return pairs[["target", "feature", "responsive", "v", "K", "n", "log2_fc", "log_fc_strongest"]]


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
