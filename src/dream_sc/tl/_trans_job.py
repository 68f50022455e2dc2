"""Everything a trans fit needs, prepared once: data, technical fit, dosage, priors, chunks.

``fit_trans`` fits the real data with it; ``test_trans`` refits permuted dosages with exactly the
same priors and settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scipy import sparse

from .._data import ModalityData, modality_data
from .._lazy import blockwise_link_means, compute  # [dask hunk]
from ..models.chunked import ChunkedFit, fit_chunks, name_order, stable_keys
from ..models.guide import cholesky_from_lower
from ..models.memory import feature_chunks, plan_fit
from ..models.observation import ObservationData
from ..models.trans import TransInputs, TransPriors, dose_priors
from ..models.trans_summary import DoseAxis, Grid, draw_latent, make_grid, summarise_chunk
from ._cells import sum_factor_values, technical_groups
from ._chunk_recipes import trans_recipe  # [dask hunk]
from ._technical import TechnicalFit, load_technical

logger = logging.getLogger("dream_sc")

#: Default minimal effect per distribution (log2 fold change for counts, probability /
#: proportion difference, multiples of the noise sd for continuous data).
DEFAULT_MIN_EFFECT = {
    "negbinom": 0.2,
    "binomial": 0.03,
    "multinomial": 0.03,
    "normal": 0.1,
    "studentt": 0.1,
}
#: Floor of the amplitude prior scale on the link scale.
AMPLITUDE_FLOOR = 0.1
#: Guides (or dosage bins) need this many cells to enter the amplitude prior.
MIN_CELLS_PER_GUIDE = 5

CURVE_FUNCTIONS = ("single_hill", "additive_hill", "polynomial")
#: Column prefix of the per-feature correlation factor in ``varm[f"{key}_posterior"]``.
CORR_PREFIX = "corr_chol_"


def load_cis(mdata: MuData, cis_key: str) -> dict:
    """The cis run record (raises with the call to make when it is missing)."""
    if cis_key not in mdata.uns or f"{cis_key}_dose_samples" not in mdata.obsm:
        raise KeyError(
            f"No cis fit {cis_key!r} found (mdata.uns[{cis_key!r}]); run "
            f"`ds.tl.fit_cis(mdata, cis_feature=..., key_added={cis_key!r})` before fit_trans, "
            "or pass `cis_key=`."
        )
    return mdata.uns[cis_key]


@dataclass
class TransJob:
    """A prepared trans fit."""

    modality: str
    function: str
    data: ModalityData
    fitted: np.ndarray  # [T] bool: features fitted
    tech: TechnicalFit
    inputs: TransInputs
    priors: TransPriors
    grid: Grid
    min_effect: np.ndarray  # [T]
    rows: np.ndarray  # obs positions of the fitted cells
    seed: int
    n_steps: int
    lr: float
    batch_size: int
    feature_chunk: int
    n_samples: int
    device: torch.device
    progress: bool
    plan: dict
    guide_labels: np.ndarray  # [N] guide (or dosage bin) of every fitted cell
    amplitude_floor: np.ndarray  # [T] floor of the amplitude prior scale
    checkpoint: str | None = None
    dose_axis: DoseAxis | None = None  # guide-level dosage uncertainty (EC50 intervals)
    backend: object = None  # [dask hunk] where chunks run (dream_sc._backends); None: here

    @property
    def keys(self) -> np.ndarray:
        """Stable per-feature keys of the fitted features (order-independent seeding)."""
        return stable_keys(self.data.var_names[self.fitted])

    @property
    def n_features(self) -> int:
        """Number of fitted features."""
        return int(self.fitted.sum())

    def chunks(self) -> list[np.ndarray]:
        """Feature chunks (local indices among fitted features)."""
        gi = self.data.group_index[self.fitted] if self.data.group_index is not None else None
        return feature_chunks(self.n_features, self.feature_chunk, gi)

    def noise(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Noise parameters of step 1 for the fitted features ``idx`` (fixed in step 3)."""
        d, tech, glob = self.data.distribution, self.tech, np.flatnonzero(self.fitted)[idx]
        if d == "negbinom":
            return {"log_r": -tech.log_phi[glob]}
        out = {}
        if tech.log_conc is not None:  # over-dispersed binomial / multinomial
            out["log_conc"] = tech.log_conc[glob]
        if d in ("normal", "studentt"):
            out["log_sigma"] = tech.log_sigma[glob]
        if d == "studentt":
            out["log_nu"] = tech.log_nu[glob]
        return out

    def observations(self, idx: np.ndarray) -> ObservationData:
        """Observations of the fitted features ``idx`` (local indices) on the device."""
        cols = np.flatnonzero(self.fitted)[idx]
        data = self.data
        return ObservationData.build(
            data.distribution,
            compute(data.X[:, cols]),  # [dask hunk] Dask arrays: only these columns
            total=None if data.total is None else compute(data.total[:, cols]),
            group_index=None if data.group_index is None else data.group_index[cols],
            device=self.device,
        )

    def effects(self, idx: np.ndarray) -> np.ndarray:
        """Technical effects ``[len(idx), C]`` of the fitted features ``idx``."""
        return self.tech.effects[np.flatnonzero(self.fitted)[idx]]

    def priors_for(self, permutation: np.ndarray | None = None) -> TransPriors:
        """Priors of the real fit, or of a null fit whose cells got the dosage of ``permutation``.

        The amplitude prior is computed from the guide-level means, so a null fit recomputes it
        from the permuted guide labels (cell ``i`` belongs to the guide of cell
        ``permutation[i]``). Reusing the real fit's amplitude prior would hand the real fit a
        prior tuned to its own guide-level fluctuations and make real and null scores
        non-exchangeable (real null screens then show too many high scores).
        """
        if permutation is None:
            return self.priors
        sf = None if self.inputs.log_sf is None else np.exp(self.inputs.log_sf)
        amp, _ = amplitude_prior(
            self.data,
            self.fitted,
            self.guide_labels[permutation],
            self.inputs.group,
            sf,
            self.tech.effects,
            self.amplitude_floor,
        )
        return replace(self.priors, amplitude_scale=amp)

    def fit(
        self,
        permutation: np.ndarray | None = None,
        description: str = "trans",
        tag: str = "real",
        priors: TransPriors | None = None,
    ) -> ChunkedFit:
        """Fit every chunk.

        ``permutation`` gives cell ``i`` the dosage posterior of cell ``permutation[i]`` (null
        fits); pass ``priors=self.priors_for(permutation)`` with it (default: the real priors).
        """
        inputs = self.inputs
        priors = self.priors if priors is None else priors
        if permutation is not None:
            inputs = inputs.permuted(permutation)

        return fit_chunks(
            trans_recipe(self, inputs, priors),  # [dask hunk] picklable chunks
            self.chunks(),
            self.n_features,
            seed=self.seed,
            n_steps=self.n_steps,
            lr=self.lr,
            device=self.device,
            progress=self.progress,
            description=f"{description} {self.modality}",
            prefix="trans",
            checkpoint=None if self.checkpoint is None else f"{self.checkpoint}.{tag}",
            feature_keys=self.keys,
            backend=self.backend,  # [dask hunk]
        )

    def summarise(
        self,
        loc: dict,
        scale: dict,
        min_effect: np.ndarray | None = None,
        priors: TransPriors | None = None,
        corr: np.ndarray | None = None,
    ):
        """Summaries (columns over fitted features) and grid curves, chunk by chunk.

        ``priors`` must be those the posterior was fitted with (null fits: see
        :meth:`priors_for`); ``corr`` is the per-feature correlation factor of the fit
        (:attr:`ChunkedFit.corr`).
        """
        min_effect = self.min_effect if min_effect is None else min_effect
        priors = self.priors if priors is None else priors
        gi = self.data.group_index[self.fitted] if self.data.group_index is not None else None
        columns: dict[str, np.ndarray] = {}
        curves = {
            k: np.zeros((self.n_features, len(self.grid.dose)), np.float32)
            for k in ("mean", "q05", "q95")
        }
        summary_chunks = feature_chunks(self.n_features, 1024, gi)
        for idx in summary_chunks:
            latent = draw_latent(loc, scale, idx, self.n_samples, self.seed, self.keys, corr)
            cols, crv = summarise_chunk(
                self.data.distribution,
                self.function,
                latent,
                priors.amplitude_scale[idx],
                priors,
                self.grid,
                min_effect=min_effect[idx],
                group_index=None if gi is None else gi[idx],
                dose_axis=self.dose_axis,
            )
            for name, values in cols.items():
                if name not in columns:
                    columns[name] = np.zeros(self.n_features, dtype=values.dtype)
                columns[name][idx] = values
            for k in curves:
                curves[k][idx] = crv[k]
        return columns, curves


def _guide_labels(mdata: MuData, cis: dict, rows: np.ndarray, dose_mean: np.ndarray) -> np.ndarray:
    """Guide of every fitted cell (low MOI) or a dosage decile (high MOI / no guide column)."""
    params = cis["params"]
    guide_key = str(params.get("guide_key", "guide"))
    high_moi = bool(params.get("high_moi", False))
    if not high_moi and guide_key in mdata.obs.columns:
        return mdata.obs[guide_key].astype(str).to_numpy()[rows]
    edges = np.quantile(dose_mean, np.linspace(0, 1, 11)[1:-1])
    return np.searchsorted(edges, dose_mean).astype(str)


def _guide_level_link_means(data: ModalityData, fitted, labels, group, sf, effects) -> np.ndarray:
    """Technically corrected per-guide means on the link scale ``[guides, T]`` (NaN if empty)."""
    names, codes = np.unique(labels, return_inverse=True)
    n_groups = effects.shape[1]
    ind = sparse.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(names), len(codes))
    )
    counts = np.asarray(ind.sum(1)).ravel()
    X = data.X[:, fitted]
    eff = effects[fitted]
    dist = data.distribution
    comp = np.zeros((len(names), n_groups))
    np.add.at(comp, (codes, group), 1.0)
    frac = comp / np.maximum(comp.sum(1, keepdims=True), 1)
    mean_delta = frac @ eff.T  # [G, T]
    with np.errstate(divide="ignore", invalid="ignore"):
        if dist == "negbinom":
            y = np.asarray((ind @ X).todense() if sparse.issparse(X) else ind @ X)
            w = np.zeros((len(names), n_groups))
            np.add.at(w, (codes, group), sf)
            denom = w @ np.exp(eff.T)
            out = np.log((y + 0.5) / np.maximum(denom, 1e-12))
        elif dist == "binomial":
            k = np.asarray((ind @ X).todense() if sparse.issparse(X) else ind @ X)
            n_tot = data.total[:, fitted]
            n = np.asarray((ind @ n_tot).todense() if sparse.issparse(n_tot) else ind @ n_tot)
            p = (k + 0.5) / (n + 1.0)
            out = np.where(n > 0, np.log(p) - np.log1p(-p) - mean_delta, np.nan)
        elif dist == "multinomial":
            y = np.asarray((ind @ X).todense() if sparse.issparse(X) else ind @ X)
            gi = data.group_index[fitted]
            tot = np.zeros((len(names), gi.max() + 1))
            np.add.at(tot.T, gi, y.T)
            share = (y + 0.5) / (tot[:, gi] + 1.0)
            out = np.where(tot[:, gi] > 0, np.log(share) - mean_delta, np.nan)
        else:
            dense = X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
            out = np.vstack(
                [
                    np.nanmean(dense[codes == g], axis=0)
                    if (codes == g).any()
                    else np.full(dense.shape[1], np.nan)
                    for g in range(len(names))
                ]
            )
            out = out - mean_delta
    out[counts < MIN_CELLS_PER_GUIDE] = np.nan
    return out


def amplitude_scale(guide_means: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, int]:
    """Spread (5th-95th percentile) of guide-level means per feature, with fallbacks.

    Features with fewer than two finite guide means get the median spread of valid features.
    """
    valid = np.sum(np.isfinite(guide_means), axis=0) >= 2
    spread = np.full(guide_means.shape[1], np.nan)
    if valid.any():
        q = np.nanquantile(guide_means[:, valid], [0.05, 0.95], axis=0)
        spread[valid] = q[1] - q[0]
    fallback = np.nanmedian(spread[valid]) if valid.any() else 1.0
    spread = np.where(valid, spread, fallback)
    return np.maximum(spread, floor), int((~valid).sum())


def amplitude_prior(
    data: ModalityData,
    fitted: np.ndarray,
    labels: np.ndarray,
    group: np.ndarray,
    sf: np.ndarray | None,
    effects: np.ndarray,
    floor: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Amplitude prior scale of every fitted feature from the guide-level means of ``labels``.

    Returns the float32 scales and the number of features that fell back to the median spread.
    """
    gm = blockwise_link_means(  # [dask hunk] column blocks for Dask arrays
        _guide_level_link_means, data, fitted, labels, group, sf, effects
    )
    amp, n_fallback = amplitude_scale(gm, floor)
    return amp.astype(np.float32), n_fallback


def prepare_trans_job(
    mdata: MuData,
    *,
    modality: str,
    function: str,
    cis_key: str,
    technical_key_added: str,
    sum_factor_key: str,
    layer: str | None,
    use_dose_mean: bool,
    min_effect: float | None,
    degree: int,
    include_cis_feature: bool,
    seed: int,
    n_steps: int,
    lr: float,
    batch_size: int | None,
    feature_chunk: int | None,
    n_samples: int,
    device: torch.device,
    progress: bool,
) -> TransJob:
    """Validate inputs and prepare a :class:`TransJob` (no fitting, nothing written)."""
    if function not in CURVE_FUNCTIONS:
        raise ValueError(f"function must be one of {', '.join(CURVE_FUNCTIONS)}; got {function!r}.")
    cis = load_cis(mdata, cis_key)
    tech = load_technical(mdata, modality, technical_key_added)
    dose_mean_all = mdata.obs[f"{cis_key}_dose_mean"].to_numpy()
    has_dose = np.isfinite(dose_mean_all)
    cells = mdata.obs.index[has_dose]
    data = modality_data(mdata, modality, cells, layer=layer)
    rows = np.flatnonzero(has_dose)[data.present]
    groups = technical_groups(mdata.obs, tech.technical_key, known=tech.groups)
    group = groups.codes[rows]
    sf = None
    if data.distribution == "negbinom":
        sf = sum_factor_values(mdata, sum_factor_key)[rows]
    samples = np.asarray(mdata.obsm[f"{cis_key}_dose_samples"])[rows]
    log_samples = np.log(samples.astype(np.float64))
    fitted = np.ones(data.X.shape[1], bool)
    cis_feature = str(cis["cis_feature"])
    if (
        not include_cis_feature
        and modality == str(cis["modality"])
        and cis_feature in data.var_names
    ):
        fitted[data.var_names.get_loc(cis_feature)] = False
    guides = cis["guides"]
    lo, hi = float(np.min(guides["dose_mean"])), float(np.max(guides["dose_mean"]))
    x_ref = float(cis["x_ntc"])
    grid = make_grid(lo, hi)
    dp = dose_priors(np.log(lo), np.log(hi), np.log(x_ref))
    labels = _guide_labels(mdata, cis, rows, dose_mean_all[rows])
    sigma = (
        np.exp(tech.log_sigma[fitted]) if tech.log_sigma is not None else np.ones(int(fitted.sum()))
    )
    floor = AMPLITUDE_FLOOR * (
        sigma if data.distribution in ("normal", "studentt") else np.ones(int(fitted.sum()))
    )
    amp, n_fallback = amplitude_prior(data, fitted, labels, group, sf, tech.effects, floor)
    if n_fallback:
        logger.info(
            "amplitude prior: %d features without guide-level statistics use the median spread",
            n_fallback,
        )
    priors = TransPriors(
        eta_ref_loc=tech.baseline[fitted].astype(np.float32),
        amplitude_scale=amp,
        log_k_loc=dp["log_k_loc"],
        log_k_scale=dp["log_k_scale"],
        log_gap_loc=dp["log_gap_loc"],
        log_x_ref=dp["log_x_ref"],
        half_range=dp["half_range"],
        degree=degree,
    )
    eff = DEFAULT_MIN_EFFECT[data.distribution] if min_effect is None else float(min_effect)
    min_eff = np.full(int(fitted.sum()), eff) * (
        sigma if data.distribution in ("normal", "studentt") else 1.0
    )
    density = data.X.nnz / max(np.prod(data.X.shape), 1) if sparse.issparse(data.X) else 1.0
    plan = plan_fit(
        len(rows),
        int(fitted.sum()),
        density=density,
        n_samples=n_samples,
        noise_width=9,
        n_steps=n_steps,
        batch_size=batch_size,
        feature_chunk=feature_chunk,
    )
    inputs = TransInputs.from_samples(
        log_samples,
        group,
        None if sf is None else np.log(sf),
        use_dose_mean,
        name_order(mdata.obs_names[rows]),
    )
    axis = None
    if "guide_dose_samples" in cis:
        axis = DoseAxis.from_guides(
            np.asarray(cis["guide_dose_samples"]), np.asarray(guides["n_cells"], dtype=float)
        )
    return TransJob(
        modality,
        function,
        data,
        fitted,
        tech,
        inputs,
        priors,
        grid,
        min_eff,
        rows,
        seed,
        n_steps,
        lr,
        plan.batch_size,
        plan.feature_chunk,
        n_samples,
        device,
        progress,
        plan.as_dict(),
        labels,
        floor,
        dose_axis=axis,
    )


def posterior_frame(fit: ChunkedFit, var_names: pd.Index, fitted: np.ndarray) -> pd.DataFrame:
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


def job_from_record(
    mdata: MuData,
    modality: str,
    record: dict,
    *,
    device: torch.device,
    progress: bool,
    min_effect: float | None = None,
) -> TransJob:
    """Rebuild the :class:`TransJob` of a stored trans fit from its run record.

    Used by ``test_trans`` and ``calibration_check`` so their refits use exactly the data,
    priors and settings of the original fit (``min_effect`` may be overridden).
    """
    p = record["params"]

    def opt(name: str):
        return None if p.get(name, "") == "" else p[name]

    return prepare_trans_job(
        mdata,
        modality=modality,
        function=str(p["function"]),
        cis_key=str(p["cis_key"]),
        technical_key_added=str(p["technical_key_added"]),
        sum_factor_key=str(p["sum_factor_key"]),
        layer=opt("layer"),
        use_dose_mean=bool(p["use_dose_mean"]),
        min_effect=min_effect if min_effect is not None else opt("min_effect"),
        degree=int(p["degree"]),
        include_cis_feature=bool(p["include_cis_feature"]),
        seed=int(p["seed"]),
        n_steps=int(p["n_steps"]),
        lr=float(p["lr"]),
        batch_size=opt("batch_size"),
        feature_chunk=opt("feature_chunk"),
        n_samples=int(p["n_samples"]),
        device=device,
        progress=progress,
    )
