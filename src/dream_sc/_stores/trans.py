"""Store of trans fits (step 3): record, results table, curve bands and posterior frame.

The significance (``test_trans``) and calibration (``calibration_check``) of a fit live in
its record and results table; they are written with :func:`update_record` and
:func:`write_results`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from .. import _record_checks as C
from .. import _validation as V
from ..models.trans import TransPriors
from ._common import stamp
from ._keys import CURVE_STATS, TransKeys
from ._posterior import CORR_PREFIX, posterior_frame, posterior_from_frame

__all__ = [
    "CORR_PREFIX",
    "CURVE_STATS",
    "TransKeys",
    "posterior_frame",
    "posterior_from_frame",
    "read_curves",
    "read_posterior_frame",
    "read_trans",
    "read_trans_posterior",
    "read_trans_priors",
    "update_record",
    "write_results",
    "write_trans",
]


def write_trans(
    adata: AnnData,
    key: str,
    record: dict,
    table: pd.DataFrame,
    curves: Mapping[str, np.ndarray],
    posterior: pd.DataFrame,
    *,
    sparse_curves: bool = False,
) -> None:
    """Store a trans fit: results table, curve bands ``[fitted, grid]`` and posterior frame.

    ``sparse_curves`` (two-stage fits, where most features have no curve) stores each band as
    a CSR matrix holding the fitted features' rows only, every grid value of such a row
    stored (zeros included), so an empty row is a feature without a curve
    (:func:`read_curves` gives NaN back).
    """
    names = TransKeys(key)
    fitted = table["fitted"].to_numpy(dtype=bool)
    adata.varm[names.results] = table
    for stat in CURVE_STATS:
        band = np.asarray(curves[stat], dtype=np.float32)
        n_grid = band.shape[1]
        if sparse_curves:
            indptr = np.concatenate([[0], np.cumsum(fitted * n_grid)])
            indices = np.tile(np.arange(n_grid, dtype=np.int32), int(fitted.sum()))
            full = sparse.csr_matrix((band.ravel(), indices, indptr), shape=(adata.n_vars, n_grid))
        else:
            full = np.full((adata.n_vars, n_grid), np.nan, dtype=np.float32)
            full[fitted] = band
        adata.varm[names.curve(stat)] = full
    adata.varm[names.posterior] = posterior
    adata.uns[names.record] = stamp(record, "trans")


def write_results(adata: AnnData, key: str, table: pd.DataFrame) -> None:
    """Replace the per-feature results table of the trans fit ``key`` (e.g. new significance)."""
    adata.varm[TransKeys(key).results] = table


def update_record(adata: AnnData, key: str, *, drop: Iterable[str] = (), **entries: Any) -> None:
    """Set ``entries`` in the record of the trans fit ``key`` (after removing the ``drop`` ones).

    The record keeps its ``kind``, ``schema_version`` and the order of its other entries; new
    entries go last. Used for the significance entries of ``test_trans`` and the
    ``calibration`` of ``calibration_check``.
    """
    name = TransKeys(key).record
    record = dict(adata.uns[name])
    for stale in drop:
        record.pop(stale, None)
    record.update(entries)
    adata.uns[name] = record


def read_trans(mdata: MuData, modality: str, key: str) -> tuple[AnnData, Mapping]:
    """The modality and the run record of a stored trans fit (raises when missing)."""
    V.check_modality(mdata, modality)
    adata = mdata[modality]
    return adata, checked_trans_record(adata, modality, key)


def checked_trans_record(adata, modality: str, key: str) -> Mapping:
    """The run record of trans fit ``key`` of ``adata``, its stored results checked.

    ``adata`` needs ``uns``, ``varm`` and ``n_vars`` (an AnnData, or a holder of them read
    once: ``get.screen_results`` reads a screen's ``varm`` once for all its targets).
    """
    names = TransKeys(key)
    if names.record not in adata.uns or names.results not in adata.varm:
        raise KeyError(
            f"No trans fit {key!r} in modality {modality!r}; run "
            f"`ds.tl.fit_trans(mdata, modality={modality!r}, key_added={key!r})` first or pass `key=`."
        )
    C.check_trans(adata, modality, key)
    return adata.uns[names.record]


def read_trans_priors(record: Mapping) -> TransPriors:
    """The priors a stored trans fit used."""
    return TransPriors.from_dict(record["priors"])


def read_trans_posterior(
    adata: AnnData, key: str, fitted: np.ndarray | None = None
) -> tuple[dict, dict, np.ndarray | None]:
    """Variational ``loc``, ``scale`` and correlation factor of the fitted features.

    ``fitted`` (default: the ``fitted`` column of the results table) selects the rows.
    """
    names = TransKeys(key)
    if fitted is None:
        fitted = adata.varm[names.results]["fitted"].to_numpy(dtype=bool)
    return posterior_from_frame(adata.varm[names.posterior], fitted)


def read_posterior_frame(adata: AnnData, key: str) -> pd.DataFrame:
    """The stored variational posterior frame of the trans fit ``key`` (all features)."""
    return adata.varm[TransKeys(key).posterior]


def read_curves(adata: AnnData, key: str, rows: Any = slice(None)) -> dict[str, np.ndarray]:
    """The stored curve bands ``stat -> [rows, grid]`` of the trans fit ``key``."""
    names = TransKeys(key)
    out = {}
    for stat in CURVE_STATS:
        band = adata.varm[names.curve(stat)]
        if sparse.issparse(band):  # only the rows asked for are made dense
            band = sparse.csr_matrix(band)[rows]
            empty = np.diff(band.indptr) == 0
            band = band.toarray()  # explicit zeros stay zeros
            band[empty] = np.nan
            out[stat] = band
        else:
            out[stat] = band[rows]
    return out
