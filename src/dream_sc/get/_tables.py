"""Tidy tables of stored results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from mudata import MuData

from .._record_checks import GUIDE_COLUMNS
from .._stores.cis import CIS_STATS, CisKeys, read_cis, read_cis_dose
from .._stores.trans import read_curves, read_trans, read_trans_posterior, read_trans_priors
from ..models.batching import stable_keys
from ..models.curves import evaluate_curve
from ..models.families import get_family
from ..models.trans import natural_params
from ..models.trans_summary import DoseAxis, draw_latent, natural_scale


def cis_dosage(mdata: MuData, *, level: str = "guide", key: str = "dream_cis") -> pd.DataFrame:
    """Per-guide or per-cell cis dosage.

    Parameters
    ----------
    mdata
        A screen fitted with :func:`dream_sc.tl.fit_cis`.
    level
        ``"guide"`` or ``"cell"``.
    key
        ``key_added`` of the cis fit.

    Returns
    -------
    ``level="guide"``: index = guide; ``target``, ``n_cells``, ``dose_mean``, ``dose_q05``,
    ``dose_q95``, ``log2_effect_mean``, ``log2_effect_q05``, ``log2_effect_q95`` (plus
    ``log2_effect_sd``, ``sigma_mean``, ``is_control``, ``control_active``, ``n_guides`` =
    guides of the row's target in the fit; with ``fit_cis(escapers=True)`` also
    ``escape_fraction_mean``, ``escape_fraction_q05``, ``escape_fraction_q95``, the share of
    the guide's cells not knocked down, NaN for control guides).
    ``level="cell"``: index = ``mdata.obs_names`` (NaN for cells outside the fit);
    ``dose_mean``, ``dose_sd``, ``dose_q05``, ``dose_q95``, ``dose_q50`` (posterior median;
    fits stored by older versions lack it), ``guide``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ds.get.cis_dosage(mdata).columns[:3].tolist()
    ['target', 'n_cells', 'dose_mean']
    """
    record = read_cis(mdata, key, cells=level == "cell")
    if level == "guide":
        guides = record["guides"].copy()
        rest = [c for c in guides.columns if c not in GUIDE_COLUMNS]
        return guides[list(GUIDE_COLUMNS) + rest]
    if level == "cell":
        cols = {s: read_cis_dose(mdata, key, s) for s in CIS_STATS}
        if CisKeys(key).dose("q50") in mdata.obs.columns:
            cols["q50"] = read_cis_dose(mdata, key, "q50")  # fits since the posterior median
        out = pd.DataFrame(
            {f"dose_{s}": v.to_numpy() for s, v in cols.items()}, index=mdata.obs_names
        )
        guide_key = str(record["params"].get("guide_key", "guide"))
        if guide_key in mdata.obs.columns:
            out["guide"] = mdata.obs[guide_key].astype(str).to_numpy()
        return out
    raise ValueError(f"level must be 'guide' or 'cell'; got {level!r}.")


def trans_results(
    mdata: MuData, *, modality: str = "rna", key: str = "dream_trans"
) -> pd.DataFrame:
    """Per-feature dose-response results of a modality.

    Parameters
    ----------
    mdata
        A screen fitted with :func:`dream_sc.tl.fit_trans`.
    modality
        Fitted modality.
    key
        ``key_added`` of the trans fit.

    Returns
    -------
    DataFrame indexed by var_names with ``distribution``, ``function``, ``response_mean``
    (log2 fold change over the observed dosage range for counts; difference for others),
    ``response_q05``, ``response_q95``, ``ec50_mean``, ``ec50_q05``, ``ec50_q95`` (half-way on
    the link scale), ``ec50_response_mean``, ``ec50_response_q05``, ``ec50_response_q95``
    (half-way on the response scale: the expected value itself), ``ec50_in_range``, ``shape``, ``prob_dose_dependent``, ``lfsr``, ``qvalue``,
    ``significant``, ``n_cells``, ``converged`` and the curve parameters. Features that were
    not fitted (e.g. the cis gene) have ``fitted = False`` and NaN results.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, test=False, progress=False)
    >>> ds.get.trans_results(mdata)["shape"].isin(["flat", "increasing", "decreasing", "non_monotonic", "not_fitted"]).all()
    True
    """
    adata, _ = read_trans(mdata, modality, key)
    return adata.varm[key].copy()


def _quantile_name(q: float) -> str:
    """Column name of quantile ``q``: its decimal digits, at least two (``q05``, ``q025``, ``q975``).

    Exact up to 6 decimals (no rounding to whole percent): 0.025 -> ``q025``, 0.5 -> ``q50``,
    0.001 -> ``q001``, 1 -> ``q100``; a float32 0.05 is still ``q05``.
    """
    text = f"{float(q):.6f}".rstrip("0")
    whole, digits = text.split(".")
    if whole == "1":
        return "q100"
    return f"q{digits.ljust(2, '0')}"


def trans_curves(
    mdata: MuData,
    *,
    modality: str = "rna",
    dose: Sequence[float] | np.ndarray | None = None,
    features: Sequence[str] | None = None,
    quantiles: tuple[float, float] = (0.05, 0.95),
    key: str = "dream_trans",
) -> pd.DataFrame:
    """Fitted curves on the natural scale as a tidy table.

    Values are in the reference technical group per unit size factor: expected count
    (negbinom), probability (binomial), category proportion (multinomial), mean (continuous).

    Parameters
    ----------
    mdata
        A screen fitted with :func:`dream_sc.tl.fit_trans`.
    modality
        Fitted modality.
    dose
        Dosages (cis dose scale) to evaluate; default: the stored grid.
    features
        Features to return (default: all fitted).
    quantiles
        Lower and upper quantile of the band.
    key
        ``key_added`` of the trans fit.

    Returns
    -------
    Long DataFrame with ``feature``, ``dose``, ``mean`` and one column per quantile, named by
    its decimal digits without rounding: ``q05``, ``q95`` by default, ``q025``, ``q975`` for
    ``quantiles=(0.025, 0.975)``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, test=False, progress=False)
    >>> ds.get.trans_curves(mdata, dose=[1.0, 5.0], features=["gene_0001"]).shape
    (2, 5)
    """
    adata, record = read_trans(mdata, modality, key)
    table = adata.varm[key]
    fitted = table["fitted"].to_numpy(dtype=bool)
    names = adata.var_names[fitted]
    if features is None:
        wanted = list(names)
    else:
        wanted = [features] if isinstance(features, str) else list(features)
        missing = [f for f in wanted if f not in names]
        if missing:
            raise KeyError(
                f"Features {missing[:5]} were not fitted in {modality!r} (or do not exist)."
            )
    lo_q, hi_q = quantiles
    if not 0 <= lo_q < hi_q <= 1:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1; got {quantiles}.")
    if _quantile_name(lo_q) == _quantile_name(hi_q):
        raise ValueError(
            f"quantiles {quantiles} would share the column name {_quantile_name(lo_q)!r} "
            "(names keep 6 decimals); pass quantiles that differ in the first 6 decimals."
        )
    if dose is None and tuple(quantiles) == (0.05, 0.95):
        grid = np.asarray(record["dose_grid"])
        pos = [adata.var_names.get_loc(f) for f in wanted]
        curves = read_curves(adata, key, pos)
        means, lows, highs = curves["mean"], curves["q05"], curves["q95"]
    else:
        grid = np.asarray(record["dose_grid"] if dose is None else dose, dtype=np.float64).ravel()
        if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            raise ValueError("dose must hold positive finite dosages (cis dose scale).")
        means, lows, highs = _evaluate(
            adata, record, table, fitted, names, wanted, grid, lo_q, hi_q, key
        )
    n_dose = len(grid)
    return pd.DataFrame(
        {
            "feature": np.repeat(np.asarray(wanted, dtype=object), n_dose),
            "dose": np.tile(grid, len(wanted)),
            "mean": np.asarray(means).ravel(),
            _quantile_name(lo_q): np.asarray(lows).ravel(),
            _quantile_name(hi_q): np.asarray(highs).ravel(),
        }
    )


def _evaluate(adata, record, table, fitted, names, wanted, grid, lo_q, hi_q, key):
    dist = str(record["distribution"])
    function = str(record["function"])
    priors = read_trans_priors(record)
    loc, scale, corr = read_trans_posterior(adata, key, fitted)
    local = np.arange(len(names))
    group_index = None
    wanted_pos = pd.Index(names).get_indexer(wanted)
    if get_family(dist).grouped:
        reg = adata.uns.get("dream_sc", {})
        gkey = (reg.get("group_key") or "group") if hasattr(reg, "get") else "group"
        groups = adata.var[gkey].astype(str).to_numpy()[fitted]
        keep = np.isin(groups, groups[wanted_pos])
        local = np.flatnonzero(keep)
        group_index = pd.factorize(groups[local])[0]
        wanted_pos = pd.Index(local).get_indexer(wanted_pos)
    n_samples = int(record["params"]["n_samples"])
    seed = int(record["params"]["seed"])
    root = np.random.SeedSequence(seed)
    latent = draw_latent(loc, scale, local, n_samples, root, stable_keys(names), corr)
    params = natural_params(
        function, latent, torch.as_tensor(priors.amplitude_scale[local]), priors
    )
    axis = DoseAxis.from_record(record)
    if axis is not None:
        params = axis.apply_to_params(function, params)
    log_x = torch.as_tensor(np.log(grid), dtype=torch.float32)
    eta = evaluate_curve(function, params, log_x, priors.log_x_ref, priors.half_range)
    gi = None if group_index is None else torch.as_tensor(group_index)
    natural = natural_scale(dist, eta, gi, 0 if group_index is None else int(group_index.max()) + 1)
    q = torch.quantile(natural, torch.tensor([lo_q, hi_q]), dim=0)
    sel = torch.as_tensor(wanted_pos)
    return (
        natural.mean(0).T[sel].numpy(),
        q[0].T[sel].numpy(),
        q[1].T[sel].numpy(),
    )


# Columns of the screen table (``get.screen_results``), built once at their final size.


class CategoryColumn:
    """A string column filled block by block as integer codes; categories sorted at the end."""

    def __init__(self, n: int) -> None:
        self.codes = np.full(n, -1, dtype=np.int32)
        self.labels: dict[str, int] = {}

    def put(self, block: slice, values) -> bool:
        """Codes of ``values`` (strings or missing) at ``block``; False if not all strings."""
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        if not all(isinstance(u, str) for u in uniques):
            return False
        lookup = np.array([self.labels.setdefault(u, len(self.labels)) for u in uniques] + [-1])
        self.codes[block] = lookup[codes]  # code -1 (missing) picks the trailing -1
        return True

    def finish(self) -> pd.Categorical:
        """The column as a Categorical whose categories are the sorted distinct strings."""
        labels = list(self.labels)
        order = sorted(range(len(labels)), key=labels.__getitem__)
        rank = np.empty(len(labels) + 1, dtype=np.int32)
        rank[order] = np.arange(len(labels))
        rank[-1] = -1
        categories = pd.Index([labels[j] for j in order], dtype=object)
        return pd.Categorical.from_codes(rank[self.codes], categories=categories)


def target_column(targets: list[str], sizes: np.ndarray) -> pd.Categorical:
    """``targets[i]`` repeated ``sizes[i]`` times, as a Categorical of the sorted targets."""
    categories = pd.Index(sorted(set(targets)), dtype=object)
    codes = categories.get_indexer(targets)
    return pd.Categorical.from_codes(np.repeat(codes, sizes), categories=categories)


def feature_column(tables: list[pd.DataFrame], bounds: np.ndarray) -> pd.Categorical:
    """The features (each table's index as strings; the tables of one modality share it)."""
    indexes: list[pd.Index] = []
    for table in tables:
        if not any(table.index is x or table.index.equals(x) for x in indexes):
            indexes.append(table.index)
    names = [x.astype(str) for x in indexes]
    categories = pd.Index(sorted(set().union(*names)), dtype=object)
    codes = np.empty(int(bounds[-1]), dtype=np.int32)
    lookup = [categories.get_indexer(x) for x in names]
    for i, table in enumerate(tables):
        j = next(k for k, x in enumerate(indexes) if table.index is x or table.index.equals(x))
        codes[bounds[i] : bounds[i + 1]] = lookup[j]
    return pd.Categorical.from_codes(codes, categories=categories)


def stored_column(tables: list[pd.DataFrame], source: str, bounds: np.ndarray):
    """Column ``source`` of every target's table, one after the other.

    Numbers keep their dtype; strings become a Categorical. Tables that disagree (a column
    missing in some, or different dtypes) are joined by pandas' own concatenation.
    """
    pieces = [t[source] if source in t.columns else None for t in tables]
    dtypes = {p.dtype for p in pieces if p is not None}
    if all(p is not None for p in pieces) and len(dtypes) == 1:
        dtype = dtypes.pop()
        stringish = pd.api.types.is_object_dtype(dtype) or isinstance(
            dtype, pd.CategoricalDtype | pd.StringDtype
        )
        if stringish:
            column = CategoryColumn(int(bounds[-1]))
            if all(
                column.put(slice(bounds[i], bounds[i + 1]), p.to_numpy(dtype=object))
                for i, p in enumerate(pieces)
            ):
                return column.finish()
        if isinstance(dtype, np.dtype):
            values = np.empty(int(bounds[-1]), dtype=dtype)
            for i, p in enumerate(pieces):
                values[bounds[i] : bounds[i + 1]] = p.to_numpy()
            return values
    frames = [t[[source]] if source in t.columns else pd.DataFrame(index=t.index) for t in tables]
    return pd.concat(frames, ignore_index=True)[source].to_numpy()
