"""The data-driven amplitude prior of the trans fit (step 3).

The amplitude prior scale of a feature is the spread of its technically corrected guide-level
means on the link scale (each family computes its guide means, see
:meth:`dream_sc.models.families.Family.guide_link_means`). Null fits recompute it from their
permuted guide labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

from .._lazy import concat_blocks, feature_blockwise
from .families import get_family

#: Floor of the amplitude prior scale on the link scale.
AMPLITUDE_FLOOR = 0.1
#: Guides (or dosage bins) need this many cells to enter the amplitude prior.
MIN_CELLS_PER_GUIDE = 5


def guide_level_link_means(data: Any, fitted, labels, group, sf, effects) -> np.ndarray:
    """Technically corrected per-guide means on the link scale ``[guides, T]`` (NaN if empty).

    Rows follow ``np.unique(labels)``; guides with fewer than :data:`MIN_CELLS_PER_GUIDE` cells
    are NaN.
    """
    names, codes = np.unique(labels, return_inverse=True)
    n_groups = effects.shape[1]
    ind = sparse.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(names), len(codes))
    )
    counts = np.asarray(ind.sum(1)).ravel()
    eff = effects[fitted]
    comp = np.zeros((len(names), n_groups))
    np.add.at(comp, (codes, group), 1.0)
    frac = comp / np.maximum(comp.sum(1, keepdims=True), 1)
    gi = None if data.group_index is None else data.group_index[fitted]
    family = get_family(data.distribution)

    def block(X, total, sel) -> np.ndarray:
        return family.guide_link_means(
            X,
            total=total,
            group_index=gi,
            ind=ind,
            codes=codes,
            group=group,
            sf=sf,
            eff=eff[sel],
            mean_delta=frac @ eff[sel].T,  # [G, T]
        )

    with np.errstate(divide="ignore", invalid="ignore"):
        out = concat_blocks(feature_blockwise(block, data.X, data.total, fitted))
    out[counts < MIN_CELLS_PER_GUIDE] = np.nan
    return out


def amplitude_scale(guide_means: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, int]:
    """Spread (5th-95th percentile) of guide-level means per feature, with fallbacks.

    Features with fewer than two finite guide means get the median spread of valid features.
    """
    valid = np.sum(np.isfinite(guide_means), axis=0) >= 2
    spread = np.full(guide_means.shape[1], np.nan)
    if valid.any():
        q = np.nanquantile(guide_means[:, valid], [0.05, 0.95], axis=0)
        spread[valid] = q[1] - q[0]
    fallback = np.nanmedian(spread[valid]) if valid.any() else 1.0
    spread = np.where(valid, spread, fallback)
    return np.maximum(spread, floor), int((~valid).sum())


def amplitude_prior(
    data: Any,
    fitted: np.ndarray,
    labels: np.ndarray,
    group: np.ndarray,
    sf: np.ndarray | None,
    effects: np.ndarray,
    floor: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Amplitude prior scale of every fitted feature from the guide-level means of ``labels``.

    Returns the float32 scales and the number of features that fell back to the median spread.
    """
    gm = guide_level_link_means(data, fitted, labels, group, sf, effects)
    amp, n_fallback = amplitude_scale(gm, floor)
    return amp.astype(np.float32), n_fallback
