"""Finding stored fits (run records) by key: cis fits in ``mdata.uns``, the others per modality."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mudata import MuData


@dataclass
class Fit:
    """A stored fit: its kind, where it lives and its run record."""

    kind: str  # "cis", "technical" or "trans"
    key: str
    modality: str | None  # None for cis fits (mdata.uns)
    record: Mapping

    @property
    def where(self) -> str:
        """Short description used in titles and messages."""
        return (
            f"{self.key} (mdata.uns)" if self.modality is None else f"{self.key} ({self.modality})"
        )


def _kind(record: object) -> str | None:
    if not isinstance(record, Mapping) or "loss" not in record:
        return None
    if "guides" in record and "x_ntc" in record:
        return "cis"
    if "dose_grid" in record:
        return "trans"
    if "groups" in record:
        return "technical"
    return None


def all_fits(mdata: MuData, modality: str | None = None) -> list[Fit]:
    """Every fit stored in ``mdata`` (cis fits first, then per modality)."""
    fits = []
    if modality is None:
        fits += [Fit("cis", k, None, r) for k, r in mdata.uns.items() if _kind(r) == "cis"]
    mods = list(mdata.mod) if modality is None else [modality]
    for mod in mods:
        fits += [
            Fit(_kind(r), k, mod, r)
            for k, r in mdata[mod].uns.items()
            if _kind(r) in ("technical", "trans")
        ]
    return fits


def find_fits(mdata: MuData, key: str | None, modality: str | None = None) -> list[Fit]:
    """Fits named ``key`` (all fits when ``key`` is None), optionally in one modality.

    Raises
    ------
    KeyError
        When nothing matches, listing the fits that exist.
    """
    if modality is not None and modality not in mdata.mod:
        raise KeyError(f"Modality {modality!r} not found in mdata; available: {list(mdata.mod)}.")
    fits = all_fits(mdata, modality)
    chosen = fits if key is None else [f for f in fits if f.key == key]
    if not chosen:
        where = "mdata" if modality is None else f"modality {modality!r}"
        listing = ", ".join(f.where for f in fits) or "none (run ds.tl.fit_technical first)"
        raise KeyError(f"No fit {key!r} found in {where}; available fits: {listing}.")
    return chosen
