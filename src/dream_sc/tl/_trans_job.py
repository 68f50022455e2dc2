"""Everything a trans fit needs, prepared once: data, technical fit, dosage, priors, chunks.

``fit_trans`` fits the real data with it; ``test_trans`` refits permuted dosages with exactly the
same priors and settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch
from mudata import MuData

from .._cells import sum_factor_values, technical_groups
from .._data import ModalityData, modality_data
from .._lazy import concat_blocks, feature_blockwise
from .._storage import CORR_PREFIX, TechnicalFit, posterior_frame, posterior_from_frame, read_cis
from .._storage import read_technical as load_technical
from .._stores.cis import CisKeys, read_cis_dose, read_cis_samples
from ..engine.chunks import ChunkedFit, fit_chunks
from ..engine.config import FitConfig
from ..engine.memory import feature_chunks, plan_fit
from ..models.amplitude import AMPLITUDE_FLOOR, amplitude_scale, guide_level_link_means
from ..models.batching import name_order, stable_keys
from ..models.curves import get_curve
from ..models.families import get_family
from ..models.observation import ObservationData
from ..models.trans import TransInputs, TransPriors, dose_priors
from ..models.trans_summary import DoseAxis, Grid, draw_latent, make_grid, summarise_chunk
from ..models.warm_start import GuidePoints, warm_start
from ._chunk_recipes import trans_recipe  # [dask hunk]
from ._fingerprints import trans_fingerprint
from ._test_cells import check_test_cells
from ._trans_settings import TransSettings

logger = logging.getLogger("dream_sc")

# the varm posterior codec lives in dream_sc._storage; re-exported for the significance code
__all__ = ["CORR_PREFIX", "TransJob", "job_from_record", "posterior_frame", "posterior_from_frame"]


def load_cis(mdata: MuData, cis_key: str) -> dict:
    """The cis run record (raises with the call to make when it is missing)."""
    if cis_key not in mdata.uns or CisKeys(cis_key).samples not in mdata.obsm:
        raise KeyError(
            f"No cis fit {cis_key!r} found (mdata.uns[{cis_key!r}]); run "
            f"`ds.tl.fit_cis(mdata, cis_feature=..., key_added={cis_key!r})` before fit_trans, "
            "or pass `cis_key=`."
        )
    return read_cis(mdata, cis_key, samples=True)  # validated like every stored record


@dataclass
class TransJob:
    """A prepared trans fit."""

    settings: TransSettings
    config: FitConfig  # the fit's, with the planned cell batch size
    data: ModalityData
    fitted: np.ndarray  # [T] bool: features fitted
    tech: TechnicalFit
    inputs: TransInputs
    priors: TransPriors
    grid: Grid
    min_effect: np.ndarray  # [T]
    rows: np.ndarray  # obs positions of the fitted cells
    feature_chunk: int  # resolved by the memory planner
    plan: dict
    guide_labels: np.ndarray  # [N] guide (or dosage bin) of every fitted cell
    amplitude_floor: np.ndarray  # [T] floor of the amplitude prior scale
    dose_axis: DoseAxis | None = None  # guide-level dosage uncertainty (EC50 intervals)
    guide_means: np.ndarray | None = None  # [guides, T] link-scale guide means (warm start)
    backend: object = None  # [dask hunk] where chunks run (dream_sc.engine.backends); None: here
    cell_names: np.ndarray | None = None  # obs_names of the fitted cells (checkpoint fingerprint)

    @property
    def modality(self) -> str:
        """Fitted modality."""
        return self.settings.modality

    @property
    def function(self) -> str:
        """Curve function."""
        return self.settings.function

    @property
    def seed(self) -> int:
        """Run seed."""
        return self.config.seed

    @property
    def streams(self) -> np.random.SeedSequence:
        """The run's root random sequence (see :meth:`FitConfig.streams`)."""
        return self.config.streams()

    @property
    def n_samples(self) -> int:
        """Posterior samples of the summaries."""
        return self.config.n_samples

    @property
    def batch_size(self) -> int:
        """Cells per SVI step (planned)."""
        return self.config.batch_size

    @property
    def device(self) -> torch.device:
        """Torch device of the fit."""
        return self.config.device

    @property
    def checkpoint(self) -> str | None:
        """Checkpoint path prefix of the fit (``None``: no checkpoints)."""
        return self.config.checkpoint

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
        glob = np.flatnonzero(self.fitted)[idx]
        return get_family(self.data.distribution).fixed_noise(self.tech, glob)

    def observations(self, idx: np.ndarray) -> ObservationData:
        """Observations of the fitted features ``idx`` (local indices) on the device."""
        cols = np.flatnonzero(self.fitted)[idx]
        data = self.data
        return ObservationData.build(
            data.distribution,
            data.X[:, cols],
            total=None if data.total is None else data.total[:, cols],
            group_index=None if data.group_index is None else data.group_index[cols],
        ).to(self.device)

    def effects(self, idx: np.ndarray) -> np.ndarray:
        """Technical effects ``[len(idx), C]`` of the fitted features ``idx``."""
        return self.tech.effects[np.flatnonzero(self.fitted)[idx]]

    def _guide_means(self, labels: np.ndarray) -> np.ndarray:
        sf = None if self.inputs.log_sf is None else np.exp(self.inputs.log_sf)
        return guide_level_link_means(
            self.data, self.fitted, labels, self.inputs.group, sf, self.tech.effects
        )

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
        means = self._guide_means(self.guide_labels[permutation])
        amp, _ = amplitude_scale(means, self.amplitude_floor)
        return replace(self.priors, amplitude_scale=amp.astype(np.float32))

    def initial_values(
        self, priors: TransPriors, permutation: np.ndarray | None = None
    ) -> dict[str, np.ndarray] | None:
        """Warm start of every fitted feature's sites (``None`` with ``warm_start=False``).

        From a guide-level curve fit (:func:`~dream_sc.models.warm_start.warm_start`); a null fit starts
        from its own permuted guide means, exactly as the real fit does from the real ones.
        """
        if not self.settings.warm_start:
            return None
        labels, dose = self.guide_labels, self.inputs.log_dose_mean
        means = self.guide_means
        if permutation is not None:
            labels, dose = labels[permutation], dose[permutation]
            means = None
        if means is None:
            means = self._guide_means(labels)
        return warm_start(self.function, GuidePoints.from_cells(labels, dose, means), priors)

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

        init = self.initial_values(priors, permutation)
        fingerprint = None
        if self.checkpoint is not None:
            fingerprint = trans_fingerprint(self, inputs, priors, init, permutation)
        return fit_chunks(
            trans_recipe(self, inputs, priors, init),  # [dask hunk] picklable chunks
            self.chunks(),
            self.n_features,
            self.config,
            description=f"{description} {self.modality}",
            prefix="trans",
            checkpoint=None if self.checkpoint is None else f"{self.checkpoint}.{tag}",
            feature_keys=self.keys,
            backend=self.backend,  # [dask hunk]
            fingerprint=fingerprint,
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
            latent = draw_latent(loc, scale, idx, self.n_samples, self.streams, self.keys, corr)
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


def select_features(
    data, features: tuple[str, ...] | None, min_cells: int, modality: str
) -> np.ndarray:
    """Features to fit: ``features`` (all when None) with data in at least ``min_cells`` cells.

    Categories of a multinomial group are fitted together: a selection that splits a group is
    an error. Raises before anything is fitted when no feature is left.
    """
    family = get_family(data.distribution)
    keep = np.ones(len(data.var_names), bool)
    if features is not None:
        keep = data.var_names.isin(list(features))
    if data.group_index is not None:
        partial = np.unique(data.group_index[keep])
        split = [g for g in partial if not keep[data.group_index == g].all()]
        if split:
            names = ", ".join(str(data.group_names[g]) for g in split[:3])
            raise ValueError(
                f"features= selects only some categories of {len(split)} multinomial group(s) of "
                f"{modality!r} (e.g. {names}); select every category of a group or none."
            )
    if min_cells > 0:
        detected = concat_blocks(
            feature_blockwise(
                lambda X, total, _: family.cells_detected(
                    X, total=total, group_index=data.group_index
                ),
                data.X,
                data.total,
            )
        )
        keep &= detected >= min_cells
    if not keep.any():
        raise ValueError(
            f"No feature of {modality!r} is left to fit (features={'all' if features is None else len(features)}, "
            f"min_cells={min_cells}); select more features or lower min_cells."
        )
    return keep


def prepare_trans_job(mdata: MuData, settings: TransSettings, config: FitConfig) -> TransJob:
    """Validate inputs and prepare a :class:`TransJob` (no fitting, nothing written).

    ``config`` is the fit's resolved configuration; the job carries it with the planned cell
    batch size.
    """
    modality, function, cis_key = settings.modality, settings.function, settings.cis_key
    sum_factor_key, layer, degree = settings.sum_factor_key, settings.layer, settings.degree
    min_effect, include_cis_feature = settings.min_effect, settings.include_cis_feature
    curve = get_curve(function)  # raises listing the registered curves
    cis = load_cis(mdata, cis_key)
    tech = load_technical(mdata, modality, settings.technical_key_added)
    dose_mean_all = read_cis_dose(mdata, cis_key).to_numpy()
    has_dose = np.isfinite(dose_mean_all)
    cells = mdata.obs.index[has_dose]
    data = modality_data(mdata, modality, cells, layer=layer)
    rows = np.flatnonzero(has_dose)[data.present]
    groups = technical_groups(mdata.obs, tech.technical_key, known=tech.groups)
    group = groups.codes[rows]
    family = get_family(data.distribution)
    sf = None
    if family.size_factors:
        sf = sum_factor_values(mdata, sum_factor_key)[rows]
    samples = read_cis_samples(mdata, cis_key)[rows]
    log_samples = np.log(samples.astype(np.float64))
    fitted = np.ones(data.X.shape[1], bool)
    cis_feature = str(cis["cis_feature"])
    if (
        not include_cis_feature
        and modality == str(cis["modality"])
        and cis_feature in data.var_names
    ):
        fitted[data.var_names.get_loc(cis_feature)] = False
    fitted &= select_features(data, settings.features, settings.min_cells, modality)
    check_test_cells(settings, cis["params"], mdata.obs)
    guides = cis["guides"]
    lo, hi = float(np.min(guides["dose_mean"])), float(np.max(guides["dose_mean"]))
    x_ref = float(cis["x_ntc"])
    grid = make_grid(lo, hi)
    dp = dose_priors(np.log(lo), np.log(hi), np.log(x_ref))
    labels = _guide_labels(mdata, cis, rows, dose_mean_all[rows])
    unit = family.noise_unit(tech, np.flatnonzero(fitted))  # noise sd (continuous) or 1
    floor = AMPLITUDE_FLOOR * unit
    guide_means = guide_level_link_means(data, fitted, labels, group, sf, tech.effects)
    amp, n_fallback = amplitude_scale(guide_means, floor)
    amp = amp.astype(np.float32)
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
    eff = family.default_min_effect if min_effect is None else float(min_effect)
    min_eff = np.full(int(fitted.sum()), eff) * unit
    density = data.density()
    plan = plan_fit(
        len(rows),
        int(fitted.sum()),
        config,
        density=density,
        noise_width=9,
        feature_chunk=settings.feature_chunk,
        bytes_per_entry=curve.bytes_per_entry,
    )
    inputs = TransInputs.from_samples(
        log_samples,
        group,
        None if sf is None else np.log(sf),
        settings.use_dose_mean,
        name_order(mdata.obs_names[rows]),
    )
    axis = None
    if "guide_dose_samples" in cis:
        axis = DoseAxis.from_guides(
            np.asarray(cis["guide_dose_samples"]), np.asarray(guides["n_cells"], dtype=float)
        )
    return TransJob(
        settings=settings,
        config=plan.config,
        data=data,
        fitted=fitted,
        tech=tech,
        inputs=inputs,
        priors=priors,
        grid=grid,
        min_effect=min_eff,
        rows=rows,
        feature_chunk=plan.feature_chunk,
        plan=plan.as_dict(),
        guide_labels=labels,
        amplitude_floor=floor,
        dose_axis=axis,
        guide_means=guide_means,
        cell_names=np.asarray(mdata.obs_names[rows]),
    )


def job_from_record(
    mdata: MuData,
    modality: str,
    record: dict,
    config: FitConfig,
    *,
    min_effect: float | None = None,
) -> TransJob:
    """Rebuild the :class:`TransJob` of a stored trans fit from its run record.

    Used by ``test_trans`` and ``calibration_check`` so their refits use exactly the data,
    priors and settings of the original fit (``min_effect`` may be overridden); ``config`` is
    the record's configuration (:meth:`FitConfig.from_record`, with the caller's device and
    progress bar).
    """
    overrides = {} if min_effect is None else {"min_effect": float(min_effect)}
    settings = TransSettings.from_params(record["params"], **overrides)
    return prepare_trans_job(mdata, settings, config)
