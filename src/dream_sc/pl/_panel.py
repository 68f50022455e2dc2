"""``pl.gene_splicing_panel``: a gene's expression curve next to its junctions' PSI curves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from .. import _validation as V
from .._stores.trans import read_trans
from ._docs import PANEL_SIZE, RETURN_FIG_LIST, SHOW, doc_params
from ._dose_response import draw_panel, panel_width, resolve_panels
from ._utils import finish, grid_axes


def gene_junctions(
    mdata: MuData, gene: str, *, splicing_modality: str, gene_key_column: str, key: str
) -> list[str]:
    """Fitted junctions (features) of ``gene`` in a splicing modality, best q-value first."""
    adata, _ = read_trans(mdata, splicing_modality, key)
    if gene_key_column not in adata.var.columns:
        raise KeyError(
            f"Modality {splicing_modality!r} has no var[{gene_key_column!r}] column; pass "
            "`gene_key_column=` naming the column with each junction's gene."
        )
    table = adata.varm[key]
    mine = (adata.var[gene_key_column].astype(str) == gene).to_numpy() & table["fitted"].to_numpy(
        dtype=bool
    )
    sub = table[mine]
    q = sub["qvalue"].to_numpy(dtype=float)
    order = np.lexsort((sub["lfsr"].to_numpy(dtype=float), np.where(np.isfinite(q), q, np.inf)))
    return list(sub.index[order])


@doc_params(panel_size=PANEL_SIZE, return_fig=RETURN_FIG_LIST, show=SHOW)
def gene_splicing_panel(
    mdata: MuData,
    gene: str,
    *,
    gene_modality: str = "rna",
    splicing_modality: str = "sj",
    gene_key_column: str = "gene",
    max_junctions: int = 4,
    key: str = "dream_trans",
    splicing_key: str = "dream_trans",
    show_cells: bool = False,
    technical_groups: bool = True,
    panel_size: tuple[float, float] = (4.6, 3.9),
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """One row: a gene's expression dose-response next to the PSI curves of its junctions.

    The first axes is :func:`dose_response` of ``gene`` in ``gene_modality``; the next ones show
    the junctions of the gene in ``splicing_modality`` (``var[gene_key_column] == gene``) that
    the trans fit covered, best q-value first (lfsr breaks ties), at most ``max_junctions``.
    Both share the dose axis, so expression and splicing responses to the same dosage can be
    compared directly.

    Parameters
    ----------
    mdata
        A screen with trans fits of both modalities.
    gene
        var name of the gene in ``gene_modality``.
    gene_modality
        Expression modality.
    splicing_modality
        Splicing (binomial or multinomial) modality with a gene column in ``var``; default
        ``"sj"``, the junction-usage modality of :func:`dream_sc.pp.splicing_from_junctions`
        (``"donor"`` and ``"acceptor"`` carry a ``gene`` column too).
    gene_key_column
        Column of ``mdata[splicing_modality].var`` naming each junction's gene.
    max_junctions
        Maximal number of junction axes.
    key, splicing_key
        Trans fit keys of the expression and splicing modalities.
    show_cells, technical_groups
        As in :func:`dose_response`.
    {panel_size}
    ax
        One Axes per panel (the gene, then ``min(max_junctions, n_junctions)`` junctions) to
        draw into, else a new one-row figure.
    {show}
    {return_fig}

    Returns
    -------
    The list of Axes, the Figure with ``return_fig=True``, or ``None`` when shown.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, n_junctions=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_technical(mdata, modality="splicing", n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, progress=False)
    >>> ds.tl.fit_trans(mdata, modality="splicing", function="single_hill", n_steps=50, progress=False)
    >>> gene = str(mdata["splicing"].var["gene"].iloc[0])
    >>> axes = ds.pl.gene_splicing_panel(mdata, gene, splicing_modality="splicing", show=False)
    >>> len(axes) >= 2
    True
    """
    V.check_mudata(mdata)
    if max_junctions < 1:
        raise ValueError(f"max_junctions must be >= 1; got {max_junctions}.")
    ((title, members),) = resolve_panels(mdata, gene_modality, key, gene)
    junctions = gene_junctions(
        mdata,
        gene,
        splicing_modality=splicing_modality,
        gene_key_column=gene_key_column,
        key=splicing_key,
    )
    if not junctions:
        raise ValueError(
            f"No fitted feature of modality {splicing_modality!r} has "
            f"var[{gene_key_column!r}] == {gene!r}."
        )
    panels = [(gene_modality, key, title, members)]
    for t, m in resolve_panels(mdata, splicing_modality, splicing_key, junctions):
        if len(panels) - 1 >= max_junctions:
            break
        panels.append((splicing_modality, splicing_key, t, m))
    size = panel_width(panel_size, [(p[2], p[3]) for p in panels])
    fig, axes, created = grid_axes(len(panels), ax, ncols=len(panels), panel=size)
    for i, (axis, (modality, k, t, m)) in enumerate(zip(axes, panels, strict=True)):
        _, record = read_trans(mdata, modality, k)
        draw_panel(
            axis,
            mdata,
            modality=modality,
            key=k,
            cis_key=str(record.get("cis_key", "dream_cis")),
            title=t,
            features=m,
            show_cells=show_cells,
            technical_groups=technical_groups,
            max_cells=5000,
            n_boot=200,
            legend=i == 0,
        )
    if created:  # a caller's figure keeps its own title
        fig.suptitle(
            f"{gene}: expression ({gene_modality}) and splicing ({splicing_modality})",
            fontsize="large",
        )
    return finish(fig, axes, created=created, show=show, return_fig=return_fig)
