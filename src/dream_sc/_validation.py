"""Input checks shared by every public function.

Every check raises before any work is done, with a message that names the problem and the fix.
None of these functions modify their inputs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from ._lazy import feature_blockwise, is_lazy


class InputTypeError(TypeError, ValueError):
    """An argument of the wrong type (e.g. an AnnData where a MuData is needed).

    Both a :class:`TypeError` (Python convention) and a :class:`ValueError` (the package's
    promise that bad input raises ``ValueError``/``KeyError``), so either ``except`` catches it.
    """


def _suggest(name: str, choices: Iterable[str]) -> str:
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.6)
    lowered = [c for c in choices if c.lower() == str(name).lower() and c not in close]
    close = lowered + close
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def check_mudata(mdata: object) -> None:
    """Require a MuData with unique obs_names."""
    if not isinstance(mdata, MuData):
        raise InputTypeError(
            f"Expected a mudata.MuData, got {type(mdata).__name__}. Wrap an AnnData with "
            "`mudata.MuData({'rna': adata})`."
        )
    if not mdata.obs_names.is_unique:
        dup = mdata.obs_names[mdata.obs_names.duplicated()][:3].tolist()
        raise ValueError(
            f"mdata.obs_names are not unique (e.g. {dup}); run `mdata.obs_names_make_unique()`."
        )


def check_modality(mdata: MuData, modality: str) -> None:
    """Require that ``modality`` exists, is non-empty and has unique names."""
    if modality not in mdata.mod:
        raise KeyError(
            f"Modality {modality!r} not found in mdata; available: {list(mdata.mod)}."
            + _suggest(modality, mdata.mod)
        )
    adata = mdata[modality]
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"Modality {modality!r} is empty ({adata.n_obs} cells x {adata.n_vars} features)."
        )
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()][:3].tolist()
        raise ValueError(
            f"var_names of modality {modality!r} are not unique (e.g. {dup}); run "
            f"`mdata[{modality!r}].var_names_make_unique()`."
        )
    if not adata.obs_names.is_unique:
        raise ValueError(f"obs_names of modality {modality!r} are not unique.")


def check_obs_column(obs: pd.DataFrame, column: str, argument: str, hint: str = "") -> None:
    """Require ``column`` in ``obs`` (suggesting near misses; ``hint`` is appended)."""
    if column not in obs.columns:
        raise KeyError(
            f"Column {column!r} (argument `{argument}`) not found in mdata.obs."
            + _suggest(column, obs.columns)
            + f" Pass `{argument}=` with the right column name{hint}."
        )
    if obs[column].isna().all():
        raise ValueError(f"Column {column!r} (argument `{argument}`) holds only missing values.")


def check_control(obs: pd.DataFrame, target_key: str, control_label: str) -> np.ndarray:
    """Return the control mask; raise if no control cells exist."""
    targets = obs[target_key].astype(str)
    mask = (targets == control_label).to_numpy()
    if not mask.any():
        labels = pd.unique(targets)
        hint = _suggest(control_label, labels)
        raise ValueError(
            f"No control cells: no cell has {target_key!r} == {control_label!r}."
            + (hint if hint else f" Labels present: {list(labels[:10])}.")
            + " Pass `control_label=` with the label of non-targeting controls."
        )
    return mask


def technical_labels(obs: pd.DataFrame, technical_key: str | Sequence[str] | None) -> pd.Series:
    """Combine one or several technical columns into one categorical label per cell."""
    if technical_key is None:
        return pd.Series(pd.Categorical(["all"] * len(obs)), index=obs.index)
    keys = [technical_key] if isinstance(technical_key, str) else list(technical_key)
    if not keys:
        raise ValueError("`technical_key` is an empty list; pass None for no technical covariates.")
    for key in keys:
        check_obs_column(obs, key, "technical_key", " (None if there are no technical covariates)")
        n_missing = int(obs[key].isna().sum())
        if n_missing:
            raise ValueError(
                f"Technical column {key!r} has missing values in {n_missing} cells; fill them "
                "(e.g. with 'unknown') or drop those cells first."
            )
    if len(keys) == 1:
        col = obs[keys[0]]
        if isinstance(col.dtype, pd.CategoricalDtype):
            return col.cat.remove_unused_categories()
        return col.astype(str).astype(pd.CategoricalDtype(sorted(col.astype(str).unique())))
    joined = obs[keys].astype(str).agg("_".join, axis=1)
    return joined.astype(pd.CategoricalDtype(sorted(joined.unique())))


def check_technical_groups(labels: pd.Series, control_mask: np.ndarray, technical_key) -> None:
    """Every technical group must contain control cells."""
    if labels.isna().any():
        raise ValueError(
            f"Technical column {technical_key!r} has missing values in "
            f"{int(labels.isna().sum())} cells; fill or drop them first."
        )
    present = set(labels[control_mask].astype(str))
    missing = [g for g in labels.cat.categories if g not in present]
    if missing:
        raise ValueError(
            f"Technical group(s) {missing} of {technical_key!r} have no control cells, so their "
            "effects cannot be learned. Add control cells in those groups, merge the groups, or "
            "drop their cells."
        )


def check_fit_settings(**values: object) -> None:
    """Check optimisation settings given by name.

    ``n_steps`` a positive integer, ``lr`` a positive finite number, ``batch_size`` /
    ``feature_chunk`` / ``n_samples`` positive integers or ``None`` (automatic). Settings not
    given (or ``None``: the step's default) are not checked.
    """

    def is_int(value: object) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)

    n_steps = values.get("n_steps")
    if n_steps is not None and (not is_int(n_steps) or n_steps < 1):
        raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}.")
    lr = values.get("lr")
    if lr is not None and (
        isinstance(lr, bool)
        or not isinstance(lr, int | float | np.number)
        or not lr > 0
        or not np.isfinite(lr)
    ):
        raise ValueError(f"lr must be a positive finite number; got {lr!r}.")
    for name in ("batch_size", "feature_chunk", "n_samples"):
        value = values.get(name)
        if value is not None and (not is_int(value) or value < 1):
            raise ValueError(
                f"{name} must be a positive integer or None (automatic); got {value!r}."
            )


def check_sum_factors(values: np.ndarray, key: str) -> None:
    """Size factors must be finite and positive."""
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        raise ValueError(
            f"Size factors in mdata.obs[{key!r}] must be positive and finite; {int(bad.sum())} "
            "cells are not. Recompute them with `ds.pp.sum_factors(mdata)` or drop those cells."
        )


def _values(matrix) -> np.ndarray:
    return matrix.data if sparse.issparse(matrix) else np.asarray(matrix).ravel()


def _count_flags(matrix) -> tuple[bool, bool, bool]:
    """``(non-finite, negative, non-integer)`` entries present in an in-memory matrix."""
    values = _values(matrix)
    if values.size == 0:
        return False, False, False
    if not np.all(np.isfinite(values)):
        return True, False, False
    return False, bool(values.min() < 0), bool(not np.all(np.floor(values) == values))


def _raise_count_flags(flags: tuple[bool, bool, bool], what: str) -> None:
    nonfinite, negative, nonint = flags
    if nonfinite:
        raise ValueError(
            f"{what} contains NaN or infinite values (or values beyond the float32 range, "
            "~3.4e38); counts must be finite."
        )
    if negative:
        raise ValueError(f"{what} contains negative values; negbinom needs raw counts >= 0.")
    if nonint:
        raise ValueError(
            f"{what} contains non-integer values; negbinom needs raw integer counts (not "
            "normalised or log-transformed data). Pass `layer=` with the raw counts, or register "
            "the modality as 'normal'."
        )


def _any_flags(found: list[tuple[bool, bool, bool]]) -> tuple[bool, bool, bool]:
    return tuple(any(f[k] for f in found) for k in range(3))  # type: ignore[return-value]


def check_counts(matrix, what: str) -> None:
    """Raw counts: finite, non-negative integers (an out-of-core matrix block by block)."""
    if is_lazy(matrix):
        flags = _any_flags(feature_blockwise(lambda X, _, __: _count_flags(X), matrix))
    else:
        flags = _count_flags(matrix)
    _raise_count_flags(flags, what)


def _exceeding(successes, trials) -> int:
    diff = trials - successes
    values = _values(diff) if sparse.issparse(diff) else np.asarray(diff)
    return int((values < 0).sum()) if values.size else 0


def check_binomial(successes, trials, what: str) -> None:
    """Binomial data: counts with successes <= trials (out-of-core data block by block)."""
    if is_lazy(successes) or is_lazy(trials):
        if tuple(successes.shape) != tuple(trials.shape):
            raise ValueError(
                f"{what}: successes {tuple(successes.shape)} and trials "
                f"{tuple(trials.shape)} differ in shape; the `total_layer` must hold the trials "
                "of every cell and feature of X."
            )
        found = feature_blockwise(
            lambda k, n, _: (_count_flags(k), _count_flags(n), _exceeding(k, n)),
            successes,
            trials,
        )
        _raise_count_flags(_any_flags([f[0] for f in found]), f"{what} successes")
        _raise_count_flags(_any_flags([f[1] for f in found]), f"{what} trials")
        n_exceeding = sum(f[2] for f in found)
    else:
        check_counts(successes, f"{what} successes")
        check_counts(trials, f"{what} trials")
        n_exceeding = _exceeding(successes, trials)
    if n_exceeding:
        raise ValueError(
            f"{what}: successes exceed trials in {n_exceeding} entries; X must hold "
            "successes and the `total_layer` the trials (successes + failures)."
        )


def check_continuous(matrix, what: str) -> None:
    """Continuous data: finite or NaN (missing), never infinite."""
    values = _values(matrix)
    if np.isinf(values).any():
        raise ValueError(f"{what} contains infinite values; use NaN for missing values.")
    if values.size and np.isnan(values).all():
        raise ValueError(f"{what} holds only missing values.")
