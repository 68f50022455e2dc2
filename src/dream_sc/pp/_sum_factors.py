"""Size factors: library size, pooled deconvolution, or library size over unperturbed features."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from mudata import MuData

from .. import _validation as V
from .._data import _matrix, positions_in
from ..models.size_factors import association_pvalues, deconvolution_factors, library_factors
from ._feature_counts import copy_mudata

logger = logging.getLogger("dream_sc")

METHODS = ("library", "deconvolution", "dose_aware")
#: Default estimator, chosen by measurement (docs/data_preparation.md, "Size factors").
DEFAULT_METHOD = "dose_aware"


def sum_factors(
    mdata: MuData,
    modality: str = "rna",
    *,
    layer: str | None = None,
    key_added: str = "sum_factor",
    method: Literal["library", "deconvolution", "dose_aware"] = DEFAULT_METHOD,
    technical_key: str | Sequence[str] | None = None,
    guide_key: str = "guide",
    target_key: str = "target",
    control_label: str = "ntc",
    exclude: Sequence[str] | None = None,
    pvalue: float = 0.01,
    n_iter: int = 2,
    copy: bool = False,
) -> MuData | None:
    """Size factors scaled to mean 1.

    ``method``:

    - ``"library"``: ``s_i = N_i / mean(N)``, ``N_i`` the total count of cell ``i``. Biased
      when the perturbation moves the library: the cis gene and its responders are part of
      ``N_i``, so every unperturbed feature looks slightly down in cells whose library the
      perturbation raised (CRISPRa) and up where it shrank.
    - ``"deconvolution"``: pooled median-of-ratios (scran's idea,
      :func:`dream_sc.models.size_factors.deconvolution_factors`); the median ignores a
      minority of moving features. Needs no labels.
    - ``"dose_aware"`` (default): library size over the features that the perturbation does
      not move. The targeted genes (feature names equal to a target label), ``exclude`` and
      every feature whose normalised expression differs between the guides of a technical
      group (one-way ANOVA of ``log1p(y / s)``, p-value below ``pvalue``) are left out;
      repeated ``n_iter`` times with the new factors. Needs ``mdata.obs[guide_key]`` (or
      ``target_key``); without them (e.g. high MOI) the deconvolution estimator is used and
      the fallback is logged. Pass ``technical_key`` (the same as in ``fit_technical``) so
      that technical differences between groups are not taken for perturbation effects.

    The default was chosen by measurement on simulated CRISPRi + CRISPRa screens (see
    ``docs/data_preparation.md``, "Size factors"). Cells absent from the modality get NaN;
    cells with zero counts raise (drop them first). The method used and the features left out
    are recorded in ``mdata.uns["dream_sum_factors"][key_added]``.

    Parameters
    ----------
    mdata
        The screen.
    modality
        Count modality.
    layer
        Layer with raw counts (default ``X``).
    key_added
        Column of ``mdata.obs`` to write.
    method
        ``"library"``, ``"deconvolution"`` or ``"dose_aware"``.
    technical_key
        Technical covariate column(s) of ``mdata.obs`` (``dose_aware``): guides are compared
        within each technical group.
    guide_key, target_key, control_label
        Perturbation labels (``dose_aware``); control cells of a technical group form one
        class.
    exclude
        Feature names never used for the factors (``dose_aware``), e.g. known responders.
    pvalue
        Association p-value below which a feature is left out (``dose_aware``).
    n_iter
        Rounds of (factors, association test) (``dose_aware``).
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    ``None`` (or a copy with ``copy=True``); writes ``mdata.obs[key_added]``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=200, n_genes=20, seed=0)
    >>> ds.pp.sum_factors(mdata, key_added="sf", method="library")
    >>> round(float(mdata.obs["sf"].mean()), 6)
    1.0
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, modality)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    if not 0 < pvalue < 1:
        raise ValueError(f"pvalue must lie in (0, 1); got {pvalue}.")
    if int(n_iter) < 1:
        raise ValueError(f"n_iter must be >= 1; got {n_iter}.")
    adata = mdata[modality]
    X = _matrix(adata, layer, modality)
    V.check_counts(X, f"Modality {modality!r}")
    lib = np.asarray(X.sum(axis=1)).ravel()
    if (lib <= 0).any():
        raise ValueError(
            f"{int((lib <= 0).sum())} cells have zero counts in {modality!r}; filter them "
            "before computing size factors (e.g. `sc.pp.filter_cells(adata, min_counts=1)`)."
        )
    record: dict = {"method": method, "modality": modality}
    if method == "dose_aware":
        labels = _labels(mdata, adata, guide_key, target_key, control_label, technical_key)
        if labels is None:
            logger.info(
                "sum_factors: no %r / %r labels in mdata.obs; method='dose_aware' falls back "
                "to 'deconvolution'",
                guide_key,
                target_key,
            )
            method = record["method_used"] = "deconvolution"
        else:
            factors, left_out = _dose_aware(
                X, adata.var_names, *labels, exclude=exclude, pvalue=pvalue, n_iter=int(n_iter)
            )
            record.update(method_used="dose_aware", n_features=int(X.shape[1]))
            record["n_left_out"] = int(len(left_out))
            record["left_out"] = np.asarray(left_out, dtype=str)
    if method == "library":
        factors = library_factors(X)
    elif method == "deconvolution":
        factors = deconvolution_factors(X)
    pos = positions_in(adata, mdata.obs_names)
    values = np.full(mdata.n_obs, np.nan)
    values[pos >= 0] = factors[pos[pos >= 0]]
    target = copy_mudata(mdata) if copy else mdata
    target.obs[key_added] = values
    store = dict(target.uns.get("dream_sum_factors", {}))
    store[key_added] = record
    target.uns["dream_sum_factors"] = store
    logger.info("size factors written to mdata.obs[%r] from %r", key_added, modality)
    logger.debug(
        "size factors: method %s, %s features left out",
        record.get("method_used", method),
        record.get("n_left_out", 0),
    )
    return target if copy else None


def _labels(
    mdata: MuData,
    adata,
    guide_key: str,
    target_key: str,
    control_label: str,
    technical_key: str | Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Perturbation class, technical group (modality rows) and the targeted genes."""
    obs = mdata.obs.reindex(adata.obs_names)
    key = guide_key if guide_key in obs.columns else target_key
    if key not in obs.columns:
        return None
    label = obs[key].astype(object)
    targets: list[str] = []
    if target_key in obs.columns:
        tgt = obs[target_key].astype(object)
        targets = sorted({str(t) for t in tgt.dropna().unique() if str(t) != control_label})
        label = label.where(tgt.astype(str) != control_label, "__control__")
    label = label.fillna("__unassigned__").astype(str)
    if technical_key is None:
        group = pd.Series(0, index=obs.index)
    else:
        keys = [technical_key] if isinstance(technical_key, str) else list(technical_key)
        for k in keys:
            V.check_obs_column(mdata.obs, k, "technical_key")
        group = obs[keys].astype(str).agg("|".join, axis=1)
    classes = pd.factorize(label)[0]
    groups = pd.factorize(group)[0]
    return classes, groups, targets


def _dose_aware(
    X,
    var_names: pd.Index,
    classes: np.ndarray,
    groups: np.ndarray,
    targets: list[str],
    *,
    exclude: Sequence[str] | None,
    pvalue: float,
    n_iter: int,
) -> tuple[np.ndarray, list[str]]:
    """Library size over the features not associated with the perturbation classes."""
    fixed = var_names.isin(list(targets) + list(exclude or []))
    keep = ~fixed
    factors = _restricted_factors(X, keep)
    for _ in range(n_iter):
        p = association_pvalues(X, factors, classes, groups)
        moving = fixed | (p < pvalue)
        if (~moving).sum() < max(0.5 * (~fixed).sum(), 1):
            # never keep fewer than half of the candidate features: the least associated half
            cand = np.flatnonzero(~fixed)
            half = cand[np.argsort(-p[cand], kind="stable")[: max(len(cand) // 2, 1)]]
            moving = np.ones(len(p), bool)
            moving[half] = False
        keep = ~moving
        factors = _restricted_factors(X, keep)
    return factors, list(var_names[~keep])


def _restricted_factors(X, keep: np.ndarray) -> np.ndarray:
    """Library size over ``keep`` (scaled to mean 1).

    A cell without counts there gets its full library size times the median ratio
    (kept / full) of the other cells (tiny screens).
    """
    kept = np.asarray(X @ keep.astype(np.float64), dtype=np.float64).ravel()  # no column copy
    full = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    empty = kept <= 0
    if empty.all():
        kept = full
    elif empty.any():
        kept[empty] = full[empty] * np.median(kept[~empty] / full[~empty])
    return library_factors(kept[:, None])
