"""Cell Ranger feature reference CSV and the guide → target mapping."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._files import as_file, check_unique_header, read_table

#: Columns every Cell Ranger feature reference has.
REFERENCE_COLUMNS: tuple[str, ...] = ("id", "name", "read", "pattern", "sequence", "feature_type")
#: Target-gene columns of CRISPR Guide Capture references (at least one is needed).
TARGET_COLUMNS: tuple[str, ...] = ("target_gene_name", "target_gene_id")
#: Target names that mark non-targeting control guides (compared case-insensitively).
CONTROL_TARGETS: tuple[str, ...] = ("Non-Targeting", "non-targeting", "NTC")


def read_feature_reference(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Read and check a feature reference (path or DataFrame).

    Returns
    -------
    The table with string columns, one row per feature, ``id`` unique.

    Raises
    ------
    ValueError
        Missing columns (naming them and the expected header) or duplicated ids.
    """
    if isinstance(source, pd.DataFrame):
        table = source.copy()
        where = "the feature reference DataFrame"
    else:
        path = as_file(source, "feature_reference")
        table = read_table(
            path,
            kind="a Cell Ranger feature reference CSV",
            fix_header=f"the header is {','.join(REFERENCE_COLUMNS)},target_gene_id,"
            "target_gene_name, each name once",
            dtype=str,
            keep_default_na=False,
            comment="#",
        )
        where = f"feature reference {str(path)!r}"
    table.columns = [str(c).strip() for c in table.columns]
    check_unique_header(table.columns, where, "name each column once")
    missing = [c for c in REFERENCE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{where} lacks column(s) {missing} (has {list(table.columns)}); Cell Ranger's "
            f"header is {','.join(REFERENCE_COLUMNS)},target_gene_id,target_gene_name."
        )
    if not any(c in table.columns for c in TARGET_COLUMNS):
        raise ValueError(
            f"{where} has no target column; add 'target_gene_name' (or 'target_gene_id') naming "
            "each guide's target gene, with 'Non-Targeting' for control guides."
        )
    table = table.astype(str).apply(lambda col: col.str.strip())
    dup = table["id"][table["id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"{where} repeats feature id(s) {list(dup[:5])}; ids must be unique.")
    return table.reset_index(drop=True)


def is_control(values: pd.Series, control_targets: Sequence[str], control_label: str) -> np.ndarray:
    """Mask of control target names (case-insensitive; the control label itself counts)."""
    names = {str(c).strip().lower() for c in (*control_targets, control_label)}
    return values.astype(str).str.strip().str.lower().isin(names).to_numpy()


def guide_targets_from_table(
    table: pd.DataFrame,
    guides: pd.DataFrame,
    *,
    control_targets: Sequence[str],
    control_label: str,
    where: str,
) -> pd.Series:
    """Target of each guide feature (``guides`` has ``id`` and ``name``), controls relabelled.

    Guides are matched to ``table`` by ``id``, then by ``name``; the target is
    ``target_gene_name`` (``target_gene_id`` when the name is empty).

    Raises
    ------
    ValueError
        When guides are missing from the table or have no target.
    """
    table = table.copy()
    target = pd.Series("", index=table.index, dtype=object)
    for column in reversed(TARGET_COLUMNS):  # id first, name wins when both are present
        if column in table.columns:
            values = table[column].astype(str).replace({"nan": ""})
            target = target.where(values == "", values)
    by_id = pd.Series(target.to_numpy(), index=table["id"].to_numpy())
    by_name = pd.Series(target.to_numpy(), index=table["name"].to_numpy())
    by_name = by_name[~by_name.index.duplicated()]
    out = guides["id"].map(by_id)
    out = out.fillna(guides["name"].map(by_name))
    unknown = guides["name"][out.isna().to_numpy()].tolist()
    if unknown:
        raise ValueError(
            f"Guide(s) {unknown[:5]} of the matrix are not in {where} (matched by 'id', then "
            f"'name'; it lists e.g. {table['id'].head(3).tolist()}). Pass the feature reference "
            "used for this Cell Ranger run."
        )
    empty = guides["name"][(out == "").to_numpy()].tolist()
    if empty:
        raise ValueError(
            f"Guide(s) {empty[:5]} have an empty target in {where}; fill 'target_gene_name' "
            "('Non-Targeting' for control guides)."
        )
    out = out.astype(object)
    out[is_control(out, control_targets, control_label)] = control_label
    return pd.Series(out.to_numpy(dtype=object), index=guides.index)
