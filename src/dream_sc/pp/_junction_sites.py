"""Junction coordinates: validation, splice-site grouping and cassette-exon search.

Everything here works on the junction ``var`` table only (no counts), so it is cheap even for
genome-wide inputs (~300,000 junctions): grouping and the cassette search are hash joins on
``(chrom, strand, coordinate)``, never loops over junction pairs or triplets.

Coordinate conventions
----------------------
``start`` and ``end`` are the first and last intron base (as STAR's ``SJ.out.tab`` writes them),
so ``start <= end`` always, whatever the strand. The 5' splice site (donor) of an intron is its
``start`` on ``+`` and its ``end`` on ``-``; the 3' splice site (acceptor) is the other one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

#: var columns every junction table needs besides the gene column.
COORDINATE_COLUMNS: tuple[str, ...] = ("chrom", "start", "end", "strand")

_STRAND_CODES = {"+": "+", "-": "-", "1": "+", "2": "-"}

SiteKind = Literal["donor", "acceptor"]


def normalize_strand(values: pd.Series) -> np.ndarray:
    """Map STAR strand codes (``1``/``2``) and ``+``/``-`` to ``"+"``/``"-"``.

    Parameters
    ----------
    values
        Strand per junction: ``"+"``, ``"-"``, ``1``, ``2`` (integers, integral floats or strings).

    Returns
    -------
    Array of ``"+"``/``"-"`` strings.

    Raises
    ------
    ValueError
        Naming the unrecognised values (e.g. STAR's ``0`` = undefined strand).
    """
    mapping: dict[object, str] = {}
    bad: list[object] = []
    for value in pd.unique(values.astype(object)):
        code = _strand_code(value)
        if code is None:
            bad.append(value)
        else:
            mapping[value] = code
    if bad:
        raise ValueError(
            f"Junction var['strand'] holds unrecognised values {sorted(map(repr, bad))[:5]}; "
            "use '+'/'-' or STAR's 1 (+) / 2 (-). Junctions with undefined strand (STAR's 0) "
            "cannot be assigned donor/acceptor sites: drop them or set their strand first."
        )
    return np.asarray([mapping[v] for v in values.astype(object)], dtype=object)


def _strand_code(value: object) -> str | None:
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        if not np.isfinite(value) or value != int(value):
            return None
        value = str(int(value))
    return _STRAND_CODES.get(value) if isinstance(value, str) else None


def junction_table(var: pd.DataFrame, gene_key: str) -> pd.DataFrame:
    """Validate and normalise junction coordinates.

    Parameters
    ----------
    var
        Junction ``var`` with ``chrom``, ``start``, ``end``, ``strand`` and ``gene_key``.
    gene_key
        Column holding each junction's gene (missing values allowed: unannotated junctions).

    Returns
    -------
    DataFrame indexed like ``var`` with ``chrom`` (str), ``start``/``end`` (int64), ``strand``
    (``"+"``/``"-"``), ``gene`` (object, NaN when unannotated) and ``pos`` (0..J-1).

    Raises
    ------
    KeyError
        If a required column is missing.
    ValueError
        If coordinates are missing, non-integer, reversed or duplicated, or strands unknown.
    """
    missing = [c for c in (*COORDINATE_COLUMNS, gene_key) if c not in var.columns]
    if missing:
        raise KeyError(
            f"Junction var is missing column(s) {missing}; it needs {list(COORDINATE_COLUMNS)} "
            f"(intron coordinates) and the gene column {gene_key!r}. Add them to "
            "`mdata[junctions].var`, or pass `gene_key=` naming the gene column."
        )
    chrom = var["chrom"]
    if chrom.isna().any():
        raise ValueError(f"Junction var['chrom'] has {int(chrom.isna().sum())} missing values.")
    start = _integer_coordinate(var["start"], "start")
    end = _integer_coordinate(var["end"], "end")
    if np.any(start < 1) or np.any(end < 1):
        first = var.index[np.flatnonzero((start < 1) | (end < 1))[0]]
        raise ValueError(
            f"Junction {first!r} has a coordinate below 1; fix: `start`/`end` must be 1-based "
            "positions of the first and last intron base (read 0-based tables with "
            "ds.io.read_junction_table(..., coordinates='0-based'))."
        )
    if np.any(start > end):
        first = var.index[np.flatnonzero(start > end)[0]]
        raise ValueError(
            f"Junction {first!r} has start > end; `start`/`end` must be the first and last "
            "intron base (start <= end on both strands)."
        )
    gene = var[gene_key].astype(object)
    table = pd.DataFrame(
        {
            "chrom": chrom.astype(str).to_numpy(dtype=object),
            "start": start,
            "end": end,
            "strand": normalize_strand(var["strand"]),
            "gene": gene.where(gene.notna(), np.nan).to_numpy(dtype=object),
            "pos": np.arange(len(var)),
        },
        index=var.index.copy(),
    )
    dup = table.duplicated(subset=["chrom", "start", "end", "strand"], keep=False)
    if dup.any():
        raise ValueError(
            f"Junctions {table.index[dup][:4].tolist()} share the same coordinates; each "
            "intron must appear once. Sum their counts into one junction first."
        )
    return table


def _integer_coordinate(column: pd.Series, name: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    if np.any(~np.isfinite(values)) or np.any(values != np.floor(values)):
        raise ValueError(
            f"Junction var[{name!r}] must hold integer genomic positions without missing values."
        )
    return values.astype(np.int64)


def site_positions(table: pd.DataFrame, site: SiteKind) -> np.ndarray:
    """Genomic position of each junction's donor (5') or acceptor (3') splice site.

    Parameters
    ----------
    table
        Output of :func:`junction_table`.
    site
        ``"donor"`` (``start`` on ``+``, ``end`` on ``-``) or ``"acceptor"`` (the other end).

    Returns
    -------
    int64 positions, one per junction.
    """
    plus = table["strand"].to_numpy() == "+"
    if site == "donor":
        return np.where(plus, table["start"].to_numpy(), table["end"].to_numpy())
    return np.where(plus, table["end"].to_numpy(), table["start"].to_numpy())


def site_ids(table: pd.DataFrame, site: SiteKind) -> pd.Series:
    """Readable site id per junction, e.g. ``"chr1:999525:-:donor"``.

    Junctions with the same id share that splice site (same chrom, strand and position).

    Parameters
    ----------
    table
        Output of :func:`junction_table`.
    site
        ``"donor"`` or ``"acceptor"``.

    Returns
    -------
    Series of site ids indexed like ``table``.

    Examples
    --------
    >>> import pandas as pd
    >>> var = pd.DataFrame(
    ...     {"chrom": "chr1", "start": [100, 100], "end": [200, 300], "strand": 1, "gene": "A"},
    ...     index=["j1", "j2"],
    ... )
    >>> site_ids(junction_table(var, "gene"), "donor").tolist()
    ['chr1:100:+:donor', 'chr1:100:+:donor']
    """
    pos = pd.Series(site_positions(table, site), index=table.index).astype(str)
    return table["chrom"] + ":" + pos + ":" + table["strand"] + f":{site}"


def group_sizes(groups: pd.Series) -> np.ndarray:
    """Number of members of each element's group (aligned with ``groups``)."""
    return groups.map(groups.value_counts()).to_numpy(dtype=np.int64)


def find_cassette_exons(table: pd.DataFrame) -> pd.DataFrame:
    """Find cassette-exon triplets among junctions.

    An event is three junctions on one chrom/strand: ``inclusion1`` = (s1, e1), ``inclusion2`` =
    (s2, e2) with ``e1 < s2`` (the exon lies between them) and ``skip`` = (s1, e2). Orientation
    is genomic: ``inclusion1`` is always the intron with the lower coordinates, so on ``-`` it is
    the *downstream* intron of the transcript. A skip intron spanning several exons forms one
    event per compatible inclusion pair (multi-exon skipping is not merged).

    The search joins the skip candidates to junctions sharing their start (inclusion1
    candidates) and their end (inclusion2 candidates), so the cost grows with the sizes of the
    donor/acceptor groups, not with the cube of the number of junctions.

    Parameters
    ----------
    table
        Output of :func:`junction_table`.

    Returns
    -------
    DataFrame, one row per event, indexed by event id ``"{gene}:{chrom}:{s1}-{e2}:exon_{e1}-{s2}"``
    (``gene`` is the skip junction's gene, else an inclusion junction's, else ``"unannotated"``;
    the strand is appended to an id only if two events would otherwise share it), with columns
    ``skip``, ``inclusion1``, ``inclusion2`` (junction ids), ``skip_pos``, ``inclusion1_pos``,
    ``inclusion2_pos`` (column positions), ``gene``, ``chrom``, ``strand``, ``start`` (s1),
    ``end`` (e2), ``exon_start`` (e1), ``exon_end`` (s2).

    Examples
    --------
    >>> import pandas as pd
    >>> var = pd.DataFrame(
    ...     {
    ...         "chrom": "chr1",
    ...         "start": [100, 100, 300],
    ...         "end": [200, 400, 400],
    ...         "strand": "+",
    ...         "gene": "A",
    ...     },
    ...     index=["inc1", "skip", "inc2"],
    ... )
    >>> events = find_cassette_exons(junction_table(var, "gene"))
    >>> events.index.tolist(), events["skip"].tolist()
    (['A:chr1:100-400:exon_200-300'], ['skip'])
    """
    cols = ["chrom", "strand", "start", "end", "pos"]
    j = table[cols].assign(jid=table.index.to_numpy())
    # inclusion1 candidates: same start, ends before the skip's end
    left = j.merge(j, on=["chrom", "strand", "start"], suffixes=("", "_i1"))
    left = left[left["end_i1"] < left["end"]]
    # inclusion2 candidates: same end, starts after the skip's start
    right = j.merge(j, on=["chrom", "strand", "end"], suffixes=("", "_i2"))
    right = right[right["start_i2"] > right["start"]]
    right = right[["pos", "start_i2", "pos_i2", "jid_i2"]]
    events = left.merge(right, on="pos")
    events = events[events["end_i1"] < events["start_i2"]]
    events = events.sort_values(["pos", "pos_i1", "pos_i2"], kind="stable")
    return _format_events(events, table)


def _format_events(events: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    gene = table["gene"].to_numpy()
    label = pd.Series(gene[events["pos"].to_numpy()], dtype=object)
    for other in ("pos_i1", "pos_i2"):
        label = label.fillna(pd.Series(gene[events[other].to_numpy()], dtype=object))
    label = label.fillna("unannotated").astype(str).to_numpy(dtype=object)
    out = pd.DataFrame(
        {
            "skip": events["jid"].to_numpy(dtype=object),
            "inclusion1": events["jid_i1"].to_numpy(dtype=object),
            "inclusion2": events["jid_i2"].to_numpy(dtype=object),
            "skip_pos": events["pos"].to_numpy(dtype=np.int64),
            "inclusion1_pos": events["pos_i1"].to_numpy(dtype=np.int64),
            "inclusion2_pos": events["pos_i2"].to_numpy(dtype=np.int64),
            "gene": label,
            "chrom": events["chrom"].to_numpy(dtype=object),
            "strand": events["strand"].to_numpy(dtype=object),
            "start": events["start"].to_numpy(dtype=np.int64),
            "end": events["end"].to_numpy(dtype=np.int64),
            "exon_start": events["end_i1"].to_numpy(dtype=np.int64),
            "exon_end": events["start_i2"].to_numpy(dtype=np.int64),
        }
    )
    ids = (
        out["gene"]
        + ":"
        + out["chrom"]
        + ":"
        + out["start"].astype(str)
        + "-"
        + out["end"].astype(str)
        + ":exon_"
        + out["exon_start"].astype(str)
        + "-"
        + out["exon_end"].astype(str)
    )
    clash = ids.duplicated(keep=False)
    ids[clash] = ids[clash] + ":" + out["strand"][clash]
    out.index = pd.Index(ids.to_numpy(dtype=object), name=None)
    return out
