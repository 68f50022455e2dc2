"""``pl.loss``: ELBO loss traces with the convergence check marked."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from .. import _validation as V
from ._docs import PANEL_SIZE, RETURN_FIG, SHOW, doc_params
from ._fits import Fit, find_fits
from ._utils import CURVE_COLOR, SHAPE_COLORS, finish, grid_axes

#: Fraction of the trace in each convergence window (as in ``engine.svi.smoothed_converged``).
WINDOW_FRAC = 0.1


def _draw_loss(ax: Axes, fit: Fit) -> None:
    loss = np.asarray(fit.record["loss"], dtype=float).ravel()
    n = len(loss)
    steps = np.arange(1, n + 1)
    ax.plot(steps, loss, color="0.6", linewidth=0.7, gid="loss", label="loss per step")
    width = max(1, n // 25)
    if n >= 2 * width and width > 1:
        smooth = np.convolve(loss, np.ones(width) / width, mode="valid")
        ax.plot(
            steps[width - 1 :],
            smooth,
            color=CURVE_COLOR,
            linewidth=1.6,
            gid="loss_smoothed",
            label=f"running mean ({width} steps)",
        )
    w = max(5, int(n * WINDOW_FRAC))
    if n >= 2 * w:
        ax.axvspan(
            n - w + 0.5,
            n + 0.5,
            color="0.85",
            zorder=0,
            gid="convergence_window",
            label="convergence window",
        )
    null = np.asarray(fit.record.get("null_loss", []), dtype=float).ravel()
    if null.size:
        ax.scatter(
            np.full(null.size, n),
            null,
            marker="x",
            s=40,
            c=SHAPE_COLORS["decreasing"],
            zorder=5,
            gid="null_loss",
            label="permutation null (final)",
        )
    if n > 20:
        tail = np.concatenate([loss[n // 10 :], null])
        lo, hi = float(np.min(tail)), float(np.max(tail))
        pad = 0.08 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)
    converged = bool(fit.record.get("converged", False))
    ax.text(
        0.97,
        0.95,
        "converged" if converged else "not converged",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize="small",
        fontweight="bold",
        gid="converged",
        color="#1b7837" if converged else SHAPE_COLORS["increasing"],
    )
    ax.set_xlabel("SVI step")
    ax.set_ylabel("loss (negative ELBO per observation)")
    what = {"cis": "cis", "technical": "technical", "trans": "trans"}[fit.kind]
    ax.set_title(f"{what} fit {fit.where}", fontsize="medium")
    ax.legend(fontsize="x-small", frameon=False, loc="center right")


@doc_params(panel_size=PANEL_SIZE, return_fig=RETURN_FIG, show=SHOW)
def loss(
    mdata: MuData,
    key: str | None = None,
    *,
    modality: str | None = None,
    ncols: int = 3,
    panel_size: tuple[float, float] = (4.6, 3.4),
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | list[Axes] | Figure | None:
    """Loss (negative ELBO) trace of stored fits, with the convergence check marked.

    The raw trace, its running mean and the window of the final steps on which convergence is
    judged (shaded) are drawn, annotated "converged" / "not converged" as recorded. For a tested
    trans fit the final loss of every permutation null fit is marked with a cross.

    Parameters
    ----------
    mdata
        A screen with fits.
    key
        ``key_added`` of a technical or trans fit (looked up in ``mdata[modality].uns``) or of
        a cis fit (``mdata.uns``); ``None`` plots every fit found, one axes each.
    modality
        Only look in this modality.
    ncols
        Columns of the grid when several fits are drawn.
    {panel_size}
    ax
        Axes to draw into (one per fit), else a new figure.
    {show}
    {return_fig}

    Returns
    -------
    The Axes (one fit) or list of Axes, the Figure with ``return_fig=True``, or ``None`` when
    shown.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ax = ds.pl.loss(mdata, "dream_technical", modality="rna", show=False)
    >>> axes = ds.pl.loss(mdata, show=False)
    """
    V.check_mudata(mdata)
    fits = find_fits(mdata, key, modality)
    fig, axes, created = grid_axes(len(fits), ax, ncols=ncols, panel=panel_size)
    for a, fit in zip(axes, fits, strict=True):
        _draw_loss(a, fit)
    out = axes[0] if len(axes) == 1 else axes
    return finish(fig, out, created=created, show=show, return_fig=return_fig)
