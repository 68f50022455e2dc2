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
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from mudata import MuData

from .. import _checkpoints as ckpt

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
    return getattr(_owner(mdata, modality, level), attr)


def _names(container) -> list[str]:
    return [str(c) for c in (container.columns if hasattr(container, "columns") else container)]


def index_digest(index: pd.Index) -> str:
    """A short fingerprint of an obs / var index: its length and a hash of its names.

    A captured column carries this instead of its names, so a target's results do not hold (or
    send between processes, or write to a checkpoint) one copy of every cell name per column.
    """
    names = np.asarray(index.astype(str)).astype("U")
    return f"{len(names)}:{hashlib.sha1(names.tobytes()).hexdigest()}"


def capture(
    mdata: MuData, modality: str, prefix: str, others: Sequence[str] = ()
) -> dict[str, dict]:
    """Every entry owned by ``prefix`` (see :func:`_owns`), as ``{"level/attr": {name: value}}``.

    obs / var columns are stored as ``(index_digest, values)`` with the values on a default
    index (the digest of the names they belong to is checked when applied); other values by
    reference (fits replace entries, they do not mutate them).
    """
    out: dict[str, dict] = {}
    for level, attr in CONTAINERS:
        container = _container(mdata, modality, level, attr)
        entries = {}
        digest = None
        for name in _names(container):
            if _owns(name, prefix, others):
                value = container[name]
                if attr in ("obs", "var"):
                    digest = digest or index_digest(value.index)
                    value = (digest, value.reset_index(drop=True))
                entries[name] = value
        out[f"{level}/{attr}"] = entries
    return out


def split_pieces(
    pieces: dict[str, dict], keys: Sequence[str], others: Sequence[str]
) -> dict[str, dict]:
    """The entries of captured ``pieces`` owned by one of ``keys`` (see :func:`_owns`)."""
    out: dict[str, dict] = {}
    for where, entries in pieces.items():
        own = {n: v for n, v in entries.items() if any(_owns(n, k, others) for k in keys)}
        if own:
            out[where] = own
    return out


def drop(mdata: MuData, modality: str, prefix: str, others: Sequence[str] = ()) -> None:
    """Remove every entry owned by ``prefix``."""
    _drop_matching(mdata, modality, lambda n: _owns(n, prefix, others))


def _drop_matching(mdata: MuData, modality: str, matches) -> None:
    """Remove every entry whose name ``matches``, reading each container once."""
    for level, attr in CONTAINERS:
        container = _container(mdata, modality, level, attr)
        names = [n for n in _names(container) if matches(n)]
        if not names:
            continue
        if attr in ("obs", "var"):
            container.drop(columns=names, inplace=True)
        else:
            for name in names:
                del container[name]


def drop_all(mdata: MuData, modality: str, prefixes: Sequence[str]) -> None:
    """Remove every entry owned by any of ``prefixes``: :func:`drop` of each, in one pass.

    Each container is read once (anndata validates every ``varm`` entry on each read, so a
    loop of :func:`drop` over a screen's prefixes cost prefixes x entries validations). An
    entry that one prefix would leave to a longer one in ``prefixes`` is dropped by that one,
    so the union is simply every name that matches a prefix.
    """
    exact = {str(p) for p in prefixes}
    starts = tuple(f"{p}_" for p in exact)
    if exact:
        _drop_matching(mdata, modality, lambda n: n in exact or n.startswith(starts))


def apply(
    mdata: MuData, modality: str, pieces: dict[str, dict], digests: dict | None = None
) -> None:
    """Write captured entries back (obs / var columns checked against the index digest).

    ``digests``: the index digests of ``mdata`` by attribute (``"obs"``, ``"var"``), filled in
    here as computed; pass the same dict for every piece of one MuData (hashing the names of 2
    million cells took 1-2 s per piece).
    """
    digests = {} if digests is None else digests
    for level, attr in CONTAINERS:
        container = _container(mdata, modality, level, attr)
        for name, value in pieces.get(f"{level}/{attr}", {}).items():
            if attr in ("obs", "var"):
                stored, series = value
                if attr not in digests:
                    digests[attr] = index_digest(container.index)
                if stored != digests[attr]:
                    raise ValueError(
                        f"Stored column {name!r} belongs to other {attr}_names than this MuData "
                        "(a checkpoint of another data set?)."
                    )
                with warnings.catch_warnings():  # a screen adds columns per target: pandas
                    warnings.simplefilter("ignore", pd.errors.PerformanceWarning)  # "fragmented"
                    container[name] = series.set_axis(container.index)
            else:
                if isinstance(value, pd.DataFrame) and attr in ("obsm", "varm"):
                    value = _on_shared_index(value, _owner(mdata, modality, level), attr)
                container[name] = value


def _owner(mdata: MuData, modality: str, level: str):
    return mdata if level == "global" else mdata[modality]


def _on_shared_index(frame: pd.DataFrame, owner, attr: str) -> pd.DataFrame:
    """``frame`` on the owner's own obs / var index object when the names are the same.

    anndata validates every ``obsm`` / ``varm`` entry against the names whenever the mapping is
    read; an entry on the very same Index object passes at once, one with an equal copy (every
    piece a worker sends back has its own) costs a string comparison per feature, and a screen
    of 500 targets reading its 2,000 ``varm`` entries per target becomes quadratic.
    """
    names = owner.obs_names if attr == "obsm" else owner.var_names
    if frame.index is not names and frame.index.equals(names):
        frame.index = names
    return frame


def _elem_io():
    """``(write_elem, read_elem)`` of this anndata (``anndata.io`` from 0.11, else experimental)."""
    try:
        from anndata.io import read_elem, write_elem
    except ImportError:  # pragma: no cover - anndata < 0.11
        from anndata.experimental import read_elem, write_elem
    return write_elem, read_elem


def _index(pieces: dict[str, dict]) -> list[list[str]]:
    """``[where, name, key, kind]`` of every captured entry (``kind``: column or entry)."""
    index = []
    for where, entries in pieces.items():
        for name in entries:
            kind = "column" if where.endswith(("/obs", "/var")) else "entry"
            index.append([where, str(name), f"e{len(index)}", kind])
    return index


def _write_pieces(group, pieces: dict[str, dict], index: list[list[str]]) -> None:
    """Write captured entries as AnnData elements (data only) under their index keys.

    A column is written as its values (an array, or a categorical) with the digest of the
    names it belongs to as the attribute ``index_digest``.
    """
    write_elem, _ = _elem_io()
    for where, name, key, kind in index:
        value = pieces[where][name]
        if kind == "column":
            digest, series = value
            write_elem(
                group, key, series.array if series.dtype == "category" else series.to_numpy()
            )
            group[key].attrs["index_digest"] = digest
        else:
            write_elem(group, key, value)


def _read_pieces(group, index) -> dict[str, dict]:
    _, read_elem = _elem_io()
    pieces: dict[str, dict] = {f"{level}/{attr}": {} for level, attr in CONTAINERS}
    for where, name, key, kind in index:
        value = read_elem(group[key])
        if kind == "column":
            digest = group[key].attrs.get("index_digest")
            if not isinstance(digest, str):
                raise ckpt.CheckpointError(f"column {name!r} of a checkpoint piece has no index")
            value = (digest, pd.Series(value, name=name))
        pieces.setdefault(where, {})[name] = value
    return pieces


#: ``kind`` of fit_screen pieces in :mod:`dream_sc._checkpoints`.
PIECE_KIND = "screen-piece"
#: Bumped when the manifest's layout changes.
MANIFEST_FORMAT = 3


class Checkpoint:
    """A directory holding the finished steps of one ``fit_screen`` run.

    ``manifest.json`` records the settings and the seed (a rerun with other settings is
    refused); ``technical.h5`` and one ``target_<hash>.h5`` per finished target hold the captured
    results, their timings and their own fingerprint (the data of their cells and the settings,
    see :mod:`dream_sc._checkpoints`): data-only HDF5, written atomically, so a killed run leaves
    either a complete piece or none, and a piece is reused only for the same data and settings.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        #: fingerprint of every piece of this run (name -> mapping), set before any work
        self.fingerprints: dict[str, dict] = {}

    @property
    def manifest_path(self) -> Path:
        """Location of the manifest."""
        return self.path / "manifest.json"

    def check_path(self) -> None:
        """The path is a directory or can become one."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"checkpoint {str(self.path)!r} exists and is not a directory.")

    def manifest(self) -> dict | None:
        """The stored manifest, if any (JSON; a damaged one raises naming the file)."""
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ckpt.damaged(self.manifest_path, f"{type(err).__name__}: {err}") from err
        if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
            raise ckpt.damaged(self.manifest_path, "not a fit_screen manifest")
        return manifest

    def start(self, manifest: dict) -> None:
        """Create the directory and write the manifest."""
        self.path.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(manifest, indent=1, sort_keys=True).encode()
        ckpt.atomic_write_bytes(self.manifest_path, payload)

    def file(self, name: str) -> Path:
        """The piece file of ``name`` (a target, or ``"__technical__"``)."""
        if name == "__technical__":
            return self.path / "technical.h5"
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return self.path / f"target_{digest}.h5"

    def old_files(self) -> list[Path]:
        """Pieces of older dream_sc versions (pickles: refused, never loaded)."""
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob("*.pkl"))

    def check(self, fingerprints: dict[str, dict], mismatch: ckpt.Mismatch = "raise") -> None:
        """Check every stored piece against its fingerprint before any work.

        ``"raise"``: the first old-format, damaged or stale piece raises (nothing deleted);
        ``"restart"``: such pieces are deleted, pieces that match are kept. The fingerprints
        are kept for :meth:`load` and :meth:`save`.
        """
        self.fingerprints = dict(fingerprints)
        for old in self.old_files():
            if mismatch == "raise":
                ckpt.sniff(old)  # raises: a pickle (old format) or garbage
                raise ckpt.damaged(old, "not a dream_sc checkpoint")
            old.unlink()
        files = {self.file(name): fp for name, fp in fingerprints.items()}
        ckpt.check_files(files, kind=PIECE_KIND, current=files.__getitem__, mismatch=mismatch)

    def load(self, name: str, fingerprint: dict | None = None) -> dict | None:
        """The saved piece of ``name`` if finished (its fingerprint must match)."""
        fingerprint = self.fingerprints[name] if fingerprint is None else fingerprint
        file = self.file(name)
        if not file.exists():
            return None
        stored = ckpt.read(
            file, kind=PIECE_KIND, elems=lambda group, tree: _read_pieces(group, tree["index"])
        )
        ckpt.check(stored, fingerprint)
        tree = stored.tree
        if not isinstance(tree, dict) or tree.get("name") != name:
            raise ckpt.damaged(file, f"it does not hold the piece of {name!r}")
        return {**{k: v for k, v in tree.items() if k != "index"}, "pieces": stored.elems}

    def save(self, name: str, piece: dict, fingerprint: dict | None = None) -> None:
        """Save the piece of ``name`` (``pieces`` plus JSON-able timings) atomically."""
        fingerprint = self.fingerprints[name] if fingerprint is None else fingerprint
        index = _index(piece["pieces"])
        tree = {**{k: v for k, v in piece.items() if k != "pieces"}, "name": name, "index": index}
        ckpt.write(
            self.file(name),
            kind=PIECE_KIND,
            fingerprint=fingerprint,
            tree=tree,
            elems=lambda group: _write_pieces(group, piece["pieces"], index),
        )
