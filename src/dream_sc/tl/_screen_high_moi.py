"""High-MOI input of :func:`dream_sc.tl.fit_screen`: the assignment table and its targets.

A high-MOI screen is ``mdata.obsm[guide_assignment_key]`` (cells x guides DataFrame; 0/1 calls,
UMI counts or any non-negative weights) plus ``guide_targets`` (guide -> target; control guides
map to the control label). Every check here runs before any fit, and nothing is written.

Control-only flag: a cell whose ``obs[target_key]`` equals the control label (as written by
:func:`~dream_sc.pp.assign_guides` for cells with only control guides) declares that it
carries no targeting guide. A cell so flagged whose assignment row has a positive weight on a
targeting guide contradicts itself and is an error (the flag or the table is wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mudata import MuData

from .. import _validation as V
from .._cells import check_guide_columns
from ._screen_checks import _resolve_targets


@dataclass
class ScreenDesign:
    """The validated design of a screen: targets, cells and (high MOI) the guide map."""

    chosen: list[str]
    control: np.ndarray  # cells of the technical fit's default (controls; high MOI: all)
    used: np.ndarray  # cells of some fit
    moi: str  # "low" or "high"
    guide_targets: pd.Series | None = None
    assignment_key: str | None = None

    def cis_kwargs(self) -> dict[str, Any]:
        """Extra fit_cis arguments of every target (high MOI: the table and the map)."""
        if self.moi == "low":
            return {}
        return {
            "guide_targets": dict(self.guide_targets.items()),
            "guide_assignment_key": self.assignment_key,
        }

    def fingerprint_assignment(self, mdata: MuData) -> tuple | None:
        """``(table, guide_targets)`` for the checkpoint fingerprints (low MOI: ``None``)."""
        if self.moi == "low":
            return None
        return mdata.obsm[self.assignment_key], self.guide_targets


def resolve_design(
    mdata: MuData,
    *,
    guide_targets: Mapping[str, str] | pd.Series | None,
    assignment_key: str,
    targets: Sequence[str] | None,
    guide_key: str,
    target_key: str,
    control_label: str,
    technical_key,
) -> ScreenDesign:
    """Validate the guides of a screen (low or high MOI) before any work.

    Low MOI (``guide_targets=None``): ``obs[guide_key]`` / ``obs[target_key]``, controls by
    ``control_label``; a screen that looks high-MOI (:func:`looks_high_moi`) is refused with a
    pointer to ``guide_targets=``. High MOI: :func:`check_high_moi`; every cell is used.
    """
    if guide_targets is None:
        why = looks_high_moi(mdata, guide_key, assignment_key)
        if why is not None:
            raise ValueError(
                f"This looks like a high-MOI screen ({why}); pass `guide_targets=` (dict or "
                "Series guide -> target, controls mapped to the control label) to fit it from "
                f"mdata.obsm[{assignment_key!r}]. Without it each target would be fitted only on "
                "the cells whose sole target it is."
            )
        obs = mdata.obs
        check_guide_columns(mdata, guide_key, target_key)
        control = V.check_control(obs, target_key, control_label)
        chosen = _resolve_targets(obs, target_key, control_label, targets, guide_key)
        V.check_technical_groups(V.technical_labels(obs, technical_key), control, technical_key)
        used = control | obs[target_key].astype(str).isin(chosen).to_numpy()
        return ScreenDesign(chosen, control, used, "low")
    if not isinstance(assignment_key, str) or not assignment_key:
        raise ValueError("guide_assignment_key must be a non-empty string.")
    chosen, mapping = check_high_moi(
        mdata,
        assignment_key=assignment_key,
        guide_targets=guide_targets,
        targets=targets,
        target_key=target_key,
        control_label=control_label,
    )
    V.technical_labels(mdata.obs, technical_key)  # the technical column(s) exist
    every = np.ones(mdata.n_obs, bool)
    return ScreenDesign(chosen, every, every, "high", mapping, assignment_key)


def looks_high_moi(mdata: MuData, guide_key: str, assignment_key: str) -> str | None:
    """Why ``mdata`` looks like a high-MOI screen (``None``: it does not).

    A cell with several guides in ``obsm[assignment_key]`` or a ``"|"``-joined guide label in
    ``obs[guide_key]`` (as :func:`~dream_sc.pp.assign_guides` writes at high MOI).
    """
    table = mdata.obsm[assignment_key] if assignment_key in mdata.obsm else None
    if table is not None:
        values = np.asarray(table.to_numpy() if isinstance(table, pd.DataFrame) else table)
        if values.ndim == 2 and ((values != 0).sum(axis=1) > 1).any():
            return f"cells carry several guides in mdata.obsm[{assignment_key!r}]"
    if guide_key in mdata.obs.columns:
        labels = mdata.obs[guide_key].astype(str)
        if labels.str.contains("|", regex=False).any():
            return f"mdata.obs[{guide_key!r}] holds '|'-joined guide combinations"
    return None


def guide_target_series(guide_targets: Mapping[str, str] | pd.Series) -> pd.Series:
    """``guide_targets`` as a Series guide -> target with string index and values."""
    if not isinstance(guide_targets, Mapping | pd.Series):
        raise ValueError(
            "guide_targets must be a dict or a pandas Series guide -> target; got "
            f"{type(guide_targets).__name__}."
        )
    mapping = pd.Series(guide_targets, dtype=object)
    if mapping.isna().any():
        raise ValueError(
            f"guide_targets has no target for guide(s) {list(mapping.index[mapping.isna()][:5])}."
        )
    mapping.index = mapping.index.astype(str)
    if mapping.index.duplicated().any():
        raise ValueError(
            f"guide_targets lists guide(s) {sorted(set(mapping.index[mapping.index.duplicated()]))}"
            " more than once."
        )
    return mapping.astype(str)


def check_high_moi(
    mdata: MuData,
    *,
    assignment_key: str,
    guide_targets: Mapping[str, str] | pd.Series,
    targets: Sequence[str] | None,
    target_key: str,
    control_label: str,
) -> tuple[list[str], pd.Series]:
    """Validate a high-MOI screen; returns the targets to fit and the guide -> target map.

    Raises ``KeyError`` / ``ValueError`` naming the problem.
    """
    if assignment_key not in mdata.obsm:
        raise KeyError(
            f"High-MOI fit_screen needs mdata.obsm[{assignment_key!r}] (cells x guides "
            "DataFrame); build it with ds.pp.assign_guides(mdata, moi='high') or pass "
            "`guide_assignment_key=`."
        )
    table = mdata.obsm[assignment_key]
    if not isinstance(table, pd.DataFrame):
        raise ValueError(
            f"mdata.obsm[{assignment_key!r}] must be a DataFrame with guide names as columns; "
            f"got {type(table).__name__}."
        )
    mapping = guide_target_series(guide_targets)
    names = [str(g) for g in table.columns]
    unknown = [g for g in names if g not in mapping.index]
    if unknown:
        raise ValueError(
            f"Guide(s) {unknown[:5]} of mdata.obsm[{assignment_key!r}] have no entry in "
            f"guide_targets ({len(unknown)} in all); give every guide its target (the control "
            f"label {control_label!r} for non-targeting guides)."
        )
    try:
        A = np.asarray(table.to_numpy(), dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"mdata.obsm[{assignment_key!r}] must hold numbers (0/1 calls or counts)."
        ) from err
    if np.isnan(A).any():
        rows = np.flatnonzero(np.isnan(A).any(axis=1))
        raise ValueError(
            f"mdata.obsm[{assignment_key!r}] has NaN weights in {len(rows)} cell(s) (e.g. "
            f"{table.index[rows[0]]!r}); use 0 for guides a cell does not carry."
        )
    if not np.isfinite(A).all() or (A < 0).any():
        rows = np.flatnonzero((~np.isfinite(A) | (A < 0)).any(axis=1))
        raise ValueError(
            f"mdata.obsm[{assignment_key!r}] has negative or infinite weights in {len(rows)} "
            f"cell(s) (e.g. {table.index[rows[0]]!r}); weights must be non-negative finite "
            "numbers (0/1 calls or counts)."
        )
    empty = np.flatnonzero(~(A > 0).any(axis=1))
    if empty.size:
        raise ValueError(
            f"{empty.size} cell(s) of mdata.obsm[{assignment_key!r}] carry no guide (all "
            f"weights 0, e.g. {table.index[empty[0]]!r}); remove them (ds.pp.assign_guides "
            "with moi='high' does) or give them their guides."
        )
    guide_target = mapping.loc[names].to_numpy()
    carried = A > 0
    present = pd.unique(mapping.to_numpy())
    occurring = set(guide_target[carried.any(axis=0)])
    never = sorted(t for t in present if t != control_label and t not in occurring)
    if never and targets is None:
        raise ValueError(
            f"Target(s) {never} of guide_targets have no guide carried by any cell of "
            f"mdata.obsm[{assignment_key!r}]; drop them from guide_targets or pass `targets=`."
        )
    chosen = _chosen(targets, present, occurring, control_label)
    _check_control_flags(mdata, table.index, carried, guide_target, target_key, control_label)
    return chosen, mapping


def _chosen(targets, present, occurring, control_label: str) -> list[str]:
    if targets is None:
        chosen = sorted(t for t in present if t != control_label)
    else:
        chosen = [str(t) for t in ([targets] if isinstance(targets, str) else targets)]
        dup = sorted({t for t in chosen if chosen.count(t) > 1})
        if dup:
            raise ValueError(f"targets lists {dup} more than once.")
        if control_label in chosen:
            raise ValueError(
                f"targets includes the control label {control_label!r}; cells without a "
                "target's guides are its comparison, the control label is not a target."
            )
        missing = [t for t in chosen if t not in present]
        if missing:
            raise ValueError(
                f"Target(s) {missing} are not targets of guide_targets."
                + V._suggest(missing[0], [t for t in present if t != control_label])
            )
        never = [t for t in chosen if t not in occurring]
        if never:
            raise ValueError(
                f"Target(s) {never} have no guide carried by any cell of the assignment "
                "table; leave them out of `targets=`."
            )
    if not chosen:
        raise ValueError("No targets to fit: guide_targets maps every guide to the control label.")
    return chosen


def _check_control_flags(
    mdata, cells, carried, guide_target, target_key: str, control_label: str
) -> None:
    if target_key not in mdata.obs.columns:
        return
    flag = mdata.obs[target_key].reindex(cells).astype(str).to_numpy() == control_label
    targeting = carried[:, guide_target != control_label].any(axis=1)
    both = np.flatnonzero(flag & targeting)
    if both.size:
        raise ValueError(
            f"{both.size} cell(s) are flagged control-only (mdata.obs[{target_key!r}] == "
            f"{control_label!r}) but carry a targeting guide in the assignment table (e.g. "
            f"{cells[both[0]]!r}); fix the labels or the table (ds.pp.assign_guides writes both "
            "consistently)."
        )
