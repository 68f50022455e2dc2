"""Screen-wide views of a trans fit: ``pl.trans_summary`` (volcano) and ``pl.calibration`` (QQ)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from .. import _validation as V
from .._stores.trans import read_trans
from ..models.families import get_family
from ._docs import AX, FIGSIZE, KEY_TRANS, MDATA_TRANS, MODALITY, RETURN_FIG, SHOW, doc_params
from ._utils import SHAPE_COLORS, finish, single_axes

SHAPE_LABELS = {
    "increasing": "increasing",
    "decreasing": "decreasing",
    "non_monotonic": "non-monotonic",
}


def _alpha(record: dict, alpha: float | None) -> float:
    value = float(record["params"].get("alpha", 0.1)) if alpha is None else float(alpha)
    if not 0 < value < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}.")
    return value


def _evidence(table: pd.DataFrame, record: dict) -> tuple[np.ndarray, str, str]:
    """Values, column and axis label of the significance axis (q-value, else lfsr)."""
    q = table["qvalue"].to_numpy(dtype=float)
    if np.isfinite(q).any():
        return q, "q", "-log10(q-value)"
    floor = 0.5 / max(int(record["params"].get("n_samples", 100)), 1)
    return np.maximum(table["lfsr"].to_numpy(dtype=float), floor), "lfsr", "-log10(lfsr)"


def _stored_alpha(record: dict, alpha: float | None) -> float:
    """The fit's ``alpha``; another one is an error (the shape calls are stored at it)."""
    stored = float(record["params"].get("alpha", 0.1))
    if alpha is not None and not np.isclose(float(alpha), stored, rtol=0.0, atol=1e-12):
        raise ValueError(
            f"The stored significance and shape calls were made at alpha={stored:g}, not "
            f"{alpha:g}; rescore with `ds.tl.test_trans(mdata, alpha={alpha:g})` (no refit) "
            "and plot again."
        )
    return stored


#: Candidate label offsets (points) tried in order; the first free spot is used.
_OFFSETS = [
    (6, 4),
    (6, -12),
    (-6, 4),
    (-6, -12),
    (6, 16),
    (-6, 16),
    (6, -24),
    (-6, -24),
    (14, 28),
    (-14, 28),
    (14, -36),
    (-14, -36),
]


def _label_points(
    ax: Axes,
    x: np.ndarray,
    y: np.ndarray,
    names: np.ndarray,
    n_labels: int,
    rank: np.ndarray | None = None,
) -> None:
    """Label the ``n_labels`` highest-ranked points, avoiding overlaps between labels greedily.

    ``rank`` (larger = stronger; the ``score`` column) orders the points; without it, the
    strongest evidence ``y`` first, then the largest ``|x|``.
    """
    if n_labels <= 0 or len(x) == 0:
        return
    if rank is not None and np.isfinite(rank).any():
        order = np.argsort(-np.nan_to_num(rank, nan=-np.inf), kind="stable")[:n_labels]
    else:
        order = np.lexsort((-np.abs(x), -y))[:n_labels]
    scale = ax.figure.dpi / 72.0
    anchors = ax.transData.transform(np.column_stack([x[order], y[order]])) / scale  # points
    placed: list[tuple[float, float, float, float]] = []
    for (px, py), i in zip(anchors, order, strict=True):
        text = str(names[i])
        width, height = 4.6 * len(text) + 2, 9.0
        choice = _OFFSETS[0]
        for dx, dy in _OFFSETS:
            left = px + dx if dx > 0 else px + dx - width
            box = (left, py + dy, left + width, py + dy + height)
            if not any(
                b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed
            ):
                choice = (dx, dy)
                placed.append(box)
                break
        ax.annotate(
            text,
            (x[i], y[i]),
            xytext=choice,
            textcoords="offset points",
            ha="left" if choice[0] > 0 else "right",
            va="bottom",
            fontsize="x-small",
            color="0.15",
            gid="label",
            arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.5},
        )


@doc_params(
    ax=AX,
    figsize=FIGSIZE,
    key=KEY_TRANS,
    mdata=MDATA_TRANS,
    modality=MODALITY,
    return_fig=RETURN_FIG,
    show=SHOW,
)
def trans_summary(
    mdata: MuData,
    *,
    modality: str = "rna",
    key: str = "dream_trans",
    n_labels: int = 10,
    alpha: float | None = None,
    figsize: tuple[float, float] = (5.5, 4.5),
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Volcano plot of a trans fit: response over the dosage range vs significance.

    x is ``response_mean`` (log2 fold change over the observed dosage range for counts; change
    in PSI / proportion / mean for the other distributions); y is ``-log10(qvalue)``, or
    ``-log10(lfsr)`` when the fit was not tested (``test=False``). Significant features are
    coloured by their stored shape call (:func:`dream_sc.get.trans_results` ``shape``), the
    others grey; the ``n_labels`` features with the strongest evidence are labelled and, for a
    tested fit, a dashed line marks the q-value threshold ``alpha``.

    Parameters
    ----------
    {mdata}
    {modality}
    {key}
    n_labels
        Number of features labelled, highest ``score`` first (the ranking column: strictly
        ordered where q-values reach their floor).
    alpha
        The fit's significance level (default). The colours are the stored ``significant``
        and ``shape`` columns, which :func:`dream_sc.tl.test_trans` computed at that level;
        another value raises (rescore with ``ds.tl.test_trans(mdata, alpha=...)`` first).
    {figsize}
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
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, progress=False)
    >>> ax = ds.pl.trans_summary(mdata, n_labels=5, show=False)
    """
    V.check_mudata(mdata)
    adata, record = read_trans(mdata, modality, key)
    table = adata.varm[key]
    table = table[table["fitted"].to_numpy(dtype=bool)]
    level = _stored_alpha(record, alpha)
    values, column, ylabel = _evidence(table, record)
    x = table["response_mean"].to_numpy(dtype=float)
    y = -np.log10(values)
    significant = table["significant"].to_numpy(dtype=bool)
    shapes = np.where(significant, table["shape"].astype(str).to_numpy(), "flat")
    fig, ax, created = single_axes(ax, figsize)
    ns = ~significant
    ax.scatter(
        x[ns],
        y[ns],
        s=12,
        c=SHAPE_COLORS["flat"],
        linewidths=0,
        label="not significant",
        gid="features",
    )
    for shape, text in SHAPE_LABELS.items():
        sel = shapes == shape
        if sel.any():
            ax.scatter(
                x[sel],
                y[sel],
                s=18,
                c=SHAPE_COLORS[shape],
                linewidths=0,
                label=f"{text} ({int(sel.sum())})",
                gid="features",
            )
    tested = column == "q"
    if tested:  # untested fits are called on prob_dose_dependent and lfsr together: no line
        ax.axhline(-np.log10(level), color="0.4", linestyle="--", linewidth=0.8, gid="threshold")
    ax.axvline(0.0, color="0.8", linewidth=0.8, zorder=0)
    top = max(float(np.nanmax(y, initial=0.0)), -np.log10(level) if tested else 0.0)
    ax.set_ylim(-0.03 * top, 1.15 * top)
    span = float(np.nanmax(np.abs(x), initial=0.0)) or 1.0
    ax.set_xlim(-1.15 * span, 1.15 * span)
    rank = table["score"].to_numpy(dtype=float) if "score" in table else None
    _label_points(ax, x, y, table.index.to_numpy(), n_labels, rank)
    ax.set_xlabel(get_family(str(record["distribution"])).response_label)
    ax.set_ylabel(ylabel)
    criterion = f"with q < {level:g}" if tested else "significant (posterior call, untested)"
    ax.set_title(
        f"{modality}: {int(significant.sum())} of {len(table)} features {criterion}",
        fontsize="medium",
    )
    ax.legend(fontsize="small", frameon=False, loc="best")
    return finish(fig, ax, created=created, show=show, return_fig=return_fig)


@doc_params(
    ax=AX, figsize=FIGSIZE, key=KEY_TRANS, modality=MODALITY, return_fig=RETURN_FIG, show=SHOW
)
def calibration(
    mdata: MuData,
    *,
    modality: str = "rna",
    key: str = "dream_trans",
    alpha: float | None = None,
    figsize: tuple[float, float] = (4.5, 4.5),
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """QQ plot of the observed scores against the permutation-null scores.

    Each feature's ``score`` (the dose-association score behind the q-values) is plotted
    against the same quantile of the scores of the permuted dosages
    (:func:`dream_sc.tl.test_trans`).
    Without dose-dependent features the points lie on the diagonal; responsive features rise
    above it at the top.

    Parameters
    ----------
    mdata
        A screen fitted and tested with :func:`dream_sc.tl.fit_trans` /
        :func:`dream_sc.tl.test_trans`.
    {modality}
    {key}
    alpha
        Level for the annotated count of features with ``qvalue < alpha`` (default: the
        fit's ``alpha``).
    {figsize}
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
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, progress=False)
    >>> ax = ds.pl.calibration(mdata, show=False)
    """
    V.check_mudata(mdata)
    adata, record = read_trans(mdata, modality, key)
    if "null_scores" not in record:
        raise ValueError(
            f"The trans fit {key!r} of modality {modality!r} has no permutation null; run "
            f"`ds.tl.test_trans(mdata, modality={modality!r}, key={key!r})` first."
        )
    table = adata.varm[key]
    table = table[table["fitted"].to_numpy(dtype=bool)]
    level = _alpha(record, alpha)
    scores = table["score"].to_numpy(dtype=float)
    keep = np.isfinite(scores)
    order = np.argsort(scores[keep], kind="stable")
    observed = scores[keep][order]
    hit = (table["qvalue"].to_numpy(dtype=float)[keep] < level)[order]
    null = np.asarray(record["null_scores"], dtype=float).ravel()
    null = null[np.isfinite(null)]
    probs = (np.arange(1, len(observed) + 1) - 0.5) / len(observed)
    expected = np.quantile(null, probs)
    n_sig = int(hit.sum())
    fig, ax, created = single_axes(ax, figsize)
    top = float(max(observed.max(initial=0.0), expected.max(initial=0.0))) * 1.05 + 1e-9
    ax.plot(
        [0, top],
        [0, top],
        color="0.5",
        linestyle="--",
        linewidth=1.0,
        gid="diagonal",
        label="y = x",
    )
    ax.scatter(
        expected[~hit], observed[~hit], s=14, c="0.35", linewidths=0, gid="qq", label="features"
    )
    if hit.any():
        ax.scatter(
            expected[hit],
            observed[hit],
            s=18,
            c=SHAPE_COLORS["increasing"],
            linewidths=0,
            gid="qq",
            label=f"q < {level:g}",
        )
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("permutation null score (quantile)")
    ax.set_ylabel("observed score")
    ax.text(
        0.04,
        0.96,
        f"{n_sig} of {len(observed)} features with q < {level:g}\n{len(null)} null scores",
        transform=ax.transAxes,
        va="top",
        fontsize="small",
        gid="annotation",
    )
    ax.legend(fontsize="small", frameon=False, loc="lower right")
    ax.set_title(f"calibration: {modality} ({key})", fontsize="medium")
    return finish(fig, ax, created=created, show=show, return_fig=return_fig)
