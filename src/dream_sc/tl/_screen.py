"""``tl.fit_screen``: every target of a screen in one call (technical once, cis + trans each)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from mudata import MuData

from .. import _validation as V
from .._cells import sum_factor_values
from .._checkpoints import check_mismatch
from .._registration import get_registration
from .._settings import settings
from .._stores.screen import target_fit_key, write_screen
from ..models.families import get_family
from ._cis import fit_cis
from ._common import FitConfig, clean_params, resolve_progress, versions
from ._control_cells import screen_controls
from ._screen_checks import (
    FUNCTIONS,
    SCREEN_N_STEPS,
    STEPS,
    _backend_kwargs,
    _check_kwargs,
    _jsonable,
    _resolve_cis_features,
    check_design,
    check_screen_memory,
    sample_storage,
    screen_trans_kwargs,
    step_settings,
    target_seed,  # noqa: F401 (fit_screen's names, as before _run moved: tests read them)
)
from ._screen_high_moi import resolve_design
from ._screen_parallel import (  # noqa: F401 (in_target_order, targets_elsewhere: as before)
    check_n_jobs,
    check_target_batch,
    default_threads,
    in_target_order,
    targets_elsewhere,
)
from ._screen_resume import manifest_of, open_checkpoint, resumed_seed
from ._screen_run import _run
from ._screen_store import Checkpoint, apply, capture, drop, drop_all  # noqa: F401
from ._screen_target import _fit_target  # noqa: F401
from ._technical import fit_technical
from ._test_cells import SCREEN_TEST
from ._trans import fit_trans

logger = logging.getLogger("dream_sc")


def fit_screen(
    mdata: MuData,
    *,
    modality: str = "rna",
    targets: Sequence[str] | None = None,
    guide_targets: Mapping[str, str] | pd.Series | None = None,
    guide_assignment_key: str = "guide_assignment",
    technical_key: str | Sequence[str] | None = "cell_line",
    cis_feature: Mapping[str, str] | None = None,
    function: str = "additive_hill",
    guide_key: str = "guide",
    target_key: str = "target",
    control_label: str = "ntc",
    sum_factor_key: str = "sum_factor",
    layer: str | None = None,
    n_steps: int | Mapping[str, int | None] | None = None,
    batch_size: int | Mapping[str, int | None] | None = None,
    n_samples: int | Mapping[str, int | None] | None = None,
    seed: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    key_added: str = "dream_screen",
    technical_key_added: str = "dream_technical",
    cis_prefix: str = "dream_cis",
    trans_prefix: str = "dream_trans",
    technical_kwargs: Mapping[str, Any] | None = None,
    cis_kwargs: Mapping[str, Any] | None = None,
    trans_kwargs: Mapping[str, Any] | None = None,
    features: Sequence[str] | np.ndarray | None = None,
    min_cells: int = 0,
    checkpoint: str | None = None,
    backend: str = "local",
    client: Any = None,
    n_jobs: int = 1,
    copy: bool = False,
    checkpoint_mismatch: Literal["raise", "restart"] = "raise",
    control_cells: int | None = None,
    curves: Literal["all", "discoveries"] = "all",
    distribute: Literal["targets", "chunks"] = "targets",
    target_batch: int = 1,
) -> MuData | None:
    """Fit every target of a screen: one technical fit, then cis + trans per target.

    1. Technical fit of ``modality`` (:func:`~dream_sc.tl.fit_technical`, control cells) under
       ``technical_key_added``. A fit already stored there with exactly the same settings
       (every argument fit_screen would pass, seed included) is reused instead of refitted.
    2. For each target ``t`` (sorted by name; all non-control targets by default):
       :func:`~dream_sc.tl.fit_cis` with ``cis_target=t`` under ``f"{cis_prefix}_{t}"`` and
       :func:`~dream_sc.tl.fit_trans` with that ``cis_key`` under ``f"{trans_prefix}_{t}"``,
       on the cells of ``t`` and the controls only (other cells hold NaN in its columns).

    High MOI (``guide_targets`` given; see :doc:`/screens`): the technical fit uses every cell
    (unless ``technical_kwargs`` says otherwise); each target's cis and trans fits use every
    cell, the cells without its guides being its comparison (sceptre's complement); its cis
    fit pools the other targets' guides into one reference guide ``"other_targets"``.

    Every target gets its own seed, derived from ``seed`` and its name
    (:func:`target_seed`): a target's results are the same whichever other targets are in the
    call. One progress bar runs over the targets (the fits' own bars are off). Everything is
    validated before any fit starts, and after an error (or an interrupt) the MuData is left as
    it was; finished targets survive only in ``checkpoint``.

    Parameters
    ----------
    mdata
        The screen (low MOI: one guide per cell in ``obs[guide_key]``).
    modality
        Count (negbinom) modality holding the cis genes and fitted in step 3.
    targets
        Targets to fit (labels of ``obs[target_key]``, high MOI: of ``guide_targets``);
        default all but ``control_label``.
    guide_targets, guide_assignment_key
        High MOI: guide -> target mapping (dict or Series; control guides map to
        ``control_label``) of the cells x guides DataFrame ``obsm[guide_assignment_key]``
        (0/1 calls or non-negative weights such as UMI counts; a guide counts as carried when
        its weight is positive). ``None``: low MOI (a screen that looks high-MOI is refused).
    technical_key
        Technical covariate column(s) of step 1 (``None``: none).
    cis_feature
        ``None``: each target's label is its cis feature in ``modality``; a dict
        ``target -> feature`` for targets whose gene is named otherwise (others keep their
        label). A target whose cis feature is not in ``modality`` is an error.
    function
        Curve family of the trans fits.
    guide_key, target_key, control_label, sum_factor_key, layer
        As in the step functions.
    n_steps
        SVI steps: one number for all three steps, or a dict with keys ``"technical"``,
        ``"cis"``, ``"trans"``; ``None`` uses :data:`SCREEN_N_STEPS` (missing / ``None``
        entries: each function's default).
    batch_size, n_samples
        Cells per SVI step and posterior samples: one value for every step, or a dict with
        keys ``"technical"``, ``"cis"``, ``"trans"`` like ``n_steps`` (``None``: automatic /
        ``settings.n_samples``; a ``None`` entry: that function's default).
    seed
        Seed of the technical fit and source of the per-target seeds (``None``:
        ``settings.seed``, else a fresh seed; recorded).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; ``None`` (default):
        ``settings.device``.
    progress
        One bar over targets (``None``: ``settings.progress_bar``).
    key_added
        Key of the screen record: ``mdata.uns[key_added]``.
    technical_key_added, cis_prefix, trans_prefix
        Key of the technical fit and prefixes of the per-target keys.
    technical_kwargs, cis_kwargs, trans_kwargs
        Further keyword arguments of :func:`~dream_sc.tl.fit_technical`,
        :func:`~dream_sc.tl.fit_cis`, :func:`~dream_sc.tl.fit_trans` (e.g.
        ``trans_kwargs={"n_permutations": 4}``); the arguments fit_screen sets itself are
        refused. ``cis_kwargs={"sparse_samples": ...}`` forces the storage of the dosage
        samples; by default it is sparse when the screen's dense samples would exceed 1 GB
        (see :doc:`/screens`, "Memory").
    features, min_cells
        Fit only these features of ``modality`` (names or a boolean mask) and only features
        detected in at least ``min_cells`` cells of each target's fit (see
        :func:`~dream_sc.tl.fit_trans`); the technical fit covers every feature.
    checkpoint
        Directory for resumable runs: the technical fit and each finished target are saved
        there (data only, each with a fingerprint of its cells' data and the settings); a
        rerun on the same data with the same settings skips them, ending with results
        identical to an uninterrupted run. Other data or settings: see :doc:`/reliability`.
    backend, client, distribute
        ``"local"`` (default) or ``"dask"`` with a ``dask.distributed`` client. The technical
        fit runs its feature chunks on the cluster; ``distribute="targets"`` (default) makes
        every target one task (carrying only the cells its fits read; give the cluster one
        single-threaded worker per core), ``"chunks"`` runs the targets here with their trans
        feature chunks on the cluster. Results are identical to the local run (see
        :doc:`/cluster`).
    n_jobs
        Targets fitted at a time in worker processes (``-1``: one per CPU; local backend
        only), each with ``settings.torch_threads`` torch threads (default: this process's
        threads shared out); results identical to a serial run with as many threads per fit.
        Worth it where one fit leaves cores idle (see :doc:`/screens`).
    copy
        Return a fitted copy instead of writing in place.
    checkpoint_mismatch
        ``"raise"``: stale, damaged or old-format pieces in ``checkpoint`` raise a ValueError
        naming the file and what changed, before any work, deleting nothing; ``"restart"``:
        those pieces are deleted (matching ones are still reused).
    control_cells
        Fit each target on its cells plus this many control cells (one subsample shared by
        all targets, stratified by technical group, drawn from ``seed``; high MOI: each target
        draws its own from the cells without its guides, with its seed; ``None``: all). The
        technical fit uses all controls, and at low MOI so does each target's test
        (``trans_kwargs`` ``test_*``, :func:`~dream_sc.tl.fit_trans`). See :doc:`/screens`.
    curves
        ``"all"``: every tested feature of every target gets a curve. ``"discoveries"``:
        each target's trans fit runs in two stages, scoring every feature first and fitting
        curves only for its stage-one discoveries (see :func:`~dream_sc.tl.fit_trans`; the
        threshold via ``trans_kwargs={"curve_qvalue": ...}``); q-values are unchanged, and
        on a genome-scale screen most of the trans time is saved.
    target_batch
        Cis fits of this many targets at a time in one batched SVI run (``1``, default: each
        target alone, as before). Blocks are consecutive targets in the order above; each
        target keeps its own model, seed, Laplace start and loss, and the targets' terms of
        the shared loss are independent, so a batched fit follows the target's lone fit up
        to float rounding while paying a step's Python and autograd overhead once per block
        (genome-scale targets of ~1,200 cells: ~1.4 instead of ~3 CPU s per cis fit at
        ``target_batch=8``, the same accuracy; see :doc:`/performance`). A target's numbers
        depend on its block, which the target order and ``target_batch`` fix: serial,
        ``n_jobs`` and dask runs (a worker or task fits a whole block) and resumed runs give
        identical results. Fits that cannot share a run (``cis_kwargs`` with ``escapers``,
        ``tolerance``, a cell ``batch_size`` below a target's cells) are fitted one by one
        within their block. High MOI with a number of ``control_cells``: local serial runs only.

    Returns
    -------
    ``None`` (or the fitted copy). Writes the step results under their keys (see
    :doc:`/storage`) and ``mdata.uns[key_added]``: ``modality``, ``moi`` (``"low"`` /
    ``"high"``), ``targets``, ``cis_features``, ``cis_keys``, ``trans_keys``, ``seeds`` (per
    target), ``technical_key_added``, ``technical`` (``"fitted"``, ``"reused"``, ``"checkpoint"``),
    ``timings`` (DataFrame, index = target: ``cis_seconds``, ``trans_seconds``,
    ``seconds``, ``from_checkpoint``), ``technical_seconds``, ``seconds``, ``params``,
    ``versions``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=400, n_genes=20, n_targets=2, seed=0)
    >>> ds.tl.fit_screen(mdata, n_steps=30, trans_kwargs={"n_permutations": 1}, progress=False)
    >>> list(mdata.uns["dream_screen"]["trans_keys"])
    ['dream_trans_GEMIN5', 'dream_trans_GFI1B']
    """
    params = {k: v for k, v in locals().items() if k not in ("mdata", "client")}
    if target_batch == 1:  # recorded (and in a checkpoint's manifest) only when batching
        del params["target_batch"]
    start = time.perf_counter()
    check_mismatch(checkpoint_mismatch)
    V.check_mudata(mdata)  # validation: nothing is fitted or written before all of it passes
    V.check_modality(mdata, modality)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError("key_added must be a non-empty string.")
    if function not in FUNCTIONS:
        raise ValueError(f"function must be one of {list(FUNCTIONS)}; got {function!r}.")
    distribution = get_registration(mdata[modality], modality)["distribution"]
    if not get_family(distribution).cis_capable:
        raise ValueError(
            f"fit_screen needs a count (negbinom) modality holding the cis genes; {modality!r} "
            f"is {distribution}."
        )
    backend_kw = _backend_kwargs(backend, client, distribute)
    n_jobs = check_n_jobs(n_jobs, backend)
    target_batch = check_target_batch(target_batch)
    threads = int(settings.torch_threads or default_threads(n_jobs))
    technical_kwargs = _check_kwargs(technical_kwargs, fit_technical, "technical_kwargs")
    cis_kwargs = _check_kwargs(cis_kwargs, fit_cis, "cis_kwargs")
    trans_kwargs = _check_kwargs(trans_kwargs, fit_trans, "trans_kwargs")
    trans_kwargs = screen_trans_kwargs(
        trans_kwargs, mdata[modality].var_names, modality, features, min_cells, curves
    )
    steps = step_settings(
        {"n_steps": n_steps, "batch_size": batch_size, "n_samples": n_samples},
        {
            "n_steps": SCREEN_N_STEPS,
            "batch_size": dict.fromkeys(STEPS),
            "n_samples": dict.fromkeys(STEPS, int(settings.n_samples)),
        },
    )
    design = resolve_design(
        mdata,
        guide_targets=guide_targets,
        assignment_key=guide_assignment_key,
        targets=targets,
        guide_key=guide_key,
        target_key=target_key,
        control_label=control_label,
        technical_key=technical_key,
    )
    obs, chosen, control = mdata.obs, design.chosen, design.control
    check_design(design)
    if target_batch > 1 and design.moi == "high" and control_cells is not None:
        if n_jobs > 1 or (backend_kw and distribute == "targets"):
            raise ValueError(
                "target_batch > 1 with a high-MOI screen and control_cells draws each target's "
                "comparison cells from the whole screen, which a worker's block does not hold: "
                "use n_jobs=1 and backend='local', or target_batch=1."
            )
    cis_kwargs = sample_storage(cis_kwargs, len(chosen), mdata.n_obs, steps["cis"]["n_samples"])
    check_screen_memory(
        mdata,
        modality,
        design,
        target_key=target_key,
        control_cells=control_cells,
        n_draws=steps["cis"]["n_samples"],
        sparse_draws=cis_kwargs["sparse_samples"],
        trans_kwargs=trans_kwargs,
        n_jobs=n_jobs,
    )
    if design.moi == "low":  # the test: guide dosages, all controls (tl/_test_cells.py)
        trans_kwargs = {**SCREEN_TEST, **trans_kwargs}
    if design.moi == "high":
        technical_kwargs.setdefault("use_all_cells", True)
        params["guide_targets"] = dict(design.guide_targets.items())
    features = _resolve_cis_features(chosen, cis_feature, mdata[modality].var_names, modality)
    sf = sum_factor_values(mdata, sum_factor_key)
    V.check_sum_factors(sf[design.used], sum_factor_key)
    cis_keys = {t: target_fit_key(cis_prefix, t) for t in chosen}
    trans_keys = {t: target_fit_key(trans_prefix, t) for t in chosen}
    store = Checkpoint(checkpoint) if checkpoint is not None else None
    cfg = FitConfig.resolve(seed=resumed_seed(store, seed, checkpoint_mismatch), device=device)
    seed, dev = cfg.seed, str(cfg.device)  # a drawn seed resumes
    if control_cells is not None:  # low MOI: one subsample for every target (checked here)
        rng = np.random.default_rng(seed)
        picked = screen_controls(obs, control, technical_key, control_cells, rng)
        cis_kwargs["control_cells"] = picked if design.moi == "low" else int(control_cells)
    common = {
        "guide_key": guide_key,
        "target_key": target_key,
        "control_label": control_label,
        "sum_factor_key": sum_factor_key,
        "layer": layer,
        "device": dev,
        "progress": False,
    }
    tech_call = {
        "modality": modality,
        "technical_key": technical_key,
        **common,
        "seed": seed,
        "key_added": technical_key_added,
        **steps["technical"],
        **technical_kwargs,
        **backend_kw,
    }
    manifest = _jsonable(manifest_of(seed, clean_params(params)))
    if store is not None:
        open_checkpoint(
            store,
            manifest,
            checkpoint_mismatch,
            mdata,
            modality=modality,
            chosen=chosen,
            control=control,
            cis_features=features,
            use_all_cells=bool(technical_kwargs.get("use_all_cells", False)),
            sf=sf,
            keys=(guide_key, target_key, technical_key, layer),
            assignment=design.fingerprint_assignment(mdata),
        )
    target_mdata = mdata.copy() if copy else mdata
    prefixes = [technical_key_added, key_added, *cis_keys.values(), *trans_keys.values()]
    before = {p: capture(target_mdata, modality, p, prefixes) for p in prefixes}
    try:
        record = _run(
            target_mdata,
            modality=modality,
            chosen=chosen,
            features=features,
            function=function,
            steps=steps,
            common=common,
            seed=seed,
            tech_call=tech_call,
            technical_key_added=technical_key_added,
            cis_keys=cis_keys,
            trans_keys=trans_keys,
            cis_kwargs={**cis_kwargs, **design.cis_kwargs()},
            trans_kwargs=trans_kwargs,
            backend_kw=backend_kw,
            store=store,
            manifest=manifest,
            prefixes=prefixes,
            show=resolve_progress(progress),
            n_jobs=n_jobs,
            threads=threads,
            distribute_targets=bool(backend_kw) and distribute == "targets",
            target_batch=target_batch,
        )
    except BaseException:
        if not copy:
            drop_all(target_mdata, modality, prefixes)
            for pieces in before.values():
                apply(target_mdata, modality, pieces)
        raise
    if not isinstance(n_samples, Mapping):
        n_samples = int(n_samples or settings.n_samples)
    params.update(seed=seed, device=dev, n_samples=n_samples, targets=chosen)
    record.update(
        modality=modality,
        moi=design.moi,
        seconds=float(time.perf_counter() - start),
        params=clean_params(params),
        versions=versions(),
    )
    write_screen(target_mdata, key_added, record)
    logger.info("fit_screen: %d targets in %.1fs", len(chosen), record["seconds"])
    return target_mdata if copy else None
