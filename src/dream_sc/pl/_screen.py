"""Whole-screen plots: a targets x features heatmap and every target's guide dosages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, TwoSlopeNorm
from matplotlib.figure import Figure
from mudata import MuData

from .. import _validation as V
from .._stores.screen import read_screen
from ..get._screen import screen_results
from ..get._tables import cis_dosage as _cis_table
from ._cis import cis_dosage
from ._docs import AX, FIGSIZE, MDATA_SCREEN, RETURN_FIG, RETURN_FIG_LIST, SHOW, doc_params
from ._utils import finish, grid_axes, single_axes

VALUES = ("response_mean", "ec50_mean")


def _cluster_order(matrix: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage clustering of the rows (NaN filled with the column mean)."""
    if matrix.shape[0] < 3:
        return np.arange(matrix.shape[0])
    from scipy.cluster.hierarchy import leaves_list, linkage

    filled = np.where(np.isfinite(matrix), matrix, np.nan)
    seen = np.isfinite(filled).sum(axis=0)
    # column means of the finite entries; 0 for columns without any (no mean of an empty slice)
    means = np.where(seen > 0, np.nansum(filled, axis=0) / np.maximum(seen, 1), 0.0)
    filled = np.where(np.isfinite(filled), filled, means)
    return leaves_list(linkage(filled, method="average", metric="euclidean"))


def screen_matrix(
    mdata: MuData,
    *,
    modality: str = "rna",
    key: str = "dream_screen",
    value: Literal["response_mean", "ec50_mean"] = "response_mean",
    features: Sequence[str] | None = None,
    significant_only: bool = True,
    mask_insignificant: bool = True,
    order: Literal["cluster", "name", "screen"] = "cluster",
    alpha: float = 0.1,
) -> pd.DataFrame:
    """Targets x features matrix of one trans result column, as drawn by :func:`screen_heatmap`.

    Parameters are those of :func:`screen_heatmap`.

    Returns
    -------
    DataFrame, index = targets, columns = features (NaN where masked or not fitted).
    """
    if value not in VALUES:
        raise ValueError(f"value must be one of {list(VALUES)}; got {value!r}.")
    if order not in ("cluster", "name", "screen"):
        raise ValueError(f"order must be 'cluster', 'name' or 'screen'; got {order!r}.")
    table = screen_results(
        mdata,
        modality=modality,
        key=key,
        alpha=alpha,
        columns=["target", "feature", value, "significant"],
    )
    targets = list(dict.fromkeys(table["target"]))
    matrix = table.pivot(index="target", columns="feature", values=value)
    hits = table.pivot(index="target", columns="feature", values="significant")
    hits = hits.fillna(False).astype(bool)
    names = list(mdata[modality].var_names.astype(str))
    if features is not None:
        chosen = [str(f) for f in features]
        unknown = [f for f in chosen if f not in matrix.columns]
        if unknown:
            raise KeyError(
                f"Feature(s) {unknown[:5]} are not features of modality {modality!r}."
                + V._suggest(unknown[0], matrix.columns)
            )
    elif significant_only:
        chosen = [f for f in names if hits[f].any()]
        if not chosen:
            raise ValueError(
                f"No feature is significant (screen-wide q < {alpha}) for any target; pass "
                "significant_only=False, a larger alpha, or features=."
            )
    else:
        chosen = names
    matrix = matrix.loc[targets, chosen].astype(np.float64)
    if mask_insignificant:
        matrix = matrix.where(hits.loc[targets, chosen])
    if order == "name":
        matrix = matrix.sort_index(axis=0).sort_index(axis=1)
    elif order == "cluster":
        values = matrix.to_numpy()
        if value == "ec50_mean":
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.log(values)
        rows = _cluster_order(values)
        cols = _cluster_order(values.T)
        matrix = matrix.iloc[rows, cols]
    matrix.index.name, matrix.columns.name = "target", "feature"
    return matrix


@doc_params(ax=AX, figsize=FIGSIZE, mdata=MDATA_SCREEN, return_fig=RETURN_FIG, show=SHOW)
def screen_heatmap(
    mdata: MuData,
    *,
    modality: str = "rna",
    key: str = "dream_screen",
    value: Literal["response_mean", "ec50_mean"] = "response_mean",
    features: Sequence[str] | None = None,
    significant_only: bool = True,
    mask_insignificant: bool = True,
    order: Literal["cluster", "name", "screen"] = "cluster",
    alpha: float = 0.1,
    cmap: str | None = None,
    label_features: bool | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Heatmap of targets x features: response or EC50 of every target's trans fit.

    Significance is screen-wide (:func:`~dream_sc.get.screen_results`).

    Parameters
    ----------
    {mdata}
    modality, key
        The screen's modality and ``key_added``.
    value
        ``"response_mean"`` (log2 fold change over the observed dosage range for counts;
        diverging colours centred at 0) or ``"ec50_mean"`` (dosage scale, logarithmic colours).
    features
        Columns to show (default: see ``significant_only``).
    significant_only
        Show only features significant for at least one target (else all features).
    mask_insignificant
        Leave (target, feature) cells that are not significant blank.
    order
        ``"cluster"``: rows and columns in average-linkage clustering order; ``"name"``:
        alphabetical; ``"screen"``: targets in screen order, features in modality order.
    alpha
        Screen-wide q-value threshold.
    cmap
        Colour map (default ``"RdBu_r"`` for responses, ``"viridis"`` for EC50s).
    label_features
        Feature names on the x axis (default: up to 60 features).
    {figsize}
    {ax}
    {show}
    {return_fig}

    Returns
    -------
    The Axes, the Figure with ``return_fig=True``, or ``None`` when shown. The drawn matrix is
    :func:`screen_matrix` with the same arguments.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=400, n_genes=20, n_targets=2, seed=0)
    >>> ds.tl.fit_screen(mdata, n_steps=30, progress=False)  # doctest: +SKIP
    >>> ax = ds.pl.screen_heatmap(mdata, significant_only=False, show=False)  # doctest: +SKIP
    """
    matrix = screen_matrix(
        mdata,
        modality=modality,
        key=key,
        value=value,
        features=features,
        significant_only=significant_only,
        mask_insignificant=mask_insignificant,
        order=order,
        alpha=alpha,
    )
    n_t, n_f = matrix.shape
    if figsize is None:
        figsize = (
            float(np.clip(0.18 * n_f + 2.5, 4.0, 20.0)),
            float(np.clip(0.35 * n_t + 1.5, 2.5, 14.0)),
        )
    fig, ax, created = single_axes(ax, figsize)
    values = np.ma.masked_invalid(matrix.to_numpy())
    finite = values.compressed()
    if value == "response_mean":
        bound = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
        cmap = cmap or "RdBu_r"
        label = "response (log2 FC over dosage range)"
    else:
        positive = finite[finite > 0]
        norm = LogNorm(*(positive.min(), positive.max())) if positive.size else None
        cmap = cmap or "viridis"
        label = "EC50 (dosage)"
    image = ax.imshow(values, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_facecolor("0.92")
    fig.colorbar(image, ax=ax, label=label, fraction=0.04, pad=0.02)
    ax.set_yticks(np.arange(n_t), list(matrix.index.astype(str)))
    if label_features is None:
        label_features = n_f <= 60
    if label_features:
        ax.set_xticks(
            np.arange(n_f), list(matrix.columns.astype(str)), rotation=90, fontsize="small"
        )
    else:
        ax.set_xticks([])
    ax.set_xlabel(f"feature ({n_f})")
    ax.set_ylabel("target")
    ax.set_title(f"{value} per target (screen-wide q < {alpha})", fontsize="medium")
    return finish(fig, ax, created=created, show=show, return_fig=return_fig)


@doc_params(mdata=MDATA_SCREEN, return_fig=RETURN_FIG_LIST, show=SHOW)
def screen_cis_dosage(
    mdata: MuData,
    *,
    key: str = "dream_screen",
    modality: str = "rna",
    targets: Sequence[str] | None = None,
    ncols: int = 3,
    panel: tuple[float, float] = (4.5, 3.2),
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    """Guide efficiency of every target: :func:`~dream_sc.pl.cis_dosage` per target in one grid.

    Each panel shows one target's guides and the controls, ordered by dosage, with the number
    of cells of each guide in its tick label (``guide (n)``).

    Parameters
    ----------
    {mdata}
    key, modality
        The screen's ``key_added`` and modality.
    targets
        Subset of the screen's targets (default all).
    ncols
        Panels per row.
    panel
        Size of one panel of a new figure.
    ax
        One Axes per target to draw into, else a new figure.
    {show}
    {return_fig}

    Returns
    -------
    The list of Axes (one per target), the Figure with ``return_fig=True``, or ``None`` when
    shown.
    """
    V.check_mudata(mdata)
    record = read_screen(mdata, modality, key)
    keys = dict(zip(map(str, record["targets"]), map(str, record["cis_keys"]), strict=True))
    chosen = list(keys) if targets is None else [str(t) for t in targets]
    unknown = [t for t in chosen if t not in keys]
    if unknown:
        raise ValueError(
            f"Target(s) {unknown} are not part of the screen {key!r}; its targets: {list(keys)}."
        )
    fig, axes, created = grid_axes(len(chosen), ax, ncols=ncols, panel=panel)
    for target, panel_ax in zip(chosen, axes, strict=True):
        cis_dosage(mdata, key=keys[target], ax=panel_ax, show=False)
        guides = _cis_table(mdata, key=keys[target]).sort_values("dose_mean", kind="stable")
        labels = [f"{g} ({int(n)})" for g, n in zip(guides.index, guides["n_cells"], strict=True)]
        panel_ax.set_yticks(np.arange(len(guides)), labels, fontsize="small")
        panel_ax.set_title(f"{target}: cis dosage per guide (cells)", fontsize="medium")
        legend = panel_ax.get_legend()
        if legend is not None and len(chosen) > 1:
            legend.remove()
    return finish(fig, axes, created=created, show=show, return_fig=return_fig)
