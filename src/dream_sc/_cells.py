"""Which cells a fit uses, and their covariates, validated against ``mdata.obs``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mudata import MuData

from . import _validation as V


@dataclass
class TechnicalGroups:
    """Technical group label per cell with the reference group first."""

    labels: pd.Series  # categorical, reference first
    codes: np.ndarray  # int per cell, 0 = reference
    names: list[str]

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return len(self.names)


def technical_groups(
    obs: pd.DataFrame,
    technical_key: str | Sequence[str] | None,
    reference_group: str | None = None,
    *,
    known: Sequence[str] | None = None,
) -> TechnicalGroups:
    """Technical labels with the reference group first.

    Parameters
    ----------
    obs
        ``mdata.obs``.
    technical_key
        Column(s) of technical covariates, or ``None`` for a single group.
    reference_group
        Reference group (default: first category, else first in sorted order).
    known
        Group names of an earlier fit; labels are coded in that order (unknown labels raise).
    """
    labels = V.technical_labels(obs, technical_key)
    names = [str(c) for c in labels.cat.categories]
    if known is not None:
        unknown = sorted(set(labels.astype(str)) - set(known))
        if unknown:
            raise ValueError(
                f"Technical group(s) {unknown} were not in the technical fit (groups: "
                f"{list(known)}); rerun `ds.tl.fit_technical` including them."
            )
        names = list(known)
    elif reference_group is not None:
        if reference_group not in names:
            raise ValueError(
                f"reference_group {reference_group!r} is not a group of {technical_key!r}; "
                f"groups: {names}." + V._suggest(reference_group, names)
            )
        names = [reference_group] + [n for n in names if n != reference_group]
    labels = labels.astype(str).astype(pd.CategoricalDtype(names))
    return TechnicalGroups(labels, labels.cat.codes.to_numpy().astype(np.int64), names)


def check_guide_columns(mdata: MuData, guide_key: str, target_key: str) -> None:
    """Guide and target columns present and without missing values."""
    V.check_obs_column(mdata.obs, target_key, "target_key")
    V.check_obs_column(mdata.obs, guide_key, "guide_key")
    for key in (guide_key, target_key):
        if mdata.obs[key].isna().any():
            raise ValueError(
                f"mdata.obs[{key!r}] has {int(mdata.obs[key].isna().sum())} missing values; "
                "drop unassigned cells or label them."
            )


def sum_factor_values(mdata: MuData, key: str) -> np.ndarray:
    """Size factors, validated (positive, finite)."""
    if key not in mdata.obs.columns:
        raise KeyError(
            f"Size factors {key!r} not found in mdata.obs."
            + V._suggest(key, mdata.obs.columns)
            + f" Compute them with `ds.pp.sum_factors(mdata, key_added={key!r})` or pass "
            "`sum_factor_key=` naming the size-factor column."
        )
    column = mdata.obs[key]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise ValueError(
            f"Size factors in mdata.obs[{key!r}] must be numbers; the column has dtype "
            f"{column.dtype}. Pass `sum_factor_key=` naming the size-factor column."
        )
    return column.to_numpy(dtype=np.float64, na_value=np.nan)
