"""One target of :func:`dream_sc.tl.fit_screen` (its cis fit, then its trans fit), or a block."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from mudata import MuData


def _cis_call(target, member: Mapping, *, modality, steps, common, **kw) -> dict:
    """The :func:`~dream_sc.tl.fit_cis` arguments of one target.

    ``member``: its ``feature``, ``seed``, ``cis_key``, ``trans_key``.
    """
    return {
        "cis_feature": member["feature"],
        "modality": modality,
        "cis_target": target,
        "technical_key_added": kw["technical_key_added"],
        **common,
        "seed": member["seed"],
        "key_added": member["cis_key"],
        **steps["cis"],
        **kw["cis_kwargs"],
    }


def _trans_call(member: Mapping, *, modality, steps, common, **kw) -> dict:
    """The :func:`~dream_sc.tl.fit_trans` arguments of one target (``member`` as above)."""
    return {
        "modality": modality,
        "function": kw["function"],
        "cis_key": member["cis_key"],
        "technical_key_added": kw["technical_key_added"],
        "sum_factor_key": common["sum_factor_key"],
        "layer": common["layer"],
        "device": common["device"],
        "progress": False,
        "seed": member["seed"],
        "key_added": member["trans_key"],
        **steps["trans"],
        **kw["trans_kwargs"],
        **kw["backend_kw"],
    }


def _fit_target(
    mdata: MuData,
    *,
    modality,
    target,
    feature,
    function,
    steps,
    common,
    seed,
    technical_key_added,
    cis_key,
    trans_key,
    cis_kwargs,
    trans_kwargs,
    backend_kw,
) -> dict[str, float]:
    """Cis + trans fit of one target; returns its wall-clock seconds per step."""
    from . import _screen  # the step functions as fit_screen's module holds them (patchable)

    shared = {
        "modality": modality,
        "steps": steps,
        "common": common,
        "function": function,
        "technical_key_added": technical_key_added,
        "cis_kwargs": cis_kwargs,
        "trans_kwargs": trans_kwargs,
        "backend_kw": backend_kw,
    }
    member = {"feature": feature, "seed": seed, "cis_key": cis_key, "trans_key": trans_key}
    t0 = time.perf_counter()
    _screen.fit_cis(mdata, **_cis_call(target, member, **shared))
    t1 = time.perf_counter()
    _screen.fit_trans(mdata, **_trans_call(member, **shared))
    t2 = time.perf_counter()
    return {"cis_seconds": t1 - t0, "trans_seconds": t2 - t1, "seconds": t2 - t0}


def _fit_block(
    mdata: MuData,
    *,
    target: Sequence[str],
    members: Mapping[str, Mapping],
    todo: Sequence[str],
    **shared,
) -> dict[str, dict[str, float]]:
    """Cis fits of the targets ``target`` in one batched SVI, then each one's trans fit.

    ``members``: per target its ``feature``, ``seed``, ``cis_key``, ``trans_key``; only the
    targets in ``todo`` get results (the others are fitted with the block and dropped, see
    :func:`~dream_sc.tl._cis_block.fit_cis_block`). Returns the seconds of each target in
    ``todo`` (its share of the shared fit included).
    """
    from . import _screen
    from ._cis_block import fit_cis_block

    calls = [_cis_call(t, members[t], **shared) for t in target]
    cis_seconds = fit_cis_block(mdata, calls, write=[t in todo for t in target])
    timings = {}
    for t, seconds in zip(target, cis_seconds, strict=True):
        if t not in todo:
            continue
        t1 = time.perf_counter()
        _screen.fit_trans(mdata, **_trans_call(members[t], **shared))
        trans = time.perf_counter() - t1
        timings[t] = {"cis_seconds": seconds, "trans_seconds": trans, "seconds": seconds + trans}
    return timings
