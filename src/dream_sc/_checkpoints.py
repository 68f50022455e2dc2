"""The checkpoint format: data-only HDF5 files, fingerprints, atomic writes.

Every checkpoint dream_sc writes (SVI states of running fits, finished feature chunks, the
pieces of ``fit_screen``) is one HDF5 file holding only arrays and JSON:

- ``meta``: a JSON document (stored as bytes) with the format name and version, the kind of
  checkpoint, the fingerprint of the run and the *skeleton* of the saved tree;
- ``arrays/<i>``: the numeric arrays of the tree (numpy arrays and torch tensors, dtype kept);
- ``elems``: an optional group the caller fills itself (``fit_screen`` writes AnnData elements
  there with :func:`anndata.io.write_elem`).

Nothing is ever unpickled, so a planted file cannot run code; old pickle-based checkpoints are
recognised by their first bytes and refused. Files are written to a temporary file in the same
directory, flushed to disk and renamed over the target (:func:`atomic_write`), so a killed run
leaves a complete file or none.

A *fingerprint* is a flat mapping ``label -> value`` of everything a result depends on: settings
(``"seed" -> 0``) and digests of the data read (``"the counts of modality 'rna'" ->
{"blake2b": ...}``, see :func:`digest`). It is written with every checkpoint and compared before
anything is reused: :func:`check_files` names what changed, or (``mismatch="restart"``) deletes
the stale files.

The module is pure (numpy, torch, h5py): no AnnData, no MuData. Digests live in
:mod:`dream_sc._digest` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from scipy import sparse

from ._digest import Digest, digest, digest_blocks, hashed

FORMAT = "dream_sc checkpoint"
VERSION = 1
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
Mismatch = Literal["raise", "restart"]
MISMATCH_OPTIONS = ("raise", "restart")
#: What to do about a damaged file, added to every such error.
FIX = "delete it, or pass checkpoint_mismatch='restart'"


__all__ = [
    "CheckpointError",
    "Digest",
    "atomic_write",
    "changes",
    "check_files",
    "digest",
    "digest_blocks",
    "hashed",
    "read",
    "write",
]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, old format, another run)."""


def check_mismatch(value: str) -> str:
    """Validate a ``checkpoint_mismatch`` argument."""
    if value not in MISMATCH_OPTIONS:
        raise ValueError(
            f"checkpoint_mismatch must be one of {list(MISMATCH_OPTIONS)}; got {value!r}."
        )
    return value


def damaged(path: str | os.PathLike, detail: str) -> CheckpointError:
    """The error of a file that is not a usable checkpoint."""
    return CheckpointError(f"Checkpoint file {str(path)!r} is damaged ({detail}); {FIX}.")


# ---- fingerprints -------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def fingerprint(**entries: Any) -> dict[str, Any]:
    """A fingerprint from ``label=value`` pairs (see the module docstring)."""
    return normalise(entries)


def normalise(entries: Mapping[str, Any]) -> dict[str, Any]:
    """Plain-JSON copy of a fingerprint mapping."""
    return {str(k): _jsonable(v) for k, v in entries.items()}


#: Stands for a label one of two fingerprints does not have.
_MISSING = object()


def _show(value: Any) -> str:
    if value is _MISSING:
        return "not recorded"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return json.dumps(value, sort_keys=True)


def changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between a stored and a current fingerprint, one phrase per entry.

    Settings read ``"seed 0 -> 1"``; digests name the data (``"the counts of modality
    'rna'"``).

    Examples
    --------
    >>> changes({"seed": 0, "the counts": {"blake2b": "a"}}, {"seed": 1, "the counts": {"blake2b": "b"}})
    ['seed 0 -> 1', 'the counts']
    """
    current = normalise(current)
    out = []
    for label in list(current) + [k for k in stored if k not in current]:
        old, new = stored.get(label, _MISSING), current.get(label, _MISSING)
        if old == new:
            continue
        if any(isinstance(v, dict) and "blake2b" in v for v in (old, new)):
            out.append(label)  # data: named, not shown
        else:
            out.append(f"{label} {_show(old)} -> {_show(new)}")
    return out


def mismatch_error(path: str | os.PathLike, found: Sequence[str]) -> CheckpointError:
    """The error of a checkpoint written by another run."""
    return CheckpointError(
        f"Checkpoint {str(path)!r} was written by a run with other settings or data: "
        f"{'; '.join(found)}. Nothing was deleted; rerun with the original settings and data, "
        "use another checkpoint path, or pass checkpoint_mismatch='restart' to delete the "
        "stale checkpoint and start over."
    )


# ---- atomic writes ------------------------------------------------------------------------


def _fsync(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without fsync of directories
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` with ``write(tmp)``, then flush and rename it over ``path``.

    The temporary file lives in the same directory (so the rename is atomic) and its name holds
    the process id (several writers never share one). It is fsynced before the rename and the
    directory after it, so a crash or a kill leaves the old file or the complete new one.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """:func:`atomic_write` of a byte string."""
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


# ---- tree codec: nested containers of arrays and scalars <-> JSON skeleton + arrays -------


def _encode(value: Any, arrays: list[np.ndarray]) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, torch.Tensor):
        arrays.append(value.detach().cpu().numpy())
        return {"tensor": len(arrays) - 1}
    if isinstance(value, np.generic):
        arrays.append(np.asarray(value))
        return {"scalar": len(arrays) - 1}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            return {"strings": value.astype(str).tolist(), "shape": list(value.shape)}
        if value.dtype.kind not in "biufc":
            raise TypeError(f"cannot store an array of dtype {value.dtype} in a checkpoint")
        arrays.append(value)
        return {"array": len(arrays) - 1}
    if sparse.issparse(value):  # e.g. sparse cis dosage samples of a screen target
        csr = sparse.csr_matrix(value)
        parts = [_encode(np.asarray(a), arrays) for a in (csr.data, csr.indices, csr.indptr)]
        return {"csr": parts, "shape": list(csr.shape)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, str | int):
                raise TypeError(f"cannot store a mapping key {k!r} in a checkpoint")
            items.append([k, _encode(v, arrays)])
        return {"dict": items}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _decode(node: Any, arrays: Callable[[int], np.ndarray]) -> Any:
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise ValueError(f"unexpected entry {str(node)[:60]}")
    (tag, body), *_ = node.items()
    if tag == "float":
        return float(body)
    if tag == "tensor":
        return torch.from_numpy(np.array(arrays(body), copy=True))
    if tag == "scalar":
        return arrays(body)[()]
    if tag == "array":
        return np.array(arrays(body), copy=True)
    if tag == "strings":
        return np.array(body, dtype=str).reshape(node["shape"])
    if tag == "csr":
        data, indices, indptr = (_decode(v, arrays) for v in body)
        return sparse.csr_matrix((data, indices, indptr), shape=tuple(node["shape"]))
    if tag == "tuple":
        return tuple(_decode(v, arrays) for v in body)
    if tag == "dict":
        return {k: _decode(v, arrays) for k, v in body}
    raise ValueError(f"unknown entry type {tag!r}")


# ---- files --------------------------------------------------------------------------------


@dataclasses.dataclass
class Stored:
    """A checkpoint file read back."""

    path: Path
    kind: str
    fingerprint: dict[str, Any]
    tree: Any
    elems: Any = None


def write(
    path: str | os.PathLike,
    *,
    kind: str,
    fingerprint: Mapping[str, Any],
    tree: Any,
    elems: Callable[[h5py.Group], None] | None = None,
) -> None:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path
        Target file.
    kind
        What the file holds (checked when read: ``"svi"``, ``"chunk"``, ...).
    fingerprint
        Label -> value mapping of the run (see :func:`changes`).
    tree
        Nested dicts / lists / tuples of scalars, strings, numpy arrays and torch tensors.
    elems
        Optional writer of further data into the file's ``elems`` group.
    """
    arrays: list[np.ndarray] = []
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "fingerprint": normalise(fingerprint),
        "tree": _encode(tree, arrays),
    }
    payload = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    def write_file(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("meta", data=payload)
            group = f.create_group("arrays")
            for i, array in enumerate(arrays):
                group.create_dataset(str(i), data=array)
            if elems is not None:
                elems(f.create_group("elems"))

    atomic_write(path, write_file)


def sniff(path: str | os.PathLike) -> None:
    """Raise unless ``path`` starts like an HDF5 file (refuses pickles before opening them)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as err:
        raise damaged(path, f"cannot be read: {err}") from err
    if head == HDF5_MAGIC:
        return
    if not head:
        raise damaged(path, "empty file")
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise CheckpointError(
            f"Checkpoint file {str(path)!r} was written by an older dream_sc in a pickle-based "
            "format, which is no longer loaded (loading a pickle can run code); delete it, or "
            "pass checkpoint_mismatch='restart'."
        )
    raise damaged(path, "not a dream_sc checkpoint")


def _meta(handle: h5py.File, path: Path, kind: str) -> dict:
    meta = json.loads(bytes(np.asarray(handle["meta"][()], dtype=np.uint8)).decode())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise damaged(path, "not a dream_sc checkpoint")
    if meta.get("version") != VERSION:
        raise damaged(path, f"format version {meta.get('version')!r}, expected {VERSION}")
    if meta.get("kind") != kind:
        raise damaged(path, f"holds a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    if not isinstance(meta.get("fingerprint"), dict):
        raise damaged(path, "no fingerprint")
    return meta


def read(
    path: str | os.PathLike,
    *,
    kind: str,
    elems: Callable[[h5py.Group, Any], Any] | None = None,
    header_only: bool = False,
) -> Stored:
    """Read a checkpoint written by :func:`write` (data only; nothing is unpickled).

    ``elems(group, tree)`` reads the ``elems`` group (its result is :attr:`Stored.elems`).

    Raises
    ------
    CheckpointError
        (a ``ValueError``) naming the path when the file is empty, truncated, not a dream_sc
        checkpoint, of another kind, or an old pickle-based checkpoint.
    """
    path = Path(path)
    sniff(path)
    try:
        with h5py.File(path, "r") as handle:
            meta = _meta(handle, path, kind)
            if header_only:
                return Stored(path, kind, meta["fingerprint"], None)
            group = handle["arrays"]
            tree = _decode(meta["tree"], lambda i: group[str(i)][()])
            extra = elems(handle["elems"], tree) if elems is not None else None
    except CheckpointError:
        raise
    except Exception as err:  # truncated / garbage HDF5, missing entries, bad JSON
        raise damaged(path, f"{type(err).__name__}: {err}") from err
    return Stored(path, kind, meta["fingerprint"], tree, extra)


def check(stored: Stored, current: Mapping[str, Any]) -> None:
    """Raise :func:`mismatch_error` when ``stored`` was written with another fingerprint."""
    found = changes(stored.fingerprint, current)
    if found:
        raise mismatch_error(stored.path, found)


def check_files(
    files: Iterable[Path],
    *,
    kind: Callable[[Path], str] | str,
    current: Mapping[str, Any] | Callable[[Path], Mapping[str, Any]],
    mismatch: Mismatch = "raise",
) -> list[Path]:
    """Check every existing checkpoint file before any work; returns the usable ones.

    With ``mismatch="raise"`` the first damaged, old-format or mismatching file raises (nothing
    is deleted); with ``"restart"`` such files are deleted and the others kept.
    """
    check_mismatch(mismatch)
    usable = []
    for path in files:
        path = Path(path)
        if not path.exists():
            continue
        expected = current(path) if callable(current) else current
        try:
            check(
                read(path, kind=kind(path) if callable(kind) else kind, header_only=True), expected
            )
        except CheckpointError:
            if mismatch == "raise":
                raise
            path.unlink(missing_ok=True)
            continue
        usable.append(path)
    return usable


def files_with_prefix(prefix: str | os.PathLike, pattern: Callable[[str], bool]) -> list[Path]:
    """Files next to ``prefix`` whose name is ``prefix``'s name plus a suffix ``pattern`` accepts."""
    prefix = Path(prefix)
    folder = prefix.parent if str(prefix.parent) else Path(".")
    if not folder.is_dir():
        return []
    stem = prefix.name
    return sorted(
        p for p in folder.iterdir() if p.name.startswith(stem) and pattern(p.name[len(stem) :])
    )


def recorded_seed(prefix: str | os.PathLike) -> int | None:
    """The seed recorded in the fingerprint of a checkpoint file with path prefix ``prefix``.

    Lets a run whose seed was drawn (no ``seed=``, no ``settings.seed``) resume with that seed.
    Files that cannot be read are skipped here: the fit's own check reports them by path.
    """
    for path in files_with_prefix(prefix, lambda rest: rest.startswith(".") and ".tmp" not in rest):
        try:
            sniff(path)
            with h5py.File(path, "r") as handle:
                meta = json.loads(bytes(np.asarray(handle["meta"][()], dtype=np.uint8)).decode())
            seed = meta["fingerprint"]["seed"]
        except (CheckpointError, OSError, KeyError, TypeError, ValueError):
            continue
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None
