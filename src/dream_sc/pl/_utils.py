"""Shared plumbing of the plot functions: axes creation, ``show``/``return_fig``, labels, colours."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import pyplot as plt
from matplotlib import ticker as mticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._settings import settings

#: Colour of non-significant / control elements.
GREY = "0.6"
#: Colours of the shape calls.
SHAPE_COLORS = {
    "increasing": "#c2362b",
    "decreasing": "#2f6db3",
    "non_monotonic": "#7b4fa6",
    "flat": "0.72",
}
#: Curve and band colour when one feature is drawn per axes.
CURVE_COLOR = "#222222"
#: Palette for technical groups, categories and targets.
PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4"]

#: Label of the secondary dosage axis.
LOG2FC_LABEL = "log2 fold change vs NTC"


def dose_label(cis_feature: str) -> str:
    """Label of a cis dosage axis."""
    return f"cis dosage ({cis_feature} counts per unit size factor)"


def color(i: int) -> str:
    """The ``i``-th colour of :data:`PALETTE` (cycling)."""
    return PALETTE[i % len(PALETTE)]


def resolve_show(show: bool | None) -> bool:
    """``None`` follows ``settings.autoshow``."""
    return settings.autoshow if show is None else bool(show)


def single_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes, bool]:
    """The given axes, or a new figure with one axes; returns ``(fig, ax, created)``."""
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes; got {type(ax).__name__}.")
        return ax.figure, ax, False
    fig, new = plt.subplots(figsize=figsize)
    return fig, new, True


def grid_axes(
    n: int,
    ax: Axes | Sequence[Axes] | None,
    *,
    ncols: int,
    panel: tuple[float, float],
    sharex: bool = False,
) -> tuple[Figure, list[Axes], bool]:
    """``n`` axes: the given one(s), or a new grid of ``ncols`` columns sized ``panel`` each.

    Unused grid cells are removed. Returns ``(fig, axes, created)``.
    """
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if not all(isinstance(a, Axes) for a in axes):
            raise TypeError("ax must be a matplotlib Axes or a sequence of Axes.")
        if len(axes) != n:
            raise ValueError(
                f"ax holds {len(axes)} Axes but {n} panels are drawn; pass one Axes per panel "
                "or ax=None for a new grid."
            )
        return axes[0].figure, axes, False
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1; got {ncols}.")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False, sharex=sharex
    )
    flat = list(grid.ravel())
    for extra in flat[n:]:
        extra.remove()
    return fig, flat[:n], True


def finish(
    fig: Figure,
    axes: Axes | list[Axes],
    *,
    created: bool,
    show: bool | None,
    return_fig: bool,
) -> Figure | Axes | list[Axes] | None:
    """Lay out a figure the plot created, then return / show following scanpy's conventions."""
    if created:
        fig.tight_layout()
    if return_fig:
        return fig
    if resolve_show(show):
        plt.show()
        return None
    return axes


def _plain(value: float, _pos=None) -> str:
    return f"{value:g}"


def _log2_label(value: float, _pos=None) -> str:
    return f"{np.log2(value):g}" if value > 0 else ""


def dose_axis(ax: Axes, cis_feature: str, x_ntc: float, *, which: str = "x"):
    """Log dosage axis in dose units plus a secondary axis in log2 fold change vs NTC.

    The secondary axis is on top (``which="x"``) or on the right (``which="y"``); it is
    returned. Call after the data are drawn and do not change the scale afterwards.
    """
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(mticker.FuncFormatter(_plain))
    axis.set_minor_locator(mticker.LogLocator(base=10, subs=np.arange(2, 10) * 1.0))
    axis.set_minor_formatter(mticker.NullFormatter())
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(dose_label(cis_feature))

    # The secondary axis of a log axis is itself logarithmic, so it carries the fold change
    # x / x_ntc (positive) and labels its powers of two with their log2.
    def forward(x):
        return np.asarray(x, dtype=float) / x_ntc

    def inverse(ratio):
        return np.asarray(ratio, dtype=float) * x_ntc

    if which == "x":
        sec = ax.secondary_xaxis("top", functions=(forward, inverse))
        sec.set_xlabel(LOG2FC_LABEL)
        sec_axis = sec.xaxis
    else:
        sec = ax.secondary_yaxis("right", functions=(forward, inverse))
        sec.set_ylabel(LOG2FC_LABEL)
        sec_axis = sec.yaxis
    sec_axis.set_major_locator(mticker.LogLocator(base=2.0, subs=(1.0,), numticks=12))
    sec_axis.set_major_formatter(mticker.FuncFormatter(_log2_label))
    sec_axis.set_minor_locator(mticker.NullLocator())
    return sec


def format_q(value: float, name: str = "q") -> str:
    """``q = 0.012`` style text (``n/a`` for NaN)."""
    if value is None or not np.isfinite(value):
        return f"{name} = n/a"
    return f"{name} = {value:.2g}"
