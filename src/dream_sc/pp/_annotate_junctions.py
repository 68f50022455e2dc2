"""``pp.annotate_junctions``: the gene of each junction from a GTF."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from mudata import MuData

from .. import _validation as V
from ..io._chrom import detect_style, harmonise
from ..io._gtf import read_gtf_genes
from ._junction_sites import normalize_strand

logger = logging.getLogger("dream_sc")


def annotate_junctions(
    mdata: MuData,
    *,
    gtf: str | Path | pd.DataFrame,
    junctions: str = "junctions",
    gene_key: str = "gene",
    copy: bool = False,
) -> MuData | None:
    """Annotate junctions with the gene whose span contains the intron.

    A junction gets a gene when a GTF gene on the same chromosome and strand spans the whole
    intron (``gene.start <= start`` and ``end <= gene.end``, 1-based inclusive). When several
    genes do, the shortest (the innermost of nested genes) is taken; junctions in no gene stay
    missing (unannotated). Chromosome names of the GTF are converted to the style of the
    junctions (``1`` ↔ ``chr1``, ``MT`` ↔ ``chrM``). Counts are logged.

    Parameters
    ----------
    mdata
        The screen with a junction modality (``var``: ``chrom``, ``start``, ``end``, ``strand``).
    gtf
        Path of a GTF (gzipped or not; ``gene`` lines, else the span of each gene's lines), or
        a DataFrame with ``chrom``, ``start``, ``end``, ``strand``, ``gene_id`` and optionally
        ``gene_name``.
    junctions
        Name of the junction modality.
    gene_key
        var column written with the gene name (``var["gene_id"]`` gets the id).
    copy
        Return a modified copy instead of writing into ``mdata``.

    Returns
    -------
    ``None`` or the new MuData; writes ``mdata[junctions].var[gene_key]`` (gene name, missing when
    unannotated) and ``var["gene_id"]``.

    Raises
    ------
    KeyError
        Missing modality or coordinate columns.
    ValueError
        An unreadable GTF or no junction on a chromosome of the GTF (with examples of both).

    Examples
    --------
    >>> import mudata as md, numpy as np, pandas as pd
    >>> from anndata import AnnData
    >>> var = pd.DataFrame(
    ...     {"chrom": "chr1", "start": [150, 900], "end": [300, 950], "strand": "+"},
    ...     index=["j1", "j2"],
    ... )
    >>> mdata = md.MuData({"junctions": AnnData(np.ones((2, 2)), var=var)})
    >>> genes = pd.DataFrame(
    ...     {"chrom": ["1"], "start": [100], "end": [500], "strand": ["+"], "gene_id": ["G1"]}
    ... )
    >>> annotate_junctions(mdata, gtf=genes)
    >>> mdata["junctions"].var["gene"].tolist()
    ['G1', nan]
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, junctions)
    var = mdata.mod[junctions].var
    missing = [c for c in ("chrom", "start", "end", "strand") if c not in var.columns]
    if missing:
        raise KeyError(
            f"mdata[{junctions!r}].var lacks {missing}; read the junctions with "
            "ds.io.read_starsolo_junctions or ds.io.read_junction_table."
        )
    genes = read_gtf_genes(gtf)
    style = detect_style(var["chrom"])
    genes = genes.assign(chrom=harmonise(genes["chrom"], style))
    table = pd.DataFrame(
        {
            "chrom": var["chrom"].astype(str).to_numpy(),
            "start": var["start"].to_numpy(np.int64),
            "end": var["end"].to_numpy(np.int64),
            "strand": normalize_strand(var["strand"]),
        }
    )
    shared = set(table["chrom"]) & set(genes["chrom"])
    if not shared:
        raise ValueError(
            f"No chromosome of the junctions (e.g. {sorted(set(table['chrom']))[:3]}) is in the "
            f"GTF (e.g. {sorted(set(genes['chrom']))[:3]}); are they from the same genome build?"
        )
    name, gene_id, n_ambiguous = _containing_gene(table, genes)
    target = mdata.copy() if copy else mdata
    out = target.mod[junctions].var
    out[gene_key] = pd.Categorical(name)
    out["gene_id"] = pd.Categorical(gene_id)
    n_annotated = int(pd.notna(name).sum())
    logger.info(
        "annotate_junctions: %d of %d junctions annotated (%d within several genes: innermost "
        "taken), %d unannotated",
        n_annotated,
        len(table),
        n_ambiguous,
        len(table) - n_annotated,
    )
    return target if copy else None


#: Bin width (bp) of the hash join between junctions and gene spans.
_BIN = 100_000


def _containing_gene(table: pd.DataFrame, genes: pd.DataFrame):
    """Innermost gene spanning each junction: a hash join on (chrom, strand, 100-kb bin)."""
    genes = genes.reset_index(drop=True)
    first_bin = genes["start"].to_numpy() // _BIN
    n_bins = genes["end"].to_numpy() // _BIN - first_bin + 1
    gene_pos = np.repeat(np.arange(len(genes)), n_bins)
    offsets = np.arange(n_bins.sum()) - np.repeat(np.cumsum(n_bins) - n_bins, n_bins)
    gene_bins = pd.DataFrame(
        {
            "chrom": genes["chrom"].to_numpy()[gene_pos],
            "strand": genes["strand"].to_numpy()[gene_pos],
            "bin": first_bin[gene_pos] + offsets,
            "gene_pos": gene_pos,
        }
    )
    queries = pd.DataFrame(
        {
            "chrom": table["chrom"].to_numpy(),
            "strand": table["strand"].to_numpy(),
            "bin": table["start"].to_numpy() // _BIN,
            "junction": np.arange(len(table)),
        }
    )
    pairs = queries.merge(gene_bins, on=["chrom", "strand", "bin"])
    j, g = pairs["junction"].to_numpy(), pairs["gene_pos"].to_numpy()
    inside = (genes["start"].to_numpy()[g] <= table["start"].to_numpy()[j]) & (
        genes["end"].to_numpy()[g] >= table["end"].to_numpy()[j]
    )
    j, g = j[inside], g[inside]
    length = (genes["end"].to_numpy() - genes["start"].to_numpy())[g]
    order = np.lexsort((g, length, j))
    j, g = j[order], g[order]
    first = np.r_[True, j[1:] != j[:-1]] if j.size else np.zeros(0, bool)
    name = np.full(len(table), None, dtype=object)
    gene_id = np.full(len(table), None, dtype=object)
    name[j[first]] = genes["gene_name"].to_numpy()[g[first]]
    gene_id[j[first]] = genes["gene_id"].to_numpy()[g[first]]
    n_ambiguous = int(np.sum(np.bincount(j, minlength=len(table)) > 1)) if j.size else 0
    return name, gene_id, n_ambiguous
