"""Results of a screen's fits as self-contained pieces: captured, saved, restored, rolled back.

A fit with ``key_added=prefix`` writes only entries named ``prefix`` or ``prefix_*`` (global
``obs``/``obsm``/``uns`` and the modality's ``var``/``varm``/``uns``). :func:`capture` collects
those entries, :func:`apply` writes them back, :func:`drop` removes them. ``fit_screen`` uses
them to checkpoint each finished target and to leave the MuData unchanged after an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from mudata import MuData

#: Containers a fit writes into: (level, attribute); level "global" = the MuData itself.
CONTAINERS = (
    ("global", "obs"),
    ("global", "obsm"),
    ("global", "uns"),
    ("mod", "var"),
    ("mod", "varm"),
    ("mod", "uns"),
)


def _owns(name: str, prefix: str, others: Sequence[str]) -> bool:
    """``name`` belongs to ``prefix`` and not to a longer prefix in ``others``."""
    if name != prefix and not name.startswith(prefix + "_"):
        return False
    return not any(len(o) > len(prefix) and (name == o or name.startswith(o + "_")) for o in others)


def _container(mdata: MuData, modality: str, level: str, attr: str):
    return getattr(mdata if level == "global" else mdata[modality], attr)


def _names(container) -> list[str]:
    return [str(c) for c in (container.columns if hasattr(container, "columns") else container)]


def capture(
    mdata: MuData, modality: str, prefix: str, others: Sequence[str] = ()
) -> dict[str, dict]:
    """Every entry owned by ``prefix`` (see :func:`_owns`), as ``{"level/attr": {name: value}}``.

    obs / var columns are stored as numpy arrays (with the index they belong to, checked when
    applied); other values by reference (fits replace entries, they do not mutate them).
    """
    out: dict[str, dict] = {}
    for level, attr in CONTAINERS:
        container = _container(mdata, modality, level, attr)
        entries = {}
        for name in _names(container):
            if _owns(name, prefix, others):
                value = container[name]
                if attr in ("obs", "var"):
                    value = (np.asarray(value.index.astype(str)), value.copy())
                entries[name] = value
        out[f"{level}/{attr}"] = entries
    return out


def drop(mdata: MuData, modality: str, prefix: str, others: Sequence[str] = ()) -> None:
    """Remove every entry owned by ``prefix``."""
    for level, attr in CONTAINERS:
        container = _container(mdata, modality, level, attr)
        names = [n for n in _names(container) if _owns(n, prefix, others)]
        if not names:
            continue
        if attr in ("obs", "var"):
            container.drop(columns=names, inplace=True)
        else:
            for name in names:
                del container[name]


def apply(mdata: MuData, modality: str, pieces: dict[str, dict]) -> None:
    """Write captured entries back (obs / var columns aligned by name)."""
    for level, attr in CONTAINERS:
        container = _container(mdata, modality, level, attr)
        for name, value in pieces.get(f"{level}/{attr}", {}).items():
            if attr in ("obs", "var"):
                index, series = value
                names = np.asarray(container.index.astype(str))
                if len(index) != len(names) or not (index == names).all():
                    raise ValueError(
                        f"Stored column {name!r} belongs to other {attr}_names than this MuData "
                        "(a checkpoint of another data set?)."
                    )
                container[name] = series.set_axis(container.index)
            else:
                container[name] = value


def fingerprint(mdata: MuData, modality: str) -> str:
    """Short hash of the cells and features a screen runs on (guards checkpoints)."""
    h = hashlib.sha256()
    for names in (mdata.obs_names, mdata[modality].obs_names, mdata[modality].var_names):
        h.update("\x1f".join(map(str, names)).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


class Checkpoint:
    """A directory holding the finished steps of one ``fit_screen`` run.

    ``manifest.json`` records the settings (a rerun with other settings is refused);
    ``technical.pkl`` and one ``target_<hash>.pkl`` per finished target hold the captured
    results and their timings. Files are written atomically (temporary file + rename), so a
    killed run leaves either a complete piece or none.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        """Location of the manifest."""
        return self.path / "manifest.json"

    def check_path(self) -> None:
        """The path is a directory or can become one."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"checkpoint {str(self.path)!r} exists and is not a directory.")

    def manifest(self) -> dict | None:
        """The stored manifest, if any."""
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def start(self, manifest: dict) -> None:
        """Create the directory and write the manifest."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._atomic(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def _file(self, name: str) -> Path:
        if name == "__technical__":
            return self.path / "technical.pkl"
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return self.path / f"target_{digest}.pkl"

    def load(self, name: str) -> dict | None:
        """The saved piece of ``name`` (a target, or ``"__technical__"``), if finished."""
        file = self._file(name)
        if not file.exists():
            return None
        with file.open("rb") as handle:
            piece = pickle.load(handle)  # noqa: S301 - the user's own checkpoint directory
        return piece if piece.get("name") == name else None

    def save(self, name: str, piece: dict) -> None:
        """Save the piece of ``name`` atomically."""
        self._atomic(self._file(name), pickle.dumps({**piece, "name": name}, protocol=4))

    @staticmethod
    def _atomic(file: Path, payload: bytes) -> None:
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, file)
