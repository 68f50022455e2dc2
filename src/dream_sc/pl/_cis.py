"""``pl.cis_dosage``: per-guide dosage posteriors of a cis fit."""

from __future__ import annotations

from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mudata import MuData

from .. import _validation as V
from ..get._tables import cis_dosage as _cis_table
from ._docs import AX, LABEL_GUIDES, RETURN_FIG, SHOW, doc_params
from ._utils import GREY, color, dose_axis, finish, single_axes


@doc_params(ax=AX, label_guides=LABEL_GUIDES, return_fig=RETURN_FIG, show=SHOW)
def cis_dosage(
    mdata: MuData,
    *,
    key: str = "dream_cis",
    orientation: Literal["horizontal", "vertical"] = "horizontal",
    label_guides: bool = True,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Per-guide cis dosage posteriors, ordered by dose.

    Each guide is a point at its posterior mean dosage with a bar from the 5% to the 95%
    posterior quantile, coloured by target (controls grey); a dashed reference line marks the
    NTC dosage ``x_ntc``. The dosage axis is logarithmic in dose units with a secondary axis in
    log2 fold change vs NTC.

    Parameters
    ----------
    mdata
        A screen fitted with :func:`dream_sc.tl.fit_cis`.
    key
        ``key_added`` of the cis fit.
    orientation
        ``"horizontal"``: dosage on the x axis, one row per guide; ``"vertical"``: dosage on the
        y axis, one column per guide.
    {label_guides}
    figsize
        Size of a new figure (default scales with the number of guides).
    {ax}
    {show}
    {return_fig}

    Returns
    -------
    The Axes, the Figure with ``return_fig=True``, or ``None`` when shown.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ax = ds.pl.cis_dosage(mdata, show=False)
    """
    V.check_mudata(mdata)
    if orientation not in ("horizontal", "vertical"):
        raise ValueError(f"orientation must be 'horizontal' or 'vertical'; got {orientation!r}.")
    guides = _cis_table(mdata, key=key).sort_values("dose_mean", kind="stable")
    record = mdata.uns[key]
    n = len(guides)
    if figsize is None:
        long = float(np.clip(0.24 * n + 1.6, 3.0, 30.0))
        figsize = (6.0, long) if orientation == "horizontal" else (long, 4.8)
    fig, ax, created = single_axes(ax, figsize)
    control = (
        guides["is_control"].to_numpy(dtype=bool) if "is_control" in guides else np.zeros(n, bool)
    )
    targets = [
        t
        for t in dict.fromkeys(guides["target"].astype(str))
        if t not in set(guides["target"][control].astype(str))
    ]
    colors = {t: color(i) for i, t in enumerate(targets)}
    point = np.array(
        [GREY if c else colors[str(t)] for t, c in zip(guides["target"], control, strict=True)],
        dtype=object,
    )
    pos = np.arange(n)
    horizontal = orientation == "horizontal"
    lo, hi, mean = (guides[c].to_numpy() for c in ("dose_q05", "dose_q95", "dose_mean"))
    if horizontal:
        ax.hlines(pos, lo, hi, colors=list(point), linewidth=2.0, gid="interval")
        ax.scatter(
            mean, pos, c=list(point), s=30, zorder=3, edgecolors="white", linewidths=0.5, gid="dose"
        )
        ax.axvline(
            float(record["x_ntc"]),
            color="0.3",
            linestyle="--",
            linewidth=1.0,
            zorder=1,
            gid="x_ntc",
        )
    else:
        ax.vlines(pos, lo, hi, colors=list(point), linewidth=2.0, gid="interval")
        ax.scatter(
            pos, mean, c=list(point), s=30, zorder=3, edgecolors="white", linewidths=0.5, gid="dose"
        )
        ax.axhline(
            float(record["x_ntc"]),
            color="0.3",
            linestyle="--",
            linewidth=1.0,
            zorder=1,
            gid="x_ntc",
        )
    dose_axis(
        ax, str(record["cis_feature"]), float(record["x_ntc"]), which="x" if horizontal else "y"
    )
    set_ticks = ax.set_yticks if horizontal else ax.set_xticks
    if label_guides:
        set_ticks(
            pos, list(guides.index.astype(str)), fontsize="small", rotation=0 if horizontal else 90
        )
    else:
        set_ticks([])
    (ax.set_ylabel if horizontal else ax.set_xlabel)("guide (ordered by dosage)")
    (ax.set_ylim if horizontal else ax.set_xlim)(-0.7, n - 0.3)
    handles = [Line2D([], [], color=colors[t], marker="o", linewidth=2, label=t) for t in targets]
    if control.any():
        handles.append(Line2D([], [], color=GREY, marker="o", linewidth=2, label="control"))
    handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1, label="NTC dosage"))
    ax.legend(
        handles=handles,
        fontsize="small",
        frameon=False,
        loc="lower right" if horizontal else "upper left",
    )
    ax.set_title(
        f"cis dosage of {record['cis_feature']} per guide (90% interval)", fontsize="medium"
    )
    return finish(fig, ax, created=created, show=show, return_fig=return_fig)
