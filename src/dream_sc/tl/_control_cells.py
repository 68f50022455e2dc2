"""A fixed subsample of control cells, so that a target's fit costs what its own cells cost.

In a genome-scale screen a target has ~150-200 cells and the control cells are tens of
thousands: a cis + trans fit over every control cell spends almost all its time on the same
baseline for every target. The controls' baseline and noise per feature are learned once, on
all of them, by the technical fit; a target's fits need only enough controls to anchor the
control end of its dose axis. :func:`pick_control_cells` draws such a subsample once, stratified
by technical group (each group keeps its share, at least one cell), and
:func:`restrict_to_controls` applies it to a fit's cell mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import _validation as V


def pick_control_cells(
    control: np.ndarray, group_codes: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``n`` control cells, stratified by group, sorted (all of them if fewer).

    Parameters
    ----------
    control
        Boolean mask of the control cells.
    group_codes
        Technical group code of every cell (same length as ``control``).
    n
        Number of control cells to keep.
    rng
        Source of the draw.
    """
    index = np.flatnonzero(control)
    if n >= index.size:
        return index
    codes = np.asarray(group_codes)[index]
    groups, sizes = np.unique(codes, return_counts=True)
    quota = np.maximum(1, np.floor(n * sizes / sizes.sum())).astype(np.int64)
    # hand the cells lost to flooring to the groups with the largest remainders
    remainder = n * sizes / sizes.sum() - np.floor(n * sizes / sizes.sum())
    for g in np.argsort(-remainder, kind="stable")[: max(0, n - int(quota.sum()))]:
        quota[g] += 1
    quota = np.minimum(quota, sizes)
    kept = [
        rng.choice(index[codes == g], size=int(k), replace=False)
        for g, k in zip(groups, quota, strict=True)
    ]
    return np.sort(np.concatenate(kept))


def check_control_cells(control_cells: int | Sequence[str] | None) -> None:
    """Refuse a ``control_cells`` argument that is neither a positive count nor cell names."""
    if control_cells is None:
        return
    if isinstance(control_cells, (int, np.integer)) and not isinstance(control_cells, bool):
        if control_cells < 1:
            raise ValueError(
                f"control_cells must be a positive number of cells or obs names; got "
                f"{control_cells}."
            )
        return
    if isinstance(control_cells, str) or not isinstance(
        control_cells, (Sequence, pd.Index, np.ndarray)
    ):
        raise ValueError(
            "control_cells must be a positive number of cells or a list of obs names of control "
            f"cells; got {type(control_cells).__name__}."
        )


def restrict_to_controls(
    use: np.ndarray,
    control: np.ndarray,
    obs_names: pd.Index,
    group_codes: np.ndarray,
    control_cells: int | Sequence[str] | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """The cell mask ``use`` with its control cells cut to ``control_cells``.

    ``control_cells`` is ``None`` (keep all), a number (a stratified draw from ``rng``) or the
    obs names of the control cells to keep (each must be a control cell of this fit).
    """
    if control_cells is None:
        return use
    in_fit = use & control
    if isinstance(control_cells, (int, np.integer)):
        keep = pick_control_cells(in_fit, group_codes, int(control_cells), rng)
    else:
        names = pd.Index([str(c) for c in control_cells])
        position = obs_names.get_indexer(names)
        missing = names[position < 0]
        if len(missing):
            raise KeyError(f"control_cells {list(missing[:5])} are not in mdata.obs_names.")
        not_control = names[~in_fit[position]]
        if len(not_control):
            raise ValueError(
                f"control_cells {list(not_control[:5])} are not control cells of this fit; pass "
                "obs names of cells with the control label (low MOI) or without the target's "
                "guides (high MOI)."
            )
        keep = np.unique(position)
    out = use & ~control
    out[keep] = True
    return out


def screen_controls(
    obs: pd.DataFrame,
    control: np.ndarray,
    technical_key: str | Sequence[str] | None,
    control_cells: int,
    seed: int,
) -> list[str]:
    """Obs names of the control subsample a whole screen shares (drawn from ``seed``)."""
    check_control_cells(control_cells)
    if not isinstance(control_cells, (int, np.integer)):
        raise ValueError(
            f"fit_screen takes control_cells as a number of cells; got {type(control_cells).__name__}."
        )
    groups = V.technical_labels(obs, technical_key).cat.codes.to_numpy()
    picked = pick_control_cells(control, groups, int(control_cells), np.random.default_rng(seed))
    return [str(c) for c in obs.index[picked]]
