"""Ground-truth simulator of a CRISPRi/CRISPRa single-cell screen (the model page of the documentation)."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from ._design import (
    Design,
    assign_high_moi,
    assign_low_moi,
    assign_low_moi_by_line,
    cell_names,
    draw_cell_lines,
    draw_sum_factors,
    draw_x_ntc,
    finish_design,
    make_guides,
    make_line_guides,
    target_names,
)
from ._modalities import (
    build_isoform,
    build_rna,
    build_score,
    build_splicing,
    feature_names,
)
from ._normalise import estimate_size_factors
from ._simulate_checks import validate_arguments

logger = logging.getLogger("dream_sc")


def simulate_screen(
    n_cells: int = 2000,
    n_genes: int = 200,
    n_junctions: int = 100,
    n_isoform_genes: int = 30,
    *,
    seed: int = 0,
    n_targets: int = 1,
    guides_per_target: int = 10,
    n_ntc_guides: int = 5,
    ntc_fraction: float = 0.25,
    cell_lines: Sequence[str] = ("K562", "HEK293T"),
    guide_log2_range: tuple[float, float] = (-3.0, 1.0),
    dose_noise: float = 0.3,
    frac_responsive: float = 0.3,
    depth: float = 1.0,
    technical_sd: float = 0.3,
    continuous: bool = False,
    n_scores: int = 20,
    moi: Literal["low", "high"] = "low",
    guides_per_cell: float = 3.0,
    control_label: str = "ntc",
    splicing_concentration: float | tuple[float, float] | None = None,
    guide_design: Literal["shared", "line_specific"] = "shared",
    crispri_log2_range: tuple[float, float] = (-3.0, -0.5),
    crispra_log2_range: tuple[float, float] = (0.5, 2.0),
    guide_mix_skew: float = 0.0,
    escape_fraction: float = 0.0,
) -> MuData:
    """Simulate a single-cell CRISPR screen with known dose-response curves.

    Cells get guides; each guide shifts the dosage of its target gene on the log2 scale; every
    feature of every modality responds to the dosage ``x`` of the primary cis gene (the first
    target) through a Hill-type curve on its link scale (flat for most features)::

        eta(x) = a + v1 * H(x; K1, n1) + v2 * H(x; K2, n2),  H(x; K, n) = x^n / (K^n + x^n)

    plus a technical effect per non-reference cell line. Dosage is on the scale "expected
    counts of the cis gene per unit size factor in the reference cell line".

    Parameters
    ----------
    n_cells
        Number of cells (``cell_00001``, ...).
    n_genes
        Number of ``rna`` features including the target genes, which come first
        (``GFI1B``, ``GEMIN5``, ``DDX6``, ``TGT4``, ...), then ``gene_0001``, ...
    n_junctions
        Number of junctions in the binomial ``splicing`` modality (0: no such modality).
    n_isoform_genes
        Number of genes with 2-4 transcripts in the multinomial ``isoform`` modality
        (0: no such modality).
    seed
        Seed of the :class:`numpy.random.Generator`; same seed, same screen.
    n_targets
        Number of targeted genes; the first is the primary cis gene.
    guides_per_target
        Guides per target (``<TARGET>_1``, ...); their log2 effects are evenly spread over
        ``guide_log2_range`` with a small jitter, in random order.
    n_ntc_guides
        Non-targeting guides ``NTC_1``, ... (log2 effect 0).
    ntc_fraction
        Fraction of cells with an NTC guide (low MOI).
    cell_lines
        Cell lines (technical groups), assigned uniformly at random; the first is the reference.
    guide_log2_range
        ``(low, high)`` range of guide log2 dosage effects (negative = knock-down).
    dose_noise
        Cell-to-cell sd of the log2 dosage around its guide's value.
    frac_responsive
        Fraction of responsive features per modality (of genes for ``isoform``); rounded to a
        count. Responsive curves are single-Hill increasing or decreasing, or non-monotonic.
    depth
        Multiplies every expected count (dosage, baselines, trials and totals).
    technical_sd
        Sd of the technical effects (link scale) of the non-reference cell lines.
    continuous
        Add a ``score`` modality (``normal``) of ``n_scores`` features with 10% missing values.
    n_scores
        Number of ``score`` features when ``continuous=True``.
    moi
        ``"low"``: one guide per cell. ``"high"``: ``max(1, Poisson(guides_per_cell))`` guides
        per cell drawn from all guides (``ntc_fraction`` is then unused); their log2 effects add.
    guides_per_cell
        Mean number of guides per cell at high MOI.
    control_label
        Target label of NTC cells.
    splicing_concentration
        Over-dispersed junction and isoform counts. ``None`` (default): binomial successes and
        multinomial isoform counts. A number ``c``: every cell's junction probability is drawn
        from ``Beta(c p, c (1 - p))`` around its curve value ``p`` (beta-binomial successes)
        and every cell's transcript proportions of a gene from ``Dirichlet(c π)``
        (Dirichlet-multinomial counts); smaller ``c`` = more cell-to-cell variation. A pair
        ``(low, high)``: a concentration per junction and per isoform gene, log-uniform in that
        range. Drawn from a generator of its own, so curves, technical effects and designs are
        those of the same ``seed`` without the option.
    guide_design
        ``"shared"`` (default): every guide can occur in every cell line. ``"line_specific"``:
        the CRISPRi/CRISPRa layout of two cell lines - every target gets ``guides_per_target``
        CRISPRi guides (``<TARGET>_i1``, ...; log2 effects over ``crispri_log2_range``) that
        exist only in the first cell line and as many CRISPRa guides (``<TARGET>_a1``, ...;
        dosages above NTC, ``crispra_log2_range``) only in the second; the NTC guides are
        shared and ``ntc_fraction`` holds in each line. Needs two ``cell_lines`` and
        ``moi="low"``. The technical group then carries dosage information.
    crispri_log2_range, crispra_log2_range
        Ranges of the guide log2 effects of the line-specific design.
    guide_mix_skew
        Unequal guide mixes across cell lines (``moi="low"``): within every line the targeting
        guides are drawn with weights ``exp(skew * s * z)``, ``z`` the guide's standardised
        log2 effect within its target and ``s`` going from +1 (first line) to -1 (last line),
        so with ``skew > 0`` the first line over-represents the highest-dosage guides. 0 (default):
        the same mix everywhere. With either option (``guide_design="line_specific"`` or a
        non-zero skew) cell lines and size factors are drawn before the guide assignment, so
        such screens do not share a random stream with the default ones; the default design
        is unchanged.
    escape_fraction
        Escapers (``moi="low"``): each cell with a targeting guide is, with this probability,
        not perturbed at all (its dosages stay at the NTC level, with the cell-to-cell noise),
        as KRAB CRISPRi often acts digitally. Drawn from a generator of its own, so everything
        else (guides, cells, curves, counts' random stream) is that of the same ``seed``
        without escapers. Truth: ``obs["true_escaped"]`` and the guide table's
        ``escape_fraction`` (the nominal value; ``escape_share``: the realised share).

    Returns
    -------
    MuData with modalities ``rna`` (negbinom), ``splicing`` (binomial, trials in
    ``layers["total"]``, ``var["gene"]``), ``isoform`` (multinomial, ``var["group"]``) and, if
    ``continuous``, ``score`` (normal); counts as float32 CSR. Truth:

    - ``obs``: ``guide``, ``target``, ``cell_line`` (categorical, reference first),
      ``sum_factor`` (estimated from the ``rna`` counts by :func:`dream_sc.pp.sum_factors`
      with its default method, as a user would: library sizes emerge from the composition),
      ``true_size_factor`` (the generating capture efficiency; truth only), ``true_dose``,
      ``true_log2_dose`` (primary cis gene);
      ``obsm["true_target_dose"]`` (dosage of every target gene);
      ``obsm["guide_assignment"]`` (high MOI, cells × guides 0/1).
    - ``uns["truth"]``: ``guides`` (DataFrame: ``target``, ``log2_effect``, ``dose`` =
      ``x_ntc * 2**log2_effect`` of its own target, of the primary cis gene for NTC guides),
      ``x_ntc``, ``cis_feature``, ``targets``, ``reference_group``, ``dose_noise``,
      ``control_label``, ``guide_targets``, ``guide_design`` (``"line_specific"`` only), ``dose_range`` (5th-95th percentile of the primary
      dosage over its cis-fit cells, where responses are measured), ``moi``, ``seed``.
    - every modality's ``var``: ``true_responsive``, ``true_function``
      (``flat``/``single_hill``/``additive_hill``; ``cis`` for target genes), ``true_shape``
      (natural scale over ``dose_range``), ``true_a``, ``true_v1``, ``true_K1``, ``true_n1``,
      ``true_v2``, ``true_K2``, ``true_n2`` (link scale), plus ``true_dispersion`` (rna),
      ``true_sigma`` (score), ``true_group_responsive`` (isoform), ``true_concentration``
      (splicing and isoform, with ``splicing_concentration``; the gene's value for every
      transcript) and ``varm["true_technical"]`` (one column per cell line, link scale).

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=500, n_genes=50, seed=1)
    >>> sorted(mdata.mod)
    ['isoform', 'rna', 'splicing']
    >>> mdata.uns["truth"]["cis_feature"]
    'GFI1B'
    """
    args = dict(locals())
    validate_arguments(args)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    targets = target_names(n_targets)
    if guide_design == "line_specific":
        guides = make_line_guides(
            rng,
            targets,
            lines=(str(cell_lines[0]), str(cell_lines[1])),
            guides_per_line=guides_per_target,
            n_ntc_guides=n_ntc_guides,
            crispri_log2_range=(float(crispri_log2_range[0]), float(crispri_log2_range[1])),
            crispra_log2_range=(float(crispra_log2_range[0]), float(crispra_log2_range[1])),
            control_label=control_label,
        )
    else:
        guides = make_guides(
            rng,
            targets,
            guides_per_target=guides_per_target,
            n_ntc_guides=n_ntc_guides,
            log2_range=(float(guide_log2_range[0]), float(guide_log2_range[1])),
            control_label=control_label,
        )
    x_ntc = draw_x_ntc(rng, targets, depth)
    if guide_design == "shared" and guide_mix_skew == 0:
        # the default random stream: assignment, then size factors, then cell lines
        if moi == "low":
            assignment = assign_low_moi(rng, guides, n_cells, ntc_fraction, control_label)
        else:
            assignment = assign_high_moi(rng, len(guides), n_cells, guides_per_cell)
        sum_factor = draw_sum_factors(rng, n_cells)
        cell_line = draw_cell_lines(rng, n_cells, tuple(cell_lines))
    else:
        # guides depend on the line: draw the lines first
        sum_factor = draw_sum_factors(rng, n_cells)
        cell_line = draw_cell_lines(rng, n_cells, tuple(cell_lines))
        assignment = assign_low_moi_by_line(
            rng, guides, cell_line, ntc_fraction, control_label, float(guide_mix_skew)
        )
    escaped = None
    if escape_fraction > 0:
        targeting = assignment[:, (guides["target"] != control_label).to_numpy()].sum(1) > 0
        draws = np.random.default_rng([int(seed), 2]).random(n_cells)
        escaped = targeting & (draws < escape_fraction)
    design = finish_design(
        rng,
        obs_names=cell_names(n_cells),
        assignment=assignment,
        guides=guides,
        targets=targets,
        x_ntc=x_ntc,
        sum_factor=sum_factor,
        cell_line=cell_line,
        dose_noise=dose_noise,
        depth=depth,
        control_label=control_label,
        moi=moi,
        escaped=escaped,
    )
    design.escape_fraction = float(escape_fraction)
    mdata = build_screen(
        design,
        rng,
        n_genes=n_genes,
        n_junctions=n_junctions,
        n_isoform_genes=n_isoform_genes,
        frac_responsive=frac_responsive,
        technical_sd=technical_sd,
        n_scores=n_scores if continuous else 0,
        seed=seed,
        splicing_concentration=splicing_concentration,
    )
    logger.info("Simulated a screen of %d cells in %.2f s.", n_cells, time.perf_counter() - start)
    return mdata


def build_screen(
    design: Design,
    rng: np.random.Generator,
    *,
    n_genes: int,
    n_junctions: int,
    n_isoform_genes: int,
    frac_responsive: float,
    technical_sd: float,
    n_scores: int,
    seed: int,
    splicing_concentration: float | tuple[float, float] | None = None,
) -> MuData:
    """Sample every modality on a design and assemble the MuData with its truth."""
    window = design.window()
    common = {"frac_responsive": frac_responsive, "technical_sd": technical_sd}
    conc_splicing = conc_isoform = None
    if splicing_concentration is not None:
        conc_splicing, conc_isoform = _concentrations(
            splicing_concentration, seed, n_junctions, n_isoform_genes
        )
    mods: dict[str, AnnData] = {"rna": build_rna(rng, design, window, n_genes=n_genes, **common)}
    if n_junctions > 0:
        genes = feature_names("gene_", n_genes - len(design.targets), 4)
        if len(genes) == 0:
            genes = pd.Index(design.targets)
        mods["splicing"] = build_splicing(
            rng,
            design,
            window,
            n_junctions=n_junctions,
            genes=genes,
            concentration=conc_splicing,
            **common,
        )
    if n_isoform_genes > 0:
        mods["isoform"] = build_isoform(
            rng, design, window, n_groups=n_isoform_genes, concentration=conc_isoform, **common
        )
    if n_scores > 0:
        mods["score"] = build_score(rng, design, window, n_scores=n_scores, **common)
    with warnings.catch_warnings():
        # mudata 0.3 announces a change of its update() default; irrelevant here
        warnings.simplefilter("ignore", FutureWarning)
        mdata = MuData(mods)
    _write_obs(mdata, design)
    mdata.uns["truth"] = _truth_uns(design, window.lo, window.hi, seed)
    if "line" in design.guides:
        mdata.uns["truth"]["guide_design"] = "line_specific"
    return mdata


def _concentrations(
    value: float | tuple[float, float], seed: int, n_junctions: int, n_isoform_genes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Concentration per junction and per isoform gene (constant, or log-uniform in a range).

    Drawn from a generator seeded by ``(seed, 1)`` so the main random stream is untouched.
    """
    lo, hi = (value, value) if np.ndim(value) == 0 else value
    gen = np.random.default_rng([int(seed), 1])
    log_c = gen.uniform(np.log(lo), np.log(hi), size=n_junctions + n_isoform_genes)
    return np.exp(log_c[:n_junctions]), np.exp(log_c[n_junctions:])


def _write_obs(mdata: MuData, design: Design) -> None:
    dose = design.primary_dose
    if design.moi == "low":
        used = set(np.unique(design.guide))
        guide_categories = [g for g in design.guides.index if g in used]
    else:
        guide_categories = sorted(set(design.guide))
    present = set(design.target)
    target_categories = [t for t in [design.control_label, *design.targets] if t in present]
    mdata.obs["guide"] = pd.Categorical(design.guide, categories=guide_categories)
    mdata.obs["target"] = pd.Categorical(design.target, categories=target_categories)
    mdata.obs["cell_line"] = design.cell_line
    estimate_size_factors(mdata, design.sum_factor)
    mdata.obs["true_dose"] = dose
    mdata.obs["true_log2_dose"] = np.log2(dose)
    mdata.obsm["true_target_dose"] = pd.DataFrame(
        design.doses, index=mdata.obs_names.copy(), columns=pd.Index(design.targets)
    )
    if design.assignment is not None:
        mdata.obsm["guide_assignment"] = design.assignment
    if design.escaped is not None:
        mdata.obs["true_escaped"] = np.asarray(design.escaped, dtype=bool)


def _truth_uns(design: Design, lo: float, hi: float, seed: int) -> dict[str, Any]:
    guides = design.guides.copy()
    guides["target"] = guides["target"].astype(str)
    if design.escaped is not None:
        targeting = (guides["target"] != design.control_label).to_numpy()
        guides["escape_fraction"] = np.where(targeting, float(design.escape_fraction), 0.0)
        share = pd.Series(design.escaped).groupby(design.guide).mean()
        guides["escape_share"] = share.reindex(guides.index).to_numpy(dtype=np.float64)
    return {
        "guides": guides,
        "x_ntc": {k: float(v) for k, v in design.x_ntc.items()},
        "cis_feature": design.cis_feature,
        "targets": list(design.targets),
        "reference_group": str(design.cell_line.categories[0]),
        "dose_noise": float(design.dose_noise),
        "control_label": design.control_label,
        "guide_targets": {str(g): str(t) for g, t in guides["target"].items()},
        "dose_range": np.array([lo, hi]),
        "moi": design.moi,
        "seed": int(seed),
    }
