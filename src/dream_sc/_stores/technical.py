"""Store of technical fits (step 1): ``adata.uns[key]``, ``adata.varm[key]``, ``adata.var[<key>_informative]``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from .. import _record_checks as C
from .. import _validation as V
from .._registration import is_overdispersed
from ..models.families import get_family
from ._common import stamp
from ._keys import TechnicalKeys

__all__ = ["TechnicalFit", "TechnicalKeys", "read_technical", "write_technical"]


@dataclass
class TechnicalFit:
    """Technical results of a modality as later steps need them (link scale)."""

    groups: list[str]
    baseline: np.ndarray  # [T]
    effects: np.ndarray  # [T, C] (reference column = 0)
    log_phi: np.ndarray | None
    log_sigma: np.ndarray | None
    log_nu: np.ndarray | None
    distribution: str
    technical_key: object
    log_conc: np.ndarray | None = None  # [T] over-dispersed binomial / multinomial


def write_technical(
    adata: AnnData, key: str, record: dict, table: pd.DataFrame, informative: np.ndarray
) -> None:
    """Store a technical fit of one modality."""
    names = TechnicalKeys(key)
    adata.varm[names.results] = table
    adata.var[names.informative] = informative
    adata.uns[names.record] = stamp(record, "technical")


def read_technical(mdata: MuData, modality: str, key: str) -> TechnicalFit:
    """Read a stored technical fit (raises with the call to run when it is missing)."""
    V.check_modality(mdata, modality)
    adata = mdata[modality]
    names = TechnicalKeys(key)
    if names.record not in adata.uns or names.results not in adata.varm:
        raise KeyError(
            f"No technical fit {key!r} in modality {modality!r}; run "
            f"`ds.tl.fit_technical(mdata, modality={modality!r}, key_added={key!r})` first."
        )
    C.check_technical(adata, modality, key)
    record, table = adata.uns[names.record], adata.varm[names.results]
    groups = [str(g) for g in record["groups"]]
    effects = np.zeros((adata.n_vars, len(groups)))
    for k, name in enumerate(groups[1:], start=1):
        effects[:, k] = table[f"effect_{name}_mean"].to_numpy()
    get = lambda col: np.log(table[col].to_numpy()) if col in table else None  # noqa: E731
    tech_key = record["params"].get("technical_key", "cell_line")
    if isinstance(tech_key, np.ndarray):
        tech_key = [str(k) for k in tech_key]
    fitted_od = bool(record.get("overdispersed", False))
    wanted_od = get_family(str(record["distribution"])).overdispersible and is_overdispersed(adata)
    if fitted_od != wanted_od:
        raise ValueError(
            f"Modality {modality!r} is registered with overdispersed={wanted_od} but its "
            f"technical fit {key!r} was run with overdispersed={fitted_od}; rerun "
            f"`ds.tl.fit_technical(mdata, modality={modality!r}, key_added={key!r})`."
        )
    return TechnicalFit(
        groups,
        table["baseline_mean"].to_numpy(),
        effects,
        get("dispersion_q50"),
        get("sigma_q50"),
        get("nu_q50"),
        str(record["distribution"]),
        tech_key or None,
        get("concentration_q50") if fitted_od else None,
    )
