"""Several targets' :func:`~dream_sc.tl.fit_cis` with their SVI in one batched run.

``fit_screen(target_batch=K)`` fits the cis step of ``K`` targets at a time: each target is
checked and prepared exactly as :func:`~dream_sc.tl.fit_cis` prepares it, the guide-level fits
run together (:func:`~dream_sc.engine.cis_batched.fit_cis_models`), then each target's
per-cell draws, summaries and results are made and written as :func:`~dream_sc.tl.fit_cis`
writes them.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence

from mudata import MuData

from ..engine.cis_batched import fit_cis_models


def fit_cis_block(
    mdata: MuData, calls: Sequence[dict], write: Sequence[bool] | None = None
) -> list[float]:
    """Fit the cis step of several targets (``calls``: fit_cis keyword arguments of each).

    Every call is checked and prepared before any fit (an invalid one raises before work);
    ``write[i]`` false fits target ``i`` (its partners' numbers do not depend on it, but a
    block is always fitted whole, so that they are those of an uninterrupted run) without
    making or writing its results. Returns each target's seconds (its preparation and
    results, plus an equal share of the shared fit).
    """
    from . import _cis

    signature = inspect.signature(_cis.fit_cis)
    write = [True] * len(calls) if write is None else list(write)
    jobs, seconds = [], []
    for call in calls:
        t0 = time.perf_counter()
        bound = signature.bind(mdata, **call)
        bound.apply_defaults()
        args = {k: v for k, v in bound.arguments.items() if k != "mdata"}
        jobs.append(_cis._prepare_cis(mdata, args))
        seconds.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    posts = fit_cis_models(
        [job.cis_data for job in jobs],
        [job.config for job in jobs],
        laplace=[bool(job.warm_start) for job in jobs],
        fingerprints=[job.fingerprint for job in jobs],
    )
    shared = (time.perf_counter() - t0) / len(jobs)
    for i, (job, post) in enumerate(zip(jobs, posts, strict=True)):
        if not write[i]:
            continue
        t0 = time.perf_counter()
        _cis._finish_cis(mdata, job, post, shared)
        seconds[i] += shared + time.perf_counter() - t0
    return seconds
