"""``pp.from_anndata``: an AnnData with guide labels → a MuData ready for the fits."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData
from mudata import MuData

from .. import _validation as V
from ..io._feature_reference import CONTROL_TARGETS, is_control

logger = logging.getLogger("dream_sc")

#: Guide labels meaning "no guide" (compared case-insensitively).
UNASSIGNED: tuple[str, ...] = ("", "nan", "none", "unassigned", "no_guide", "unknown")


def from_anndata(
    adata: AnnData,
    *,
    guide_key: str = "guide",
    target_key: str | None = "target",
    control_label: str = "ntc",
    modality: str = "rna",
    guide_targets: Mapping[str, str] | pd.Series | None = None,
    control_targets: Sequence[str] = CONTROL_TARGETS,
    unassigned: Sequence[str] = UNASSIGNED,
) -> MuData:
    """Wrap an AnnData with per-cell guide labels into a MuData with global ``obs`` labels.

    ``MuData({"rna": adata})`` leaves the labels as ``rna:guide``; this function moves every
    ``adata.obs`` column to the global ``mdata.obs`` (same names), writes ``guide`` and
    ``target`` as categoricals (controls mapped to ``control_label``) and removes cells without
    a single guide.

    Parameters
    ----------
    adata
        Cells × genes with raw counts and guide labels in ``obs``.
    guide_key
        obs column with each cell's guide.
    target_key
        obs column with each guide's target; ``None`` (or a missing column) when
        ``guide_targets`` is given.
    control_label
        Label of non-targeting controls in the output ``target`` column.
    modality
        Name of the modality.
    guide_targets
        Guide → target mapping used when ``target_key`` is ``None``.
    control_targets
        Target names of controls (case-insensitive), mapped to ``control_label``.
    unassigned
        Guide labels meaning "no guide" (case-insensitive); missing values count too.

    Returns
    -------
    MuData with modality ``modality`` (a copy of the kept cells, ``obs`` emptied) and global
    ``obs`` holding every former ``adata.obs`` column plus ``guide`` and ``target``
    (categoricals, controls first). Cells removed: unassigned labels and several guides joined
    by ``|`` (counts logged at INFO).

    Raises
    ------
    KeyError
        Missing guide or target column (with the closest names).
    ValueError
        Guides without a target, or no cell left.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from anndata import AnnData
    >>> obs = pd.DataFrame(
    ...     {"guide": ["A_1", "NTC_1", None], "target": ["A", "Non-Targeting", None]},
    ...     index=["c1", "c2", "c3"],
    ... )
    >>> mdata = from_anndata(AnnData(np.ones((3, 2)), obs=obs))
    >>> mdata.obs["target"].tolist(), mdata.n_obs
    (['A', 'ntc'], 2)
    """
    if not isinstance(adata, AnnData):
        raise V.InputTypeError(f"Expected an AnnData, got {type(adata).__name__}.")
    if not isinstance(modality, str) or not modality or ":" in modality:
        raise ValueError(f"`modality` must be a non-empty name without ':'; got {modality!r}.")
    obs = adata.obs
    V.check_obs_column(obs, guide_key, "guide_key")
    guide = obs[guide_key].astype(object)
    if target_key is not None and target_key in obs.columns:
        target = obs[target_key].astype(object)
    elif guide_targets is not None:
        mapping = pd.Series(
            dict(guide_targets) if isinstance(guide_targets, Mapping) else guide_targets
        )
        target = guide.map(mapping)
    else:
        V.check_obs_column(obs, str(target_key), "target_key", " or pass `guide_targets=`")
        raise AssertionError  # unreachable: the check raises
    labels = guide.astype(str).str.strip()
    none = (
        guide.isna().to_numpy()
        | labels.str.lower().isin([u.lower() for u in unassigned]).to_numpy()
    )
    several = ~none & labels.str.contains("|", regex=False).to_numpy()
    keep = ~none & ~several
    no_target = keep & target.isna().to_numpy()
    if no_target.any():
        missing = sorted(pd.unique(labels[no_target]))[:5]
        raise ValueError(
            f"Guide(s) {missing} have no target; fill obs[{target_key!r}] or give them in "
            f"`guide_targets=` (controls: {control_label!r})."
        )
    if not keep.any():
        raise ValueError(f"No cell has a single guide in obs[{guide_key!r}]; nothing to analyse.")
    target = target.astype(str).str.strip()
    target[is_control(target, control_targets, control_label)] = control_label
    logger.info(
        "from_anndata: kept %d of %d cells; removed %d without a guide and %d with several",
        int(keep.sum()),
        len(keep),
        int(none.sum()),
        int(several.sum()),
    )
    kept = adata[keep].copy()
    global_obs = kept.obs.copy()
    kept.obs = pd.DataFrame(index=kept.obs_names.copy())
    guide_kept, target_kept = labels[keep], target[keep]
    targets = _order(obs.get(target_key) if target_key is not None else None, target_kept)
    target_order = [control_label] + [t for t in targets if t != control_label]
    global_obs[guide_key] = pd.Categorical(
        guide_kept.to_numpy(), categories=_order(obs[guide_key], guide_kept)
    )
    global_obs["target" if target_key is None else target_key] = pd.Categorical(
        target_kept.to_numpy(), categories=[t for t in target_order if t in set(targets)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = MuData({modality: kept})
    for column in global_obs.columns:
        mdata.obs[column] = (
            global_obs[column].to_numpy()
            if not isinstance(global_obs[column].dtype, pd.CategoricalDtype)
            else global_obs[column].values
        )
    return mdata


def _order(column: pd.Series | None, kept: pd.Series) -> list[str]:
    """Category order: the column's own (categorical) order, else sorted; only kept labels."""
    present = set(kept)
    if column is not None and isinstance(column.dtype, pd.CategoricalDtype):
        own = [str(c).strip() for c in column.cat.categories]
        return [c for c in own if c in present] + sorted(present - set(own))
    return sorted(present)
