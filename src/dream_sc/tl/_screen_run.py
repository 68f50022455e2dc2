"""The fits of :func:`~dream_sc.tl.fit_screen` on validated input: technical, then the targets.

Targets are fitted one at a time (``target_batch=1``) or in blocks of ``target_batch``
consecutive targets (in ``fit_screen``'s target order) whose cis fits share one batched SVI
run (:mod:`~dream_sc.tl._cis_block`). A block is always fitted whole, here, in worker
processes or as one dask task, so a target's numbers depend only on its block, which the
target order and ``target_batch`` fix: the same in a serial, ``n_jobs`` or dask run and after
a resume from a checkpoint.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from mudata import MuData
from tqdm.auto import tqdm

from ._screen_checks import _technical_matches, target_seed
from ._screen_parallel import in_target_order, targets_elsewhere
from ._screen_store import apply, capture, drop, drop_all, split_pieces
from ._screen_target import _fit_block, _fit_target


def _run(
    mdata: MuData,
    *,
    modality,
    chosen,
    features,
    function,
    steps,
    common,
    seed,
    tech_call,
    technical_key_added,
    cis_keys,
    trans_keys,
    cis_kwargs,
    trans_kwargs,
    backend_kw,
    store,
    manifest,
    prefixes,
    show,
    n_jobs=1,
    threads=1,
    distribute_targets=False,
    target_batch=1,
) -> dict:
    """The fits themselves (validated input); returns the screen record without settings."""
    if store is not None:
        store.start(manifest)
    # step 1: one technical fit, reused when stored with the same settings
    tech_seconds = 0.0
    saved = store.load("__technical__") if store is not None else None
    if saved is not None:
        drop(mdata, modality, technical_key_added, prefixes)
        apply(mdata, modality, saved["pieces"])
        tech_seconds, technical = float(saved["seconds"]), "checkpoint"
    elif _technical_matches(mdata, modality, technical_key_added, tech_call):
        technical = "reused"
    else:
        t0 = time.perf_counter()
        from . import _screen  # the step functions as fit_screen's module holds them

        _screen.fit_technical(mdata, **tech_call)
        tech_seconds, technical = time.perf_counter() - t0, "fitted"
    if store is not None and saved is None:
        pieces = capture(mdata, modality, technical_key_added, prefixes)
        store.save("__technical__", {"pieces": pieces, "seconds": tech_seconds})
    # step 2 + 3 per target
    seeds = {t: target_seed(seed, t) for t in chosen}
    rows: dict[str, dict] = {}
    bar = tqdm(total=len(chosen), desc="fit_screen", unit="target", disable=not show)

    def record() -> dict:
        return _record(
            chosen,
            features,
            cis_keys,
            trans_keys,
            seeds,
            rows,
            technical_key_added,
            technical,
            tech_seconds,
        )

    saved = {t: store.load(t) if store is not None else None for t in chosen}
    todo = [t for t in chosen if saved[t] is None]
    done = [t for t in chosen if saved[t] is not None]
    drop_all(mdata, modality, [k for t in done for k in (cis_keys[t], trans_keys[t])])
    digests: dict = {}  # of mdata's names, once for every piece applied
    for target in done:
        piece = saved.pop(target)
        apply(mdata, modality, piece["pieces"], digests)
        rows[target] = {**piece["timing"], "from_checkpoint": True}
        bar.update()

    def target_kwargs(target: str) -> dict:
        return {
            "modality": modality,
            "feature": features[target],
            "function": function,
            "steps": steps,
            "common": common,
            "seed": seeds[target],
            "technical_key_added": technical_key_added,
            "cis_key": cis_keys[target],
            "trans_key": trans_keys[target],
            "cis_kwargs": cis_kwargs,
            "trans_kwargs": trans_kwargs,
            "backend_kw": {} if distribute_targets else backend_kw,
        }

    def finished(target: str, pieces: dict | None, timing: dict) -> None:
        if store is not None:
            if pieces is None:
                pieces = {}
                for key in (cis_keys[target], trans_keys[target]):
                    for where, entries in capture(mdata, modality, key, prefixes).items():
                        pieces.setdefault(where, {}).update(entries)
            store.save(target, {"pieces": pieces, "timing": timing})
        rows[target] = {**timing, "from_checkpoint": False}
        bar.set_postfix_str(target)
        bar.update()

    if target_batch > 1 and todo:
        _fit_blocks(
            mdata,
            chosen,
            todo,
            target_batch,
            shared={k: v for k, v in target_kwargs(chosen[0]).items() if k in SHARED},
            members={t: {k: target_kwargs(t)[k] for k in MEMBER} for t in chosen},
            parallel={
                "n_jobs": n_jobs,
                "on_dask": distribute_targets,
                "client": backend_kw.get("client"),
                "threads": threads,
            },
            prefixes=list(prefixes),
            finished=finished,
            digests=digests,
        )
        bar.close()
        return record()
    elsewhere = targets_elsewhere(
        mdata,
        todo,
        n_jobs=n_jobs,
        on_dask=distribute_targets,
        client=backend_kw.get("client"),
        threads=threads,
        fit_one=_fit_target,
        keys=lambda t: (cis_keys[t], trans_keys[t]),
        kwargs=lambda t: {**target_kwargs(t), "prefixes": list(prefixes)},
    )
    if elsewhere is not None:  # applied in target order as they arrive: a serial run's layout
        for _, pieces in in_target_order(elsewhere, todo, finished):
            apply(mdata, modality, pieces, digests)
    else:
        for target in todo:
            bar.set_postfix_str(target)
            finished(target, None, _fit_target(mdata, target=target, **target_kwargs(target)))
    bar.close()
    return record()


def _record(
    chosen, features, cis_keys, trans_keys, seeds, rows, technical_key_added, technical, seconds
) -> dict:
    """The screen record of the fits (without settings)."""
    rows = [rows[t] for t in chosen]
    timings = pd.DataFrame(rows, index=pd.Index(chosen, name="target"))
    return {
        "targets": list(chosen),
        "cis_features": [features[t] for t in chosen],
        "cis_keys": [cis_keys[t] for t in chosen],
        "trans_keys": [trans_keys[t] for t in chosen],
        "seeds": np.array([seeds[t] for t in chosen], dtype=np.int64),
        "technical_key_added": technical_key_added,
        "technical": technical,
        "technical_seconds": float(seconds),
        "timings": timings,
    }


#: ``fit_one`` arguments shared by a block's targets, and those of each target.
SHARED = (
    "modality",
    "function",
    "steps",
    "common",
    "technical_key_added",
    "cis_kwargs",
    "trans_kwargs",
    "backend_kw",
)
MEMBER = ("feature", "seed", "cis_key", "trans_key")


def target_blocks(chosen, todo, size: int) -> list[tuple[str, ...]]:
    """Blocks of ``size`` consecutive targets of ``chosen`` holding a target of ``todo``."""
    waiting = set(todo)
    blocks = [tuple(chosen[i : i + size]) for i in range(0, len(chosen), size)]
    return [b for b in blocks if waiting.intersection(b)]


def _fit_blocks(
    mdata, chosen, todo, size, *, shared, members, parallel, prefixes, finished, digests
) -> None:
    """Fit the blocks holding ``todo`` here, in worker processes or as dask tasks."""
    waiting = set(todo)
    blocks = target_blocks(chosen, todo, size)
    modality = shared["modality"]

    def block_kwargs(block) -> dict:
        return {
            **shared,
            "members": {t: members[t] for t in block},
            "todo": [t for t in block if t in waiting],
        }

    def keys(block) -> list[str]:
        out = []
        for t in block:
            if t in waiting:
                out += [members[t]["cis_key"], members[t]["trans_key"]]
        return out

    elsewhere = targets_elsewhere(
        mdata,
        blocks,
        fit_one=_fit_block,
        keys=keys,
        kwargs=lambda b: {**block_kwargs(b), "prefixes": prefixes},
        **parallel,
    )
    if elsewhere is None:
        for block in blocks:
            timings = _fit_block(mdata, target=block, **block_kwargs(block))
            for t in block_kwargs(block)["todo"]:
                finished(t, None, timings[t])
        return

    def arrived(block, pieces, timings) -> None:
        for t in block_kwargs(block)["todo"]:
            own = (members[t]["cis_key"], members[t]["trans_key"])
            finished(t, split_pieces(pieces, own, prefixes), timings[t])

    for _, pieces in in_target_order(elsewhere, blocks, arrived):
        apply(mdata, modality, pieces, digests)
