"""Gene spans from a GTF file (plain pandas, gzipped or not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GTF_COLUMNS = [
    "chrom",
    "source",
    "feature",
    "start",
    "end",
    "score",
    "strand",
    "frame",
    "attributes",
]


def read_gtf_genes(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Gene spans of a GTF, one row per gene.

    Columns ``chrom``, ``start``, ``end`` (1-based, inclusive), ``strand``, ``gene_id``,
    ``gene_name`` (``gene_id`` when the GTF has no name).

    ``gene`` lines are used; a GTF without them (e.g. exons only) gives each gene the span of
    its lines. A DataFrame with these columns is checked and returned.

    Raises
    ------
    ValueError
        A file that is not a 9-column GTF or has no ``gene_id`` attribute.
    """
    if isinstance(source, pd.DataFrame):
        missing = [c for c in ("chrom", "start", "end", "strand", "gene_id") if c not in source]
        if missing:
            raise ValueError(f"The gene table lacks column(s) {missing}.")
        out = source.copy()
        if "gene_name" not in out:
            out["gene_name"] = out["gene_id"]
        return out
    path = Path(source).expanduser()
    if not path.is_file():
        raise ValueError(f"`gtf`: {str(path)!r} is not a file; check the path.")
    table = pd.read_csv(
        path, sep="\t", comment="#", header=None, dtype=str, keep_default_na=False, quoting=3
    )
    if table.shape[1] != 9:
        raise ValueError(
            f"{str(path)!r} has {table.shape[1]} tab-separated columns; a GTF has 9 (seqname, "
            "source, feature, start, end, score, strand, frame, attributes)."
        )
    table.columns = GTF_COLUMNS
    gene_id = table["attributes"].str.extract(r'gene_id "([^"]+)"', expand=False)
    if gene_id.isna().all():
        raise ValueError(
            f"{str(path)!r} has no 'gene_id \"...\"' attributes; is it a GTF (not GFF3)?"
        )
    table["gene_id"] = gene_id
    table["gene_name"] = table["attributes"].str.extract(r'gene_name "([^"]+)"', expand=False)
    table["gene_name"] = table["gene_name"].fillna(table["gene_id"])
    table = table[table["gene_id"].notna()]
    table["start"] = table["start"].astype(np.int64)
    table["end"] = table["end"].astype(np.int64)
    genes = table[table["feature"] == "gene"]
    if genes.empty:
        genes = (
            table.groupby(["gene_id", "gene_name", "chrom", "strand"], sort=False)
            .agg(start=("start", "min"), end=("end", "max"))
            .reset_index()
        )
    return genes[["chrom", "start", "end", "strand", "gene_id", "gene_name"]].reset_index(drop=True)
