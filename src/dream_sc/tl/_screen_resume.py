"""Resuming ``fit_screen``: the manifest, the fingerprint of every piece, the checks before work.

A piece (the technical fit, or one target's cis + trans fits) is reused only when its own
fingerprint matches: the data of the cells it was fitted on (counts, sum factors, technical
groups, guide labels, cell and feature order) and every setting, so a piece stays safe to reuse
with or without its manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mudata import MuData

from .. import _checkpoints as ckpt
from .. import _validation as V
from .._data import modality_data
from ._fingerprints import data_entries, package_version
from ._screen_store import MANIFEST_FORMAT, Checkpoint

TECHNICAL = "__technical__"


def _flat(manifest: dict) -> dict[str, Any]:
    """A manifest as a fingerprint: seed, format and every setting."""
    return ckpt.normalise(
        {
            "seed": manifest.get("seed"),
            "checkpoint format": manifest.get("format", 1),
            **manifest.get("settings", {}),
        }
    )


def check_manifest(store: Checkpoint, stored: dict | None, manifest: dict, mismatch: str) -> None:
    """Refuse a directory written with other settings (``"restart"``: it is rewritten)."""
    if stored is None or stored == manifest or mismatch == "restart":
        return
    raise ckpt.mismatch_error(store.path, ckpt.changes(_flat(stored), _flat(manifest)))


#: Arguments that do not change a screen's results (left out of its manifest).
NOT_IN_MANIFEST = ("progress", "copy", "checkpoint", "seed", "targets", "n_jobs")


def manifest_of(seed: int, params: dict) -> dict:
    """The manifest of a run (JSON-able): seed and the settings that change results."""
    skip = (*NOT_IN_MANIFEST, "checkpoint_mismatch")
    settings = {k: v for k, v in params.items() if k not in skip}
    return {"format": MANIFEST_FORMAT, "seed": int(seed), "settings": settings}


def resumed_seed(store: Checkpoint | None, seed: int | None, mismatch: str = "raise") -> int | None:
    """``seed``, or the seed of the stored run when ``seed`` is None (a drawn seed resumes).

    A damaged manifest raises (``mismatch="restart"``: it is deleted).
    """
    if store is None:
        return seed
    store.check_path()
    try:
        stored = store.manifest()
    except ckpt.CheckpointError:
        if mismatch != "restart":
            raise
        store.manifest_path.unlink()
        stored = None
    if seed is None and stored is not None:
        try:
            return int(stored["seed"])
        except (KeyError, TypeError, ValueError) as err:
            raise ckpt.damaged(store.manifest_path, "no seed") from err
    return seed


def open_checkpoint(
    store: Checkpoint, manifest: dict, mismatch: str, mdata: MuData, **kw: Any
) -> None:
    """Check the manifest and every stored piece (:func:`piece_fingerprints` of ``kw``).

    Raises before any work when something does not match (``"raise"``); with ``"restart"``
    stale pieces are deleted and the manifest is rewritten when the run starts.
    """
    check_manifest(store, store.manifest(), manifest, mismatch)
    store.check(piece_fingerprints(mdata, manifest, **kw), mismatch)


def _cell_entries(
    mdata, modality, mask, *, layer, sf, labels, guide_key, target_key, assignment
) -> dict:
    obs = mdata.obs
    cells = obs.index[mask]
    data = modality_data(mdata, modality, cells, layer=layer)
    if assignment is None:
        guides = ckpt.hashed(
            obs[guide_key].astype(str).to_numpy()[mask],
            obs[target_key].astype(str).to_numpy()[mask],
        )
    else:  # high MOI: the assignment table (weights, guide names) and the guide -> target map
        table, guide_targets = assignment
        guides = ckpt.hashed(
            np.asarray(table.to_numpy(), dtype=np.float64)[mask],
            [str(g) for g in table.columns],
            [f"{g}\x1f{t}" for g, t in guide_targets.items()],
        )
    return {
        **data_entries(modality, data, cells[data.present]),
        "the sum factors": ckpt.hashed(np.asarray(sf)[mask]),
        "the technical groups": ckpt.hashed(
            np.asarray(labels.astype(str))[mask], [str(c) for c in labels.cat.categories]
        ),
        "the guide labels": guides,
    }


def piece_fingerprints(
    mdata: MuData,
    manifest: dict,
    *,
    modality: str,
    chosen: Sequence[str],
    control: np.ndarray,
    cis_features: dict[str, str],
    use_all_cells: bool,
    sf: np.ndarray,
    keys: tuple,
    assignment: tuple | None = None,
) -> dict[str, dict]:
    """Fingerprint of the technical piece and of every target's piece.

    ``keys``: ``(guide_key, target_key, technical_key, layer)`` of the run; ``assignment``:
    ``(table, guide_targets)`` of a high-MOI run (every target's piece then covers every
    cell, the cells without its guides being its comparison).
    """
    guide_key, target_key, technical_key, layer = keys
    labels = V.technical_labels(mdata.obs, technical_key)
    common = {"dream_sc version": package_version(), **_flat(manifest)}
    kw = {
        "layer": layer,
        "sf": sf,
        "labels": labels,
        "guide_key": guide_key,
        "target_key": target_key,
        "assignment": assignment,
    }
    tech_cells = np.ones(len(control), bool) if use_all_cells else np.asarray(control)
    out = {TECHNICAL: {**common, **_cell_entries(mdata, modality, tech_cells, **kw)}}
    for target in chosen:
        if assignment is None:
            mask = np.asarray(control) | (mdata.obs[target_key].astype(str).to_numpy() == target)
        else:
            mask = np.ones(len(control), bool)
        out[target] = {
            **common,
            "target": target,
            "cis feature": cis_features[target],
            **_cell_entries(mdata, modality, mask, **kw),
        }
    return {name: ckpt.normalise(fp) for name, fp in out.items()}
