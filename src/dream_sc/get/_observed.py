"""Observed data of a dose-response panel on the curves' scale, per cell and summarised per guide.

Every value is brought to the scale of :func:`dream_sc.get.trans_curves`: the reference
technical group and, for counts, a unit size factor. Per cell that is

- negbinom: ``counts / size factor / exp(technical effect of the cell's group)``;
- binomial: ``successes / trials`` with the group's logit shift removed;
- multinomial: category proportions within the group with the group's log-probability shift
  removed (renormalised);
- normal / studentt: ``value - technical effect``

(each family's ``observed_parts`` and ``normalise``, :mod:`dream_sc.models.families`).

Per guide the data are pooled as ratios of sums (total counts over total size factor, total
successes over total trials, ...) within each technical group, normalised, then averaged over
groups weighted by their denominators; 90% intervals come from a seeded bootstrap over cells.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from .. import _validation as V
from .._cells import technical_groups
from .._lazy import LazyMatrix, source_of
from .._registration import get_registration
from .._stores.cis import read_cis, read_cis_dose
from .._stores.technical import read_technical
from .._stores.trans import read_trans
from ..models.families import get_family

#: Values materialised per bootstrap batch (bounds memory for guides with many cells).
_BOOT_BUDGET = 4_000_000
#: Number of dosage bins used when cells have no single guide (high MOI).
N_DOSE_BINS = 10


@dataclass
class PanelData:
    """Cells of a trans fit and the observations of the features drawn in one axes."""

    distribution: str
    features: list[str]
    dose: np.ndarray  # [N] posterior mean dosage per cell
    unit: np.ndarray  # [N] guide label (or dosage bin)
    group: np.ndarray  # [N] technical group code (0 = reference)
    group_names: list[str]
    num: np.ndarray  # [N, K]
    den: np.ndarray  # [N, K]
    effects: np.ndarray  # [K, C] technical effects on the link scale
    binned: bool = False  # units are dosage bins, not guides


def normalise(distribution: str, ratio: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Remove technical effects ``delta`` (link scale) from raw ratios ``[..., K]``."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return get_family(distribution).normalise(ratio, delta)


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if sparse.issparse(matrix) else matrix, dtype=np.float64)


def _columns(
    adata, layer: str | None, rows: np.ndarray, cols: np.ndarray, modality: str
) -> np.ndarray:
    if layer is None:
        matrix = adata.X
    elif layer in adata.layers:
        matrix = adata.layers[layer]
    else:
        raise KeyError(
            f"Layer {layer!r} not found in modality {modality!r}; layers: {list(adata.layers)}."
        )
    source = source_of(adata, layer)
    if source is not None:  # out of core: read only the requested features, one by one
        lazy = LazyMatrix(source, rows)
        return np.column_stack([_dense(lazy.load([c])) for c in cols]).reshape(len(rows), -1)
    if sparse.issparse(matrix):
        return _dense(sparse.csc_matrix(matrix[:, cols])[rows])
    return _dense(np.asarray(matrix)[np.ix_(rows, cols)])


def _units(mdata: MuData, cis: dict, rows: np.ndarray, dose: np.ndarray) -> tuple[np.ndarray, bool]:
    """Guide per cell (low MOI) or a dosage-decile label (high MOI / no guide column)."""
    params = cis["params"]
    guide_key = str(params.get("guide_key", "guide"))
    if not bool(params.get("high_moi", False)) and guide_key in mdata.obs.columns:
        return mdata.obs[guide_key].astype(str).to_numpy()[rows], False
    edges = np.quantile(dose, np.linspace(0, 1, N_DOSE_BINS + 1)[1:-1])
    return np.array([f"dose bin {b + 1}" for b in np.searchsorted(edges, dose)], dtype=object), True


def panel_data(
    mdata: MuData, modality: str, features: list[str], record: dict, cis_key: str
) -> PanelData:
    """Per-cell observations of ``features`` for the cells of the trans fit ``record``."""
    adata = mdata[modality]
    cis = read_cis(mdata, cis_key)
    params = record["params"]
    dose_all = read_cis_dose(mdata, cis_key).to_numpy(dtype=np.float64)
    has_dose = np.flatnonzero(np.isfinite(dose_all))
    pos = adata.obs_names.get_indexer(mdata.obs_names[has_dose])
    present = pos >= 0
    rows, pos = has_dose[present], pos[present]
    reg = get_registration(adata, modality)
    layer = str(params.get("layer", "") or "") or reg.get("layer")
    dist = str(record["distribution"])
    cols = adata.var_names.get_indexer(features)
    X = _columns(adata, layer, pos, cols, modality)
    family = get_family(dist)
    sf = total = None
    if family.size_factors:
        sf_key = str(params.get("sum_factor_key", "sum_factor"))
        sf = mdata.obs[sf_key].to_numpy(dtype=np.float64)[rows]
    if "total_layer" in family.options:
        total = _columns(adata, reg.get("total_layer") or "total", pos, cols, modality)
    num, den = family.observed_parts(X, total=total, size_factor=sf)
    tech = read_technical(
        mdata, modality, str(record.get("technical_key_added", "dream_technical"))
    )
    groups = technical_groups(mdata.obs, tech.technical_key, known=tech.groups)
    unit, binned = _units(mdata, cis, rows, dose_all[rows])
    return PanelData(
        distribution=dist,
        features=list(features),
        dose=dose_all[rows],
        unit=unit,
        group=groups.codes[rows],
        group_names=list(tech.groups),
        num=num,
        den=den,
        effects=tech.effects[cols],
        binned=binned,
    )


def cell_values(data: PanelData) -> np.ndarray:
    """Normalised value of every cell and feature ``[N, K]`` (NaN without data)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(data.den > 0, data.num / data.den, np.nan)
    return normalise(data.distribution, ratio, data.effects.T[data.group])


def _pooled(data: PanelData, idx: np.ndarray, by_group: bool) -> np.ndarray:
    """Normalised ratio-of-sums for resamples ``idx`` ``[B, m]`` -> ``[B, C, K]`` or ``[B, 1, K]``."""
    n_groups = len(data.group_names)
    onehot = np.eye(n_groups)[data.group[idx]]  # [B, m, C]
    num = np.einsum("bmc,bmk->bck", onehot, data.num[idx])
    den = np.einsum("bmc,bmk->bck", onehot, data.den[idx])
    with np.errstate(divide="ignore", invalid="ignore"):
        value = normalise(
            data.distribution, np.where(den > 0, num / den, np.nan), data.effects.T[None]
        )
        if by_group:
            return value
        weight = np.where(np.isfinite(value), den, 0.0)
        total = weight.sum(1, keepdims=True)
        return np.where(total > 0, np.nansum(value * weight, axis=1, keepdims=True) / total, np.nan)


def guide_summary(
    data: PanelData,
    unit_dose: pd.Series | None,
    *,
    by_group: bool,
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Per guide (and technical group): normalised mean and bootstrap 90% interval.

    Parameters
    ----------
    data
        Panel observations.
    unit_dose
        Posterior mean dosage per guide (index = guide); ``None`` uses the median cell dosage
        of each unit (dosage bins).
    by_group
        Summarise every technical group separately (else pooled over groups).
    n_boot
        Bootstrap resamples over cells.
    seed
        Bootstrap seed.

    Returns
    -------
    Long DataFrame with ``unit``, ``group`` (code, -1 when pooled), ``feature`` (position),
    ``dose``, ``value``, ``lo``, ``hi``, ``n_cells`` (cells with data).
    """
    rng = np.random.default_rng(seed)
    has_data = data.den > 0
    records = []
    for unit in pd.unique(data.unit):
        members = np.flatnonzero(data.unit == unit)
        if unit_dose is not None and unit in unit_dose.index:
            x = float(unit_dose.loc[unit])
        else:
            x = float(np.median(data.dose[members]))
        full = _pooled(data, members[None, :], by_group)[0]  # [C or 1, K]
        resamples = members[rng.integers(len(members), size=(n_boot, len(members)))]
        step = max(
            1, _BOOT_BUDGET // (len(members) * (len(data.group_names) + 2 * len(data.features)))
        )
        boot = np.concatenate(
            [_pooled(data, resamples[b : b + step], by_group) for b in range(0, n_boot, step)]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanquantile(boot, [0.05, 0.95], axis=0)
        for g in range(full.shape[0]):
            in_group = data.group[members] == g if by_group else np.ones(len(members), bool)
            for k in range(full.shape[1]):
                n = int(has_data[members[in_group], k].sum())
                if n == 0 or not np.isfinite(full[g, k]):
                    continue
                records.append(
                    (unit, g if by_group else -1, k, x, full[g, k], lo[g, k], hi[g, k], n)
                )
    return pd.DataFrame(
        records, columns=["unit", "group", "feature", "dose", "value", "lo", "hi", "n_cells"]
    )


def guide_observed(
    mdata: MuData,
    features: str | Sequence[str],
    *,
    modality: str = "rna",
    key: str = "dream_trans",
    cis_key: str | None = None,
    by_group: bool = False,
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Observed data of fitted features summarised per guide, on the scale of the curves.

    The cells of the trans fit ``key`` are pooled per guide (per dosage decile when cells carry
    several guides, high MOI): ratios of sums (counts over size factors, successes over trials,
    category counts over the group's counts, values over observed cells) with the technical
    effects of step 1 removed, i.e. on the scale of :func:`dream_sc.get.trans_curves`
    (reference technical group, unit size factor). 90% intervals come from a seeded bootstrap
    over the guide's cells. :func:`dream_sc.pl.dose_response` draws these points.

    Parameters
    ----------
    mdata
        A screen fitted with :func:`dream_sc.tl.fit_trans`.
    features
        Feature name(s) of ``modality``.
    modality
        Fitted modality.
    key
        ``key_added`` of the trans fit.
    cis_key
        ``key_added`` of the cis fit (default: the one the trans fit used).
    by_group
        Summarise every technical group separately (else pooled over groups, weighted by
        their denominators).
    n_boot
        Bootstrap resamples over cells.
    seed
        Bootstrap seed.

    Returns
    -------
    Long DataFrame, one row per guide (and technical group) and feature with data:
    ``guide`` (guide, or ``"dose bin k"``), ``technical_group`` (``"all"`` when pooled),
    ``feature``, ``dose`` (the guide's posterior mean dosage; median cell dosage of a bin),
    ``value``, ``q05``, ``q95``, ``n_cells`` (cells with data) and ``is_control``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, test=False, progress=False)
    >>> table = ds.get.guide_observed(mdata, "gene_0005", n_boot=20)
    >>> table.columns[:4].tolist()
    ['guide', 'technical_group', 'feature', 'dose']
    """
    V.check_mudata(mdata)
    adata, record = read_trans(mdata, modality, key)
    names = [features] if isinstance(features, str) else [str(f) for f in features]
    if not names:
        raise ValueError("features is empty; pass a feature name or a list of names.")
    for name in names:
        if name not in adata.var_names:
            raise KeyError(
                f"Feature {name!r} not found in modality {modality!r}."
                + V._suggest(name, adata.var_names)
            )
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}.")
    cis_key = str(record.get("cis_key", "dream_cis")) if cis_key is None else cis_key
    data = panel_data(mdata, modality, names, record, cis_key)
    guides = read_cis(mdata, cis_key)["guides"]
    unit_dose = None if data.binned else guides["dose_mean"]
    summary = guide_summary(data, unit_dose, by_group=by_group, n_boot=n_boot, seed=seed)
    control = guides.index[
        np.asarray(guides.get("is_control", np.zeros(len(guides), bool)), dtype=bool)
    ]
    group_names = np.asarray(data.group_names + ["all"], dtype=object)
    return pd.DataFrame(
        {
            "guide": summary["unit"].to_numpy(dtype=object),
            "technical_group": group_names[summary["group"].to_numpy(dtype=int)],
            "feature": np.asarray(names, dtype=object)[summary["feature"].to_numpy(dtype=int)],
            "dose": summary["dose"].to_numpy(dtype=np.float64),
            "value": summary["value"].to_numpy(dtype=np.float64),
            "q05": summary["lo"].to_numpy(dtype=np.float64),
            "q95": summary["hi"].to_numpy(dtype=np.float64),
            "n_cells": summary["n_cells"].to_numpy(dtype=int),
            "is_control": summary["unit"].isin(control).to_numpy(),
        }
    )
