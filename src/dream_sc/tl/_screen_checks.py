"""Validation and bookkeeping helpers of :func:`dream_sc.tl.fit_screen` (no fitting here)."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from .. import _validation as V
from .._settings import settings
from ..engine.config import STEP_DEFAULTS
from ..engine.memory import MemoryBudgetError, available_memory, screen_result_bytes
from ..models.curves import CURVE_NAMES
from ..models.significance import DEFAULT_N_PERMUTATIONS
from ._cis import fit_cis
from ._common import FitConfig, clean_params
from ._technical import fit_technical
from ._trans import feature_names, fit_trans
from ._trans_stages import CURVE_QVALUE, check_curves

if TYPE_CHECKING:
    from ._screen_high_moi import ScreenDesign

STEPS = ("technical", "cis", "trans")
FUNCTIONS = CURVE_NAMES  # the curve registry's names (a live view)
BACKENDS = ("local", "dask")
#: Steps of each fit when ``n_steps=None`` (``None`` = that function's own default).
SCREEN_N_STEPS: dict[str, int | None] = {"technical": None, "cis": None, "trans": None}
#: Fit settings fit_screen takes per step: one value for all steps or a mapping step -> value.
PER_STEP = ("n_steps", "batch_size", "n_samples")
#: Step arguments fit_screen sets for every target itself (high MOI: from its own
#: ``guide_targets`` / ``guide_assignment_key``), besides the step arguments it takes under the
#: same name (see :func:`managed_arguments`).
_SET_PER_TARGET = {"mdata", "cis_target", "cis_key", "guide_targets", "guide_assignment_key"}
_SET_PER_TARGET |= {"control_cells"}
#: Dense dosage samples of a whole screen above which fit_screen stores them sparse.
SPARSE_SAMPLES_BYTES = 1 << 30
#: fit_screen arguments that may be given in ``trans_kwargs`` instead (not both).
_EITHER = {"features", "min_cells", "curves"}
#: Keys of a stored technical run record compared before reusing it.
_NOT_COMPARED = {"progress", "copy", "checkpoint", "checkpoint_mismatch", "key_added", "client"}


def target_seed(seed: int, target: str) -> int:
    """Seed of one target's cis and trans fits, from the screen seed and the target name only.

    Results for a target therefore do not depend on which other targets are in the call.

    Examples
    --------
    >>> target_seed(0, "GFI1B") == target_seed(0, "GFI1B")
    True
    """
    digest = hashlib.sha256(f"{int(seed)}\x1f{target}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


def _step_values(value: Any, name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` for every step: one value for all, or a mapping step -> value."""
    if isinstance(value, Mapping):
        unknown = sorted(set(map(str, value)) - set(STEPS))
        if unknown:
            raise ValueError(f"{name} has unknown step(s) {unknown}; use keys from {list(STEPS)}.")
        return {s: value.get(s, defaults[s]) for s in STEPS}
    if value is None:
        return dict(defaults)
    return dict.fromkeys(STEPS, value)


def managed_arguments() -> set[str]:
    """Step arguments fit_screen sets itself, so not allowed in ``*_kwargs``.

    Derived from the signatures: every argument of ``fit_screen`` that a step function takes
    too (``n_steps``, ``seed``, ``device``, ``layer``, ...), plus what it sets per target.
    """
    from ._screen import fit_screen

    step_arguments = set().union(
        *(inspect.signature(f).parameters for f in (fit_technical, fit_cis, fit_trans))
    )
    own = set(inspect.signature(fit_screen).parameters) - _EITHER
    return (own & step_arguments) | _SET_PER_TARGET


def step_settings(values: Mapping[str, Any], defaults: Mapping[str, Mapping[str, Any]]) -> dict:
    """``{step: {setting: value}}`` of the :data:`PER_STEP` settings given to ``fit_screen``.

    Each value is one value for every step or a mapping step -> value; ``defaults`` fill what
    is not given (``None`` entries are left to the step function's own default).
    """
    per_setting = {name: _step_values(values[name], name, defaults[name]) for name in PER_STEP}
    for name, by_step in per_setting.items():
        for value in by_step.values():
            V.check_fit_settings(**{name: value})
    return {
        step: {
            name: by_step[step]
            for name, by_step in per_setting.items()
            if by_step[step] is not None
        }
        for step in STEPS
    }


def _check_kwargs(kwargs: Mapping | None, func, name: str) -> dict:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(
            f"{name} must be a dict of keyword arguments; got {type(kwargs).__name__}."
        )
    allowed = set(inspect.signature(func).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"{name} has argument(s) {unknown} that {func.__name__} does not take.")
    managed = sorted(set(kwargs) & managed_arguments())
    if managed:
        raise ValueError(
            f"{name} sets {managed}, which fit_screen manages; pass them to fit_screen itself "
            "(or fit single targets with the step functions)."
        )
    return dict(kwargs)


def screen_trans_kwargs(
    trans_kwargs: dict,
    var_names: pd.Index,
    modality: str,
    features: Any,
    min_cells: int,
    curves: str,
) -> dict:
    """``trans_kwargs`` with fit_screen's own trans arguments added, checked before any work.

    ``features``, ``min_cells`` and ``curves`` go either as fit_screen arguments or in
    ``trans_kwargs``, not both; the stage settings are checked as fit_trans checks them.
    """
    for name, value, unset in (
        ("features", features, None),
        ("min_cells", min_cells, 0),
        ("curves", curves, "all"),
    ):
        if value is not unset and name in trans_kwargs:
            raise ValueError(f"Give {name} either as fit_screen({name}=...) or in trans_kwargs.")
    if features is not None:
        trans_kwargs["features"] = list(feature_names(var_names, features, modality))
    if min_cells:
        trans_kwargs["min_cells"] = int(min_cells)
    if curves != "all":
        trans_kwargs["curves"] = curves
    check_curves(
        trans_kwargs.get("curves", "all"),
        trans_kwargs.get("curve_qvalue", CURVE_QVALUE),
        trans_kwargs.get("test", True),
    )
    return trans_kwargs


def sample_storage(cis_kwargs: dict, n_targets: int, n_obs: int, n_draws: int | None) -> dict:
    """``cis_kwargs`` with ``sparse_samples`` chosen unless the user set it.

    Dense per-cell dosage samples cost ``n_obs x n_draws`` float32 per target whatever the
    target's own cells; sparse storage (:func:`~dream_sc.tl.fit_cis`) is chosen when the
    screen's dense samples would exceed :data:`SPARSE_SAMPLES_BYTES`.

    Examples
    --------
    >>> sample_storage({}, 500, 100_000, 100)
    {'sparse_samples': True}
    >>> sample_storage({}, 3, 2_000, 100)
    {'sparse_samples': False}
    """
    if "sparse_samples" in cis_kwargs:
        return dict(cis_kwargs)
    dense = 4 * n_targets * n_obs * int(n_draws or settings.n_samples)
    return {**cis_kwargs, "sparse_samples": dense > SPARSE_SAMPLES_BYTES}


def check_design(design: ScreenDesign) -> None:
    """Raise before any work on target labels and designs a screen cannot take."""
    slashed = [t for t in design.chosen if "/" in t]
    if slashed:
        raise ValueError(
            f"Target label(s) {slashed} contain '/', which cannot be part of a result key "
            "(h5 paths); rename them in mdata.obs first."
        )


def _data_bytes(matrix: Any) -> int:
    """Bytes of a count matrix in memory (sparse: values and indices)."""
    if sparse.issparse(matrix):
        parts = ("data", "indices", "indptr")
        return int(sum(getattr(matrix, p).nbytes for p in parts if hasattr(matrix, p)))
    return int(getattr(matrix, "nbytes", 0))


def check_screen_memory(
    mdata: MuData,
    modality: str,
    design: ScreenDesign,
    *,
    target_key: str,
    control_cells: Any,
    n_draws: int | None,
    sparse_draws: bool,
    trans_kwargs: Mapping[str, Any],
    n_jobs: int,
) -> None:
    """Raise a MemoryBudgetError before any work when the screen's results will not fit.

    The estimate (:func:`~dream_sc.engine.memory.screen_result_bytes`) covers what every
    target's fits store, plus one copy of the modality's data per worker process
    (``n_jobs > 1``); the budget is :func:`~dream_sc.engine.memory.available_memory` (set
    ``ds.settings.max_memory_gb`` to choose it).
    """
    n_obs = mdata.n_obs
    if design.moi == "high":
        cells = n_obs
    else:
        labels = mdata.obs[target_key].astype(str)
        own = int(labels[labels.isin(design.chosen)].value_counts().max()) if design.chosen else 0
        n_control = int(np.sum(design.control))
        cells = own + (n_control if control_cells is None else min(n_control, int(control_cells)))
    n_features = mdata[modality].n_vars
    if trans_kwargs.get("features") is not None:
        n_features = len(trans_kwargs["features"])
    n_perm = int(trans_kwargs.get("n_permutations", DEFAULT_N_PERMUTATIONS))
    need = screen_result_bytes(
        n_targets=len(design.chosen),
        n_obs=n_obs,
        n_features=n_features,
        n_draws=int(n_draws or settings.n_samples),
        cells_per_target=cells,
        sparse_draws=sparse_draws,
        n_permutations=n_perm if trans_kwargs.get("test", True) else 0,
    )
    copies = ""
    if n_jobs > 1:
        need += n_jobs * _data_bytes(mdata[modality].X)
        copies = f" (with {n_jobs} worker copies of the data)"
    budget, source = available_memory(FitConfig(max_memory_gb=settings.max_memory_gb))
    if need > budget:
        raise MemoryBudgetError(
            f"The results of {len(design.chosen)} targets x {n_features} features would take "
            f"about {need / 1e9:.1f} GB{copies}, more than the {budget / 1e9:.1f} GB available "
            f"({source}). Fit the targets in "
            "parts (`targets=` a subset; write each part with `mdata.write(...)`), select "
            "features (`features=`, `min_cells=`), lower `n_samples` or n_permutations, or "
            "use fewer workers (`n_jobs`); `ds.settings.max_memory_gb` sets the budget."
        )


def _backend_kwargs(backend: str, client: Any, distribute: str = "targets") -> dict:
    """``backend`` / ``client`` for fit_technical and fit_trans (only when not local)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}; got {backend!r}.")
    if distribute not in ("targets", "chunks"):
        raise ValueError(f"distribute must be 'targets' or 'chunks'; got {distribute!r}.")
    if backend == "local":
        if client is not None:
            raise ValueError("client= is only used with backend='dask'.")
        return {}
    for func in (fit_technical, fit_trans):
        params = inspect.signature(func).parameters
        if "backend" not in params or "client" not in params:
            raise ValueError(
                f"backend={backend!r} needs {func.__name__} with `backend=`/`client=` keywords, "
                "which this version of dream_sc does not have; use backend='local'."
            )
    return {"backend": backend, "client": client}


def _resolve_targets(obs, target_key, control_label, targets, guide_key) -> list[str]:
    labels = obs[target_key].astype(str)
    present = [t for t in pd.unique(labels) if t != control_label]
    if targets is None:
        chosen = sorted(present)
    else:
        if isinstance(targets, str):
            targets = [targets]
        chosen = [str(t) for t in targets]
        dup = sorted({t for t in chosen if chosen.count(t) > 1})
        if dup:
            raise ValueError(f"targets lists {dup} more than once.")
        if control_label in chosen:
            raise ValueError(
                f"targets includes the control label {control_label!r}; controls are the "
                "reference of every target, not a target."
            )
        missing = [t for t in chosen if t not in present]
        if missing:
            raise ValueError(
                f"Target(s) {missing} have no cells in mdata.obs[{target_key!r}]."
                + V._suggest(missing[0], present)
            )
    if not chosen:
        raise ValueError(f"No targets to fit: mdata.obs[{target_key!r}] holds only controls.")
    slashed = [t for t in chosen if "/" in t]
    if slashed:
        raise ValueError(
            f"Target label(s) {slashed} contain '/', which cannot be part of a result key "
            "(h5 paths); rename them in mdata.obs first."
        )
    return chosen


def _resolve_cis_features(chosen, cis_feature, var_names, modality) -> dict[str, str]:
    if cis_feature is None:
        mapping = {}
    elif isinstance(cis_feature, Mapping):
        mapping = {str(k): str(v) for k, v in cis_feature.items()}
        extra = sorted(set(mapping) - set(chosen))
        if extra:
            raise ValueError(f"cis_feature maps target(s) {extra} that are not fitted.")
    else:
        raise ValueError(
            "cis_feature must be None (each target's name is its cis feature) or a dict "
            f"target -> feature of {modality!r}; got {type(cis_feature).__name__}."
        )
    features = {t: mapping.get(t, t) for t in chosen}
    absent = {t: f for t, f in features.items() if f not in var_names}
    if absent:
        raise KeyError(
            f"The cis feature of target(s) {sorted(absent)} ({absent}) is not a feature of "
            f"modality {modality!r}. Pass `cis_feature={{target: feature}}` naming the targeted "
            "gene in that modality, or leave the target out with `targets=`."
        )
    return features


def _technical_matches(mdata: MuData, modality: str, key: str, call: dict) -> bool:
    """A stored technical fit under ``key`` ran with exactly the settings of ``call``."""
    adata = mdata[modality]
    if key not in adata.uns or key not in adata.varm:
        return False
    stored = adata.uns[key].get("params", {})
    bound = inspect.signature(fit_technical).bind(mdata, **call)
    bound.apply_defaults()  # arguments left at their defaults must match too
    full = {k: v for k, v in bound.arguments.items() if k != "mdata"}
    for name, value in STEP_DEFAULTS["technical"].items():  # stored resolved
        if full.get(name) is None and name != "n_samples":
            full[name] = value
    wanted = clean_params({k: v for k, v in full.items() if k not in _NOT_COMPARED})
    return all(k in stored and str(stored[k]) == str(v) for k, v in wanted.items())


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
