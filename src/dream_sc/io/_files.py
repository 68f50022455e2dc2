"""Locate input files (plain or gzipped) and read small text tables."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import scipy.io
from scipy import sparse

PathLike = str | Path


def as_path(path: object, argument: str) -> Path:
    """``path`` as an existing :class:`~pathlib.Path`; raise naming the argument otherwise."""
    if not isinstance(path, str | Path):
        raise ValueError(
            f"`{argument}` must be a path (str or pathlib.Path); got {type(path).__name__}."
        )
    out = Path(path).expanduser()
    if not out.exists():
        raise ValueError(f"`{argument}`: {str(out)!r} does not exist; check the path.")
    return out


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first), else ``None``."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def require_file(folder: Path, name: str, what: str) -> Path:
    """Like :func:`find_file` but raise, listing what the folder holds, when missing."""
    found = find_file(folder, name)
    if found is None:
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise ValueError(
            f"{what}: no {name!r} (or {name}.gz) in {str(folder)!r}; the folder holds "
            f"{present[:10]}. Point the path at the folder that contains it."
        )
    return found


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a plain or gzipped text file, without line ends."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as handle:
        return [line.rstrip("\r\n") for line in handle if line.strip()]


def read_tsv(path: Path, *, names: list[str] | None = None) -> pd.DataFrame:
    """A headerless tab-separated table (plain or gzipped), every column read as text."""
    return pd.read_csv(path, sep="\t", header=None, names=names, dtype=str, keep_default_na=False)


def read_mtx(path: Path) -> sparse.csr_matrix:
    """A MatrixMarket file (plain or gzipped) as CSR."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return sparse.csr_matrix(scipy.io.mmread(handle))
