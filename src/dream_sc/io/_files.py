"""Locate input files (plain or gzipped) and read them with every failure named.

Every reader of :mod:`dream_sc.io` opens its files through these helpers, so a damaged file —
empty, header only, truncated gzip, not UTF-8, not parseable, duplicated header fields, a
MatrixMarket header that does not fit the other files — stops with a :class:`ValueError` of the
form ``"'<path>': <problem>; fix: <what to do>."`` before anything is returned. A missing path
is a :class:`ValueError` too (``"... does not exist; check the path."``).
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.io
from scipy import sparse

PathLike = str | Path

#: Errors of gzip, decoding and parsing turned into a ValueError naming the file.
_DAMAGED = (EOFError, zlib.error, gzip.BadGzipFile)
_REGENERATE = "copy the file again from the pipeline's output (or re-run the step that wrote it)"


def file_error(path: Path | str, problem: str, fix: str) -> ValueError:
    """``ValueError("'<path>': <problem>; fix: <fix>.")``."""
    return ValueError(f"{str(path)!r}: {problem}; fix: {fix}.")


@contextmanager
def reading(path: Path, kind: str) -> Iterator[None]:
    """Turn gzip, decoding and parser errors raised inside the block into a ValueError.

    ``kind`` names the expected format, e.g. ``"a tab-separated table"``.
    """
    try:
        yield
    except UnicodeDecodeError as err:
        raise file_error(
            path,
            f"byte {err.object[err.start : err.start + 1]!r} at position {err.start} is not UTF-8 "
            f"text (expected {kind})",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove the odd "
            "characters from the names",
        ) from err
    except _DAMAGED as err:
        raise file_error(
            path,
            f"truncated or corrupt gzip data ({type(err).__name__}: {err})",
            f"{_REGENERATE}; `gzip -t` tests a .gz file",
        ) from err
    except pd.errors.EmptyDataError as err:
        raise file_error(path, f"the file is empty (expected {kind})", _REGENERATE) from err
    except pd.errors.ParserError as err:
        raise file_error(
            path,
            f"cannot be parsed as {kind} ({str(err).strip()})",
            "check the separator and that every row has the same number of fields",
        ) from err
    except IsADirectoryError as err:
        raise file_error(path, "is a folder, not a file", "pass the path of the file") from err
    except OSError as err:
        raise file_error(path, f"cannot be read ({err})", _REGENERATE) from err


def _opener(path: Path) -> Callable[..., Any]:
    return gzip.open if path.name.endswith(".gz") else open


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


def as_file(path: object, argument: str) -> Path:
    """Like :func:`as_path` but the path must be a file."""
    if not isinstance(path, str | Path):
        raise ValueError(
            f"`{argument}` must be a path (str or pathlib.Path) or a table; got "
            f"{type(path).__name__}."
        )
    out = Path(path).expanduser()
    if not out.is_file():
        raise ValueError(f"`{argument}`: {str(out)!r} is not a file; check the path.")
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


def read_lines(path: Path, *, what: str = "one entry per line") -> list[str]:
    """Non-empty lines of a plain or gzipped UTF-8 text file, without line ends.

    Raises
    ------
    ValueError
        Damaged file (see :func:`reading`) or no non-empty line.
    """
    with reading(path, f"text with {what}"), _opener(path)(path, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\r\n") for line in handle if line.strip()]
    if not lines:
        raise file_error(path, f"the file is empty (expected {what})", _REGENERATE)
    return lines


def header_fields(path: Path, sep: str, *, comment: str | None = None) -> list[str]:
    """Fields of the first line (skipping blank and ``comment`` lines), quotes removed.

    Read before pandas, which renames repeated names (``AAAC-1`` → ``AAAC-1.1``).
    """
    with reading(path, "a text table"), _opener(path)(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            text = line.rstrip("\r\n")
            if not text.strip() or (comment and text.lstrip().startswith(comment)):
                continue
            try:
                return [f.strip() for f in next(csv.reader([text], delimiter=sep))]
            except csv.Error as err:
                raise file_error(
                    path, f"the header line cannot be parsed ({err})", "check the separator"
                ) from err
    raise file_error(path, "the file is empty (expected a header line)", _REGENERATE)


def check_unique_header(fields: Sequence[object], where: str, fix: str) -> None:
    """Raise when a header names a column twice.

    ``where`` starts the message (``repr`` of the path, or e.g. ``"the junction table"``);
    ``fix`` says what the columns should be.
    """
    names = [str(f) for f in fields]
    dup = sorted({f for f in names if names.count(f) > 1})
    if dup:
        raise ValueError(f"{where}: the header repeats column name(s) {dup[:5]}; fix: {fix}.")


def read_table(
    path: Path,
    *,
    kind: str,
    sep: str = ",",
    header: bool = True,
    fix_header: str = "give every column a distinct name",
    **kwargs: Any,
) -> pd.DataFrame:
    """``pandas.read_csv`` with a raw duplicated-header check and every failure named.

    Raises
    ------
    ValueError
        Damaged or empty file, repeated header names, a header without rows.
    """
    if header:
        check_unique_header(
            header_fields(path, sep, comment=kwargs.get("comment")), repr(str(path)), fix_header
        )
    with reading(path, kind):
        table = pd.read_csv(path, sep=sep, header=0 if header else None, **kwargs)
    if table.shape[0] == 0:
        raise file_error(
            path,
            f"{'the header has no rows below it' if header else 'no rows'} (expected {kind})",
            "write at least one data row, or check that the right file was given",
        )
    return table


def read_tsv(path: Path, *, names: list[str] | None = None, kind: str = "") -> pd.DataFrame:
    """A headerless tab-separated table (plain or gzipped), every column read as text."""
    with reading(path, kind or "a tab-separated table"):
        table = pd.read_csv(
            path, sep="\t", header=None, names=names, dtype=str, keep_default_na=False
        )
    if table.shape[0] == 0:
        raise file_error(path, f"the file is empty (expected {kind or 'rows'})", _REGENERATE)
    return table


#: Fewest bytes per entry line of a MatrixMarket file ("1 1 1\n" coordinate, "1\n" array)
#: and the largest compression ratio of deflate: bounds on the entries a file can hold.
_MIN_LINE = {"coordinate": 6, "array": 2}
_MAX_GZIP_RATIO = 1032


def mtx_shape(path: Path) -> tuple[int, int]:
    """Rows and columns declared by a MatrixMarket header (the data is not read).

    Raises
    ------
    ValueError
        Not a MatrixMarket header, or more entries declared than the file's size can hold
        (checked here so that no memory is allocated for them).
    """
    with (
        reading(path, "a MatrixMarket file"),
        _opener(path)(path, "rt", encoding="utf-8") as handle,
    ):
        banner = handle.readline().split()
        line = handle.readline()
        while line.startswith("%") or (line and not line.strip()):
            line = handle.readline()
    sizes = line.split()
    layout = banner[2].lower() if len(banner) > 2 else ""
    expected = 3 if layout == "coordinate" else 2
    if (
        len(banner) < 5
        or banner[0].lower() != "%%matrixmarket"
        or layout not in _MIN_LINE
        or len(sizes) != expected
        or not all(v.isascii() and v.isdigit() for v in sizes)
    ):
        raise file_error(
            path,
            f"not a MatrixMarket file (banner {' '.join(banner)[:60]!r}, size line "
            f"{line.strip()[:60]!r})",
            "the first line must be '%%MatrixMarket matrix coordinate integer general', "
            "then a line 'rows columns entries'; " + _REGENERATE,
        )
    rows, cols = int(sizes[0]), int(sizes[1])
    entries = int(sizes[2]) if layout == "coordinate" else rows * cols
    size = path.stat().st_size * (_MAX_GZIP_RATIO if path.name.endswith(".gz") else 1)
    if entries * _MIN_LINE.get(layout, 2) > size:
        raise file_error(
            path,
            f"the header declares {rows} × {cols} with {entries} entries, more than a file of "
            f"{path.stat().st_size} bytes can hold (truncated?)",
            _REGENERATE,
        )
    return rows, cols


def read_mtx(path: Path) -> sparse.csr_matrix:
    """A MatrixMarket file (plain or gzipped) as CSR, with finite non-negative values.

    Call :func:`mtx_shape` first and compare the shape with the other files of the folder:
    the header's dimensions are allocated here.
    """
    with reading(path, "a MatrixMarket file"), _opener(path)(path, "rb") as handle:
        try:
            matrix = scipy.io.mmread(handle)
        except (ValueError, IndexError, TypeError, OverflowError, RuntimeError) as err:
            raise file_error(
                path,
                f"cannot be parsed as a MatrixMarket matrix ({err})",
                "every entry line must be 'row column count' with 1-based indices inside the "
                "declared dimensions; " + _REGENERATE,
            ) from err
    matrix = sparse.csr_matrix(matrix)
    if not np.issubdtype(matrix.dtype, np.number) or np.iscomplexobj(matrix.data):
        raise file_error(path, f"holds {matrix.dtype} values, not counts", _REGENERATE)
    data = matrix.data
    if data.size and (not np.all(np.isfinite(data)) or data.min() < 0):
        raise file_error(
            path,
            "holds negative or non-finite values",
            "the matrix must hold raw counts (non-negative integers)",
        )
    return matrix
