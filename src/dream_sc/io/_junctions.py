"""Assemble a cells × junctions AnnData ready for ``pp.splicing_from_junctions``."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def junction_ids(var: pd.DataFrame) -> pd.Index:
    """``"{chrom}:{start}-{end}:{strand}"`` per junction."""
    return pd.Index(
        var["chrom"].astype(str)
        + ":"
        + var["start"].astype(str)
        + "-"
        + var["end"].astype(str)
        + ":"
        + var["strand"].astype(str)
    )


def junction_anndata(
    x: sparse.csr_matrix,
    barcodes: pd.Index,
    var: pd.DataFrame,
    cells: pd.Index | None,
    what: str,
) -> AnnData:
    """Counts (cells × junctions) with junction ids, summed duplicates, cells of ``cells``.

    Junctions with the same coordinates and strand (e.g. two chromosome names harmonised to one)
    are summed. With ``cells``, rows are those of ``cells`` found among ``barcodes``, in that
    order.
    """
    var = var.reset_index(drop=True)
    ids = junction_ids(var)
    if not ids.is_unique:
        codes, uniques = pd.factorize(ids)
        merge = sparse.csr_matrix(
            (np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), len(uniques))
        )
        x = sparse.csr_matrix(x @ merge)
        first = ~ids.duplicated()
        var = var[first].reset_index(drop=True)
        ids = ids[first]
    if cells is not None:
        rows = barcodes.get_indexer(cells)
        found = rows >= 0
        x, barcodes = x[rows[found]], cells[found]
    var.index = ids
    var["gene"] = pd.Categorical([None] * len(var))
    adata = AnnData(
        X=sparse.csr_matrix(x, dtype=np.float32),
        obs=pd.DataFrame(index=pd.Index(barcodes.astype(str))),
        var=var,
    )
    adata.uns["source"] = what
    return adata
