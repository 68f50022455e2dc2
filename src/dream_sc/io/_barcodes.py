"""Match barcodes of another file to the expression cells (Cell Ranger's ``-1`` suffix)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import pandas as pd
from anndata import AnnData
from mudata import MuData

logger = logging.getLogger("dream_sc")

_SUFFIX = re.compile(r"-\d+$")
#: Fewest expression cells that must be found for a match to be accepted.
MIN_MATCHED = 0.5


def cell_names(cells: MuData | AnnData | Sequence[str] | pd.Index | None) -> pd.Index | None:
    """The expression barcodes as an Index (``None`` stays ``None``)."""
    if cells is None:
        return None
    if isinstance(cells, MuData | AnnData):
        return pd.Index(cells.obs_names.astype(str))
    if isinstance(cells, str):
        raise ValueError(
            "`cells` must be a MuData, an AnnData or a list of barcodes, not a string."
        )
    return pd.Index([str(c) for c in cells])


def _suffixes(names: pd.Index) -> list[str]:
    found = names.str.extract(r"(-\d+)$", expand=False).dropna()
    return sorted(found.unique())


def _candidates(barcodes: pd.Index, cells: pd.Index, suffix: str | None):
    """``(description, renamed barcodes, cells the match is judged on)`` to try."""
    if suffix != "auto":
        add = suffix or ""
        yield (f"appending {add!r}" if add else "as written"), barcodes + add, cells
        return
    yield "as written", barcodes, cells
    stems = barcodes.str.replace(_SUFFIX, "", regex=True)
    if not stems.equals(barcodes):
        yield "without their '-N' suffix", stems, cells
    for add in _suffixes(cells):
        yield f"appending {add!r}", stems + add, cells[cells.str.endswith(add)]


def match_barcodes(
    barcodes: pd.Index, cells: pd.Index | None, *, suffix: str | None = "auto", what: str
) -> pd.Index:
    """Rename ``barcodes`` so that they match the expression ``cells``.

    ``suffix="auto"`` tries the barcodes as written, without a ``-N`` suffix, and with each
    suffix the cells carry, and keeps the variant that finds the most cells (as a fraction of
    the cells with that suffix). A string is appended as given; ``None`` keeps the barcodes.

    Raises
    ------
    ValueError
        When fewer than half of the cells are found (with examples of both sides), or when
        several suffixes match equally well (``cellranger aggr`` with a raw whitelist).
    """
    if cells is None:
        return barcodes
    tried = []
    best = None
    ties = []
    seen: list[pd.Index] = []
    for label, renamed, judged in _candidates(barcodes, cells, suffix):
        if any(renamed.equals(other) for other in seen):
            continue  # e.g. re-appending the suffix the barcodes already carry
        seen.append(renamed)
        found = judged.isin(renamed).sum() if len(judged) else 0
        fraction = found / len(judged) if len(judged) else 0.0
        tried.append(f"{label}: {int(found)} of {len(judged)}")
        if best is None or fraction > best[0] + 1e-12:
            best, ties = (fraction, label, renamed), [label]
        elif abs(fraction - best[0]) <= 1e-12 and fraction > 0:
            ties.append(label)
    assert best is not None
    fraction, label, renamed = best
    if fraction < MIN_MATCHED:
        raise ValueError(
            f"Fewer than {MIN_MATCHED:.0%} of the expression cells are among the barcodes of "
            f"{what} (tried {'; '.join(tried)}). Expression cells look like "
            f"{cells[:3].tolist()}, {what} barcodes like {barcodes[:3].tolist()}. Pass "
            "`barcode_suffix=` (e.g. '-1') if the suffixes differ, or check that both files "
            "come from the same sample."
        )
    if len(ties) > 1 and suffix == "auto":
        raise ValueError(
            f"The barcodes of {what} match the expression cells equally well {ties} (several "
            "GEM wells after `cellranger aggr`?); pass `barcode_suffix=` with the suffix of the "
            "well this file belongs to, e.g. barcode_suffix='-1'."
        )
    logger.info("%s: barcodes matched %s (%.0f%% of the cells found)", what, label, 100 * fraction)
    return renamed
