"""Codec of the variational posterior of a trans fit (``varm[TransKeys(key).posterior]``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..models.guide import cholesky_from_lower

#: Column prefix of the per-feature correlation factor in the posterior frame.
CORR_PREFIX = "corr_chol_"


def posterior_frame(fit: Any, var_names: pd.Index, fitted: np.ndarray) -> pd.DataFrame:
    """Variational ``loc``/``scale`` of every site as a DataFrame over all features (NaN = not fitted)."""
    cols = {}
    for name in sorted(fit.loc):
        loc, scale = fit.loc[name], fit.scale[name]
        if loc.ndim == 1:
            loc, scale = loc[:, None], scale[:, None]
            suffixes = [""]
        else:
            suffixes = [f"_{d + 1}" for d in range(loc.shape[1])]
        for d, suffix in enumerate(suffixes):
            for stat, values in (("loc", loc[:, d]), ("scale", scale[:, d])):
                # the variational parameters are float32: stored as they are (half the size)
                full = np.full(len(var_names), np.nan, dtype=np.result_type(values, np.float32))
                full[fitted] = values
                cols[f"{name}{suffix}_{stat}"] = full
    if fit.corr is not None:
        for i, j in zip(*np.tril_indices(fit.corr.shape[1], k=-1), strict=True):
            full = np.full(len(var_names), np.nan, dtype=np.result_type(fit.corr, np.float32))
            full[fitted] = fit.corr[:, i, j]
            cols[f"{CORR_PREFIX}{i}_{j}"] = full
    return pd.DataFrame(cols, index=var_names)


def posterior_from_frame(
    frame: pd.DataFrame, fitted: np.ndarray
) -> tuple[dict, dict, np.ndarray | None]:
    """Inverse of :func:`posterior_frame` (rows of fitted features only): loc, scale, corr."""
    loc, scale = {}, {}
    corr_cols = [c for c in frame.columns if c.startswith(CORR_PREFIX)]
    corr = None
    if corr_cols:
        pairs = [tuple(int(v) for v in c[len(CORR_PREFIX) :].split("_")) for c in corr_cols]
        width = max(i for i, _ in pairs) + 1
        lower = np.zeros((int(fitted.sum()), width, width))
        for (i, j), col in zip(pairs, corr_cols, strict=True):
            lower[:, i, j] = frame[col].to_numpy()[fitted]
        corr = cholesky_from_lower(lower)
        frame = frame.drop(columns=corr_cols)
    names = sorted({c.rsplit("_", 1)[0] for c in frame.columns})
    bases = sorted(
        {
            n.rsplit("_", 1)[0] if n.rsplit("_", 1)[-1].isdigit() and n.startswith("coef_z") else n
            for n in names
        }
    )
    for base in bases:
        if base == "coef_z":
            d = sorted(int(n.rsplit("_", 1)[1]) for n in names if n.startswith("coef_z_"))
            loc[base] = np.stack(
                [frame[f"coef_z_{i}_loc"].to_numpy()[fitted] for i in d], axis=1
            ).astype(np.float32)
            scale[base] = np.stack(
                [frame[f"coef_z_{i}_scale"].to_numpy()[fitted] for i in d], axis=1
            ).astype(np.float32)
        else:
            loc[base] = frame[f"{base}_loc"].to_numpy()[fitted].astype(np.float32)
            scale[base] = frame[f"{base}_scale"].to_numpy()[fitted].astype(np.float32)
    return loc, scale, corr
