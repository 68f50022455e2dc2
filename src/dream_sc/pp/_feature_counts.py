"""Count-matrix plumbing shared by the splicing and isoform builders.

Aggregation (sums over groups of columns), coverage filters and the final, all-or-nothing write
of new modalities into a MuData. Sparse inputs stay sparse (CSR) throughout; dense inputs stay
dense ``numpy`` arrays.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mudata
import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from .. import _validation as V

logger = logging.getLogger("dream_sc")

Matrix = Any  # np.ndarray | scipy.sparse.csr_matrix


# --------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------
def read_counts(mdata: MuData, modality: str, layer: str | None, what: str) -> Matrix:
    """Return raw counts of a modality (X or ``layer``) as CSR or a dense array, validated.

    Raises
    ------
    KeyError
        If the modality or layer is missing.
    ValueError
        If the counts are not finite non-negative integers.
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, modality)
    adata = mdata.mod[modality]
    if layer is None:
        matrix = adata.X
    elif layer in adata.layers:
        matrix = adata.layers[layer]
    else:
        raise KeyError(
            f"Layer {layer!r} not found in modality {modality!r}; layers present: "
            f"{list(adata.layers)}. Pass `layer=None` to use X."
        )
    if matrix is None:
        raise ValueError(f"Modality {modality!r} has no X; pass `layer=` with the raw counts.")
    matrix = sparse.csr_matrix(matrix) if sparse.issparse(matrix) else np.asarray(matrix)
    if not np.issubdtype(matrix.dtype, np.number) or matrix.dtype == np.bool_:
        raise ValueError(f"{what} must be numeric read counts; got dtype {matrix.dtype}.")
    values = matrix.data if sparse.issparse(matrix) else matrix.ravel()
    if values.size and (
        not np.all(np.isfinite(values))
        or values.min() < 0
        or not np.all(np.floor(values) == values)
    ):
        raise ValueError(
            f"{what} must be raw read counts (finite, non-negative integers); found negative, "
            "non-integer or non-finite values. Pass `layer=` naming the layer with raw counts."
        )
    return matrix


def check_threshold(value: object, name: str) -> int:
    """Require a non-negative integer threshold."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer; got {value!r}.")
    return int(value)


def check_output_name(name: object, source: str, argument: str) -> str:
    """A new modality name: a non-empty string without ``:`` that is not the input modality."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"`{argument}` must be a non-empty modality name without ':' (mudata reserves it); "
            f"got {name!r}."
        )
    if name == source:
        raise ValueError(
            f"`{argument}`={name!r} would overwrite the input modality {source!r}; pick "
            "another name."
        )
    return name


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------
def indicator(codes: np.ndarray, n_groups: int, dtype: np.dtype) -> sparse.csr_matrix:
    """Membership matrix (n_features × n_groups) with a 1 at ``(i, codes[i])``; ``-1`` = none."""
    keep = codes >= 0
    rows = np.flatnonzero(keep)
    return sparse.csr_matrix(
        (np.ones(rows.size, dtype=dtype), (rows, codes[keep])), shape=(codes.size, n_groups)
    )


def right_multiply(counts: Matrix, operator: sparse.spmatrix) -> Matrix:
    """``counts @ operator`` keeping sparse input sparse (CSR) and dense input dense."""
    operator = sparse.csr_matrix(operator, dtype=counts.dtype)
    if sparse.issparse(counts):
        return sparse.csr_matrix(counts @ operator)
    return np.asarray((operator.T @ counts.T).T)


def group_totals(counts: Matrix, groups: pd.Series) -> Matrix:
    """Per cell and feature, the summed counts of all features in its group.

    Features with a missing group get 0. Computed as ``(counts @ G) @ G.T`` with the
    features × groups membership matrix ``G``: two products with one non-zero per feature,
    never the features × features matrix.
    """
    codes, uniques = pd.factorize(groups)
    members = indicator(codes, len(uniques), counts.dtype)
    return right_multiply(right_multiply(counts, members), members.T)


def columns(counts: Matrix, positions: np.ndarray) -> Matrix:
    """Columns ``positions`` of ``counts`` (CSR stays CSR)."""
    if sparse.issparse(counts):
        return sparse.csr_matrix(counts[:, positions])
    return np.asarray(counts[:, positions])


def coverage(matrix: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per column: number of cells with a positive value and the column sum."""
    if sparse.issparse(matrix):
        matrix = sparse.csr_matrix(matrix)
        positive = matrix.indices[matrix.data > 0]
        covered = np.bincount(positive, minlength=matrix.shape[1])
        total = np.asarray(matrix.sum(axis=0)).ravel()
    else:
        covered = (matrix > 0).sum(axis=0)
        total = matrix.sum(axis=0)
    return np.asarray(covered, dtype=np.int64), np.asarray(total, dtype=float)


# --------------------------------------------------------------------------------------------
# filtering
# --------------------------------------------------------------------------------------------
@dataclass
class FilterReport:
    """Why features of one output modality were dropped (counts per reason, in order)."""

    kind: str
    unit: str
    n_candidates: int
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        """Total number of dropped features."""
        return sum(self.dropped.values())

    def log(self) -> None:
        """Log the report at INFO level on the ``dream_sc`` logger."""
        reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.items() if n)
        kept = self.n_candidates - self.n_dropped
        logger.info(
            "%s: kept %d of %d %s; dropped %d%s",
            self.kind,
            kept,
            self.n_candidates,
            self.unit,
            self.n_dropped,
            f" ({reasons})" if reasons else "",
        )


def coverage_mask(
    covered: np.ndarray,
    total: np.ndarray,
    *,
    min_cells_covered: int,
    min_total_reads: int,
    report: FilterReport,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Features passing both coverage filters; record the failures in ``report``.

    A feature failing both filters is counted once, under ``min_total_reads``. Features
    outside ``candidates`` (already dropped) are neither kept nor counted.
    """
    candidates = np.ones(covered.size, bool) if candidates is None else candidates
    low_reads = candidates & (total < min_total_reads)
    low_cells = candidates & ~low_reads & (covered < min_cells_covered)
    report.dropped[f"with < {min_total_reads} total reads"] = int(low_reads.sum())
    report.dropped[f"covered in < {min_cells_covered} cells"] = int(low_cells.sum())
    return candidates & ~low_reads & ~low_cells


def multi_member_mask(groups: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Among ``keep``, the features whose group still has at least two kept members."""
    sizes = pd.Series(groups[keep]).value_counts()
    n_members = pd.Series(groups).map(sizes).fillna(0).to_numpy()
    return keep & (n_members >= 2)


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def new_modality(
    obs_names: pd.Index, var: pd.DataFrame, x: Matrix, layers: Mapping[str, Matrix] | None = None
) -> AnnData:
    """An AnnData with empty obs (cells = ``obs_names``), the given var, X and layers."""
    adata = AnnData(X=x, obs=pd.DataFrame(index=obs_names.copy()), var=var)
    for name, value in (layers or {}).items():
        adata.layers[name] = value
    return adata


def copy_mudata(mdata: MuData) -> MuData:
    """``mdata.copy()`` without pulling modality columns into the global ``obs``/``var``.

    mudata 0.3 copies through ``update()``, which by default pulls every modality's obs and var
    columns into the global tables (e.g. ``junctions:qc``); mudata 0.4 does not. Copying with
    ``pull_on_update=False`` gives the same copy under both.
    """
    with _non_legacy_update():
        return mdata.copy()


def install_modalities(
    mdata: MuData, modalities: Mapping[str, AnnData], *, stacklevel: int = 3
) -> None:
    """Add (or replace, with a warning) modalities, then ``mdata.update()``.

    Junction-id var_names are shared by design between the junction, ``sj``, ``donor`` and
    ``acceptor`` modalities, so mudata's non-unique-var_names warning is silenced here. The
    update always runs with ``pull_on_update=False`` (mudata 0.4's default, forced under both
    versions and whatever the user set): it aligns the global obs/var names and the obs/var
    maps but pulls no modality column, so the global ``obs`` keeps exactly the user's columns
    (the new modalities start with empty obs) under mudata 0.3 and 0.4. The legacy path of
    mudata 0.3 cannot add modalities whose var_names intersect anyway.
    """
    for name, adata in modalities.items():
        if name in mdata.mod:
            warnings.warn(
                f"Replacing the existing modality {name!r} with the newly built one.",
                UserWarning,
                stacklevel=stacklevel,
            )
        mdata.mod[name] = adata
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="var_names are not unique")
        with _non_legacy_update():
            mdata.update()


def _non_legacy_update() -> contextlib.AbstractContextManager:
    """``pull_on_update=False`` for the duration: mudata 0.3 options, mudata 0.4 settings."""
    if hasattr(mudata, "set_options"):  # mudata 0.3
        return mudata.set_options(pull_on_update=False)
    settings = getattr(mudata, "settings", None)
    if settings is not None and hasattr(settings, "override"):  # mudata >= 0.4
        return settings.override(pull_on_update=False)
    return contextlib.nullcontext()  # pragma: no cover - no such option in this mudata
