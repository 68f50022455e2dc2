"""What every store shares: the ``kind`` / ``schema_version`` stamp and the list of stored fits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mudata import MuData

from .. import _record_checks as C
from .._record_checks import KINDS, SCHEMA_VERSION


def stamp(record: dict, kind: str) -> dict:
    """``record`` with its ``kind`` and the current ``schema_version`` (first two keys)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    return {"kind": kind, "schema_version": SCHEMA_VERSION, **record}


def record_kind(record: object) -> str | None:
    """The kind of a stored run record, ``None`` when ``record`` is not one.

    Examples
    --------
    >>> record_kind({"kind": "trans", "schema_version": 1, "loss": [1.0]})
    'trans'
    >>> record_kind({"loss": [1.0], "groups": ["a"]})  # written by an older version
    'technical'
    """
    if not isinstance(record, Mapping) or "loss" not in record:
        return None
    if "kind" in record:
        return str(record["kind"])
    return C.legacy_kind(record)


def schema_version(record: Mapping) -> int:
    """Schema version of a record (0 for records written before versions were stored)."""
    return int(record.get("schema_version", 0))


@dataclass
class StoredFit:
    """A stored fit: its kind, where it lives and its run record."""

    kind: str
    key: str
    modality: str | None  # None for cis fits (mdata.uns)
    record: Mapping

    @property
    def where(self) -> str:
        """Short description used in titles and messages."""
        return (
            f"{self.key} (mdata.uns)" if self.modality is None else f"{self.key} ({self.modality})"
        )


def stored_fits(mdata: MuData, modality: str | None = None) -> list[StoredFit]:
    """Every fit stored in ``mdata`` (cis fits first, then technical and trans per modality)."""
    fits = []
    if modality is None:
        fits += [
            StoredFit("cis", k, None, r) for k, r in mdata.uns.items() if record_kind(r) == "cis"
        ]
        _check_unknown(mdata.uns, "mdata.uns")
    for mod in list(mdata.mod) if modality is None else [modality]:
        fits += [
            StoredFit(record_kind(r), k, mod, r)
            for k, r in mdata[mod].uns.items()
            if record_kind(r) in ("technical", "trans")
        ]
        _check_unknown(mdata[mod].uns, f"mdata[{mod!r}].uns")
    for fit in fits:
        C.check_fit(mdata, fit.kind, fit.key, fit.modality)
    return fits


def _check_unknown(uns: Mapping, where: str) -> None:
    """Entries that look like run records (``kind``, ``schema_version``, ``loss``) of unknown kind."""
    for key, record in uns.items():
        if isinstance(record, Mapping) and {"kind", "schema_version", "loss"} <= set(record):
            if record_kind(record) not in KINDS:
                C.check_fit_header(record, f"{where}[{key!r}]")
