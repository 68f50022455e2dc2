"""``tl.fit_cis``: step 2 of the model."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from .. import _validation as V
from .._cells import sum_factor_values
from .._checkpoints import check_mismatch
from .._data import modality_data
from .._storage import write_cis
from ..engine.cis import cell_dosage_draws, fit_cis_model
from ..engine.config import FitConfig
from ..engine.memory import plan_cis
from ..engine.svi import check_svi_checkpoint
from ..models.cis import LN2, CisData
from ..models.families import get_family
from ._cis_guides import _high_moi_guides, add_escape_fractions, guide_table
from ._common import clean_params, versions
from ._control_cells import check_control_cells
from ._fingerprints import cis_fingerprint
from ._target_cells import _label_mask, cis_cells  # noqa: F401 (_label_mask: tests)
from ._technical import load_technical

logger = logging.getLogger("dream_sc")
#: Largest cis count accepted: float32 holds integers exactly up to 2^24; beyond it the cis
#: likelihood is numerically meaningless (no UMI count of one gene in one cell gets near it).
MAX_CIS_COUNT = 2**24


def _low_moi_assignment(guides: pd.Series) -> tuple[np.ndarray, list[str]]:
    names = sorted(pd.unique(guides.astype(str)))
    codes = pd.Categorical(guides.astype(str), categories=names).codes
    A = np.zeros((len(guides), len(names)), dtype=np.float32)
    A[np.arange(len(guides)), codes] = 1.0
    return A, names


def _low_moi_guides(
    obs: pd.DataFrame, rows: np.ndarray, guide_key: str, target_key: str, cis_target: str
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Low MOI: one-hot guide assignment of the fitted cells and which guides target cis."""
    A, guide_names = _low_moi_assignment(obs[guide_key].iloc[rows])
    cells = obs[[guide_key, target_key]].iloc[rows]  # not every column of a screen's obs
    gt = cells.groupby(cells[guide_key].astype(str), observed=True)[target_key].first()
    guide_target = gt.loc[guide_names].astype(str).to_numpy()
    return A, guide_names, guide_target == cis_target, guide_target


def fit_cis(
    mdata: MuData,
    *,
    cis_feature: str,
    modality: str = "rna",
    cis_target: str | None = None,
    technical_key_added: str = "dream_technical",
    guide_key: str = "guide",
    target_key: str = "target",
    control_label: str = "ntc",
    sum_factor_key: str = "sum_factor",
    layer: str | None = None,
    guide_assignment_key: str = "guide_assignment",
    guide_targets: Mapping[str, str] | pd.Series | None = None,
    n_steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    n_samples: int | None = None,
    tolerance: float | None = None,
    warm_start: bool = True,
    seed: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    key_added: str = "dream_cis",
    copy: bool = False,
    checkpoint: str | None = None,
    checkpoint_mismatch: Literal["raise", "restart"] = "raise",
    escapers: bool = False,
    control_cells: int | Sequence[str] | None = None,
    sparse_samples: bool = False,
) -> MuData | None:
    """Estimate each guide's effect on the cis gene and each cell's dosage (step 2).

    Uses the control cells plus the cells whose guides target the cis gene (other cells are
    ignored for this fit and hold NaN). The cis gene's technical fit (baseline, group effects,
    dispersion) comes from step 1. Dosage is on the fixed scale "expected cis counts per unit
    size factor in the reference technical group". High MOI (``guide_targets`` given): every cell
    with any guide is used and guide effects add on the log2 scale.

    A cell's dosage posterior is right-skewed (log-normal-like), so its mean ``dose_mean`` sits
    ``exp(v / 2)`` above its median ``dose_q50`` (``v`` the posterior variance of ``ln x``; a few
    percent for well-measured cells, more for strongly knocked-down ones with few counts). For a
    calibrated posterior the median of ``dose_q50 / true dosage`` over cells is 1, that of
    ``dose_mean / true dosage`` is about ``exp(v / 2)``: compare point estimates with a truth
    through ``dose_q50``.

    Parameters
    ----------
    mdata
        The screen.
    cis_feature
        var name of the targeted gene in ``modality``.
    modality
        Count modality holding the cis gene (negbinom).
    cis_target
        Target label of the cis gene in ``obs[target_key]`` / ``guide_targets`` (default
        ``cis_feature``).
    technical_key_added
        Key of the technical fit of ``modality``.
    guide_key, target_key, control_label
        Guide and target columns and the control label (low MOI).
    sum_factor_key
        Size-factor column.
    layer
        Layer with raw counts.
    guide_assignment_key, guide_targets
        High MOI: ``obsm`` cells x guides table and the guide -> target mapping.
    n_steps, lr, batch_size
        SVI settings (``None``: 300 steps at 0.05, the cis row of
        :data:`~dream_sc.engine.config.STEP_DEFAULTS`; all cells in one batch up to 50,000).
    tolerance
        Stop on convergence: every feature chunk stops once its smoothed loss improves by less
        than this fraction per check window (5% of ``n_steps``, at least 10 steps), after one
        more window of learning-rate annealing; the steps run are recorded (see
        :class:`~dream_sc.engine.config.FitConfig`). ``None`` (default): exactly ``n_steps``.
    n_samples
        Posterior dosage samples kept per cell (default ``settings.n_samples``).
    warm_start
        Start SVI at the Laplace approximation of the guide-level posterior (mode by L-BFGS,
        covariance from the Hessian; see :func:`dream_sc.models.cis_laplace.laplace_start`) instead of
        a small sphere around moment estimates: the default 300 steps then end where thousands
        of cold-start steps would.
    seed, device, progress
        As everywhere.
    key_added
        Prefix of the results.
    copy
        Return a fitted copy.
    checkpoint
        Path prefix for checkpoint files: the optimisation state is saved regularly and a
        rerun with the same arguments and path resumes where an interrupted run stopped,
        ending with results identical to an uninterrupted run. Files are removed on success.
        They hold data only and a fingerprint of the data and settings; a rerun on other data
        or with other settings is refused (see :doc:`/reliability`).
    checkpoint_mismatch
        What to do when ``checkpoint`` holds a file of another run (other data or settings, see
        :doc:`/reliability`), a damaged file or one of an older dream_sc: ``"raise"`` (default)
        raises a ``ValueError`` naming the file and what changed, before any work and without
        deleting anything; ``"restart"`` deletes it and fits from the start.
    escapers
        Model escapers (low MOI): a cell of targeting guide ``g`` is, with probability
        ``pi_g`` (the guide's escape fraction), not knocked down at all and sits at the
        control dosage; otherwise on the guide's log-normal. The guides' escape logits share a
        pooled centre (prior ``Normal(logit 1/3, 1)``, each guide ``Normal(centre, 0.5)``), and
        the within-cell dispersion's prior is centred where step 1's dispersion leaves room for
        a 0.3 log2 spread (see :func:`dream_sc.models.cis.escaper_phi_loc`). The mixture is
        marginalised in the likelihood and each cell's dosage drawn from its mixture posterior.
        Use it when :func:`dream_sc.tl.escaper_check` flags guides (typical of KRAB CRISPRi).
        ``False`` (default): every guide-carrying cell is on its guide's log-normal.
    control_cells
        Use only some of the control cells (low MOI: the control label; high MOI: the cells
        without the target's guides): a number (a subsample of that size, stratified by
        technical group, drawn with ``seed``) or their obs names. ``None`` (default): all.
        The technical fit has learned every feature's baseline and noise on all controls; in a
        genome-scale screen a few thousand controls anchor a target's dose axis as well as
        tens of thousands at a fraction of the cost (see :doc:`/screens`). The other
        control cells hold NaN like every cell outside the fit.
    sparse_samples
        Store the dosage samples as a sparse cells x ``n_samples`` matrix holding the fitted
        cells' rows only (cells outside the fit: empty rows, read back as NaN by every dream_sc
        function). A fit of a few hundred of 100,000 cells then keeps kilobytes instead of
        40 MB; :func:`~dream_sc.tl.fit_screen` chooses it when a screen's samples would not
        fit in memory.

    Returns
    -------
    ``None`` (or the fitted copy). Writes ``mdata.obs[f"{key_added}_dose_mean"]``, ``_dose_sd``,
    ``_dose_q05``, ``_dose_q95``; ``mdata.obsm[f"{key_added}_dose_samples"]`` (cells x
    ``n_samples``); ``mdata.obs[f"{key_added}_dose_q50"]`` (the posterior median: the point
    estimate to compare with a true dosage, see above); with ``escapers``
    ``mdata.obs[f"{key_added}_escape_prob"]`` (posterior probability that the cell escaped);
    ``mdata.uns[key_added]`` with ``guides`` (DataFrame: ``target``,
    ``n_cells``, ``dose_mean``/``_q05``/``_q95``, ``log2_effect_mean``/``_sd``/``_q05``/``_q95``,
    ``sigma_mean``, ``is_control``, ``control_active``, ``n_guides``; with ``escapers``
    also ``escape_fraction_mean``/``_q05``/``_q95``, NaN for control guides), ``n_guides``
    (guides of the cis target in the fit), ``x_ntc``, ``log2_x_ntc_mean``,
    ``log2_x_ntc_sd``, ``dose_range``, ``n_cells``, ``cis_feature``, ``cis_target``,
    ``modality``, ``technical_key_added``, ``params``, ``priors``, ``loss``, ``n_steps_run`` (with ``tolerance``), ``converged``,
    ``seconds``, ``versions``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> mdata.uns["dream_cis"]["guides"].columns[:3].tolist()
    ['target', 'n_cells', 'dose_mean']
    """
    params = {k: v for k, v in locals().items() if k not in ("mdata", "settings")}
    params["guide_targets"] = None if guide_targets is None else "given"
    if control_cells is not None and not isinstance(control_cells, (int, np.integer)):
        params["control_cells"] = f"{len(control_cells)} given"
    V.check_mudata(mdata)
    if not isinstance(escapers, bool | np.bool_):
        raise ValueError(f"escapers must be True or False; got {escapers!r}.")
    if escapers and guide_targets is not None:
        raise ValueError(
            "escapers=True needs a low-MOI screen (one guide per cell): with several guides "
            "per cell the escape of each is not identified. Fit without `escapers`."
        )
    check_mismatch(checkpoint_mismatch)
    V.check_fit_settings(n_steps=n_steps, lr=lr, batch_size=batch_size, n_samples=n_samples)
    check_control_cells(control_cells)
    V.check_modality(mdata, modality)
    obs = mdata.obs
    cis_target = cis_target or cis_feature
    adata = mdata[modality]
    if cis_feature not in adata.var_names:
        raise KeyError(
            f"cis_feature {cis_feature!r} is not a feature of modality {modality!r}."
            + V._suggest(cis_feature, adata.var_names)
        )
    tech = load_technical(mdata, modality, technical_key_added)
    if not get_family(tech.distribution).cis_capable:
        raise ValueError(
            f"The cis gene must come from a count (negbinom) modality; {modality!r} is {tech.distribution}."
        )
    config = FitConfig.resolve(
        "cis",
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
    high_moi = guide_targets is not None
    chosen = cis_cells(
        mdata,
        tech,
        cis_target=cis_target,
        guide_key=guide_key,
        target_key=target_key,
        control_label=control_label,
        guide_assignment_key=guide_assignment_key,
        guide_targets=guide_targets,
        control_cells=control_cells,
        rng=np.random.default_rng(config.seed),
    )
    use, group_codes = chosen.use, chosen.group_codes
    A_all, guide_names, is_cis = chosen.assignment, chosen.guide_names, chosen.is_cis
    cells = obs.index[use]
    data = modality_data(mdata, modality, cells, layer=layer)
    col = adata.var_names.get_loc(cis_feature)
    y = data.X[:, col]
    y = np.asarray(y.toarray() if sparse.issparse(y) else y).ravel()
    if y.sum() == 0:
        raise ValueError(f"cis_feature {cis_feature!r} has zero counts in every fitted cell.")
    if y.max() >= MAX_CIS_COUNT:
        raise ValueError(
            f"cis_feature {cis_feature!r} has a count of {y.max():.3g} in a fitted cell, beyond "
            f"{MAX_CIS_COUNT:,} (2^24, the largest count float32 holds exactly): check for "
            "outliers / wrong layer (raw UMI counts expected)."
        )
    rows = np.flatnonzero(use)[data.present]
    sf = sum_factor_values(mdata, sum_factor_key)[rows]
    V.check_sum_factors(sf, sum_factor_key)
    if high_moi:
        mapping = pd.Series(guide_targets).astype(str)
        mapping.index = mapping.index.astype(str)
        is_control = mapping.reindex(guide_names).to_numpy() == control_label
        guides = _high_moi_guides(A_all[rows], guide_names, is_cis, cis_target, is_control)
    else:
        guides = _low_moi_guides(obs, rows, guide_key, target_key, cis_target)
    A, guide_names, is_cis, guide_target = guides
    codes = group_codes[rows]
    cis_data = CisData(
        y=y.astype(np.float64),
        log_sf=np.log(sf),
        group=codes,
        tech_effect_prior=np.asarray(tech.effects[col], dtype=np.float64),
        assignment=A,
        is_cis_guide=is_cis,
        log_r=float(-tech.log_phi[col]),
        log2_x_ntc_prior=float(tech.baseline[col] / LN2),
        escapers=bool(escapers),
    )
    config = plan_cis(cis_data, config, laplace=warm_start).config  # refuses one too large
    fingerprint = None
    if checkpoint is not None:  # checked before any work (the Laplace start is work)
        fingerprint = cis_fingerprint(
            cis_data,
            obs.index[rows],
            guide_names,
            config=config,
            warm_start=warm_start,
        )
        fingerprint["seed"] = int(config.seed)
        if escapers:  # only then, so checkpoints of fits without the option stay valid
            fingerprint["escapers"] = True
        check_svi_checkpoint(f"{checkpoint}.cis.pt", fingerprint, config)
    start = time.perf_counter()
    logger.info("fit_cis: %s, %d cells, %d guides", cis_feature, len(rows), len(guide_names))
    post = fit_cis_model(cis_data, config, laplace=warm_start, fingerprint=fingerprint)
    seconds = time.perf_counter() - start
    if not post.fit.converged:
        warnings.warn(
            f"fit_cis for {cis_feature!r} did not converge in {config.n_steps} steps; increase `n_steps`.",
            stacklevel=2,
        )
    # per-cell dosage: n_samples joint posterior worlds (column s = guide-level draw s)
    n_samples = config.n_samples
    log2_samples, picks = cell_dosage_draws(cis_data, post, config)
    samples = np.exp2(log2_samples)
    _check_dosage_range(samples, cis_feature, config)
    mean, sd = samples.mean(1), samples.std(1)
    cell_q05, cell_q50, cell_q95 = np.quantile(samples, [0.05, 0.5, 0.95], axis=1)
    x_ntc_draws, b_draws = post.draws["log2_x_ntc"], post.draws["guide_effect_all"]
    guides = guide_table(post.draws, A, guide_names, guide_target, is_cis)
    if "escape_logit" in post.draws:
        add_escape_fractions(guides, post.draws["escape_logit"], is_cis)
    active = guides["control_active"].to_numpy(dtype=bool)
    if active.any():
        warnings.warn(
            f"Control guide(s) {[str(g) for g in np.asarray(guide_names)[active]]} shift the cis gene "
            f"{cis_feature!r} clearly (see mdata.uns[{key_added!r}]['guides']['control_active']); "
            "check them or exclude their cells.",
            stacklevel=2,
        )
    dose_lo = float(guides["dose_mean"].min())
    dose_hi = float(guides["dose_mean"].max())
    params.update(config.as_record(), high_moi=high_moi)
    record = {
        "guides": guides,
        "cis_feature": cis_feature,
        "cis_target": cis_target,
        "modality": modality,
        "technical_key_added": technical_key_added,
        "x_ntc": float(np.exp2(x_ntc_draws).mean()),
        "log2_x_ntc_mean": float(x_ntc_draws.mean()),
        "log2_x_ntc_sd": float(x_ntc_draws.std()),
        "dose_range": np.array([dose_lo, dose_hi]),
        # guide log2 dosages of the posterior worlds behind the columns of the dose samples
        "guide_dose_samples": (x_ntc_draws[picks, None] + b_draws[picks]).T,
        "technical_effects": pd.DataFrame(
            {
                "step1": np.asarray(tech.effects[col], dtype=np.float64),
                "mean": post.draws["tech_effect_all"].mean(0),
                "sd": post.draws["tech_effect_all"].std(0),
            },
            index=pd.Index([str(g) for g in tech.groups], name="group"),
        ),
        "dispersion_step1": float(np.exp(tech.log_phi[col])),
        "dispersion_within_cell": float(np.exp(-post.draws["log_r_within"]).mean()),
        "n_cells": int(len(rows)),
        "n_guides": int(np.sum(is_cis)),
        "params": clean_params(params),
        "priors": post.priors,
        "loss": post.fit.loss.astype(np.float64),
        **(
            {}
            if config.tolerance is None
            else {"n_steps_run": int(post.fit.n_steps_run or config.n_steps)}
        ),
        "converged": bool(post.fit.converged),
        "seconds": float(seconds),
        "versions": versions(),
    }
    target = mdata.copy() if copy else mdata
    n = target.n_obs
    columns = {}
    for name, values in (
        ("mean", mean),
        ("sd", sd),
        ("q05", cell_q05),
        ("q95", cell_q95),
        ("q50", cell_q50),
    ):
        columns[name] = np.full(n, np.nan)
        columns[name][rows] = values
    extra = {}
    if post.cell_escape is not None:
        extra[f"{key_added}_escape_prob"] = np.full(n, np.nan)
        extra[f"{key_added}_escape_prob"][rows] = post.cell_escape
    write_cis(
        target, key_added, record, columns, samples, extra, sparse_samples=sparse_samples, rows=rows
    )
    logger.info("fit_cis finished in %.1fs (converged=%s)", seconds, post.fit.converged)
    return target if copy else None


def _check_dosage_range(samples: np.ndarray, cis_feature: str, config: FitConfig) -> None:
    """Refuse per-cell dosage draws of 0 or infinity (log2 dosage beyond float32's range).

    They come from a degenerate guide-level posterior (an unconverged fit: seen after 20 steps
    on a tiny high-MOI screen) and would make every trans fit on them fail with a NaN loss.
    """
    bad = ~(np.isfinite(samples) & (samples > 0)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"fit_cis for {cis_feature!r}: the dosage draws of {int(bad.sum())} cell(s) are 0 "
            "or infinite (log2 dosage beyond +-126): the guide-level posterior is degenerate, "
            f"usually a fit stopped too early (n_steps={config.n_steps}): refit with more "
            "`n_steps` and check the cis gene's counts."
        )
