"""Store of screen records (``fit_screen``): ``mdata.uns[key]`` and the per-target fit keys."""

from __future__ import annotations

from collections.abc import Mapping

from mudata import MuData

from .. import _record_checks as C
from ._common import stamp
from ._keys import ScreenKeys

__all__ = ["ScreenKeys", "read_screen", "target_fit_key", "write_screen"]


def target_fit_key(prefix: str, target: str) -> str:
    """Key of the cis or trans fit of ``target`` in a screen whose fits start with ``prefix``."""
    return ScreenKeys.fit_key(prefix, target)


def write_screen(mdata: MuData, key: str, record: dict) -> None:
    """Store the screen record of ``fit_screen`` (stamped with its kind and schema version)."""
    mdata.uns[ScreenKeys(key).record] = stamp(record, "screen")


def read_screen(mdata: MuData, modality: str, key: str) -> Mapping:
    """The screen record ``key`` of ``modality`` (raises when missing, foreign or damaged)."""
    if ScreenKeys(key).record not in mdata.uns:
        raise KeyError(
            f"No screen record {key!r} in mdata.uns; run `ds.tl.fit_screen(mdata, "
            f"modality={modality!r})` first or pass `key=`."
        )
    C.check_screen(mdata, key, modality)
    record = mdata.uns[ScreenKeys(key).record]
    if str(record.get("modality", modality)) != modality:
        raise ValueError(
            f"The screen {key!r} was fitted on modality {record['modality']!r}, not "
            f"{modality!r}; pass modality={record['modality']!r} or the key of that screen."
        )
    return record
