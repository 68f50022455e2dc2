"""Gene spans from a GTF file (plain pandas, gzipped or not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._files import as_file, file_error, read_table

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
    path = as_file(source, "gtf")
    table = read_table(
        path,
        kind="a GTF (9 tab-separated columns)",
        sep="\t",
        header=False,
        comment="#",
        dtype=str,
        keep_default_na=False,
        quoting=3,
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
    for column in ("start", "end"):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
        bad = (
            ~np.isfinite(values) | (values != np.floor(values)) | (values < 1) | (values > 2.0**53)
        )
        if bad.any():
            line = table.iloc[int(np.flatnonzero(bad)[0])]
            raise file_error(
                path,
                f"the {column} of the {line['feature']} line of {line['gene_id']} is "
                f"{line[column]!r}, not a position >= 1",
                "a GTF holds 1-based integer positions in columns 4 and 5",
            )
        table[column] = values.astype(np.int64)
    if (table["start"] > table["end"]).any():
        line = table[table["start"] > table["end"]].iloc[0]
        raise file_error(
            path,
            f"the {line['feature']} line of {line['gene_id']} has start {line['start']} > end "
            f"{line['end']}",
            "a GTF gives start <= end on both strands",
        )
    genes = table[table["feature"] == "gene"]
    if genes.empty:
        genes = (
            table.groupby(["gene_id", "gene_name", "chrom", "strand"], sort=False)
            .agg(start=("start", "min"), end=("end", "max"))
            .reset_index()
        )
    return genes[["chrom", "start", "end", "strand", "gene_id", "gene_name"]].reset_index(drop=True)
