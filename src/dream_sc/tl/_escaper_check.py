"""``tl.escaper_check``: whether a screen needs the escaper option of ``fit_cis``."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from .._cells import sum_factor_values, technical_groups
from .._data import modality_data
from .._stores.cis import CisKeys, read_cis
from ..models.cis_escapers import escape_lrt
from ._technical import load_technical


def escaper_check(
    mdata: MuData,
    *,
    key: str = "dream_cis",
    alpha: float = 0.01,
    min_fraction: float = 0.05,
    min_cells: int = 20,
) -> pd.DataFrame:
    """Test every targeting guide of a cis fit for escapers (cells the guide did not act on).

    KRAB CRISPRi often acts digitally: a share of a guide's cells is not knocked down at all.
    Per targeting guide (low MOI), the cis counts of its cells are compared under two models
    (:mod:`dream_sc.models.cis_escapers`): all cells log-normal around one dosage, or a share
    ``pi`` of them at the control dosage (the control cells' spread) and the rest log-normal;
    each cell's dosage integrated out of its negative binomial count as in the cis fit. Both
    are maximised; twice the log-likelihood gain is referred to ``0.5 chi2_1``. The control
    dosage, the control spread, the cis gene's technical effects and its within-cell dispersion
    come from the cis fit ``key`` (run :func:`dream_sc.tl.fit_cis` first, without escapers).

    A guide is flagged when ``pvalue < alpha`` and the estimated ``escape_fraction >=
    min_fraction``; any flag warns to refit with ``fit_cis(..., escapers=True)``. A guide
    whose dosage is close to the control dosage cannot show escapers (both components sit at
    the same place): its test has no power, whatever its escape fraction.

    Parameters
    ----------
    mdata
        A screen with a cis fit.
    key
        ``key_added`` of the cis fit.
    alpha
        Level of the per-guide test.
    min_fraction
        Smallest escape fraction worth the option.
    min_cells
        Guides with fewer cells are not tested (NaN).

    Returns
    -------
    DataFrame indexed by the targeting guides: ``n_cells``, ``log2_effect`` (of the
    knocked-down cells, relative to the control dosage, under the escaper model),
    ``escape_fraction`` (maximum likelihood), ``log_lr``, ``pvalue``, ``needs_escapers``.
    Nothing is written to ``mdata``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=400, n_genes=20, seed=0, escape_fraction=0.3)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> table = ds.tl.escaper_check(mdata)
    >>> table.columns[:3].tolist()
    ['n_cells', 'log2_effect', 'escape_fraction']
    """
    for name, value, lo, hi in (("alpha", alpha, 0.0, 1.0), ("min_fraction", min_fraction, 0, 1)):
        if not (isinstance(value, int | float) and lo <= value < hi):
            raise ValueError(f"{name} must be a number in [{lo}, {hi}); got {value!r}.")
    record = read_cis(mdata, key, cells=True)
    params = record["params"]
    if params.get("high_moi"):
        raise ValueError("escaper_check needs a low-MOI cis fit (one guide per cell).")
    modality = str(record["modality"])
    tech = load_technical(mdata, modality, str(record["technical_key_added"]))
    fitted = mdata.obs[CisKeys(key).dose("mean")].notna().to_numpy()
    cells = mdata.obs_names[fitted]
    layer = params.get("layer") or None
    data = modality_data(mdata, modality, cells, layer=layer)
    rows = np.flatnonzero(fitted)[data.present]
    col = mdata[modality].var_names.get_loc(str(record["cis_feature"]))
    y = data.X[:, col]
    y = np.asarray(y.toarray() if sparse.issparse(y) else y, dtype=np.float64).ravel()
    sf = sum_factor_values(mdata, str(params.get("sum_factor_key", "sum_factor")))[rows]
    groups = technical_groups(mdata.obs, tech.technical_key, known=tech.groups).codes[rows]
    delta = record["technical_effects"]["mean"].to_numpy(dtype=np.float64)
    base_eta = np.log(sf) + delta[groups]
    guide_of = mdata.obs[str(params.get("guide_key", "guide"))].astype(str).to_numpy()[rows]
    table = record["guides"]
    control = table["is_control"].to_numpy(dtype=bool)
    sigma_ref = float(np.sqrt(np.mean(table["sigma_mean"].to_numpy()[control] ** 2)))
    log2_x_ntc = float(record["log2_x_ntc_mean"])
    log_r = -float(np.log(record["dispersion_within_cell"]))
    out = []
    for guide in table.index[~control]:
        on = guide_of == str(guide)
        row = {"n_cells": int(on.sum())}
        if on.sum() < min_cells:
            out.append({**row, "log2_effect": np.nan, "escape_fraction": np.nan})
            continue
        result = escape_lrt(
            y[on],
            base_eta[on],
            log2_x_ntc=log2_x_ntc,
            sigma_ref=sigma_ref,
            log_r=log_r,
            mu0=log2_x_ntc + float(table.loc[guide, "log2_effect_mean"]),
            sigma0=float(table.loc[guide, "sigma_mean"]),
        )
        out.append(
            {
                **row,
                "log2_effect": result.mu - log2_x_ntc,
                "escape_fraction": result.escape_fraction,
                "log_lr": result.log_lr,
                "pvalue": result.pvalue,
            }
        )
    frame = pd.DataFrame(out, index=pd.Index(table.index[~control], name="guide"))
    for column in ("log_lr", "pvalue"):
        if column not in frame:
            frame[column] = np.nan
    frame["needs_escapers"] = (frame["pvalue"] < alpha) & (frame["escape_fraction"] >= min_fraction)
    if frame["needs_escapers"].any():
        flagged = frame.index[frame["needs_escapers"]].tolist()
        warnings.warn(
            f"Guide(s) {flagged} of the cis fit {key!r} look like they have escapers (cells at "
            "the control dosage; see the returned table): refit with "
            "`ds.tl.fit_cis(..., escapers=True)`.",
            stacklevel=2,
        )
    return frame
