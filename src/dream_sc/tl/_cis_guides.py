"""Guide columns and per-guide summaries of a cis fit (``uns[key]["guides"]``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger("dream_sc")


def guide_table(
    draws: dict, A: np.ndarray, guide_names: list[str], guide_target: np.ndarray, is_cis
) -> pd.DataFrame:
    """Per-guide dosage and effect summaries of the cis posterior draws (``uns[key]["guides"]``).

    A control guide is flagged ``control_active`` when its 90% interval excludes 0 and its
    mean effect exceeds 0.2 log2 units. ``n_guides``: guides of the row's target in the fit.
    """
    x_ntc_draws, b_draws = draws["log2_x_ntc"], draws["guide_effect_all"]
    dose_draws = np.exp2(x_ntc_draws[:, None] + b_draws)
    n_cells_g = A.sum(0).astype(int)
    sigma = np.exp(draws["guide_log_sigma"]).mean(0)
    b_mean, b_sd = b_draws.mean(0), b_draws.std(0)
    q05, q95 = np.quantile(b_draws, [0.05, 0.95], axis=0)
    active = (~is_cis) & ((q05 > 0) | (q95 < 0)) & (np.abs(b_mean) > 0.2)
    labels = pd.Series(guide_target.astype(str))
    n_guides = labels.map(labels.value_counts()).to_numpy(dtype=np.int64)
    return pd.DataFrame(
        {
            "target": guide_target.astype(str),
            "n_cells": n_cells_g,
            "n_guides": n_guides,
            "dose_mean": dose_draws.mean(0),
            "dose_q05": np.quantile(dose_draws, 0.05, axis=0),
            "dose_q95": np.quantile(dose_draws, 0.95, axis=0),
            "log2_effect_mean": b_mean,
            "log2_effect_sd": b_sd,
            "log2_effect_q05": q05,
            "log2_effect_q95": q95,
            "sigma_mean": sigma,
            "is_control": ~is_cis,
            "control_active": active,
        },
        index=pd.Index(guide_names, name="guide"),
    )


def add_escape_fractions(guides: pd.DataFrame, logits: np.ndarray, is_cis) -> None:
    """Escape-fraction summaries of the targeting guides (NaN for controls), in place."""
    pi = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))  # [S, n_cis]
    cis = np.flatnonzero(np.asarray(is_cis, dtype=bool))
    for name, values in (
        ("mean", pi.mean(0)),
        ("q05", np.quantile(pi, 0.05, axis=0)),
        ("q95", np.quantile(pi, 0.95, axis=0)),
    ):
        column = np.full(len(guides), np.nan)
        column[cis] = values
        guides[f"escape_fraction_{name}"] = column


#: Name of the one column that stands for every other target's guides in a high-MOI cis fit.
OTHER_TARGETS_GUIDES = "other_targets"


def _high_moi_guides(
    A: np.ndarray,
    guide_names: list[str],
    is_cis: np.ndarray,
    cis_target: str,
    is_control: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """High MOI: drop guides without fitted cells; at least one cis guide must remain.

    The guides of the other targets (neither the cis target's nor control guides,
    ``is_control``) are pooled into one reference column :data:`OTHER_TARGETS_GUIDES` (1 for
    a cell carrying any of them): they do not target the cis gene, and one effect (and
    spread) per guide made the cis posterior hundreds of dimensions wide on a screen of 100
    targets (310 guides), where the SVI diverged. Control guides keep their own columns (and
    their ``control_active`` check).

    Returns the assignment ``[cells, guides]``, guide names, cis mask and guide targets.
    """
    keep = A.sum(0) > 0
    if (~keep).any():
        dropped = [g for g, k in zip(guide_names, keep, strict=True) if not k]
        logger.info("fit_cis: %d guide(s) without cells ignored: %s", len(dropped), dropped[:10])
    A, guide_names, is_cis = (
        A[:, keep],
        [g for g, k in zip(guide_names, keep, strict=True) if k],
        is_cis[keep],
    )
    if is_cis.sum() < 1:
        raise ValueError(
            f"The cis target {cis_target!r} has no guide with cells in "
            "mdata.obsm's guide assignment; check `guide_targets` and the assignment."
        )
    other = ~is_cis & (np.zeros_like(is_cis) if is_control is None else ~is_control[keep])
    if other.sum() > 1:
        pooled = (A[:, other].sum(1) > 0).astype(A.dtype)[:, None]
        A = np.hstack([A[:, ~other], pooled])
        guide_names = [g for g, o in zip(guide_names, other, strict=True) if not o]
        guide_names.append(OTHER_TARGETS_GUIDES)
        is_cis = np.append(is_cis[~other], False)
    return A, guide_names, is_cis, np.where(is_cis, cis_target, "other")
