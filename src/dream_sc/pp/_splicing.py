"""Build splicing modalities (``sj``, ``donor``, ``acceptor``, ``exon_skip``) from junction counts."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from .._registration import set_registration
from ._feature_counts import (
    FilterReport,
    Matrix,
    check_output_name,
    check_threshold,
    columns,
    copy_mudata,
    coverage,
    coverage_mask,
    group_totals,
    install_modalities,
    multi_member_mask,
    new_modality,
    read_counts,
)
from ._junction_sites import find_cassette_exons, group_sizes, junction_table, site_ids

SplicingKind = Literal["sj", "donor", "acceptor", "exon_skip"]
KINDS: tuple[str, ...] = ("sj", "donor", "acceptor", "exon_skip")
SJ_TRIALS: tuple[str, ...] = ("gene", "site")
INCLUSION_RULES: tuple[str, ...] = ("min", "mean")
_JUNCTION_COLUMNS = ["gene", "chrom", "start", "end", "strand"]


@dataclass(frozen=True)
class _Options:
    sj_trials: str
    exon_skip_inclusion: str
    min_cells_covered: int
    min_total_reads: int
    overdispersed: bool = False


def splicing_from_junctions(
    mdata: MuData,
    junctions: str = "junctions",
    *,
    kinds: Sequence[SplicingKind] | SplicingKind = KINDS,
    gene_key: str = "gene",
    sj_trials: Literal["gene", "site"] = "gene",
    exon_skip_inclusion: Literal["min", "mean"] = "min",
    min_cells_covered: int = 10,
    min_total_reads: int = 20,
    layer: str | None = None,
    overdispersed: bool = False,
    copy: bool = False,
) -> MuData | None:
    """Build splicing modalities from raw splice-junction counts.

    Reads a cells × junctions count modality whose ``var`` holds the intron coordinates
    (``chrom``, ``start``, ``end`` = first and last intron base, ``strand`` as ``+``/``-`` or
    STAR's ``1``/``2``) and the gene, and adds one modality per requested kind, named after the
    kind, with the same cells (obs_names) as ``junctions``:

    ``sj`` (binomial)
        One feature per junction (var_names = junction ids). Successes (``X``) are the
        junction's reads; trials (``layers["total"]``) depend on ``sj_trials``:

        * ``"gene"``: all reads of all junctions of the same gene in that cell. The ratio is the
          junction's share of its gene's splicing; it moves with *any* splicing change in the
          gene (also changes far away from this junction), and junctions of genes with many
          junctions have small, noisy ratios. Unannotated junctions (missing gene) and
          junctions that are the only junction of their gene are dropped.
        * ``"site"``: the reads of all junctions sharing either splice site with it (the union
          of its donor and acceptor groups, the junction itself included, each junction counted
          once). The ratio is local, "percent spliced" at this junction's own sites, and does
          not need a gene annotation; but trials are smaller (fewer reads per cell) and
          neighbouring junctions' trials overlap. Junctions sharing neither site with another
          junction (whose ratio is always 1) are dropped.

        Trials are formed from *all* junctions, before any filtering. ``var`` has ``gene``,
        ``chrom``, ``start``, ``end``, ``strand``, ``donor_site``, ``acceptor_site``,
        ``trials_from`` (``"gene"`` or ``"site"``), ``n_cells_covered`` and ``total_trials``.
    ``donor`` / ``acceptor`` (multinomial)
        Junctions sharing their 5' splice site (``start`` on ``+``, ``end`` on ``-``), resp.
        their 3' splice site (``end`` on ``+``, ``start`` on ``-``), on the same chrom/strand are
        the categories of one multinomial; ``var["group"]`` is the site id, e.g.
        ``"chr1:999525:-:donor"``. ``X`` holds the junction reads. Single-junction groups are
        dropped. A junction usually belongs to one donor *and* one acceptor group, so it can
        appear in both modalities. ``var`` also has ``gene``, coordinates, ``n_cells_covered``
        and ``total_reads``.
    ``exon_skip`` (binomial)
        One feature per cassette-exon event: on one chrom/strand, ``inclusion1`` = intron
        (s1, e1), ``inclusion2`` = intron (s2, e2) with e1 < s2 (the exon lies between), and
        ``skip`` = intron (s1, e2). ``inclusion1`` is the *upstream intron in genomic
        coordinates* on both strands (on ``-`` it is downstream in the transcript). Successes
        are inclusion reads, ``min(inc1, inc2)`` (``exon_skip_inclusion="min"``: the reads
        supported by both inclusion junctions) or their mean rounded half up
        (``"mean"``: ``(inc1 + inc2 + 1) // 2``); trials = inclusion + skip reads. Feature ids
        read ``"{gene}:{chrom}:{s1}-{e2}:exon_{e1}-{s2}"``; ``var`` has ``skip``,
        ``inclusion1``, ``inclusion2`` (junction ids), ``gene``, ``chrom``, ``strand``, ``start``
        (s1), ``end`` (e2), ``exon_start`` (e1), ``exon_end`` (s2), ``inclusion_rule``,
        ``n_cells_covered`` and ``total_trials``. A skip intron spanning several exons gives
        one event per compatible inclusion pair.

    Coverage filters: a binomial feature is dropped if its trials summed over cells are below
    ``min_total_reads`` or it has trials in fewer than ``min_cells_covered`` cells; a
    multinomial category is dropped on the same rule applied to its own reads, and groups left
    with fewer than two categories are then dropped. The number of features dropped per kind
    and reason is logged (``logging.getLogger("dream_sc")``, INFO). A kind with no feature
    left is not written (with a warning).

    Parameters
    ----------
    mdata
        The screen.
    junctions
        Name of the junction-count modality (raw integer counts, dense or sparse).
    kinds
        Which modalities to build (any of ``"sj"``, ``"donor"``, ``"acceptor"``,
        ``"exon_skip"``).
    gene_key
        Column of ``mdata[junctions].var`` with each junction's gene (missing = unannotated).
    sj_trials
        How ``sj`` trials are formed: ``"gene"`` or ``"site"`` (see above).
    exon_skip_inclusion
        Inclusion reads of an ``exon_skip`` event: ``"min"`` or ``"mean"`` of its two inclusion
        junctions (see above).
    min_cells_covered
        Minimum number of cells with trials (multinomial: reads) for a feature to be kept. The
        default, 10, is about the least that can inform a dose-response curve across guides;
        use 0 to disable.
    min_total_reads
        Minimum trials (multinomial: reads) summed over all cells. The default, 20, removes
        features whose ratio rests on a handful of reads; use 0 to disable.
    layer
        Layer of ``junctions`` with the raw counts (default ``X``).
    overdispersed
        Register every built modality with ``overdispersed=True``: beta-binomial (``sj``,
        ``exon_skip``) and Dirichlet-multinomial (``donor``, ``acceptor``) likelihoods with a
        concentration fitted by ``tl.fit_technical`` (see
        :func:`~dream_sc.pp.register_modality`).
    copy
        Return a modified copy instead of writing into ``mdata``.

    Returns
    -------
    ``None`` (``copy=False``) or the new MuData (``copy=True``). Writes modalities named after
    ``kinds`` (an existing one of that name is replaced, with a warning). Binomial kinds hold
    successes in ``X`` and trials in ``layers["total"]`` and are registered with
    ``uns["dream_sc"]`` = binomial/``total_layer="total"``; multinomial kinds are registered
    with ``group_key="group"``; both with ``overdispersed=True`` when requested. Sparse input gives CSR output, dense input dense output.

    Raises
    ------
    KeyError
        Missing modality, layer or var column.
    ValueError
        Unknown kinds or option values, counts that are not raw integers, bad coordinates or
        strand codes. Nothing is written when an error is raised.

    Examples
    --------
    >>> import mudata as md, numpy as np, pandas as pd
    >>> from anndata import AnnData
    >>> from dream_sc.pp._splicing import splicing_from_junctions
    >>> var = pd.DataFrame(
    ...     {
    ...         "chrom": "chr1",
    ...         "start": [100, 100, 300],
    ...         "end": [200, 400, 400],
    ...         "strand": 1,
    ...         "gene": "A",
    ...     },
    ...     index=["inc1", "skip", "inc2"],
    ... )
    >>> counts = np.array([[5, 1, 3], [0, 4, 0]])
    >>> mdata = md.MuData({"junctions": AnnData(counts, var=var)})
    >>> splicing_from_junctions(mdata, min_cells_covered=0, min_total_reads=0)
    >>> sorted(mdata.mod)
    ['acceptor', 'donor', 'exon_skip', 'junctions', 'sj']
    >>> mdata["exon_skip"].X.tolist(), mdata["exon_skip"].layers["total"].tolist()
    ([[3], [0]], [[4], [4]])
    >>> mdata["donor"].var["group"].tolist()
    ['chr1:100:+:donor', 'chr1:100:+:donor']
    """
    kinds = _check_kinds(kinds, junctions)
    options = _check_options(
        sj_trials, exon_skip_inclusion, min_cells_covered, min_total_reads, overdispersed
    )
    counts = read_counts(mdata, junctions, layer, f"Junction counts of modality {junctions!r}")
    table = junction_table(mdata.mod[junctions].var, gene_key)
    obs_names = mdata.mod[junctions].obs_names
    built: dict[str, AnnData] = {}
    for kind in kinds:
        adata, report = _BUILDERS[kind](counts, table, obs_names, options)
        report.log()
        if adata.n_vars == 0:
            warnings.warn(
                f"No {kind!r} feature passed the filters (min_total_reads={min_total_reads}, "
                f"min_cells_covered={min_cells_covered}); no {kind!r} modality was written. "
                "Lower the thresholds to keep more features.",
                UserWarning,
                stacklevel=2,
            )
            continue
        built[kind] = adata
    target = copy_mudata(mdata) if copy else mdata
    install_modalities(target, built, stacklevel=3)
    return target if copy else None


# --------------------------------------------------------------------------------------------
# option checks
# --------------------------------------------------------------------------------------------
def _check_kinds(kinds: Sequence[str] | str, junctions: str) -> list[str]:
    requested = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in requested if k not in KINDS]
    if unknown or not requested:
        got = f"unknown {unknown}" if unknown else "an empty selection"
        raise ValueError(f"`kinds` must be a non-empty selection of {list(KINDS)}; got {got}.")
    for kind in requested:
        check_output_name(kind, junctions, "kinds")
    return list(dict.fromkeys(requested))


def _check_options(
    sj_trials: str,
    exon_skip_inclusion: str,
    min_cells_covered: int,
    min_total_reads: int,
    overdispersed: bool = False,
) -> _Options:
    if sj_trials not in SJ_TRIALS:
        raise ValueError(f"`sj_trials` must be one of {list(SJ_TRIALS)}; got {sj_trials!r}.")
    if exon_skip_inclusion not in INCLUSION_RULES:
        raise ValueError(
            f"`exon_skip_inclusion` must be one of {list(INCLUSION_RULES)}; got "
            f"{exon_skip_inclusion!r}."
        )
    if overdispersed not in (True, False):
        raise ValueError(f"`overdispersed` must be True or False; got {overdispersed!r}.")
    return _Options(
        sj_trials=sj_trials,
        exon_skip_inclusion=exon_skip_inclusion,
        min_cells_covered=check_threshold(min_cells_covered, "min_cells_covered"),
        min_total_reads=check_threshold(min_total_reads, "min_total_reads"),
        overdispersed=bool(overdispersed),
    )


# --------------------------------------------------------------------------------------------
# builders: (counts, junction table, obs_names, options) -> (AnnData, FilterReport)
# --------------------------------------------------------------------------------------------
def _build_sj(
    counts: Matrix, table: pd.DataFrame, obs_names: pd.Index, options: _Options
) -> tuple[AnnData, FilterReport]:
    report = FilterReport("sj", "junctions", len(table))
    donor, acceptor = site_ids(table, "donor"), site_ids(table, "acceptor")
    if options.sj_trials == "gene":
        annotated = table["gene"].notna().to_numpy()
        gene_size = table["gene"].map(table["gene"].value_counts()).fillna(0).to_numpy()
        has_alternative = gene_size >= 2
        report.dropped["without a gene annotation"] = int((~annotated).sum())
        report.dropped["alone in their gene"] = int((annotated & ~has_alternative).sum())
        trials = group_totals(counts, table["gene"])
    else:
        has_alternative = (group_sizes(donor) >= 2) | (group_sizes(acceptor) >= 2)
        report.dropped["sharing no splice site"] = int((~has_alternative).sum())
        # two distinct junctions never share both sites, so |donor ∪ acceptor| = D + A - self
        trials = group_totals(counts, donor) + group_totals(counts, acceptor) - counts
        trials = sparse.csr_matrix(trials) if sparse.issparse(trials) else trials
    covered, total = coverage(trials)
    keep = coverage_mask(
        covered,
        total,
        min_cells_covered=options.min_cells_covered,
        min_total_reads=options.min_total_reads,
        report=report,
        candidates=has_alternative,
    )
    var = table.loc[keep, _JUNCTION_COLUMNS].assign(
        gene=lambda df: _labels(df["gene"]),
        donor_site=donor[keep].to_numpy(dtype=object),
        acceptor_site=acceptor[keep].to_numpy(dtype=object),
        trials_from=options.sj_trials,
        n_cells_covered=covered[keep],
        total_trials=total[keep],
    )
    positions = np.flatnonzero(keep)
    adata = new_modality(
        obs_names, var, columns(counts, positions), {"total": columns(trials, positions)}
    )
    set_registration(
        adata,
        distribution="binomial",
        total_layer="total",
        overdispersed=options.overdispersed,
    )
    return adata, report


def _build_sites(
    kind: str, counts: Matrix, table: pd.DataFrame, obs_names: pd.Index, options: _Options
) -> tuple[AnnData, FilterReport]:
    report = FilterReport(kind, "junctions", len(table))
    groups = site_ids(table, kind)  # type: ignore[arg-type]
    multi = group_sizes(groups) >= 2
    report.dropped["in single-junction groups"] = int((~multi).sum())
    covered, total = coverage(counts)
    passing = coverage_mask(
        covered,
        total,
        min_cells_covered=options.min_cells_covered,
        min_total_reads=options.min_total_reads,
        report=report,
        candidates=multi,
    )
    keep = multi_member_mask(groups.to_numpy(), passing)
    report.dropped["in groups left with < 2 junctions"] = int((passing & ~keep).sum())
    var = table.loc[keep, _JUNCTION_COLUMNS].assign(
        gene=lambda df: _labels(df["gene"]),
        group=groups[keep].to_numpy(dtype=object),
        n_cells_covered=covered[keep],
        total_reads=total[keep],
    )
    adata = new_modality(obs_names, var, columns(counts, np.flatnonzero(keep)))
    set_registration(
        adata,
        distribution="multinomial",
        group_key="group",
        overdispersed=options.overdispersed,
    )
    return adata, report


def _build_exon_skip(
    counts: Matrix, table: pd.DataFrame, obs_names: pd.Index, options: _Options
) -> tuple[AnnData, FilterReport]:
    events = find_cassette_exons(table)
    report = FilterReport("exon_skip", "cassette-exon events", len(events))
    inc1 = columns(counts, events["inclusion1_pos"].to_numpy())
    inc2 = columns(counts, events["inclusion2_pos"].to_numpy())
    skip = columns(counts, events["skip_pos"].to_numpy())
    inclusion = _inclusion_reads(inc1, inc2, options.exon_skip_inclusion)
    trials = inclusion + skip
    trials = sparse.csr_matrix(trials) if sparse.issparse(trials) else np.asarray(trials)
    covered, total = coverage(trials)
    keep = coverage_mask(
        covered,
        total,
        min_cells_covered=options.min_cells_covered,
        min_total_reads=options.min_total_reads,
        report=report,
    )
    var = events.loc[keep].drop(columns=["skip_pos", "inclusion1_pos", "inclusion2_pos"])
    var = var.assign(
        gene=lambda df: _labels(df["gene"]),
        inclusion_rule=options.exon_skip_inclusion,
        n_cells_covered=covered[keep],
        total_trials=total[keep],
    )
    positions = np.flatnonzero(keep)
    adata = new_modality(
        obs_names, var, columns(inclusion, positions), {"total": columns(trials, positions)}
    )
    set_registration(
        adata,
        distribution="binomial",
        total_layer="total",
        overdispersed=options.overdispersed,
    )
    return adata, report


def _inclusion_reads(inc1: Matrix, inc2: Matrix, rule: str) -> Matrix:
    """Per event and cell: ``min(inc1, inc2)`` or ``(inc1 + inc2 + 1) // 2`` (mean, half up)."""
    if sparse.issparse(inc1):
        if rule == "min":
            return sparse.csr_matrix(inc1.minimum(inc2))
        summed = sparse.csr_matrix(inc1 + inc2)
        summed.data = (summed.data + 1) // 2
        summed.eliminate_zeros()
        return summed
    if rule == "min":
        return np.minimum(inc1, inc2)
    return (inc1 + inc2 + 1) // 2


def _labels(values: pd.Series) -> pd.Categorical:
    """String labels as a categorical (missing allowed, h5-serialisable)."""
    return pd.Categorical(values.astype(object).where(values.notna(), None))


_BUILDERS: dict[
    str, Callable[[Matrix, pd.DataFrame, pd.Index, _Options], tuple[AnnData, FilterReport]]
] = {
    "sj": _build_sj,
    "donor": lambda *args: _build_sites("donor", *args),
    "acceptor": lambda *args: _build_sites("acceptor", *args),
    "exon_skip": _build_exon_skip,
}
