"""Conditional-randomisation null of a trans fit: dose-association scores without refitting.

See :mod:`dream_sc.models.null` for the statistic and why its null is exchangeable with the
scores of flat features on every design.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
from scipy import sparse

from ..engine.memory import feature_chunks
from ..models.families import get_family
from ..models.null import (
    constant_rows,
    dose_basis,
    exchangeability,
    null_model,
    score_parts,
    score_parts_collapsed,
    statistics,
)
from ..models.shared_shift import estimate_shift, remove_shift, shift_profile
from ..models.significance import permute_within_groups
from ._shift_check import finite_record, shift_diagnostic, shift_message
from ._trans_job import TransJob

logger = logging.getLogger("dream_sc")

#: Cells x features held densely per chunk (observations, residuals, weights).
_DENSE_BUDGET = 4_000_000
#: Permutations scored together (bounds the size of the stacked bases).
_PERMUTATION_BLOCK = 25
#: Distributions whose scores get the shared dose-dependent shift removed
#: (:mod:`dream_sc.models.shared_shift`): those with size factors. Emptied by
#: ``benchmarks/bench_size_factors.py --no-shift`` to measure the uncorrected score.
SHARED_SHIFT_DISTRIBUTIONS: tuple[str, ...] = ("negbinom",)
#: Distributions whose scores are matched to the null of features of similar sparsity
#: (:func:`sparsity_matched`). Emptied by ``benchmarks/calib_screen.py --no-strata``.
STRATIFIED_NULL_DISTRIBUTIONS: tuple[str, ...] = ("negbinom",)
#: Sparsity strata of :func:`sparsity_matched` (at most) and the fewest features of one.
NULL_STRATA = 8
NULL_STRATUM_MIN_FEATURES = 200


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix, dtype=np.float64)


def _chunk_model(job: TransJob, idx: np.ndarray, onehot: np.ndarray):
    """No-dose model of the fitted features ``idx`` (local indices) and their detections.

    Detections: cells with a non-zero observation per feature.
    """
    data = job.data
    cols = np.flatnonzero(job.fitted)[idx]
    y = _dense(data.X[:, cols]).astype(np.float64)
    noise = job.noise(idx)
    total = get_family(data.distribution).score_trials(
        data.X, cols, total=data.total, group_index=data.group_index
    )
    model = null_model(
        data.distribution,
        y,
        onehot,
        log_sf=job.inputs.log_sf,
        log_r=noise.get("log_r"),
        total=total,
        log_conc=noise.get("log_conc"),
        log_sigma=noise.get("log_sigma"),
    )
    return model, (np.nan_to_num(y) != 0).sum(0)


def permutations(job: TransJob, n_permutations: int, offset: int = 0) -> list[np.ndarray]:
    """Within-group permutations ``offset, ..., offset + n - 1`` of the job's cells."""
    return [
        permute_within_groups(job.inputs.group, job.streams, offset + number)
        for number in range(n_permutations)
    ]


def rescore(job: TransJob, perms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Real scores ``[T]`` and null scores ``[len(perms), T]`` of the fitted features."""
    real, null, _ = rescore_with_shift(job, perms)
    return real, null


def _onehot(group: np.ndarray) -> np.ndarray:
    n_groups = int(group.max()) + 1
    onehot = np.zeros((len(group), n_groups))
    onehot[np.arange(len(group)), group] = 1.0
    return onehot[:, onehot.sum(0) > 0]


def rescore_with_shift(
    job: TransJob, perms: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """Real and null scores, and the shared shift removed from them.

    For count data (``SHARED_SHIFT_DISTRIBUTIONS``) the dose-dependent shift shared by every
    feature (:mod:`dream_sc.models.shared_shift`) is estimated across all fitted features for
    the real dosage and, separately, for every permutation, and removed from each feature's
    score; the third value then describes it (``log2_change`` over the 5th-95th percentile of
    the dosage, its permutation p-value, ``gamma``), else it is ``None``.
    """
    group = np.asarray(job.inputs.group)
    onehot = _onehot(group)
    inputs = job.inputs
    basis = dose_basis(inputs.log_dose_mean, None if inputs.use_dose_mean else inputs.log_dose_var)
    n_bases = 1 + len(perms)
    d = basis.shape[1]
    u = np.zeros((n_bases, job.n_features, d))
    v = np.zeros((n_bases, job.n_features, d, d))
    dispersion = np.ones(job.n_features)
    detected = np.zeros(job.n_features, dtype=np.int64)
    gi = job.data.group_index[job.fitted] if job.data.group_index is not None else None
    width = max(1, _DENSE_BUDGET // max(len(group), 1))
    bases = [basis] + [basis[p] for p in perms]
    # guide dosages: most cells (the controls) share one basis row, merged per group
    collapse = constant_rows(basis) if job.settings.test_basis == "guide" else None
    for idx in feature_chunks(job.n_features, width, gi):
        model, detected[idx] = _chunk_model(job, idx, onehot)
        dispersion[idx] = model.dispersion
        for start in range(0, n_bases, _PERMUTATION_BLOCK):
            block = bases[start : start + _PERMUTATION_BLOCK]
            if collapse is None:
                bu, bv = score_parts(model, onehot, block)
            else:
                bu, bv = score_parts_collapsed(model, onehot, block, collapse[0])
            u[start : start + len(block), idx] = bu
            v[start : start + len(block), idx] = bv
    info = None
    if job.data.distribution in SHARED_SHIFT_DISTRIBUTIONS and job.n_features > 2 * d:
        shift = estimate_shift(u, v, dispersion)
        u = remove_shift(u, v, shift.gamma)
        log_dose = np.asarray(inputs.log_dose_mean, dtype=np.float64)
        changes = np.array(
            [shift_profile(shift.gamma[0], basis, log_dose)]
            + [
                shift_profile(g, b, log_dose[p])
                for g, b, p in zip(shift.gamma[1:], bases[1:], perms, strict=True)
            ]
        )
        null_changes = np.abs(changes[1:])
        info = {
            "log2_change": float(changes[0]),
            "pvalue": float((1 + (null_changes >= abs(changes[0])).sum()) / (1 + len(perms)))
            if len(perms)
            else float("nan"),
            "null_log2_change_sd": float(changes[1:].std()) if len(perms) > 1 else float("nan"),
            "gamma": shift.gamma[0].astype(np.float64),
        }
    stats = statistics(u, v, dispersion, job.settings.test_statistic)
    if job.data.distribution in STRATIFIED_NULL_DISTRIBUTIONS:
        stats = sparsity_matched(stats, detected)
    return stats[0], stats[1:], info


def _stratum_map(null_k: np.ndarray, reference: np.ndarray):
    """Monotone map of a stratum's scores onto the reference null, never raising a score.

    ``reference`` is sorted. Each null score of the stratum goes to the reference quantile of
    its rank (``np.quantile``'s linear interpolation; ties share the mean); scores above the
    stratum's largest null score are scaled by the ratio at the top.
    """
    xs = np.sort(null_k)
    probs = (np.arange(len(xs)) + 0.5) / len(xs)
    ys = np.interp(probs * (len(reference) - 1), np.arange(len(reference)), reference)
    ux, inverse = np.unique(xs, return_inverse=True)
    uy = np.bincount(inverse, weights=ys) / np.bincount(inverse)
    top = uy[-1] / ux[-1] if ux[-1] > 0 else 1.0

    def apply(values: np.ndarray) -> np.ndarray:
        out = np.interp(values, ux, uy)
        out = np.where(values > ux[-1], values * top, out)
        return np.minimum(np.maximum(out, 0.0), values)

    return apply


def sparsity_matched(stats: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Scores ``[1 + P, T]`` (real, then null) with heavy-tailed sparsity strata shrunk.

    The target-decoy q-values and the pooled permutation p-values compare every feature's
    score with the null scores of *all* features of the fit. The null of a feature detected
    in few cells is heavier-tailed than that of a well-detected one (its score is made by the
    dosages of the few cells with counts), so against the pooled null the sparse features are
    anti-conservative and the detected ones conservative: on 20-target many-target check
    screens (``benchmarks/calib_screen.py``) the flat features with a mean count below 0.01
    had 4.6 times too many p-values below 1e-3 and those above 0.3 a twentieth, and most false
    calls were such sparse features with large apparent effects. Here the features are cut
    into up to :data:`NULL_STRATA` equal-count strata of their detected cells (at least
    :data:`NULL_STRATUM_MIN_FEATURES` features each); within a stratum real and null scores go
    through the same monotone map that sends the stratum's null onto the pooled null, and a
    score is only ever lowered (``min(score, mapped)``). A feature's real and permuted scores
    are mapped alike, so their exchangeability, and with it the validity of the target-decoy
    estimate, is kept; the pooled null then loses the sparse features' heavy tail, which lets
    the detected features' scores through. Fewer than two strata: unchanged.
    """
    n_features = stats.shape[1]
    n_strata = min(NULL_STRATA, n_features // max(NULL_STRATUM_MIN_FEATURES, 1))
    null = stats[1:]
    if n_strata < 2 or null.shape[0] == 0:
        return stats
    reference = np.sort(null[np.isfinite(null)])
    if reference.size == 0:
        return stats
    out = stats.copy()
    order = np.argsort(np.asarray(detected), kind="stable")
    for members in np.array_split(order, n_strata):
        block = null[:, members]
        finite = block[np.isfinite(block)]
        if finite.size == 0:
            continue
        apply = _stratum_map(finite, reference)
        values = stats[:, members]
        ok = np.isfinite(values)
        mapped = values.copy()
        mapped[ok] = apply(values[ok])
        out[:, members] = mapped
    return out


def rescore_null(job: TransJob, n_permutations: int) -> dict:
    """The conditional-randomisation null of a prepared trans job.

    Returns ``score`` (real dose-association scores ``[T]``), ``null`` (``[P, T]``), the
    result of the exchangeability check (:func:`dream_sc.models.null.exchangeability`), the
    ``shared_shift`` removed (or ``None``) and the ``seconds`` it took.
    """
    start = time.perf_counter()
    real, null, shift = rescore_with_shift(job, permutations(job, n_permutations))
    check = exchangeability(real, null, rng=np.random.default_rng(job.seed))
    if not check.passed:
        logger.warning(
            "The permutation null does not look exchangeable with the low-scoring features "
            "(top share %.2f, p = %.3g; lower share %.2f, p = %.3g): q-values may be off; "
            "see the significance docs ('Checking the null').",
            check.top_share,
            check.top_pvalue,
            check.lower_share,
            check.lower_pvalue,
        )
    logger.info(
        "conditional-randomisation null: %d permutations x %d features in %.1fs",
        n_permutations,
        job.n_features,
        time.perf_counter() - start,
    )
    return {
        "score": real,
        "null": null,
        "exchangeability": check,
        "shared_shift": shift,
        "seconds": float(time.perf_counter() - start),
    }


def significance(
    job: TransJob, columns: dict, n_permutations: int, *, alpha: float, found: dict | None = None
) -> tuple[dict, dict]:
    """Score, null and significance columns of a trans fit, and the run-record entries.

    ``n_permutations = 0``: no null (q-values NaN, posterior calls), but the ``score`` column is
    still the dose-association score. ``found``: the job's :func:`rescore_null` result when it
    was computed already (stage one of ``curves="discoveries"``).
    """
    from ._significance import significance_columns

    curves_selected = found is not None  # stage one chose the features that got curves
    if n_permutations > 0:
        if found is None:
            found = rescore_null(job, n_permutations)
        score, null = found["score"], found["null"]
    else:
        score, null = rescore(job, [])[0], None
    sig = significance_columns(columns, score, null, alpha=alpha)
    record: dict = {}
    if null is not None:
        record = {
            "null_scores": null,
            "null_method": "rescore",
            "null_seconds": found["seconds"],
            "exchangeability": found["exchangeability"].as_dict(),
        }
        if found["shared_shift"] is not None:
            record["shared_shift"] = finite_record(found["shared_shift"])
    if job.data.distribution in SHARED_SHIFT_DISTRIBUTIONS:
        # with stage one's result (curves="discoveries") the curves were fitted only on the
        # features the test selected: their non-significant ones are selected for a large
        # response, so their median says nothing about the size factors (the shared shift does)
        response = None if curves_selected else columns.get("response_mean")
        diag = shift_diagnostic(record.get("shared_shift"), response, sig["significant"])
        record["shift_diagnostic"] = finite_record(diag)
        if diag["warn"]:
            warnings.warn(shift_message(diag), UserWarning, stacklevel=3)
    return sig, record
