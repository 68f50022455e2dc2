"""The one codec for stored results: what every fit writes, and how it is read back.

Every run record (``uns[key]``) carries its ``kind`` (``"technical"``, ``"cis"``, ``"trans"``
or ``"screen"``; the significance and calibration of a trans fit live in its trans record) and
the ``schema_version`` it was written with. Records written before the version existed (no
``kind``) are recognised once, here, from their keys (:func:`record_kind`). ``tl`` writes
through :func:`stamp` and the ``write_*`` functions; ``get`` and ``pl`` read only through the
``read_*`` functions and :mod:`dream_sc.models` (never through ``tl``). Every ``read_*``
function validates what it reads (:mod:`dream_sc._record_checks`).

Layout
------
- technical: ``adata.uns[key]`` (record), ``adata.varm[key]`` (summaries),
  ``adata.var[f"{key}_informative"]``;
- cis: ``mdata.uns[key]``, ``mdata.obs[f"{key}_dose_<stat>"]``,
  ``mdata.obsm[f"{key}_dose_samples"]``;
- trans: ``adata.uns[key]``, ``adata.varm[key]`` (results), ``varm[f"{key}_curve_<stat>"]``
  and ``varm[f"{key}_posterior"]`` (the variational posterior, :func:`posterior_frame`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from . import _record_checks as C
from . import _validation as V
from ._record_checks import CURVE_STATS, KINDS, SCHEMA_VERSION
from ._registration import is_overdispersed
from .models.families import get_family
from .models.guide import cholesky_from_lower
from .models.trans import TransPriors

#: Column prefix of the per-feature correlation factor in ``varm[f"{key}_posterior"]``.
CORR_PREFIX = "corr_chol_"


# ----------------------------------------------------------------------------- kinds
def stamp(record: dict, kind: str) -> dict:
    """``record`` with its ``kind`` and the current ``schema_version`` (first two keys)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    return {"kind": kind, "schema_version": SCHEMA_VERSION, **record}


def record_kind(record: object) -> str | None:
    """The kind of a stored run record, ``None`` when ``record`` is not one.

    Examples
    --------
    >>> record_kind({"kind": "trans", "schema_version": 1, "loss": [1.0]})
    'trans'
    >>> record_kind({"loss": [1.0], "groups": ["a"]})  # written by an older version
    'technical'
    """
    if not isinstance(record, Mapping) or "loss" not in record:
        return None
    if "kind" in record:
        return str(record["kind"])
    return C.legacy_kind(record)


def schema_version(record: Mapping) -> int:
    """Schema version of a record (0 for records written before versions were stored)."""
    return int(record.get("schema_version", 0))


@dataclass
class StoredFit:
    """A stored fit: its kind, where it lives and its run record."""

    kind: str
    key: str
    modality: str | None  # None for cis fits (mdata.uns)
    record: Mapping

    @property
    def where(self) -> str:
        """Short description used in titles and messages."""
        return (
            f"{self.key} (mdata.uns)" if self.modality is None else f"{self.key} ({self.modality})"
        )


def stored_fits(mdata: MuData, modality: str | None = None) -> list[StoredFit]:
    """Every fit stored in ``mdata`` (cis fits first, then technical and trans per modality)."""
    fits = []
    if modality is None:
        fits += [
            StoredFit("cis", k, None, r) for k, r in mdata.uns.items() if record_kind(r) == "cis"
        ]
        _check_unknown(mdata.uns, "mdata.uns")
    for mod in list(mdata.mod) if modality is None else [modality]:
        fits += [
            StoredFit(record_kind(r), k, mod, r)
            for k, r in mdata[mod].uns.items()
            if record_kind(r) in ("technical", "trans")
        ]
        _check_unknown(mdata[mod].uns, f"mdata[{mod!r}].uns")
    for fit in fits:
        C.check_fit(mdata, fit.kind, fit.key, fit.modality)
    return fits


def _check_unknown(uns: Mapping, where: str) -> None:
    """Entries that look like run records (``kind``, ``schema_version``, ``loss``) of unknown kind."""
    for key, record in uns.items():
        if isinstance(record, Mapping) and {"kind", "schema_version", "loss"} <= set(record):
            if record_kind(record) not in KINDS:
                C.check_fit_header(record, f"{where}[{key!r}]")


# ----------------------------------------------------------------------------- technical
@dataclass
class TechnicalFit:
    """Technical results of a modality as later steps need them (link scale)."""

    groups: list[str]
    baseline: np.ndarray  # [T]
    effects: np.ndarray  # [T, C] (reference column = 0)
    log_phi: np.ndarray | None
    log_sigma: np.ndarray | None
    log_nu: np.ndarray | None
    distribution: str
    technical_key: object
    log_conc: np.ndarray | None = None  # [T] over-dispersed binomial / multinomial


def write_technical(
    adata: AnnData, key: str, record: dict, table: pd.DataFrame, informative: np.ndarray
) -> None:
    """Store a technical fit of one modality."""
    adata.varm[key] = table
    adata.var[f"{key}_informative"] = informative
    adata.uns[key] = stamp(record, "technical")


def read_technical(mdata: MuData, modality: str, key: str) -> TechnicalFit:
    """Read a stored technical fit (raises with the call to run when it is missing)."""
    V.check_modality(mdata, modality)
    adata = mdata[modality]
    if key not in adata.uns or key not in adata.varm:
        raise KeyError(
            f"No technical fit {key!r} in modality {modality!r}; run "
            f"`ds.tl.fit_technical(mdata, modality={modality!r}, key_added={key!r})` first."
        )
    C.check_technical(adata, modality, key)
    record, table = adata.uns[key], adata.varm[key]
    groups = [str(g) for g in record["groups"]]
    effects = np.zeros((adata.n_vars, len(groups)))
    for k, name in enumerate(groups[1:], start=1):
        effects[:, k] = table[f"effect_{name}_mean"].to_numpy()
    get = lambda col: np.log(table[col].to_numpy()) if col in table else None  # noqa: E731
    tech_key = record["params"].get("technical_key", "cell_line")
    if isinstance(tech_key, np.ndarray):
        tech_key = [str(k) for k in tech_key]
    fitted_od = bool(record.get("overdispersed", False))
    wanted_od = get_family(str(record["distribution"])).overdispersible and is_overdispersed(adata)
    if fitted_od != wanted_od:
        raise ValueError(
            f"Modality {modality!r} is registered with overdispersed={wanted_od} but its "
            f"technical fit {key!r} was run with overdispersed={fitted_od}; rerun "
            f"`ds.tl.fit_technical(mdata, modality={modality!r}, key_added={key!r})`."
        )
    return TechnicalFit(
        groups,
        table["baseline_mean"].to_numpy(),
        effects,
        get("dispersion_q50"),
        get("sigma_q50"),
        get("nu_q50"),
        str(record["distribution"]),
        tech_key or None,
        get("concentration_q50") if fitted_od else None,
    )


# ----------------------------------------------------------------------------- cis
def write_cis(
    mdata: MuData, key: str, record: dict, columns: Mapping[str, np.ndarray], samples: np.ndarray
) -> None:
    """Store a cis fit: per-cell dosage summaries ``columns`` (``stat -> [cells]``) and samples."""
    for name, column in columns.items():
        mdata.obs[f"{key}_dose_{name}"] = column
    mdata.obsm[f"{key}_dose_samples"] = samples
    mdata.uns[key] = stamp(record, "cis")


def read_cis(mdata: MuData, key: str, *, samples: bool = False, cells: bool = False) -> Mapping:
    """The cis run record ``key`` (raises with the call to make when it is missing).

    ``samples=True`` also requires the per-cell dosage samples in ``mdata.obsm``, ``cells=True``
    the per-cell dosage columns in ``mdata.obs``.
    """
    if key not in mdata.uns or (samples and f"{key}_dose_samples" not in mdata.obsm):
        raise KeyError(
            f"No cis fit {key!r} in mdata.uns; run `ds.tl.fit_cis(mdata, cis_feature=..., "
            f"key_added={key!r})` first or pass `key=`."
        )
    C.check_cis(mdata, key, cells=cells)
    return mdata.uns[key]


# ----------------------------------------------------------------------------- screen
def write_screen(mdata: MuData, key: str, record: dict) -> None:
    """Store the screen record of ``fit_screen`` (stamped with its kind and schema version)."""
    mdata.uns[key] = stamp(record, "screen")


def read_screen(mdata: MuData, modality: str, key: str) -> Mapping:
    """The screen record ``key`` of ``modality`` (raises when missing, foreign or damaged)."""
    if key not in mdata.uns:
        raise KeyError(
            f"No screen record {key!r} in mdata.uns; run `ds.tl.fit_screen(mdata, "
            f"modality={modality!r})` first or pass `key=`."
        )
    C.check_screen(mdata, key, modality)
    record = mdata.uns[key]
    if str(record.get("modality", modality)) != modality:
        raise ValueError(
            f"The screen {key!r} was fitted on modality {record['modality']!r}, not "
            f"{modality!r}; pass modality={record['modality']!r} or the key of that screen."
        )
    return record


# ----------------------------------------------------------------------------- trans
def write_trans(
    adata: AnnData,
    key: str,
    record: dict,
    table: pd.DataFrame,
    curves: Mapping[str, np.ndarray],
    posterior: pd.DataFrame,
) -> None:
    """Store a trans fit: results table, curve bands ``[fitted, grid]`` and posterior frame."""
    fitted = table["fitted"].to_numpy(dtype=bool)
    adata.varm[key] = table
    for stat in CURVE_STATS:
        full = np.full((adata.n_vars, curves[stat].shape[1]), np.nan, dtype=np.float32)
        full[fitted] = curves[stat]
        adata.varm[f"{key}_curve_{stat}"] = full
    adata.varm[f"{key}_posterior"] = posterior
    adata.uns[key] = stamp(record, "trans")


def read_trans(mdata: MuData, modality: str, key: str) -> tuple[AnnData, Mapping]:
    """The modality and the run record of a stored trans fit (raises when missing)."""
    V.check_modality(mdata, modality)
    adata = mdata[modality]
    if key not in adata.uns or key not in adata.varm:
        raise KeyError(
            f"No trans fit {key!r} in modality {modality!r}; run "
            f"`ds.tl.fit_trans(mdata, modality={modality!r}, key_added={key!r})` first or pass `key=`."
        )
    C.check_trans(adata, modality, key)
    return adata, adata.uns[key]


def read_trans_priors(record: Mapping) -> TransPriors:
    """The priors a stored trans fit used."""
    return TransPriors.from_dict(record["priors"])


def read_trans_posterior(adata: AnnData, key: str) -> tuple[dict, dict, np.ndarray | None]:
    """Variational ``loc``, ``scale`` and correlation factor of the fitted features."""
    fitted = adata.varm[key]["fitted"].to_numpy(dtype=bool)
    return posterior_from_frame(adata.varm[f"{key}_posterior"], fitted)


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
                full = np.full(len(var_names), np.nan)
                full[fitted] = values
                cols[f"{name}{suffix}_{stat}"] = full
    if fit.corr is not None:
        for i, j in zip(*np.tril_indices(fit.corr.shape[1], k=-1), strict=True):
            full = np.full(len(var_names), np.nan)
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
