"""Digests of data for checkpoint fingerprints: arrays, sparse matrices, containers.

Pure (numpy, torch, scipy); see :mod:`dream_sc._checkpoints`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from scipy import sparse


class Digest:
    """A streaming BLAKE2b hash of arrays, sparse matrices, scalars, strings and containers.

    Examples
    --------
    >>> import numpy as np
    >>> d = Digest()
    >>> d.update(np.arange(3))
    >>> d.hexdigest() == digest(np.arange(3))
    True
    """

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)

    def _tag(self, tag: bytes, text: str = "") -> None:
        raw = text.encode()
        self._h.update(tag + len(raw).to_bytes(8, "little") + raw)

    def update(self, value: Any) -> None:
        """Add ``value`` (recursing into lists, tuples, dicts and dataclasses)."""
        if value is None:
            self._tag(b"N")
        elif isinstance(value, str | bytes):
            self._tag(b"S", value if isinstance(value, str) else value.hex())
        elif isinstance(value, bool | int | float | np.generic):
            self._tag(b"V", f"{type(value).__name__}:{value!r}")
        elif isinstance(value, torch.Tensor):
            self.update(value.detach().cpu().numpy())
        elif sparse.issparse(value):
            matrix = value if value.format in ("csr", "csc") else value.tocsr()
            self._tag(b"M", f"{matrix.format}{matrix.shape}")
            for part in (matrix.indptr, matrix.indices, matrix.data):
                self.update(np.asarray(part))
        elif isinstance(value, np.ndarray) or hasattr(value, "to_numpy"):
            self._array(np.asarray(value))
        elif isinstance(value, Mapping):
            self._tag(b"D", str(len(value)))
            for key in sorted(value, key=str):
                self.update(str(key))
                self.update(value[key])
        elif isinstance(value, list | tuple):
            self._tag(b"L", str(len(value)))
            for item in value:
                self.update(item)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            self._tag(b"C", type(value).__name__)
            for f in dataclasses.fields(value):
                self.update(f.name)
                self.update(getattr(value, f.name))
        else:
            raise TypeError(f"cannot digest a {type(value).__name__}")

    def _array(self, array: np.ndarray) -> None:
        if array.dtype.kind in "OUS":  # names: hashed as text
            text = "\x1f".join(map(str, array.ravel().tolist()))
            self._tag(b"T", f"{array.shape}")
            self._tag(b"S", text)
            return
        array = np.ascontiguousarray(array)
        self._tag(b"A", f"{array.dtype.str}{array.shape}")
        self._h.update(memoryview(array.reshape(-1)).cast("B"))

    def hexdigest(self) -> str:
        """The hash so far."""
        return self._h.hexdigest()

    def value(self) -> dict[str, str]:
        """The hash as a fingerprint value (JSON: ``{"blake2b": hex}``)."""
        return {"blake2b": self.hexdigest()}


def digest(*values: Any) -> str:
    """Hex digest of ``values`` (see :class:`Digest`)."""
    d = Digest()
    for value in values:
        d.update(value)
    return d.hexdigest()


def hashed(*values: Any) -> dict[str, str]:
    """A fingerprint value holding the digest of ``values``."""
    return {"blake2b": digest(*values)}


def digest_blocks(blocks: Iterable[Any]) -> dict[str, str]:
    """A fingerprint value of a matrix read block by block (e.g. column blocks of a lazy one)."""
    d = Digest()
    for block in blocks:
        d.update(block)
    return d.value()
