"""Conditional-randomisation null of a trans fit: dose-association scores without refitting.

See :mod:`dream_sc.models.null` for the statistic and why its null is exchangeable with the
scores of flat features on every design.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from scipy import sparse

from ..engine.memory import feature_chunks
from ..models.families import get_family
from ..models.null import dose_basis, exchangeability, null_model, score_statistics
from ..models.significance import permute_within_groups
from ._trans_job import TransJob

logger = logging.getLogger("dream_sc")

#: Cells x features held densely per chunk (observations, residuals, weights).
_DENSE_BUDGET = 4_000_000
#: Permutations scored together (bounds the size of the stacked bases).
_PERMUTATION_BLOCK = 25


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix, dtype=np.float64)


def _chunk_model(job: TransJob, idx: np.ndarray, onehot: np.ndarray):
    """No-dose model of the fitted features ``idx`` (local indices)."""
    data = job.data
    cols = np.flatnonzero(job.fitted)[idx]
    y = _dense(data.X[:, cols]).astype(np.float64)
    noise = job.noise(idx)
    total = get_family(data.distribution).score_trials(
        data.X, cols, total=data.total, group_index=data.group_index
    )
    return null_model(
        data.distribution,
        y,
        onehot,
        log_sf=job.inputs.log_sf,
        log_r=noise.get("log_r"),
        total=total,
        log_conc=noise.get("log_conc"),
        log_sigma=noise.get("log_sigma"),
    )


def permutations(job: TransJob, n_permutations: int, offset: int = 0) -> list[np.ndarray]:
    """Within-group permutations ``offset, ..., offset + n - 1`` of the job's cells."""
    return [
        permute_within_groups(job.inputs.group, job.seed, offset + number)
        for number in range(n_permutations)
    ]


def rescore(job: TransJob, perms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Real scores ``[T]`` and null scores ``[len(perms), T]`` of the fitted features."""
    group = np.asarray(job.inputs.group)
    n_groups = int(group.max()) + 1
    onehot = np.zeros((len(group), n_groups))
    onehot[np.arange(len(group)), group] = 1.0
    keep = onehot.sum(0) > 0
    onehot = onehot[:, keep]
    inputs = job.inputs
    basis = dose_basis(inputs.log_dose_mean, None if inputs.use_dose_mean else inputs.log_dose_var)
    real = np.zeros(job.n_features)
    null = np.zeros((len(perms), job.n_features))
    gi = job.data.group_index[job.fitted] if job.data.group_index is not None else None
    width = max(1, _DENSE_BUDGET // max(len(group), 1))
    for idx in feature_chunks(job.n_features, width, gi):
        model = _chunk_model(job, idx, onehot)
        real[idx] = score_statistics(model, onehot, [basis])[0]
        for start in range(0, len(perms), _PERMUTATION_BLOCK):
            block = perms[start : start + _PERMUTATION_BLOCK]
            null[start : start + len(block), idx] = score_statistics(
                model, onehot, [basis[p] for p in block]
            )
    return real, null


def rescore_null(job: TransJob, n_permutations: int) -> dict:
    """The conditional-randomisation null of a prepared trans job.

    Returns ``score`` (real dose-association scores ``[T]``), ``null`` (``[P, T]``), and the
    result of the exchangeability check (:func:`dream_sc.models.null.exchangeability`).
    """
    start = time.perf_counter()
    real, null = rescore(job, permutations(job, n_permutations))
    check = exchangeability(real, null, seed=job.seed)
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
    return {"score": real, "null": null, "exchangeability": check}


def significance(
    job: TransJob, columns: dict, n_permutations: int, *, alpha: float
) -> tuple[dict, dict]:
    """Score, null and significance columns of a trans fit, and the run-record entries.

    ``n_permutations = 0``: no null (q-values NaN, posterior calls), but the ``score`` column is
    still the dose-association score.
    """
    from ._significance import significance_columns

    start = time.perf_counter()
    if n_permutations > 0:
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
            "null_seconds": float(time.perf_counter() - start),
            "exchangeability": found["exchangeability"].as_dict(),
        }
    return sig, record
