"""``tl.fit_technical``: step 1 of the model."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
from mudata import MuData

from .. import _validation as V
from .._cells import sum_factor_values, technical_groups
from .._checkpoints import check_mismatch
from .._data import modality_data
from .._registration import is_overdispersed
from .._storage import TechnicalFit, write_technical
from .._storage import read_technical as load_technical
from ..engine.backends import resolve_backend
from ..engine.chunks import fit_chunks
from ..engine.config import FitConfig
from ..engine.memory import feature_chunks, plan_fit
from ..models.batching import name_order, stable_keys
from ..models.families import get_family
from ..models.technical import (
    CONCENTRATION_RANGE,
    LOG_CONC_PRIOR_SD,
    moment_init,
)
from ._chunk_recipes import technical_recipe  # [dask hunk]
from ._common import (
    clean_params,
    frame,
    normal_summary,
    versions,
)
from ._fingerprints import technical_fingerprint

logger = logging.getLogger("dream_sc")

__all__ = ["TechnicalFit", "fit_technical", "load_technical"]


def fit_technical(
    mdata: MuData,
    *,
    modality: str = "rna",
    technical_key: str | Sequence[str] | None = "cell_line",
    guide_key: str = "guide",
    target_key: str = "target",
    control_label: str = "ntc",
    sum_factor_key: str = "sum_factor",
    layer: str | None = None,
    reference_group: str | None = None,
    use_all_cells: bool = False,
    n_steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    feature_chunk: int | None = None,
    n_samples: int | None = None,
    tolerance: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    key_added: str = "dream_technical",
    copy: bool = False,
    checkpoint: str | None = None,
    backend: str = "local",
    client=None,
    checkpoint_mismatch: Literal["raise", "restart"] = "raise",
) -> MuData | None:
    """Fit per-feature technical-group effects and noise on control cells (step 1).

    For every feature of ``modality`` a reference-group baseline, an effect for every other
    technical group (multiplicative for counts, logit shift for binomial, centred log-probability
    shift for multinomial, additive for continuous data) and the noise (NB dispersion, Normal /
    Student-t scale) are learned by SVI from the non-targeting control cells (all cells with
    ``use_all_cells=True``, e.g. for high-MOI screens). Moment estimates initialise the fit and
    centre the priors; the group-effect prior scale is set from the spread of the moment
    estimates. One technical fit serves every cis gene of the screen.

    A binomial or multinomial modality registered with ``overdispersed=True`` (see
    :func:`~dream_sc.pp.register_modality`) is fitted with a beta-binomial or
    Dirichlet-multinomial likelihood: the mean model is the same, plus a log concentration per
    feature (beta-binomial ``a + b``) or per category group (Dirichlet total concentration,
    repeated for every category of the group) with a Normal prior of sd 1 centred on its
    method-of-moments estimate from the fitted cells, clipped to ``[0.5, 1e4]``. Features
    without information get the neutral concentration 1e4 (practically binomial).

    Parameters
    ----------
    mdata
        The screen.
    modality
        Modality to fit.
    technical_key
        obs column(s) with technical covariates (batch, cell line, lane), ``None`` for none.
    guide_key, target_key
        obs columns with guide and target labels.
    control_label
        Target label of non-targeting controls.
    sum_factor_key
        obs column with size factors (negbinom).
    layer
        Layer with the observations (default: the registration's, else ``X``).
    reference_group
        Technical reference group (default: first category of the technical column).
    use_all_cells
        Fit on every cell instead of control cells only (high MOI).
    n_steps, lr
        SVI steps and peak learning rate (``None``: 200 and 0.05, the technical row of
        :data:`~dream_sc.engine.config.STEP_DEFAULTS`).
    batch_size, feature_chunk
        Cells per step and features per chunk (default: memory planner).
    tolerance
        Stop on convergence: every feature chunk stops once its smoothed loss improves by less
        than this fraction per check window (5% of ``n_steps``, at least 10 steps), after one
        more window of learning-rate annealing; the steps run are recorded (see
        :class:`~dream_sc.engine.config.FitConfig`). ``None`` (default): exactly ``n_steps``.
    n_samples
        Posterior draws behind the ``varm`` summaries: ``None`` (default) gives the exact
        mean, sd and quantiles of the Normal variational posterior; an integer gives Monte
        Carlo estimates from that many draws (seeded by ``seed``, recorded in ``params``).
    seed
        Random seed (default ``settings.seed``, else fresh; recorded).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; ``None`` (default):
        ``settings.device``.
    progress
        Progress bar (default ``settings.progress_bar``).
    key_added
        Where results go.
    copy
        Return a fitted copy instead of writing in place.
    checkpoint
        Path prefix for checkpoint files: the optimisation state is saved regularly and a
        rerun with the same arguments and path resumes where an interrupted run stopped,
        ending with results identical to an uninterrupted run. Files are removed on success.
        They hold data only and a fingerprint of the data and settings; a rerun on other data
        or with other settings is refused (see :doc:`/reliability`).
    checkpoint_mismatch
        What to do when ``checkpoint`` holds files of another run (other data or settings, see
        :doc:`/reliability`), damaged files or files of an older dream_sc: ``"raise"`` (default)
        raises a ``ValueError`` naming the file and what changed, before any work and without
        deleting anything; ``"restart"`` deletes those files and fits from the start.
    backend, client
        ``"local"`` fits the feature chunks in this process; ``"dask"`` runs them as tasks on
        the ``dask.distributed`` cluster of ``client`` (default: the current client), with
        results identical to the local run (see :doc:`/cluster`).

    Returns
    -------
    ``None`` (or the fitted copy). Writes

    - ``mdata[modality].varm[key_added]``: DataFrame with ``baseline_<stat>`` (link scale),
      ``effect_<group>_<stat>`` per non-reference group (link scale), ``dispersion_<stat>``
      (negbinom), ``concentration_<stat>`` (over-dispersed binomial / multinomial),
      ``sigma_<stat>`` / ``nu_<stat>`` (continuous); stats ``mean``, ``sd``, ``q05``,
      ``q50``, ``q95``.
    - ``mdata[modality].var[f"{key_added}_informative"]``: False for features without
      information in the fitted cells (they get neutral effects).
    - ``mdata[modality].uns[key_added]``: ``params`` (arguments, seed, device),
      ``distribution``, ``overdispersed``, ``groups``, ``reference_group``, ``n_cells``,
      ``priors`` (``concentration`` when over-dispersed), ``loss``, ``converged``,
      ``chunk_converged``, ``chunk_n_steps_run`` (with ``tolerance``), ``plan``, ``seconds``,
      ``versions``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, modality="rna", n_steps=50, progress=False)
    >>> "baseline_mean" in mdata["rna"].varm["dream_technical"]
    True
    """
    params = {k: v for k, v in locals().items() if k not in ("mdata", "client")}
    V.check_mudata(mdata)
    runner = resolve_backend(backend, client)  # [dask hunk]
    check_mismatch(checkpoint_mismatch)
    V.check_fit_settings(
        n_steps=n_steps,
        lr=lr,
        batch_size=batch_size,
        feature_chunk=feature_chunk,
        n_samples=n_samples,
    )
    V.check_modality(mdata, modality)
    obs = mdata.obs
    if use_all_cells:  # no control cells needed (high MOI: few or none carry only controls)
        control = np.ones(len(obs), bool)
    else:
        V.check_obs_column(obs, target_key, "target_key")
        control = V.check_control(obs, target_key, control_label)
    groups = technical_groups(obs, technical_key, reference_group)
    if not use_all_cells:
        V.check_technical_groups(groups.labels, control, technical_key)
    use = np.ones(len(obs), bool) if use_all_cells else control
    cells = obs.index[use]
    data = modality_data(mdata, modality, cells, layer=layer)
    present = np.flatnonzero(use)[data.present]
    codes = groups.codes[present]
    if len(np.unique(codes)) < groups.n_groups:
        missing = sorted(set(groups.names) - {groups.names[c] for c in np.unique(codes)})
        raise ValueError(
            f"Technical group(s) {missing} have no fitted cells present in modality "
            f"{modality!r}; merge or drop them."
        )
    family = get_family(data.distribution)
    sf = None
    if family.size_factors:
        sf = sum_factor_values(mdata, sum_factor_key)[present]
        V.check_sum_factors(sf, sum_factor_key)
    overdispersed = family.overdispersible and is_overdispersed(mdata[modality])
    config = FitConfig.resolve(
        "technical",
        seed=seed,
        n_steps=n_steps,
        lr=lr,
        batch_size=batch_size,
        n_samples=n_samples,
        device=device,
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_mismatch=checkpoint_mismatch,
        tolerance=tolerance,
    )
    n_cells, n_features = data.X.shape

    start = time.perf_counter()
    init = moment_init(
        data.distribution,
        data.X,
        group=codes,
        n_groups=groups.n_groups,
        sum_factor=sf,
        total=data.total,
        group_index=data.group_index,
        overdispersed=overdispersed,
    )
    density = data.density()
    plan = plan_fit(
        n_cells,
        n_features,
        config,
        density=density,
        draws=0,
        noise_width=groups.n_groups + 2 + int(overdispersed),
        feature_chunk=feature_chunk,
    )
    config = config.with_plan(plan.batch_size)
    chunks = feature_chunks(n_features, plan.feature_chunk, data.group_index)
    order = name_order(obs.index[present])
    recipe = technical_recipe(data, init, codes, groups.n_groups, sf, order=order)

    logger.info(
        "fit_technical: %s (%s), %d cells x %d features, %d groups",
        modality,
        data.distribution,
        n_cells,
        n_features,
        groups.n_groups,
    )
    fit = fit_chunks(
        recipe,  # [dask hunk]
        chunks,
        n_features,
        config,
        description=f"technical {modality}",
        prefix=key_added,
        checkpoint=checkpoint,
        feature_keys=stable_keys(data.var_names),
        backend=runner,  # [dask hunk]
        fingerprint=None
        if config.checkpoint is None
        else technical_fingerprint(
            modality,
            data,
            obs.index[present],
            codes,
            groups.names,
            sf,
            config=config,
            overdispersed=overdispersed,
        ),
    )
    draws, seed = config.n_samples, config.seed
    summary = (
        normal_summary
        if draws is None
        else partial(normal_summary, n_samples=draws, rng=np.random.default_rng([seed, 2]))
    )
    table = _summarise(fit, init, groups.names, data, summary)
    seconds = time.perf_counter() - start
    if not fit.converged:
        warnings.warn(
            f"fit_technical on {modality!r} did not converge in {config.n_steps} steps; increase "
            "`n_steps` (see ds.pl.loss).",
            stacklevel=2,
        )
    n_uninformative = int((~init.informative).sum())
    if n_uninformative:
        logger.info("%d features carry no information in the fitted cells", n_uninformative)
    params.update(config.as_record())
    params.update(runner.record())  # [dask hunk]
    record = {
        "params": clean_params(params),
        "distribution": data.distribution,
        "overdispersed": bool(overdispersed),
        "groups": list(groups.names),
        "reference_group": groups.names[0],
        "n_cells": int(n_cells),
        "priors": _priors(init, data.distribution),
        "loss": fit.loss.astype(np.float64),
        **(
            {}
            if config.tolerance is None
            else {"chunk_n_steps_run": np.asarray(fit.chunk_steps_run, dtype=np.int64)}
        ),
        "converged": bool(fit.converged),
        "chunk_converged": np.asarray(fit.chunk_converged, dtype=bool),
        "plan": plan.as_dict(),
        "seconds": float(seconds),
        "versions": versions(),
    }
    target = mdata.copy() if copy else mdata
    write_technical(target[modality], key_added, record, table, init.informative)
    logger.info("fit_technical finished in %.1fs (converged=%s)", seconds, fit.converged)
    return target if copy else None


def _concentration_summary(fit, init, group_index: np.ndarray | None, summary) -> dict:
    """``concentration_<stat>`` columns of an over-dispersed fit.

    A multinomial group's value is read at its first category (the only one the likelihood
    uses) and repeated for all its categories.
    """
    loc, scale = fit.loc["log_conc"].astype(np.float64), fit.scale["log_conc"].astype(np.float64)
    if group_index is not None:
        _, first, inverse = np.unique(group_index, return_index=True, return_inverse=True)
        rep = first[inverse.reshape(-1)]
        loc, scale = loc[rep], scale[rep]
    # no trials at all in the fitted cells: the neutral (practically binomial) concentration
    loc = np.where(init.informative, loc, np.log(CONCENTRATION_RANGE[1]))
    scale = np.where(init.informative, scale, 0.0)
    return summary("concentration", loc, scale, log_scale=True)


def _summarise(fit, init, group_names, data, summary=normal_summary) -> pd.DataFrame:
    family = get_family(data.distribution)
    cols = summary("baseline", fit.loc["baseline"], fit.scale["baseline"])
    for k, name in enumerate(group_names[1:]):
        effect = summary(f"effect_{name}", fit.loc["delta"][:, k], fit.scale["delta"][:, k])
        for col, values in effect.items():
            effect[col] = np.where(init.informative, values, 0.0)
        cols.update(effect)
    for column, site in family.noise_columns:
        cols.update(summary(column, fit.loc[site], fit.scale[site], log_scale=True))
    if "log_conc" in fit.loc:
        cols.update(_concentration_summary(fit, init, data.group_index, summary))
    return frame(cols, data.var_names)


def _priors(init, distribution: str) -> dict:
    priors = {
        "baseline": {
            "dist": "normal",
            "loc": init.baseline.astype(np.float64),
            "scale": init.baseline_scale.astype(np.float64),
        },
        "effect": {"dist": "normal", "loc": 0.0, "scale": float(init.delta_scale)},
    }
    priors.update(get_family(distribution).noise_priors(init))
    if init.log_conc is not None:
        priors["concentration"] = {
            "dist": "lognormal",
            "loc": init.log_conc.astype(np.float64),
            "scale": float(LOG_CONC_PRIOR_SD),
            "range": np.asarray(CONCENTRATION_RANGE, dtype=np.float64),
            "moment_estimate": np.asarray(init.conc_informative, dtype=bool),
        }
    return priors
