"""Size factors of a simulated screen, computed from its counts as a user would."""

from __future__ import annotations

import numpy as np
from mudata import MuData

#: obs column of the generating capture efficiency (truth; never used by the pipeline).
TRUE_SIZE_FACTOR = "true_size_factor"


def estimate_size_factors(mdata: MuData, design_true: object) -> None:
    """Write the generating factor as truth and ``obs["sum_factor"]`` estimated from ``rna``.

    The simulator draws a capture efficiency per cell and multiplies every expected count by
    it, so a cell's library size also moves with its composition (the cis gene, activated
    responders). ``obs["true_size_factor"]`` keeps the efficiency as truth;
    ``obs["sum_factor"]`` is :func:`dream_sc.pp.sum_factors` with its default method on the
    ``rna`` counts (technical groups: ``cell_line``) - what a user would compute - so every
    fit on simulated data runs with estimated size factors.
    Tiny screens with cells without any ``rna`` count get library sizes plus one instead.
    """
    from ..pp._sum_factors import sum_factors

    mdata.obs[TRUE_SIZE_FACTOR] = np.asarray(design_true, dtype=np.float64)
    try:
        sum_factors(mdata, "rna", key_added="sum_factor", technical_key="cell_line")
    except ValueError:
        X = mdata["rna"].X
        lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel() + 1.0
        mdata.obs["sum_factor"] = lib / lib.mean()
