"""``pl.guide_assignment``: guide UMI distributions with the call thresholds, cells per guide."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData
from scipy import sparse

from .. import _validation as V
from ._docs import LABEL_GUIDES, RETURN_FIG, SHOW, doc_params
from ._utils import GREY, color, finish, grid_axes

#: Edges of the UMI bins (0, 1, 2, 3-4, 5-9, ..., log-spaced above).
_EDGES = np.unique(np.concatenate([[0, 1, 2, 3], np.round(np.logspace(np.log10(5), 5, 30))]))


@doc_params(label_guides=LABEL_GUIDES, return_fig=RETURN_FIG, show=SHOW)
def guide_assignment(
    mdata: MuData,
    *,
    guides: str = "guides",
    key: str = "guide_assignment",
    control_label: str | None = None,
    label_guides: bool = True,
    figsize: tuple[float, float] | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """Quality control of guide calls: UMI distributions, thresholds and cells per guide.

    Left: for every guide (one row), the number of cells per UMI count (colour, log scale; the
    cells of the guide modality — after a low-MOI ``assign_guides`` only the kept ones —, bins
    0, 1, 2, 3-4, 5-9, ... log-spaced), with the guide's call
    threshold as a red tick; a guide without threshold (never called) has none. Right: the
    number of cells kept with the guide after :func:`~dream_sc.pp.assign_guides`, controls in
    grey, targeting guides coloured by target.

    Parameters
    ----------
    mdata
        A screen after :func:`~dream_sc.pp.assign_guides` (or
        :func:`~dream_sc.io.read_cellranger`).
    guides
        Guide-count modality.
    key
        ``key_added`` of :func:`~dream_sc.pp.assign_guides`.
    control_label
        Control target label (default: the one used by ``assign_guides``).
    {label_guides}
    figsize
        Size of a new figure (default grows with the number of guides).
    ax
        Two Axes to draw into (distributions, cells per guide), else a new figure.
    {show}
    {return_fig}

    Returns
    -------
    The two Axes, the Figure with ``return_fig=True``, or ``None`` when shown.

    Raises
    ------
    KeyError
        No guide modality or no ``assign_guides`` result under ``key``.

    Examples
    --------
    >>> import dream_sc as ds  # doctest: +SKIP
    >>> ds.pl.guide_assignment(mdata)  # doctest: +SKIP
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, guides)
    adata = mdata.mod[guides]
    if key not in mdata.uns or key not in mdata.obsm or "umi_threshold" not in adata.var:
        raise KeyError(
            f"No guide calls under key {key!r}; run `ds.pp.assign_guides(mdata, guides={guides!r})` "
            "first (or pass `key=`)."
        )
    record = mdata.uns[key]
    control = control_label or str(record["params"]["control_label"])
    names = adata.var_names.astype(str)
    targets = [str(record["guide_targets"].get(g, "")) for g in names]
    n = len(names)
    size = figsize or (10.0, max(2.5, 0.22 * n + 1.2))
    fig, axes, created = grid_axes(2, ax, ncols=2, panel=(size[0] / 2, size[1]))
    umis = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
    _draw_distributions(
        axes[0], umis, adata.var["umi_threshold"].to_numpy(float), names, label_guides
    )
    called = np.asarray(mdata.obsm[key], dtype=float).sum(axis=0)
    _draw_cells(axes[1], called, names, targets, control, label_guides)
    return finish(fig, axes, created=created, show=show, return_fig=return_fig)


def _draw_distributions(ax: Axes, umis, thresholds, names, label_guides: bool) -> None:
    edges = _EDGES[_EDGES <= max(umis.max(), 3) + 1]
    edges = np.append(edges, edges[-1] * 2 if edges[-1] > 0 else 1)
    counts = np.stack([np.histogram(umis[:, j], bins=edges)[0] for j in range(umis.shape[1])])
    x_edges = edges.astype(float) + 0.5  # bin [a, b) drawn from a+0.5 on a log axis
    mesh = ax.pcolormesh(
        x_edges,
        np.arange(len(names) + 1) - 0.5,
        np.where(counts > 0, counts, np.nan),
        cmap="Greys",
        norm=mcolors.LogNorm(vmin=1, vmax=max(counts.max(), 2)),
        gid="umi_histogram",
    )
    ax.set_xscale("log")
    finite = np.isfinite(thresholds)
    ax.scatter(
        thresholds[finite] + 0.5,
        np.flatnonzero(finite),
        marker="|",
        s=120,
        linewidths=2,
        c="#c2362b",
        zorder=3,
        gid="thresholds",
        label="call threshold",
    )
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels(names if label_guides else [""] * len(names), fontsize="x-small")
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("guide UMIs per cell (+0.5, log scale)")
    ax.set_ylabel("guide")
    ax.set_title("guide UMI distributions", fontsize="medium")
    ax.legend(fontsize="x-small", frameon=False, loc="lower right")
    ax.figure.colorbar(mesh, ax=ax, label="cells", fraction=0.05, pad=0.02)


def _draw_cells(ax: Axes, called, names, targets, control, label_guides: bool) -> None:
    order = list(dict.fromkeys(t for t in targets if t != control))
    colours = [GREY if t == control else color(order.index(t)) for t in targets]
    ax.barh(np.arange(len(names)), called, color=colours, gid="cells_per_guide")
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels(names if label_guides else [""] * len(names), fontsize="x-small")
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("cells assigned")
    ax.set_title("cells per guide (controls grey)", fontsize="medium")
