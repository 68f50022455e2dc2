"""Chromosome names: UCSC style (``chr1``, ``chrM``) and Ensembl style (``1``, ``MT``)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

ChromStyle = Literal["keep", "ucsc", "ensembl"]
STYLES: tuple[str, ...] = ("keep", "ucsc", "ensembl")


def detect_style(names: pd.Series | pd.Index) -> str:
    """``"ucsc"`` when most names start with ``chr``, else ``"ensembl"``."""
    values = pd.Series(np.asarray(names, dtype=object)).astype(str)
    return "ucsc" if values.str.startswith("chr").mean() >= 0.5 else "ensembl"


def harmonise(names: pd.Series | pd.Index | np.ndarray, style: str) -> np.ndarray:
    """Convert chromosome names to ``style`` (``"keep"`` returns them unchanged).

    ``"ucsc"``: ``1`` → ``chr1``, ``MT`` → ``chrM``; ``"ensembl"``: ``chr1`` → ``1``,
    ``chrM`` → ``MT``. Names that already have the style, and contigs with other names in the
    target style (``chrUn_...`` stays), are unchanged.

    Examples
    --------
    >>> harmonise(["1", "MT", "chrX"], "ucsc").tolist()
    ['chr1', 'chrM', 'chrX']
    >>> harmonise(["chr1", "chrM", "Y"], "ensembl").tolist()
    ['1', 'MT', 'Y']
    """
    if style not in STYLES:
        raise ValueError(f"`chrom_style` must be one of {list(STYLES)}; got {style!r}.")
    values = pd.Series(np.asarray(names, dtype=object)).astype(str)
    if style == "keep":
        return values.to_numpy(dtype=object)
    if style == "ucsc":
        out = values.where(values.str.startswith("chr"), "chr" + values)
        out = out.replace({"chrMT": "chrM"})
    else:
        out = values.str.replace(r"^chr", "", regex=True).replace({"M": "MT"})
    return out.to_numpy(dtype=object)
