"""Finding stored fits (run records) by key: cis fits in ``mdata.uns``, the others per modality."""

from __future__ import annotations

from mudata import MuData

from .._stores._common import StoredFit, stored_fits

Fit = StoredFit


def all_fits(mdata: MuData, modality: str | None = None) -> list[Fit]:
    """Every fit stored in ``mdata`` (cis fits first, then per modality), kinds from the records."""
    return stored_fits(mdata, modality)


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
