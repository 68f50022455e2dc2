"""Which cells a target's fits read, and the slice of a screen that holds only those.

:func:`cis_cells` is the one place that chooses the cells of a target's cis fit: its own cells
and the control cells it uses (low MOI: the control label, cut to ``control_cells``; high MOI:
the carriers of its guides and the cells without them, the complement, cut the same way). The
trans fit reads a subset of these (the cells the cis fit gave a dosage); its significance test
with ``test_controls="all"`` (``fit_screen``'s low-MOI default) reads every control cell of the
screen too, which :func:`cells_for_target` adds. ``fit_cis`` calls :func:`cis_cells`,
and so does :func:`cells_for_target`, with which ``fit_screen(n_jobs=...)`` and
``backend="dask"`` hand every worker only the slice of the screen its target needs
(:func:`target_slice`); the worker's results are put back on the whole screen's cells by
:func:`expand_pieces`, exactly as a fit on the whole screen writes them (NaN for other cells).
A change to which cells a target's fit reads (e.g. a stage-one selection) is made here, once.

Everything a target's fit reads besides its cells is per cell (sum factors, guide labels,
technical labels, the guide assignment table) or per feature (the technical fit's records),
so a slice fits exactly as the whole screen does (tested bit for bit).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from .. import _validation as V
from .._cells import check_guide_columns, technical_groups
from ._control_cells import restrict_to_controls


def _label_mask(column: pd.Series, label: str) -> np.ndarray:
    """``column.astype(str) == label`` as a numpy mask, without converting every cell.

    A categorical column (how a screen's guide and target labels are stored) is compared
    through its categories: converting 100,000 labels to strings for every target of a
    genome-scale screen cost more than the rest of the target's bookkeeping together.
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = column.cat.categories.astype(str)
        hits = np.flatnonzero(names == label)
        codes = column.cat.codes.to_numpy()
        mask = np.isin(codes, hits)
        if label == "nan":  # astype(str) writes missing values as "nan"
            mask |= codes < 0
        return mask
    return (column.astype(str) == label).to_numpy()


def _columns(obs: pd.DataFrame, keys: str | Sequence[str] | None) -> pd.DataFrame:
    """The columns ``keys`` of ``obs`` that exist (a missing one is reported by its reader)."""
    keys = [] if keys is None else [keys] if isinstance(keys, str) else list(keys)
    return obs[[k for k in keys if k in obs.columns]]


def _cis_cells_low_moi(obs, guide_key, target_key, control_label, cis_target):
    """The cells of a low-MOI fit (target's and control cells) and the control mask."""
    is_cis = _label_mask(obs[target_key], cis_target)
    control = _label_mask(obs[target_key], control_label)
    if not control.any():
        V.check_control(obs, target_key, control_label)  # raises, naming the labels present
    if not is_cis.any():
        targets = obs[target_key].astype(str)
        raise ValueError(
            f"No cells target {cis_target!r} in mdata.obs[{target_key!r}]."
            + V._suggest(cis_target, pd.unique(targets))
            + " Pass `cis_target=` with the target label of the cis gene."
        )
    return is_cis | control, control


def _cis_cells_high_moi(mdata, obs, assignment_key, guide_targets, control_label, cis_target):
    if assignment_key not in mdata.obsm:
        raise KeyError(
            f"High-MOI fit needs mdata.obsm[{assignment_key!r}] (cells x guides); pass "
            "`guide_assignment_key=`."
        )
    table = mdata.obsm[assignment_key]
    if not isinstance(table, pd.DataFrame):
        raise ValueError(
            f"mdata.obsm[{assignment_key!r}] must be a DataFrame with guide names as columns."
        )
    mapping = (
        pd.Series(guide_targets) if isinstance(guide_targets, Mapping) else pd.Series(guide_targets)
    )
    unknown = [g for g in table.columns if str(g) not in mapping.index.astype(str)]
    if unknown:
        raise ValueError(
            f"Guides {unknown[:5]} of mdata.obsm[{assignment_key!r}] have no entry in "
            "`guide_targets`; give every guide its target (control label for NTC guides)."
        )
    mapping.index = mapping.index.astype(str)
    targets = mapping.loc[[str(g) for g in table.columns]].astype(str).to_numpy()
    if (targets == cis_target).sum() < 1:
        raise ValueError(
            f"The cis target {cis_target!r} has no guide in `guide_targets`."
            + V._suggest(cis_target, pd.unique(targets))
        )
    A = np.asarray(table.to_numpy(), dtype=np.float32)
    if (A < 0).any() or not np.isfinite(A).all():
        raise ValueError(f"mdata.obsm[{assignment_key!r}] must hold non-negative finite values.")
    A = (A > 0).astype(np.float32)
    use = A.sum(1) > 0
    return use, A, [str(g) for g in table.columns], targets == cis_target


@dataclass
class CisCells:
    """The cells of one target's cis fit (masks over ``mdata.obs``) and its guide table."""

    use: np.ndarray  # cells fitted (target's cells + the controls / complement it uses)
    control: np.ndarray  # cells of its control end (low MOI: control label; high: complement)
    group_codes: np.ndarray  # technical group code of every candidate cell (-1 elsewhere)
    assignment: np.ndarray | None = None  # high MOI: cells x guides 0/1 (every cell)
    guide_names: list[str] | None = None  # high MOI: the assignment table's guides
    is_cis: np.ndarray | None = None  # high MOI: which guides target the cis gene


def cis_cells(
    mdata: MuData,
    tech,
    *,
    cis_target: str,
    guide_key: str,
    target_key: str,
    control_label: str,
    guide_assignment_key: str,
    guide_targets: Mapping[str, str] | pd.Series | None,
    control_cells: int | Sequence[str] | None,
    rng: np.random.Generator,
) -> CisCells:
    """The cells the cis fit of ``cis_target`` uses (validated; raises naming the problem).

    Parameters
    ----------
    mdata
        The screen (or a slice of it holding at least the cells returned here).
    tech
        The technical fit (:func:`~dream_sc.tl._technical.load_technical`): its covariate
        columns and groups.
    cis_target, guide_key, target_key, control_label, guide_assignment_key, guide_targets
        As in :func:`~dream_sc.tl.fit_cis` (``guide_targets`` given: high MOI).
    control_cells
        ``None`` (every control cell), a number (a stratified draw from ``rng``) or obs names.
    rng
        Source of the ``control_cells`` draw (the fit's: ``default_rng(seed)``).
    """
    obs = mdata.obs
    extra = {}
    if guide_targets is not None:
        use, A_all, guide_names, is_cis = _cis_cells_high_moi(
            mdata, obs, guide_assignment_key, guide_targets, control_label, cis_target
        )
        control = A_all[:, is_cis].sum(1) == 0
        extra = {"assignment": A_all, "guide_names": guide_names, "is_cis": is_cis}
    else:
        check_guide_columns(mdata, guide_key, target_key)
        use, control = _cis_cells_low_moi(obs, guide_key, target_key, control_label, cis_target)
    # named control cells need no group codes to be picked: then only the fit's cells are coded
    # (coding a genome-scale screen's 200,000 controls per target cost 0.3 s at 2 million cells)
    named = control_cells is not None and not isinstance(control_cells, (int, np.integer))
    if named:
        use = restrict_to_controls(use, control, obs.index, None, control_cells, rng)
    group_codes = _group_codes(obs, use, tech)
    if not named:
        use = restrict_to_controls(use, control, obs.index, group_codes, control_cells, rng)
    return CisCells(use, control, group_codes, **extra)


def _group_codes(obs: pd.DataFrame, cells: np.ndarray, tech) -> np.ndarray:
    """Technical group code of the ``cells`` (mask) in the technical fit's order, -1 elsewhere.

    Only those cells are read (a screen's other targets are not).
    """
    candidates = np.flatnonzero(cells)
    groups = technical_groups(
        _columns(obs, tech.technical_key).iloc[candidates], tech.technical_key, known=tech.groups
    )
    group_codes = np.full(len(obs), -1, dtype=np.int64)
    group_codes[candidates] = groups.codes
    return group_codes


def cells_for_target(mdata: MuData, target: str, kwargs: Mapping, tech=None) -> np.ndarray:
    """Positions (ascending) of the cells ``fit_screen``'s fits of ``target`` read.

    The cells of its cis fit (:func:`cis_cells` with the arguments ``fit_screen`` passes, its
    seed drawing the control subsample where one is drawn); its trans fit reads the cells of
    those with a dosage, and its significance test with ``test_controls="all"`` (fit_screen's
    default at low MOI) every control cell of the screen as well. ``kwargs`` are the
    target's ``fit_one`` arguments of ``fit_screen``: ``modality``, ``technical_key_added``,
    ``seed``, ``common`` (guide / target keys, control label), ``cis_kwargs``
    (``control_cells`` and, at high MOI, ``guide_targets`` / ``guide_assignment_key``) and
    ``trans_kwargs``. ``tech``: the technical fit, if loaded.
    """
    if tech is None:
        from ._technical import load_technical

        tech = load_technical(mdata, kwargs["modality"], kwargs["technical_key_added"])
    common, cis_kwargs = kwargs["common"], kwargs["cis_kwargs"]
    cells = cis_cells(
        mdata,
        tech,
        cis_target=target,
        guide_key=common["guide_key"],
        target_key=common["target_key"],
        control_label=common["control_label"],
        guide_assignment_key=cis_kwargs.get("guide_assignment_key", "guide_assignment"),
        guide_targets=cis_kwargs.get("guide_targets"),
        control_cells=cis_kwargs.get("control_cells"),
        rng=np.random.default_rng(int(kwargs["seed"])),
    )
    use = cells.use
    if kwargs.get("trans_kwargs", {}).get("test_controls") == "all":
        # the significance test adds every control cell of the screen (tl/_test_cells.py)
        use = use | _label_mask(mdata.obs[common["target_key"]], common["control_label"])
    return np.flatnonzero(use)


@contextmanager
def _results_set_aside(mdata: MuData, modality: str, prefixes: Sequence[str]):
    """Set aside the entries of ``prefixes`` while a slice of ``mdata`` is cut in the block.

    The modality's ``varm`` / ``uns`` entries of ``prefixes`` and the MuData's own ``uns`` are
    left out. Late in a screen those hold every earlier target's results, and copying them
    into each slice (to drop them right after) made the caller's cost per slice grow with the
    targets already fitted (benchmarks/README, "The caller's cost per slice"). On exit the
    original containers are put back as the same objects, in the same order, also after an
    error. A view is left alone (its setters would make it actual).
    """
    adata = mdata.mod[modality]
    if mdata.is_view or adata.is_view or not prefixes:
        yield
        return
    exact = {str(p) for p in prefixes}
    starts = tuple(f"{p}_" for p in exact)
    varm, uns, own_uns = dict(adata.varm), adata.uns, mdata.uns
    try:
        adata.varm = {k: v for k, v in varm.items() if not (k in exact or k.startswith(starts))}
        adata.uns = {k: v for k, v in uns.items() if not (k in exact or k.startswith(starts))}
        mdata.uns = {}
        yield
    finally:
        adata.varm, adata.uns, mdata.uns = varm, uns, own_uns


def screen_slice(
    mdata: MuData, cells: np.ndarray, *, modality: str, drop_prefixes: Sequence[str] = ()
) -> MuData:
    """The screen restricted to ``cells`` (positions), as a new MuData.

    Every modality with its records (registration, technical fit) and every obs / obsm entry
    is kept on those cells, except the entries owned by ``drop_prefixes`` (the other targets'
    results of the run) and the MuData's own ``uns``: a target's fits read no global record
    but the cis fit they write themselves (``mdata.uns`` holds the other fits' records, a
    simulation's truth, a user's notes: writing them cost more than the cells of a slice).
    """
    from ._screen_store import drop_all

    with warnings.catch_warnings(), _results_set_aside(mdata, modality, drop_prefixes):
        warnings.simplefilter("ignore", FutureWarning)
        sub = mdata[np.asarray(cells)].copy()
    drop_all(sub, modality, drop_prefixes)
    for key in list(sub.uns):
        del sub.uns[key]
    return sub


def mudata_bytes(mdata: MuData) -> bytes:
    """``mdata`` as the bytes of an h5mu file (a MuData does not pickle)."""
    folder = tempfile.mkdtemp(prefix="dream_sc_slice_")
    path = Path(folder) / "slice.h5mu"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mdata.write(path)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
        os.rmdir(folder)


def read_mudata_bytes(payload: bytes) -> MuData:
    """The MuData of :func:`mudata_bytes`."""
    import mudata

    handle, name = tempfile.mkstemp(suffix=".h5mu")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return mudata.read_h5mu(name)
    finally:
        os.unlink(name)


def target_slice(mdata: MuData, target: str, kwargs: Mapping) -> tuple[np.ndarray, bytes]:
    """``(cells, payload)``: a target's cells and the bytes of the screen restricted to them.

    ``kwargs`` are the target's ``fit_one`` arguments of ``fit_screen`` (with ``prefixes``:
    every key of the run; all but the technical fit's are left out of the slice).
    """
    technical = kwargs["technical_key_added"]
    if "members" in kwargs:  # a block of targets (fit_screen(target_batch=...)): every cell
        # any of them reads
        each = [cells_for_target(mdata, t, {**kwargs, **kwargs["members"][t]}) for t in target]
        cells = np.unique(np.concatenate(each))
    else:
        cells = cells_for_target(mdata, target, kwargs)
    others = [p for p in kwargs["prefixes"] if p != technical]
    sub = screen_slice(mdata, cells, modality=kwargs["modality"], drop_prefixes=others)
    return cells, mudata_bytes(sub)


def expand_rows(value, cells: np.ndarray, obs_names: pd.Index, name: str = "entry"):
    """A per-cell value of a slice (rows = ``cells``) on the whole screen's ``obs_names``.

    Float arrays get NaN rows, CSR matrices empty rows, DataFrames NaN rows (as a fit on the
    whole screen writes them for cells outside it); other per-cell values cannot be placed.
    """
    n_obs = len(obs_names)
    if sparse.issparse(value):
        m = sparse.csr_matrix(value)
        counts = np.zeros(n_obs, dtype=np.int64)
        counts[cells] = np.diff(m.indptr)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(m.indptr.dtype)
        return sparse.csr_matrix((m.data, m.indices, indptr), shape=(n_obs, m.shape[1]))
    if isinstance(value, pd.DataFrame):
        out = value.set_axis(obs_names[cells]).reindex(obs_names)
        out.index = obs_names
        return out
    values = np.asarray(value)
    if values.dtype.kind == "f":
        full = np.full((n_obs, *values.shape[1:]), np.nan, dtype=values.dtype)
        full[cells] = values
        return full
    if isinstance(value, pd.Series) and (
        isinstance(value.dtype, pd.CategoricalDtype) or value.dtype == object
    ):
        full = pd.Series(pd.NA, index=pd.RangeIndex(n_obs), dtype=value.dtype, name=value.name)
        full.iloc[cells] = value.to_numpy()
        return full
    raise TypeError(
        f"{name!r} ({values.dtype}) of a target's slice cannot be put back on the whole screen's "
        "cells (no missing value for the other cells)."
    )


def expand_pieces(pieces: dict[str, dict], cells: np.ndarray, obs_names: pd.Index, digest: str):
    """A slice's captured entries (:func:`~dream_sc.tl._screen_store.capture`) on the screen.

    Global obs columns and obsm entries are put on the screen's cells (:func:`expand_rows`),
    ``digest`` being :func:`~dream_sc.tl._screen_store.index_digest` of ``obs_names``; every
    other entry (uns, the modality's var / varm / uns) is per feature or per fit and kept.
    """
    out = {}
    for where, entries in pieces.items():
        if where == "global/obs":
            entries = {
                name: (digest, _as_series(expand_rows(series, cells, obs_names, name), series))
                for name, (_, series) in entries.items()
            }
        elif where == "global/obsm":
            entries = {n: expand_rows(v, cells, obs_names, n) for n, v in entries.items()}
        out[where] = entries
    return out


def _as_series(values, like: pd.Series) -> pd.Series:
    if isinstance(values, pd.Series):
        return values
    return pd.Series(values, name=like.name)
