"""Checkpoint files of chunked fits: names, fingerprint, finished chunks.

Finished chunks are ``<prefix>.chunk<i>.done.pt`` and running ones ``<prefix>.chunk<i>.pt``,
both in the data-only format of :mod:`dream_sc._checkpoints` (pure: no AnnData).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _checkpoints as ckpt
from .config import FitConfig

#: ``kind`` of finished-chunk files in :mod:`dream_sc._checkpoints`.
DONE_KIND = "chunk"
_CHUNK_FILE = re.compile(r"\.chunk\d+(\.done)?\.pt")


def chunk_fingerprint(
    fingerprint: dict | None, config: FitConfig, chunks: Sequence[np.ndarray]
) -> dict:
    """The fingerprint of a chunked fit: the caller's plus the SVI settings and the chunking."""
    return ckpt.normalise(
        {
            **(fingerprint or {}),
            "seed": int(config.seed),
            "n_steps": int(config.n_steps),
            "lr": float(config.lr),
            "the feature chunks": ckpt.hashed([np.asarray(c) for c in chunks]),
            **({} if config.tolerance is None else {"tolerance": float(config.tolerance)}),
        }
    )


def checkpoint_files(checkpoint: str | Path) -> list[Path]:
    """Checkpoint files of a chunked fit with path prefix ``checkpoint``.

    Finished chunks (``<prefix>.chunk<i>.done.pt``) and running ones (``<prefix>.chunk<i>.pt``).
    """
    return ckpt.files_with_prefix(checkpoint, lambda rest: bool(_CHUNK_FILE.fullmatch(rest)))


def _kind_of(path: Path) -> str:
    return DONE_KIND if path.name.endswith(".done.pt") else "svi"


def check_chunk_files(checkpoint: str | Path, fingerprint: dict, mismatch: ckpt.Mismatch) -> None:
    """Check every checkpoint file of ``checkpoint`` before any chunk runs (see ``fit_chunks``)."""
    ckpt.check_files(
        checkpoint_files(checkpoint), kind=_kind_of, current=fingerprint, mismatch=mismatch
    )


def save_done(path: Path, features: np.ndarray, outcome: Any, fingerprint: dict) -> None:
    """Save a finished chunk's outcome (a ``ChunkOutcome``) atomically."""
    ckpt.write(
        path,
        kind=DONE_KIND,
        fingerprint=fingerprint,
        tree={
            "features": np.asarray(features),
            "summary": outcome.summary,
            "loss": outcome.loss,
            "converged": bool(outcome.converged),
            "corr": outcome.corr,
            **({} if outcome.n_steps_run is None else {"n_steps_run": int(outcome.n_steps_run)}),
        },
    )


def load_done(path: Path, features: np.ndarray, fingerprint: dict) -> dict[str, Any]:
    """A finished chunk's ``summary``, ``loss``, ``converged``, ``corr`` and ``n_steps_run``.

    Its fingerprint and features must match (else a ``ValueError`` naming the file).
    """
    saved = ckpt.read(path, kind=DONE_KIND)
    ckpt.check(saved, fingerprint)
    try:
        tree = saved.tree
        if not np.array_equal(tree["features"], features):
            raise ValueError("it was written for other features")
        summary = {k: (np.asarray(v[0]), np.asarray(v[1])) for k, v in tree["summary"].items()}
        corr = tree["corr"]
        return {
            "summary": summary,
            "loss": np.asarray(tree["loss"]),
            "converged": bool(tree["converged"]),
            "corr": None if corr is None else np.asarray(corr),
            "n_steps_run": None if "n_steps_run" not in tree else int(tree["n_steps_run"]),
        }
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise ckpt.damaged(path, f"{type(err).__name__}: {err}") from err
