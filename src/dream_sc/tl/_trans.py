"""``tl.fit_trans``: step 3 of the model."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from mudata import MuData

from .. import _validation as V
from .._checkpoints import check_mismatch
from .._lazy import concat_blocks, feature_blockwise
from .._storage import posterior_frame, write_trans
from ..engine.backends import resolve_backend  # [dask hunk]
from ..engine.config import FitConfig
from ..models.families import get_family
from ..models.significance import DEFAULT_N_PERMUTATIONS
from ._common import clean_params, versions
from ._escaper_cells import check_membership, refit_with_escaper_cells
from ._null import significance
from ._refine import refined_columns
from ._test_cells import test_job
from ._trans_job import TransJob, prepare_trans_job
from ._trans_settings import TransSettings
from ._trans_stages import CURVE_QVALUE, check_curves, curve_job, curve_selection, expand, stage_one

logger = logging.getLogger("dream_sc")


def _cells_with_data(job: TransJob) -> np.ndarray:
    """Cells with an observation of every fitted feature (the family decides what counts)."""
    data, cols = job.data, np.flatnonzero(job.fitted)
    family = get_family(data.distribution)
    gi = None if data.group_index is None else data.group_index[cols]
    found = feature_blockwise(
        lambda X, total, _: family.cells_with_data(X, total=total, group_index=gi),
        data.X,
        data.total,
        cols,
    )
    return concat_blocks(found)


def feature_names(var_names: pd.Index, features, modality: str) -> tuple[str, ...] | None:
    """``features=`` (names or a boolean mask over ``var_names``) as a tuple of names."""
    if features is None:
        return None
    if isinstance(features, str):
        features = [features]
    values = np.asarray(features)
    if values.dtype == bool:
        if values.shape != (len(var_names),):
            raise ValueError(
                f"A boolean features= mask needs one entry per feature of {modality!r} "
                f"({len(var_names)}); got shape {values.shape}."
            )
        return tuple(str(v) for v in var_names[values])
    names = [str(v) for v in values.ravel()]
    missing = [n for n in names if n not in var_names]
    if missing:
        raise KeyError(
            f"{len(missing)} of the features= are not in {modality!r}.var_names "
            f"(e.g. {missing[:3]}); check the names or pass a boolean mask."
        )
    return tuple(dict.fromkeys(names))


def fit_trans(
    mdata: MuData,
    *,
    modality: str = "rna",
    function: str = "additive_hill",
    cis_key: str = "dream_cis",
    technical_key_added: str = "dream_technical",
    sum_factor_key: str = "sum_factor",
    layer: str | None = None,
    use_dose_mean: bool = False,
    min_effect: float | None = None,
    degree: int = 3,
    include_cis_feature: bool = False,
    features: Sequence[str] | np.ndarray | pd.Series | None = None,
    min_cells: int = 0,
    test: bool = True,
    n_permutations: int = DEFAULT_N_PERMUTATIONS,
    alpha: float = 0.1,
    n_steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    feature_chunk: int | None = None,
    n_samples: int | None = None,
    tolerance: float | None = None,
    warm_start: bool = True,
    refine_intervals: bool = True,
    n_refine_draws: int = 500,
    seed: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    key_added: str = "dream_trans",
    copy: bool = False,
    checkpoint: str | None = None,
    backend: str = "local",
    client=None,
    checkpoint_mismatch: Literal["raise", "restart"] = "raise",
    curves: Literal["all", "discoveries"] = "all",
    curve_qvalue: float = CURVE_QVALUE,
    test_basis: Literal["cell", "guide"] = "cell",
    test_controls: Literal["fitted", "all"] = "fitted",
    test_statistic: Literal["quadratic", "combined"] = "quadratic",
    escaper_membership: Literal["cis", "transcriptome"] = "cis",
) -> MuData | None:
    """Fit a dose-response curve for every feature of a modality (step 3).

    The cells of the cis fit ``cis_key`` are used; the curve is marginalised over each cell's
    log-dosage posterior (mean and variance of its samples from step 2; see
    :func:`dream_sc.models.curves.evaluate_curve`), so an uncertain dosage smooths the cell's
    expected response instead of sharpening the curve (``use_dose_mean=True`` plugs in the
    posterior mean instead). Technical effects and noise come from step 1. Curves
    live on the link scale of the modality (log / logit / softmax / identity) so means stay in
    their domain. Priors are data-driven (see :mod:`dream_sc.models.trans`). With ``test=True``
    the calibrated significance of :func:`dream_sc.tl.test_trans` is computed as well.

    Parameters
    ----------
    mdata
        The screen.
    modality
        Modality whose features are fitted.
    function
        ``"single_hill"``, ``"additive_hill"`` (two Hill components: non-monotone shapes) or
        ``"polynomial"`` (degree ``degree`` in log2 dosage).
    cis_key, technical_key_added
        Keys of the cis fit and of the technical fit of ``modality``.
    sum_factor_key, layer
        Size factors and data layer.
    use_dose_mean
        Plug in the posterior mean dosage instead of marginalising over its uncertainty.
    min_effect
        Minimal effect for ``prob_dose_dependent`` (default: 0.2 log2 fold change for counts,
        0.03 for probabilities / proportions, 0.1 noise sd for continuous data).
    degree
        Polynomial degree.
    include_cis_feature
        Also fit the cis gene itself (excluded by default: its response is the dosage).
    features
        Fit only these features: var names, or a boolean mask over ``var_names`` (default: all).
        The stored technical fit is reused as it is; features not fitted hold NaN. Categories
        of a multinomial group must be selected together.
    min_cells
        Fit only features detected in at least this many of the fit's cells (non-zero counts
        for count data; cells with trials, with group counts or with a value otherwise).
    test, n_permutations, alpha
        Compute calibrated q-values from ``n_permutations`` within-group permutations of the
        dosages, scored without refitting (see :func:`dream_sc.tl.test_trans`), and call
        features with ``qvalue < alpha`` significant.
    n_steps, lr, batch_size, feature_chunk
        SVI settings (``None``: 300 steps at 0.03, the trans row of
        :data:`~dream_sc.engine.config.STEP_DEFAULTS`; batch/chunk: memory planner).
    tolerance
        Stop on convergence: every feature chunk stops once its smoothed loss improves by less
        than this fraction per check window (5% of ``n_steps``, at least 10 steps), after one
        more window of learning-rate annealing; the steps run are recorded (see
        :class:`~dream_sc.engine.config.FitConfig`). ``None`` (default): exactly ``n_steps``.
    n_samples
        Posterior samples for summaries (default ``settings.n_samples``).
    warm_start
        Start every feature's curve where a fit to its guide-level means puts it (see
        :func:`dream_sc.models.warm_start.warm_start`) instead of at the priors' centres, so
        far fewer SVI steps reach the same posterior.
    refine_intervals, n_refine_draws
        Refine the curve-parameter columns (``eta_ref``, ``v``, ``K``, ``n``, ``ec50``,
        ``inflection``) of features with ``prob_dose_dependent >= 0.5`` (and, with ``test=True``,
        ``significant``: the refinement is spent on the hits) by adaptive importance
        sampling from the exact posterior, ``n_refine_draws`` draws in the final round (Hill
        curves; not for the multinomial, whose features share a likelihood). The variational
        posterior is too narrow along the curved K-n-amplitude ridge of shallow curves; the
        refinement brings EC50 intervals close to their nominal coverage (single-Hill fits of
        simulated screens: 84% of true EC50s inside 90% intervals, 72% before; see the FAQ).
        Columns ``refined`` and ``refine_ess`` (effective sample size; below ~50 the interval
        is noisy) record it. Costs ``1.5 * n_refine_draws`` likelihood evaluations per refined
        feature over all cells (20,000 cells x 600 refined features: about 65 s on 2 cores, see
        the performance page).
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
        What to do when ``checkpoint`` holds files of another run (other data or settings, see
        :doc:`/reliability`), damaged files or files of an older dream_sc: ``"raise"`` (default)
        raises a ``ValueError`` naming the file and what changed, before any work and without
        deleting anything; ``"restart"`` deletes those files and fits from the start.
    curves, curve_qvalue
        ``"all"`` (default): a curve for every feature. ``"discoveries"`` (needs ``test=True``):
        two stages. Stage one scores every feature and computes its permutation q-value (the
        test needs the technical noise and the dosages, no curve); stage two fits curves, EC50s
        and intervals only for features with a stage-one q-value below
        ``max(curve_qvalue, alpha)`` (default 0.25) and the top-scoring feature. ``score``,
        ``qvalue`` and ``significant`` of every feature are exactly those of ``curves="all"``;
        the features left out have ``fitted = False``, ``tested = True`` and NaN curve
        columns, and a significant one without a curve (after a looser ``alpha`` in
        :func:`~dream_sc.tl.test_trans` or screen-wide q-values) has shape ``"no_curve"``. The
        speed-up grows with the share of flat features (see :doc:`/screens`).
    test_basis, test_controls
        The dose axis and the cells of the significance test. ``"cell"`` scores each cell at
        its own posterior dosage, ``"guide"`` at its guide's (the mean of its guide's cells; a
        cell's own dosage shares its size factor's error with every feature, which inflates
        the FDR when thousands of control cells are tested with estimated size factors; low
        MOI only). ``"fitted"`` tests the cells of the cis fit, ``"all"`` adds every other
        control cell of the screen at its guide's dosage (with a ``control_cells`` subsample
        in :func:`~dream_sc.tl.fit_cis`: curves against the subsample, the test against all
        controls; needs ``test_basis="guide"``). :func:`~dream_sc.tl.fit_screen` uses
        ``"guide"`` and ``"all"`` at low MOI.
    test_statistic
        ``"quadratic"``: the score test on log dosage and its square. ``"combined"``: that
        test's p-value combined (Cauchy combination) with the score test on the log dosage
        alone, so a monotone response is tested with one degree of freedom and a U-shaped one
        keeps the full basis (the ``score`` column is then ``-log`` of the combined asymptotic
        p-value; the permutation null calibrates it either way). ``fit_screen`` uses
        ``"combined"`` at low MOI.
    escaper_membership
        ``"cis"`` (default): every cell at its cis dosage posterior. ``"transcriptome"`` (needs
        a cis fit with ``escapers=True`` and a negbinom modality): the curves of the clearly
        responsive features (``prob_dose_dependent >= 0.9``) are refitted on dosages in which
        each targeting cell's cis draws are weighted by the likelihood of its counts of
        responsive features under the first fit's curves, so a cell whose responses sit at the
        control level counts as escaped (:mod:`dream_sc.models.escaper_cells`). Cross-fitted:
        each half of those features is refitted on dosages weighted by the other half only.
        The significance columns and every other feature keep the fit on the cis dosages; the
        run record's ``escaper_membership`` holds the number of evidence features and cells.
    backend, client
        ``"local"`` fits the feature chunks (of the real fit and of every permutation null) in
        this process; ``"dask"`` runs them as tasks on the ``dask.distributed`` cluster of
        ``client`` (default: the current client), with results identical to the local run
        (see :doc:`/cluster`). Summaries and the interval refinement run here.

    Returns
    -------
    ``None`` (or the fitted copy). Writes

    - ``mdata[modality].varm[key_added]``: per-feature DataFrame with ``distribution``,
      ``function``, ``response_mean/_sd/_q05/_q95``, ``ec50_mean/_q05/_q95`` (half-way point of
      the link-scale curve), ``ec50_response_mean/_q05/_q95`` (of the expected value itself;
      see :mod:`dream_sc.models.ec50`), ``ec50_in_range``,
      ``inflection_mean``, curve parameters (``eta_ref``, ``v1``, ``K1``, ``n1``, ... with
      ``_mean/_q05/_q95``), ``ec50_1_*`` / ``ec50_2_*`` per component (additive Hill),
      ``prob_dose_dependent``, ``lfsr``, ``score`` (the ranking column), ``posterior_score``, ``non_monotonic_mean``,
      ``prob_non_monotonic``, ``non_monotonic_score``, ``qvalue``,
      ``significant``, ``shape``, ``n_cells``, ``converged``, ``fitted`` (has a curve),
      ``tested`` (has a score and q-value); NaN for features not fitted.
    - ``varm[f"{key_added}_curve_mean"]``, ``_curve_q05``, ``_curve_q95``: features x grid.
    - ``varm[f"{key_added}_posterior"]``: variational loc/scale of every latent site.
    - ``mdata[modality].uns[key_added]``: ``dose_grid``, ``dose_in_range``, ``dose_range``,
      ``x_ref``, ``min_effect``, ``params``, ``priors``, ``loss``, ``converged``,
      ``chunk_converged``, ``cis_key``, ``technical_key_added``, ``n_cells``, ``plan``,
      ``seconds``, ``null_scores``, ``null_seconds`` and ``exchangeability`` (when tested),
      ``chunk_n_steps_run`` (steps run per feature chunk, with ``tolerance``), ``versions``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, progress=False)
    >>> "response_mean" in mdata["rna"].varm["dream_trans"]
    True
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, modality)
    features = feature_names(mdata[modality].var_names, features, modality)
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 0:
        raise ValueError(f"min_cells must be a non-negative integer; got {min_cells!r}.")
    params = {k: v for k, v in locals().items() if k not in ("mdata", "client")}
    runner = resolve_backend(backend, client)  # [dask hunk]
    V.check_fit_settings(
        n_steps=n_steps,
        lr=lr,
        batch_size=batch_size,
        feature_chunk=feature_chunk,
        n_samples=n_samples,
    )
    if (
        isinstance(n_refine_draws, bool)
        or not isinstance(n_refine_draws, int | np.integer)
        or n_refine_draws < 20
    ):
        raise ValueError(f"n_refine_draws must be an integer >= 20; got {n_refine_draws!r}.")
    if n_permutations < 1 and test:
        raise ValueError("n_permutations must be >= 1 when test=True.")
    check_mismatch(checkpoint_mismatch)
    check_curves(curves, curve_qvalue, test)
    check_membership(mdata, escaper_membership, cis_key)
    config = FitConfig.resolve(
        "trans",
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
    job = prepare_trans_job(mdata, TransSettings.from_arguments(params), config)
    job.backend = runner  # [dask hunk]
    check_membership(mdata, escaper_membership, cis_key, job.data.distribution)
    tested = test_job(mdata, job)  # the significance test's cells and dose axis
    start = time.perf_counter()
    logger.info(
        "fit_trans: %s (%s, %s), %d cells x %d features",
        modality,
        job.data.distribution,
        function,
        len(job.rows),
        job.n_features,
    )
    # stage one (curves="discoveries"): every feature's score test before any curve, and
    # stage two fits curves only for the features it selects (tl/_trans_stages.py)
    found, keep = None, np.ones(job.n_features, bool)
    if curves == "discoveries":
        found = stage_one(tested, n_permutations)
        keep = curve_selection(found, alpha=alpha, curve_qvalue=curve_qvalue)
        logger.info("fit_trans stage one: curves for %d of %d features", keep.sum(), len(keep))
    cjob = curve_job(mdata, job, keep, config)
    fit = cjob.fit()
    columns, curve_bands = cjob.summarise(fit.loc, fit.scale, corr=fit.corr)
    # significance hook (tl/_null.py): score, conditional-randomisation null, q-values; it
    # reads no column the refinement changes, so it runs first and the refinement is spent on
    # the hits only when q-values exist
    sig, null_record = significance(
        tested, expand(columns, keep), n_permutations if test else 0, alpha=alpha, found=found
    )
    refine = {
        "n_draws": n_refine_draws,
        "enabled": refine_intervals,
        "only": np.asarray(sig["significant"], dtype=bool)[keep] if test else None,
    }
    escaper_record = None
    if escaper_membership == "transcriptome":  # curves of the responsive features refitted
        columns, escaper_record = refit_with_escaper_cells(
            mdata, cjob, fit, columns, curve_bands, config, **refine
        )
    else:
        columns = refined_columns(cjob, columns, fit.loc, fit.scale, fit.corr, **refine)
    seconds = time.perf_counter() - start
    if not fit.converged:
        warnings.warn(
            f"fit_trans on {modality!r} did not converge in {config.n_steps} steps for "
            f"{int((~fit.feature_converged).sum())} features; increase `n_steps` (see ds.pl.loss).",
            stacklevel=2,
        )
    converged = expand({"converged": np.asarray(fit.feature_converged, bool)}, keep)
    table = _results_table(job, expand(columns, keep), sig, converged["converged"], cjob.fitted)
    params.update(config.as_record())
    params.update(runner.record())  # [dask hunk]
    record = {
        "params": clean_params(params),
        "distribution": job.data.distribution,
        "function": function,
        "dose_grid": job.grid.dose,
        "dose_in_range": job.grid.in_range,
        "dose_range": np.array([job.grid.lo, job.grid.hi]),
        "x_ref": float(np.exp(job.priors.log_x_ref)),
        "min_effect": job.min_effect.astype(np.float64),
        "priors": cjob.priors.as_dict(),
        "loss": fit.loss.astype(np.float64),
        **(
            {}
            if config.tolerance is None
            else {"chunk_n_steps_run": np.asarray(fit.chunk_steps_run, dtype=np.int64)}
        ),
        "converged": bool(fit.converged),
        "chunk_converged": np.asarray(fit.chunk_converged, dtype=bool),
        "cis_key": cis_key,
        "technical_key_added": technical_key_added,
        "n_cells": int(len(job.rows)),
        "plan": cjob.plan,
        "seconds": float(seconds),
        "versions": versions(),
    }
    if job.dose_axis is not None:
        record.update(job.dose_axis.to_record())
    record.update(null_record)  # significance hook
    if escaper_record is not None:
        record["escaper_membership"] = escaper_record
    target = mdata.copy() if copy else mdata
    adata = target[modality]
    posterior = posterior_frame(fit, adata.var_names, cjob.fitted)
    write_trans(
        adata, key_added, record, table, curve_bands, posterior, sparse_curves=not keep.all()
    )
    logger.info("fit_trans finished in %.1fs (converged=%s)", seconds, fit.converged)
    return target if copy else None


def _results_table(
    job: TransJob, columns: dict, sig: dict, converged: np.ndarray, curve_fitted: np.ndarray
) -> pd.DataFrame:
    """Per-feature table: ``columns`` and ``sig`` over ``job``'s tested features.

    ``fitted``: features with a curve (``curve_fitted``); ``tested``: features scored.
    """
    var_names = job.data.var_names
    fitted = job.fitted
    out = pd.DataFrame(index=var_names)
    out["distribution"] = job.data.distribution
    out["function"] = job.function
    merged = {**columns, **sig}
    for name, values in merged.items():
        values = np.asarray(values)
        if values.dtype == bool:
            full = np.zeros(len(var_names), bool)
        elif values.dtype.kind in "OUS":
            full = np.full(len(var_names), "not_fitted", dtype=object)
        else:
            full = np.full(len(var_names), np.nan)
        full[fitted] = values
        out[name] = full
    n_cells = np.zeros(len(var_names), int)
    n_cells[fitted] = _cells_with_data(job)
    out["n_cells"] = n_cells
    conv = np.zeros(len(var_names), bool)
    conv[fitted] = converged
    out["converged"] = conv
    out["fitted"] = np.asarray(curve_fitted, dtype=bool)
    out["tested"] = fitted
    out["shape"] = out["shape"].astype(str)
    return out
