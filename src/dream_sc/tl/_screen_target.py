"""One target of :func:`dream_sc.tl.fit_screen`: its cis fit, then its trans fit."""

from __future__ import annotations

import time

from mudata import MuData


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

    t0 = time.perf_counter()
    cis_call = {
        "cis_feature": feature,
        "modality": modality,
        "cis_target": target,
        "technical_key_added": technical_key_added,
        **common,
        "seed": seed,
        "key_added": cis_key,
        **steps["cis"],
        **cis_kwargs,
    }
    _screen.fit_cis(mdata, **cis_call)
    t1 = time.perf_counter()
    trans_call = {
        "modality": modality,
        "function": function,
        "cis_key": cis_key,
        "technical_key_added": technical_key_added,
        "sum_factor_key": common["sum_factor_key"],
        "layer": common["layer"],
        "device": common["device"],
        "progress": False,
        "seed": seed,
        "key_added": trans_key,
        **steps["trans"],
        **trans_kwargs,
        **backend_kw,
    }
    _screen.fit_trans(mdata, **trans_call)
    t2 = time.perf_counter()
    return {"cis_seconds": t1 - t0, "trans_seconds": t2 - t1, "seconds": t2 - t0}
