"""How a modality is fitted: its likelihood and where its data live.

The registration is a small dict stored in ``mdata[mod].uns["dream_sc"]`` so it survives an
h5mu round trip. Builders in :mod:`dream_sc.pp` write it; every ``tl`` function reads it.
"""

from __future__ import annotations

from typing import Any, get_args

import numpy as np
from anndata import AnnData
from scipy import sparse

from ._lazy import LazyMatrix, feature_blockwise, source_of
from ._validation import _count_flags
from .models.families import DEFAULT_COUNTS, FAMILIES, Distribution

__all__ = ["DISTRIBUTIONS", "OVERDISPERSIBLE", "REGISTRATION_KEY", "Distribution"]

DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)
REGISTRATION_KEY = "dream_sc"
#: Distributions that accept ``overdispersed=True`` (beta-binomial / Dirichlet-multinomial).
OVERDISPERSIBLE: tuple[str, ...] = tuple(n for n, f in FAMILIES.items() if f.overdispersible)


def make_registration(
    distribution: str,
    *,
    layer: str | None = None,
    total_layer: str | None = None,
    group_key: str | None = None,
    overdispersed: bool = False,
) -> dict[str, Any]:
    """Build a registration dict (empty strings stand for ``None`` so it is h5-serialisable).

    ``overdispersed`` is only written when true; a registration without the key (also one
    written by an older version) means a plain binomial / multinomial.
    """
    reg: dict[str, Any] = {
        "distribution": distribution,
        "layer": layer or "",
        "total_layer": total_layer or "",
        "group_key": group_key or "",
    }
    if overdispersed:
        reg["overdispersed"] = True
    return reg


def set_registration(
    adata: AnnData,
    *,
    distribution: str,
    layer: str | None = None,
    total_layer: str | None = None,
    group_key: str | None = None,
    overdispersed: bool = False,
) -> None:
    """Write a registration into ``adata.uns["dream_sc"]`` (no validation, see ``pp``)."""
    adata.uns[REGISTRATION_KEY] = make_registration(
        distribution,
        layer=layer,
        total_layer=total_layer,
        group_key=group_key,
        overdispersed=overdispersed,
    )


def _holds_counts(adata: AnnData) -> bool:
    """Whether ``adata.X`` holds non-negative integers (out-of-core X block by block)."""
    source = source_of(adata, None)
    if source is None:
        return _is_nonnegative_integer(adata.X)
    flags = feature_blockwise(lambda X, _, __: _count_flags(X), LazyMatrix(source))
    return not any(any(f) for f in flags)


def _is_nonnegative_integer(matrix: Any) -> bool:
    values = matrix.data if sparse.issparse(matrix) else np.asarray(matrix)
    if values.size == 0:
        return True
    if not np.all(np.isfinite(values)):
        return False
    return bool(np.all(values >= 0) and np.all(np.floor(values) == values))


def get_registration(adata: AnnData, modality: str) -> dict[str, Any]:
    """Return the registration of a modality, defaulting integer counts to ``negbinom``.

    Returned values use ``None`` for absent layers/keys and ``overdispersed`` is always a
    ``bool`` (``False`` when the key is absent).

    Raises
    ------
    ValueError
        If the modality is not registered and does not hold non-negative integer counts.
    """
    reg = adata.uns.get(REGISTRATION_KEY)
    if reg is None:
        if not _holds_counts(adata):
            raise ValueError(
                f"Modality {modality!r} is not registered and its X is not non-negative integer "
                "counts, so its likelihood cannot be guessed. Register it first, e.g. "
                f"`ds.pp.register_modality(mdata, {modality!r}, distribution='normal')` "
                f"(one of {', '.join(DISTRIBUTIONS)})."
            )
        return {
            "distribution": DEFAULT_COUNTS,
            "layer": None,
            "total_layer": None,
            "group_key": None,
            "overdispersed": False,
        }
    out = {k: (v if (not isinstance(v, str) or v != "") else None) for k, v in dict(reg).items()}
    out.setdefault("layer", None)
    out.setdefault("total_layer", None)
    out.setdefault("group_key", None)
    out["overdispersed"] = bool(out.get("overdispersed", False))
    return out


def is_overdispersed(adata: AnnData) -> bool:
    """Whether a modality is registered with ``overdispersed=True`` (absent key: ``False``)."""
    reg = adata.uns.get(REGISTRATION_KEY)
    return reg is not None and bool(dict(reg).get("overdispersed", False))
