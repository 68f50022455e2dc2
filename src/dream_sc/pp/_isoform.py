"""Build a multinomial isoform-usage modality from transcript counts."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from mudata import MuData

from .._registration import set_registration
from ._feature_counts import (
    FilterReport,
    check_output_name,
    check_threshold,
    columns,
    copy_mudata,
    coverage,
    coverage_mask,
    install_modalities,
    multi_member_mask,
    new_modality,
    read_counts,
)


def isoform_usage(
    mdata: MuData,
    transcripts: str = "transcripts",
    *,
    gene_key: str = "gene",
    min_cells_covered: int = 10,
    min_total_reads: int = 20,
    key_added: str = "isoform",
    layer: str | None = None,
    overdispersed: bool = False,
    copy: bool = False,
) -> MuData | None:
    """Build a multinomial isoform-usage modality from transcript counts.

    Each gene is one multinomial whose categories are its transcripts: the new modality keeps
    the transcript counts in ``X`` (var_names = transcript ids) and ``var["group"]`` = the gene.

    Filters, in this order (counts per reason are logged at INFO on the ``dream_sc`` logger):

    1. transcripts without a gene (missing ``gene_key``) and transcripts that are the only
       isoform of their gene are dropped;
    2. transcripts with fewer than ``min_total_reads`` reads summed over cells, or reads in
       fewer than ``min_cells_covered`` cells, are dropped;
    3. genes left with a single transcript are dropped.

    If nothing is left, no modality is written (with a warning).

    Parameters
    ----------
    mdata
        The screen.
    transcripts
        Name of the transcript-count modality (cells × transcripts, raw integer counts, dense
        or sparse) whose ``var[gene_key]`` names each transcript's gene.
    gene_key
        var column with the gene of each transcript.
    min_cells_covered
        Minimum number of cells in which a transcript has reads (default 10; 0 disables).
    min_total_reads
        Minimum reads of a transcript summed over cells (default 20; 0 disables).
    key_added
        Name of the new modality (an existing one is replaced, with a warning).
    layer
        Layer of ``transcripts`` with the raw counts (default ``X``).
    overdispersed
        Register the modality with ``overdispersed=True``: a Dirichlet-multinomial likelihood
        whose concentration per gene is fitted by ``tl.fit_technical`` (see
        :func:`~dream_sc.pp.register_modality`).
    copy
        Return a modified copy instead of writing into ``mdata``.

    Returns
    -------
    ``None`` (``copy=False``) or the new MuData (``copy=True``). Writes modality ``key_added``:
    ``X`` = transcript counts (CSR if the input is sparse), same obs_names as ``transcripts``;
    ``var`` columns ``group`` (= gene), ``gene``, ``n_cells_covered``, ``total_reads``;
    ``uns["dream_sc"]`` = multinomial registration with ``group_key="group"`` (and
    ``overdispersed=True`` when requested).

    Raises
    ------
    KeyError
        Missing modality, layer or gene column.
    ValueError
        Counts that are not raw integers, bad thresholds or ``key_added``. Nothing is written
        when an error is raised.

    Examples
    --------
    >>> import mudata as md, numpy as np, pandas as pd
    >>> from anndata import AnnData
    >>> from dream_sc.pp._isoform import isoform_usage
    >>> var = pd.DataFrame({"gene": ["A", "A", "B"]}, index=["A-201", "A-202", "B-201"])
    >>> mdata = md.MuData({"transcripts": AnnData(np.array([[3, 1, 5], [0, 2, 7]]), var=var)})
    >>> isoform_usage(mdata, min_cells_covered=0, min_total_reads=0)
    >>> mdata["isoform"].var_names.tolist(), mdata["isoform"].var["group"].tolist()
    (['A-201', 'A-202'], ['A', 'A'])
    """
    key_added = check_output_name(key_added, transcripts, "key_added")
    if overdispersed not in (True, False):
        raise ValueError(f"`overdispersed` must be True or False; got {overdispersed!r}.")
    min_cells_covered = check_threshold(min_cells_covered, "min_cells_covered")
    min_total_reads = check_threshold(min_total_reads, "min_total_reads")
    counts = read_counts(
        mdata, transcripts, layer, f"Transcript counts of modality {transcripts!r}"
    )
    var_in = mdata.mod[transcripts].var
    if gene_key not in var_in.columns:
        raise KeyError(
            f"Column {gene_key!r} not found in mdata[{transcripts!r}].var (columns: "
            f"{list(var_in.columns)}); pass `gene_key=` naming each transcript's gene."
        )
    genes = var_in[gene_key].astype(object)
    report = FilterReport(key_added, "transcripts", len(genes))
    annotated = genes.notna().to_numpy()
    n_isoforms = genes.map(genes.value_counts()).fillna(0).to_numpy()
    report.dropped["without a gene"] = int((~annotated).sum())
    report.dropped["from single-isoform genes"] = int((annotated & (n_isoforms < 2)).sum())
    covered, total = coverage(counts)
    passing = coverage_mask(
        covered,
        total,
        min_cells_covered=min_cells_covered,
        min_total_reads=min_total_reads,
        report=report,
        candidates=n_isoforms >= 2,
    )
    labels = genes.astype(str).to_numpy(dtype=object)
    keep = multi_member_mask(labels, passing)
    report.dropped["from genes left with one isoform"] = int((passing & ~keep).sum())
    report.log()
    if not keep.any():
        warnings.warn(
            f"No transcript passed the filters (min_total_reads={min_total_reads}, "
            f"min_cells_covered={min_cells_covered}, >= 2 isoforms per gene); no {key_added!r} "
            "modality was written. Lower the thresholds to keep more transcripts.",
            UserWarning,
            stacklevel=2,
        )
        return copy_mudata(mdata) if copy else None
    var = pd.DataFrame(
        {
            "group": labels[keep],
            "gene": labels[keep],
            "n_cells_covered": covered[keep],
            "total_reads": total[keep],
        },
        index=var_in.index[keep].copy(),
    )
    adata = new_modality(
        mdata.mod[transcripts].obs_names, var, columns(counts, np.flatnonzero(keep))
    )
    set_registration(
        adata, distribution="multinomial", group_key="group", overdispersed=bool(overdispersed)
    )
    target = copy_mudata(mdata) if copy else mdata
    install_modalities(target, {key_added: adata}, stacklevel=3)
    return target if copy else None
