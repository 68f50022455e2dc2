"""Ground-truth curves of simulated screens on each modality's natural scale."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from mudata import MuData

from .._registration import get_registration
from ..models.families import get_family
from ._curves import PARAM_NAMES, HillCurves


def true_curve(mdata: MuData, modality: str, dose: Any) -> pd.DataFrame:
    """True mean curve of every feature of a simulated modality, in the reference group.

    Natural scale, per unit size factor: expected count for ``negbinom`` (``exp(eta)``),
    probability for ``binomial`` (``sigmoid(eta)``), category proportion within its group for
    ``multinomial`` (softmax), mean for ``normal`` (``eta``). The primary cis gene's curve is
    the dose itself; other target genes stay at their baseline.

    Parameters
    ----------
    mdata
        A MuData made by :func:`simulate_screen` or :func:`example`.
    modality
        Name of the modality.
    dose
        Positive dose value(s) of the primary cis gene (dosage scale of ``true_dose``).

    Returns
    -------
    DataFrame, features (``var_names``) × doses (columns named ``dose``).

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> curves = ds.datasets.true_curve(mdata, "rna", [1.0, 10.0])
    >>> curves.shape
    (20, 2)
    """
    if modality not in mdata.mod:
        raise KeyError(
            f"Modality {modality!r} is not in the MuData; available: {', '.join(mdata.mod)}."
        )
    adata = mdata.mod[modality]
    needed = ["true_function"] + [f"true_{p}" for p in PARAM_NAMES]
    if "truth" not in mdata.uns or any(c not in adata.var.columns for c in needed):
        raise KeyError(
            f"Modality {modality!r} carries no ground truth; true_curve needs a MuData made by "
            "dream_sc.datasets.simulate_screen or dream_sc.datasets.example."
        )
    x = np.atleast_1d(np.asarray(dose, dtype=np.float64))
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ValueError(f"dose must be positive finite number(s); got {dose!r}.")
    var = adata.var
    params = {p: var[f"true_{p}"].to_numpy(dtype=np.float64) for p in PARAM_NAMES}
    curves = HillCurves(**params, function=var["true_function"].astype(str).to_numpy())
    eta = curves.link(x)
    reg = get_registration(adata, modality)
    family = get_family(reg["distribution"])
    if family.cis_capable:  # the cis gene's own curve is the dosage itself
        cis = np.flatnonzero(_cis_mask(adata, str(mdata.uns["truth"]["cis_feature"])))
        eta[:, cis] = np.log(x)[:, None]
    codes, n_groups = None, 0
    if family.grouped:
        codes, uniques = pd.factorize(var[reg["group_key"]].astype(str))
        codes, n_groups = torch.as_tensor(codes), len(uniques)
    values = family.natural_scale(torch.as_tensor(eta), codes, n_groups).numpy()
    return pd.DataFrame(values.T, index=adata.var_names.copy(), columns=pd.Index(x, name="dose"))


def _cis_mask(adata: AnnData, name: str) -> np.ndarray:
    """Boolean mask of the cis-gene row (a ``cis`` feature named ``name``)."""
    is_cis = adata.var["true_function"].astype(str).to_numpy() == "cis"
    return is_cis & (adata.var_names.to_numpy() == name)
