"""``pl.dose_response``: fitted curves with the data summarised per guide."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mudata import MuData

from .. import _validation as V
from .._registration import get_registration
from .._stores.cis import CisKeys, has_cis_doses, read_cis
from .._stores.trans import read_trans
from ..get._observed import PanelData, cell_values, guide_observed, panel_data
from ..get._tables import cis_dosage, trans_curves
from ..models.families import get_family
from ._docs import KEY_TRANS, MDATA_TRANS, MODALITY, PANEL_SIZE, RETURN_FIG, SHOW, doc_params
from ._utils import (
    CURVE_COLOR,
    GREY,
    color,
    dose_axis,
    finish,
    format_q,
    grid_axes,
)

#: Default cap on drawn cell points per axes.
MAX_CELLS = 5000
#: Markers of technical groups when colour encodes categories (multinomial).
GROUP_MARKERS = ["o", "^", "s", "D", "v", "P", "X", "*"]
#: Extra width (inches) of axes with a legend beside them (multinomial categories).
LEGEND_WIDTH = 1.8
#: Horizontal dodge between technical groups at one guide (fraction of a log-dose unit).
DODGE = 0.025


def resolve_panels(
    mdata: MuData, modality: str, key: str, features: str | Sequence[str]
) -> list[tuple[str, list[str]]]:
    """``(title, features)`` per axes; a multinomial name expands to all categories of its group."""
    adata, record = read_trans(mdata, modality, key)
    names = [features] if isinstance(features, str) else list(features)
    if not names:
        raise ValueError("features is empty; pass a feature name or a list of names.")
    table = adata.varm[key]
    fitted = set(adata.var_names[table["fitted"].to_numpy(dtype=bool)])
    groups = None
    if get_family(str(record["distribution"])).grouped:
        reg = get_registration(adata, modality)
        groups = adata.var[reg.get("group_key") or "group"].astype(str)
    panels: dict[str, list[str]] = {}
    for name in map(str, names):
        if groups is not None and name not in adata.var_names and name in set(groups):
            title = name
        elif name in adata.var_names:
            title = name if groups is None else str(groups[name])
        else:
            choices = list(adata.var_names) + ([] if groups is None else list(pd.unique(groups)))
            raise KeyError(
                f"Feature {name!r} not found in modality {modality!r}." + V._suggest(name, choices)
            )
        members = [name] if groups is None else list(groups.index[groups == title])
        if not all(m in fitted for m in members):
            raise KeyError(
                f"Feature {name!r} was not fitted by {key!r} in modality {modality!r} (the cis gene "
                "is only fitted with `ds.tl.fit_trans(..., include_cis_feature=True)`)."
            )
        panels.setdefault(title, members)
    return list(panels.items())


def panel_width(
    panel_size: tuple[float, float], panels: list[tuple[str, list[str]]]
) -> tuple[float, float]:
    """Axes size of a new figure: wider when a multinomial legend sits beside the axes."""
    extra = LEGEND_WIDTH if any(len(members) > 1 for _, members in panels) else 0.0
    return (panel_size[0] + extra, panel_size[1])


def _density_alpha(
    x: np.ndarray, y: np.ndarray, *, low: float = 0.04, high: float = 0.6
) -> np.ndarray:
    """Per-point alpha falling with the local point density (2-D histogram in log-dose, value)."""
    lx = np.log10(x)
    hist, ex, ey = np.histogram2d(lx, y, bins=40)
    ix = np.clip(np.searchsorted(ex, lx, side="right") - 1, 0, hist.shape[0] - 1)
    iy = np.clip(np.searchsorted(ey, y, side="right") - 1, 0, hist.shape[1] - 1)
    return np.clip(high / np.sqrt(hist[ix, iy]), low, high)


def _draw_cells(ax: Axes, data: PanelData, colors: np.ndarray, max_cells: int, seed: int) -> None:
    values = cell_values(data)  # [N, K]
    cell, feat = np.nonzero(np.isfinite(values))
    if len(cell) == 0:
        return
    if len(cell) > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(len(cell), size=max_cells, replace=False))
        cell, feat = cell[keep], feat[keep]
    x, y = data.dose[cell], values[cell, feat]
    rgba = np.array([to_rgba(c) for c in colors[cell, feat]])
    rgba[:, 3] = _density_alpha(x, y)
    ax.scatter(x, y, s=5, c=rgba, linewidths=0, rasterized=True, zorder=1, gid="cells")


def _point_colors(data: PanelData, technical_groups: bool) -> np.ndarray:
    """Colour of every (cell, feature): category for multinomial, else technical group."""
    n, k = data.num.shape
    if k > 1:
        return np.tile(np.array([color(j) for j in range(k)], dtype=object), (n, 1))
    if technical_groups and len(data.group_names) > 1:
        return np.array([color(g) for g in data.group], dtype=object)[:, None]
    return np.full((n, 1), GREY, dtype=object)


def _draw_guides(ax: Axes, summary: pd.DataFrame, data: PanelData, technical_groups: bool) -> None:
    """Per-guide points and 90% intervals of :func:`dream_sc.get.guide_observed`."""
    if summary.empty:
        return
    k, n_groups = len(data.features), len(data.group_names)
    n_max = summary["n_cells"].max()
    sizes = 12 + 60 * summary["n_cells"].to_numpy() / max(n_max, 1)
    codes = {name: c for c, name in enumerate(data.group_names)}
    g = np.array([codes.get(name, -1) for name in summary["technical_group"]], dtype=int)
    position = {name: j for j, name in enumerate(data.features)}
    offset = (
        (g - (n_groups - 1) / 2) * DODGE if technical_groups and n_groups > 1 else np.zeros(len(g))
    )
    x = summary["dose"].to_numpy() * np.exp(offset)
    if k > 1:
        edge = np.array([color(position[f]) for f in summary["feature"]], dtype=object)
    elif technical_groups and n_groups > 1:
        edge = np.array([color(max(v, 0)) for v in g], dtype=object)
    else:
        edge = np.full(len(g), CURVE_COLOR, dtype=object)
    is_control = summary["is_control"].to_numpy(dtype=bool)
    ax.vlines(
        x,
        summary["q05"],
        summary["q95"],
        colors=list(edge),
        linewidth=1.0,
        zorder=3,
        gid="guide_interval",
    )
    markers = np.array([GROUP_MARKERS[max(v, 0) % len(GROUP_MARKERS)] if k > 1 else "o" for v in g])
    for marker in np.unique(markers):
        sel = markers == marker
        face = np.where(is_control[sel], "white", edge[sel])
        ax.scatter(
            x[sel],
            summary["value"].to_numpy()[sel],
            s=sizes[sel],
            marker=marker,
            c=list(face),
            edgecolors=list(edge[sel]),
            linewidths=1.0,
            zorder=4,
            gid="guides",
        )


def _draw_curves(ax: Axes, curves: pd.DataFrame, table: pd.DataFrame, features: list[str]) -> None:
    for j, feature in enumerate(features):
        c = CURVE_COLOR if len(features) == 1 else color(j)
        cur = curves[curves["feature"] == feature]
        ax.fill_between(
            cur["dose"],
            cur["q05"],
            cur["q95"],
            color=c,
            alpha=0.18,
            linewidth=0,
            zorder=2,
            gid="band",
        )
        row = table.loc[feature]
        label = (
            feature
            if len(features) == 1
            else f"{feature} ({row['shape']}, {format_q(row['qvalue'])})"
        )
        ax.plot(
            cur["dose"], cur["mean"], color=c, linewidth=2.0, zorder=5, gid="curve", label=label
        )
        if bool(row["ec50_in_range"]) and np.isfinite(row["ec50_mean"]):
            ax.axvline(
                row["ec50_mean"],
                color=c,
                linestyle="--",
                linewidth=1.0,
                alpha=0.8,
                zorder=2,
                gid="ec50",
            )


def _legend(ax: Axes, data: PanelData, technical_groups: bool, has_control: bool) -> None:
    """Categories (multinomial), technical groups, control guides and EC50, as drawn."""
    k = len(data.features)
    handles = [h for h in ax.get_lines() if h.get_gid() == "curve"] if k > 1 else []
    if technical_groups and len(data.group_names) > 1:
        for i, name in enumerate(data.group_names):
            if k > 1:
                marker, c = GROUP_MARKERS[i % len(GROUP_MARKERS)], "0.3"
            else:
                marker, c = "o", color(i)
            handles.append(Line2D([], [], color=c, marker=marker, linestyle="", label=name))
    if has_control:
        handles.append(
            Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                markerfacecolor="white",
                linestyle="",
                label="control guide",
            )
        )
    if any(line.get_gid() == "ec50" for line in ax.get_lines()):
        handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1.0, label="EC50"))
    if handles and k > 1:  # many entries: beside the axes so no data are hidden
        ax.legend(
            handles=handles,
            fontsize="x-small",
            frameon=False,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    elif handles:
        ax.legend(handles=handles, fontsize="x-small", frameon=False, loc="best")


def _title(table: pd.DataFrame, title: str, features: list[str]) -> str:
    if len(features) > 1:
        return f"{title} ({len(features)} categories)"
    row = table.loc[features[0]]
    qv = row["qvalue"]
    evidence = format_q(qv) if np.isfinite(qv) else format_q(row["lfsr"], "lfsr")
    return f"{title}: {row['shape']}, {evidence}"


def draw_panel(
    ax: Axes,
    mdata: MuData,
    *,
    modality: str,
    key: str,
    cis_key: str,
    title: str,
    features: list[str],
    show_cells: bool,
    technical_groups: bool,
    max_cells: int,
    n_boot: int,
    legend: bool,
) -> None:
    """Draw one dose-response axes: cells (optional), per-guide summaries, curves, labels."""
    adata, record = read_trans(mdata, modality, key)
    table = adata.varm[key]
    cis = read_cis(mdata, cis_key)
    data = panel_data(mdata, modality, features, record, cis_key)
    by_group = technical_groups and len(data.group_names) > 1
    summary = guide_observed(
        mdata,
        features,
        modality=modality,
        key=key,
        cis_key=cis_key,
        by_group=by_group,
        n_boot=n_boot,
    )
    if show_cells:
        _draw_cells(ax, data, _point_colors(data, technical_groups), max_cells, seed=0)
    _draw_guides(ax, summary, data, by_group)
    curves = trans_curves(mdata, modality=modality, features=features, key=key)
    _draw_curves(ax, curves, table, features)
    dose_axis(ax, str(cis["cis_feature"]), float(cis["x_ntc"]))
    ax.set_ylabel(get_family(data.distribution).value_label)
    ax.set_title(_title(table, title, features), fontsize="medium")
    if legend or len(features) > 1:
        _legend(ax, data, technical_groups, bool(summary["is_control"].any()))


@doc_params(
    key=KEY_TRANS,
    mdata=MDATA_TRANS,
    modality=MODALITY,
    panel_size=PANEL_SIZE,
    return_fig=RETURN_FIG,
    show=SHOW,
)
def dose_response(
    mdata: MuData,
    features: str | Sequence[str],
    *,
    modality: str = "rna",
    key: str = "dream_trans",
    cis_key: str | None = None,
    show_cells: bool = False,
    technical_groups: bool = True,
    max_cells: int = MAX_CELLS,
    n_boot: int = 200,
    ncols: int = 3,
    panel_size: tuple[float, float] = (4.6, 3.9),
    legend: bool = True,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | list[Axes] | Figure | None:
    """Dose-response curves with the observed data on the dose scale.

    One axes per feature (a grid for several). The x axis is the cis dosage on a log scale in
    dose units, with a secondary top axis in log2 fold change vs the NTC dosage. The y axis is
    the modality's natural scale in the reference technical group: expression (counts per unit
    size factor) for counts, PSI (successes / trials) for binomial, usage proportion for
    multinomial and the value for continuous data (see :mod:`dream_sc.pl._observed`).

    The data are summarised per guide: the normalised mean at the guide's posterior dosage
    (:func:`dream_sc.get.cis_dosage`) with a bootstrap 90% interval, marker area proportional
    to the number of cells with data; control guides are drawn open. With
    ``technical_groups=True`` every technical group is summarised and coloured separately
    (slightly dodged), each normalised with its technical effects so groups are comparable.
    The posterior mean curve and its 90% band come from :func:`dream_sc.get.trans_curves`; the
    EC50 is marked with a dashed line when it lies in the observed dosage range. For a
    multinomial modality a feature name (or group name) shows every category of its group in
    one axes, one curve and band per category.

    Parameters
    ----------
    {mdata}
    features
        A feature name or a list of names (multinomial: category or group names).
    {modality}
    {key}
    cis_key
        Cis fit giving the dosages (default: the one the trans fit used).
    show_cells
        Also draw every cell (rasterised, density-aware transparency), at most ``max_cells``
        points per axes (a seeded random subsample).
    technical_groups
        Summarise and colour technical groups separately (else pooled per guide).
    max_cells
        Cap on drawn cell points per axes.
    n_boot
        Bootstrap resamples for the per-guide intervals.
    ncols
        Columns of the grid for several features.
    {panel_size}
    legend
        Draw the legend (in the first axes; multinomial axes always get theirs).
    ax
        Axes to draw into (one per feature), else a new figure.
    {show}
    {return_fig}

    Returns
    -------
    The Axes (``features`` a string) or list of Axes (a list), the Figure with ``return_fig=True``, or ``None``
    when shown.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, progress=False)
    >>> ax = ds.pl.dose_response(mdata, "gene_0001", show=False)
    >>> axes = ds.pl.dose_response(mdata, ["gene_0001", "gene_0002"], show_cells=True, show=False)
    """
    V.check_mudata(mdata)
    panels = resolve_panels(mdata, modality, key, features)
    _, record = read_trans(mdata, modality, key)
    cis_key = str(record.get("cis_key", "dream_cis")) if cis_key is None else cis_key
    cis_dosage(mdata, key=cis_key)  # raises with the call to make when the cis fit is missing
    if not has_cis_doses(mdata, cis_key):
        raise KeyError(
            f"mdata.obs has no {CisKeys(cis_key).dose('mean')} column; rerun `ds.tl.fit_cis(..., key_added={cis_key!r})`."
        )
    if max_cells < 0:
        raise ValueError(f"max_cells must be >= 0; got {max_cells}.")
    fig, axes, created = grid_axes(
        len(panels), ax, ncols=ncols, panel=panel_width(panel_size, panels)
    )
    for i, (title, members) in enumerate(panels):
        draw_panel(
            axes[i],
            mdata,
            modality=modality,
            key=key,
            cis_key=cis_key,
            title=title,
            features=members,
            show_cells=show_cells,
            technical_groups=technical_groups,
            max_cells=max_cells,
            n_boot=n_boot,
            legend=legend and i == 0,
        )
    out = axes[0] if isinstance(features, str) else axes
    return finish(fig, out, created=created, show=show, return_fig=return_fig)
