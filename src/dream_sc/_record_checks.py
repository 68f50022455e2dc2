"""Checks of stored results on read: one function per record kind.

Every ``read_*`` function of the stores (:mod:`dream_sc._stores`) (the only way ``get``, ``pl`` and later
``tl`` steps read results) calls the check of its kind, so a damaged or foreign file fails with
a :class:`ValueError` that names the key, the field or column, what was expected and the fix,
instead of returning wrong numbers (an ``int64`` ``response_mean`` truncated, curves paired with
a reversed dose grid). The checks look at dtypes, shapes and the values of the small per-feature
and per-cell columns only; big arrays (curves, dosage samples) are checked by dtype and shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pandas as pd
from scipy import sparse

from ._stores._keys import CURVE_STATS, CisKeys, TechnicalKeys, TransKeys

#: Version of the record layout written by this package (records without one are version 0).
SCHEMA_VERSION = 1
#: Kinds of run records.
KINDS = ("technical", "cis", "trans", "screen")

_FLOAT = re.compile(
    r"_(mean|sd|q\d+|loc|scale|score)$|^(lfsr|qvalue|score|refine_ess|prob_.*|escape_fraction_.*)$"
)
_PROBABILITY = re.compile(r"^(prob_.*|lfsr|qvalue|escape_fraction_.*)$")
_TECH_POSITIVE = re.compile(r"^(dispersion|sigma|nu|concentration)_(mean|q\d+)$")
TRANS_COLUMNS = (
    "distribution",
    "function",
    "response_mean",
    "response_q05",
    "response_q95",
    "ec50_mean",
    "ec50_q05",
    "ec50_q95",
    "ec50_in_range",
    "shape",
    "prob_dose_dependent",
    "lfsr",
    "qvalue",
    "significant",
    "n_cells",
    "converged",
    "fitted",
)
GUIDE_COLUMNS = (
    "target",
    "n_cells",
    "dose_mean",
    "dose_q05",
    "dose_q95",
    "log2_effect_mean",
    "log2_effect_q05",
    "log2_effect_q95",
)


def legacy_kind(record: Mapping) -> str | None:
    """Kind of a record written before ``kind`` was stored (schema version 0)."""
    if "guides" in record and "x_ntc" in record:
        return "cis"
    if "dose_grid" in record:
        return "trans"
    if "groups" in record:
        return "technical"
    if "trans_keys" in record and "targets" in record:
        return "screen"
    return None


def _package_version() -> str:
    try:
        return version("dream_sc")
    except PackageNotFoundError:  # pragma: no cover - source checkout without metadata
        return "unknown"


class _Check:
    """Raises the errors of one stored fit; ``call`` is the call that rewrites it."""

    def __init__(self, call: str | None) -> None:
        what = "the ds.tl function that wrote it" if call is None else f"`{call}`"
        self.fix = f"Refit with {what} (or write the results again with this version of dream_sc)."

    def fail(self, where: str, what: str, expected: str) -> None:
        raise ValueError(f"{where}: {what}; expected {expected}. {self.fix}")

    # ---------------------------------------------------------------- record header
    def header(self, record: object, kind: str | None, where: str, fields: Iterable[str]) -> None:
        """``kind`` and ``schema_version`` of a run record, and its required ``fields``."""
        if not isinstance(record, Mapping):
            self.fail(where, f"holds a {type(record).__name__}", f"a dream_sc {kind} run record")
        stored = record.get("schema_version", 0)
        if isinstance(stored, bool) or not isinstance(stored, int | np.integer) or stored < 0:
            self.fail(where, f"field 'schema_version' is {stored!r}", "a non-negative integer")
        if int(stored) > SCHEMA_VERSION:
            raise ValueError(
                f"{where}: field 'schema_version' is {int(stored)}, but this dream_sc "
                f"({_package_version()}) reads records up to schema_version {SCHEMA_VERSION}: "
                "the file was written by a newer dream_sc. Upgrade dream_sc "
                "(`pip install -U dream_sc`) to read it."
            )
        found = record.get("kind")
        if found is None:
            found = legacy_kind(record) if int(stored) == 0 else None
            if found is None:
                self.fail(where, "field 'kind' is missing", f"kind {kind!r}")
        if found not in KINDS:
            self.fail(
                where,
                f"field 'kind' is {found!r}, an unknown kind",
                ("one of the " if kind is None else f"kind {kind!r}; ")
                + f"known kinds: {', '.join(KINDS)}",
            )
        if found != kind:
            self.fail(
                where, f"field 'kind' is {found!r}", f"kind {kind!r}: pass the key of a {kind} fit"
            )
        for field in fields:
            if field not in record:
                self.fail(
                    where,
                    f"required field {field!r} is missing",
                    f"every field the {kind} fit writes",
                )

    # ---------------------------------------------------------------- record fields
    def positive(self, record: Mapping, field: str, where: str) -> None:
        """A positive finite scalar field (when present)."""
        if field not in record:
            return
        value = np.asarray(record[field])
        if value.ndim != 0 or not _numeric(value) or not (np.isfinite(value) and value > 0):
            self.fail(where, f"field {field!r} is {record[field]!r}", "a positive finite number")

    def grid(
        self, record: Mapping, field: str, where: str, *, required: bool = True, log: bool = False
    ) -> np.ndarray | None:
        """A strictly increasing grid of finite positive dosages (``log=True``: log dosages)."""
        if field not in record:
            if required:
                self.fail(where, f"required field {field!r} is missing", "the dose grid")
            return None
        grid = np.asarray(record[field])
        what = None
        if grid.ndim != 1 or grid.size == 0 or not _numeric(grid):
            what = f"is not a 1-d numeric array (shape {grid.shape}, dtype {grid.dtype})"
        elif not np.isfinite(grid).all():
            what = "holds NaN or infinite values"
        elif not log and (grid <= 0).any():
            what = "holds values <= 0"
        elif (np.diff(grid) <= 0).any():
            what = "is not strictly increasing"
        if what is not None:
            self.fail(
                where,
                f"field {field!r} {what}",
                f"finite {'log' if log else 'positive'} dosages in strictly increasing order",
            )
        return grid

    def array(self, value: object, where: str, what: str, shape: tuple, *, kind: str = "f") -> None:
        """A numeric array of ``shape`` (``None`` entries: any length); ``kind`` f(loat) or b(ool)."""
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        ok_dtype = arr.dtype.kind == "b" if kind == "b" else arr.dtype.kind == "f"
        ok_shape = arr.ndim == len(shape) and all(
            s is None or s == a for s, a in zip(shape, arr.shape, strict=True)
        )
        if not (ok_dtype and ok_shape):
            want = " x ".join("any" if s is None else str(s) for s in shape)
            dtype = "bool" if kind == "b" else "floating"
            self.fail(
                where,
                f"{what} has dtype {arr.dtype} and shape {arr.shape}",
                f"a {dtype} array of shape ({want})",
            )

    # ---------------------------------------------------------------- tables
    def frame(
        self,
        frame: object,
        where: str,
        *,
        required: Iterable[str] = (),
        bools: Iterable[str] = (),
        strings: Iterable[str] = (),
        integers: Iterable[str] = (),
    ) -> pd.DataFrame:
        """Columns and dtypes of a results table; probabilities and scales by name."""
        if not isinstance(frame, pd.DataFrame):
            self.fail(where, f"holds a {type(frame).__name__}", "a DataFrame")
        for column in required:
            if column not in frame.columns:
                self.fail(
                    where, f"required column {column!r} is missing", "every column the fit writes"
                )
        bools, strings, integers = set(bools), set(strings), set(integers)
        for column in frame.columns:
            series = frame[column]
            if column in bools:
                if not pd.api.types.is_bool_dtype(series.dtype):
                    self.fail(where, f"column {column!r} has dtype {series.dtype}", "bool")
            elif column in strings:
                if not _strings(series):
                    self.fail(where, f"column {column!r} has dtype {series.dtype}", "strings")
            elif column in integers:
                if not pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_bool_dtype(
                    series.dtype
                ):
                    self.fail(where, f"column {column!r} has dtype {series.dtype}", "integers")
            elif isinstance(column, str) and _FLOAT.search(column):
                self.values(series, where, column)
        return frame

    def values(self, series: pd.Series, where: str, column: str) -> None:
        """A float column: floating dtype, and its range when the name implies one."""
        if not pd.api.types.is_float_dtype(series.dtype):
            self.fail(
                where,
                f"column {column!r} has dtype {series.dtype}",
                "a floating dtype (integers would truncate the results)",
            )
        if _PROBABILITY.match(column):
            self.within(
                series, where, column, lambda v: (v < 0) | (v > 1), "values in [0, 1] or NaN"
            )
        elif column.endswith("_sd"):
            self.within(
                series, where, column, lambda v: (v < 0) | np.isinf(v), "finite values >= 0 or NaN"
            )
        elif column.endswith("_scale"):
            self.within(
                series, where, column, lambda v: (v <= 0) | np.isinf(v), "finite values > 0 or NaN"
            )

    def within(self, series: pd.Series, where: str, column: str, bad, expected: str) -> None:
        """Fails when ``bad(values)`` holds anywhere (NaN never counts as bad)."""
        mask = bad(series.to_numpy())
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            self.fail(
                where,
                f"column {column!r} has {int(mask.sum())} value(s) out of range (first: "
                f"{series.index[first]!r} = {float(series.iloc[first]):g})",
                expected,
            )


def _numeric(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iuf"


def _strings(series: pd.Series) -> bool:
    if isinstance(series.dtype, pd.CategoricalDtype):
        values = series.cat.categories
    elif pd.api.types.is_string_dtype(series.dtype) or series.dtype == object:
        values = series
    else:
        return False
    return pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")


# ----------------------------------------------------------------------------- kinds
def check_technical(adata, modality: str, key: str) -> None:
    """Record and per-feature table of a technical fit of ``modality``."""
    check = _Check(f"ds.tl.fit_technical(mdata, modality={modality!r}, key_added={key!r})")
    where = f"mdata[{modality!r}].uns[{key!r}]"
    record = adata.uns[key]
    check.header(record, "technical", where, ("groups", "distribution", "params", "loss"))
    groups = np.asarray(record["groups"]).ravel()
    if groups.size == 0 or pd.api.types.infer_dtype(groups, skipna=False) != "string":
        check.fail(
            where, f"field 'groups' is {record['groups']!r}", "a non-empty list of group names"
        )
    required = ["baseline_mean"] + [f"effect_{g}_mean" for g in groups[1:]]
    table_where = f"mdata[{modality!r}].varm[{key!r}]"
    table = check.frame(adata.varm[key], table_where, required=required)
    for column in table.columns:
        if isinstance(column, str) and _TECH_POSITIVE.match(column):
            check.within(
                table[column],
                table_where,
                column,
                lambda v: (v <= 0) | np.isinf(v),
                "finite values > 0 or NaN",
            )
    informative = TechnicalKeys(key).informative
    if informative in adata.var.columns:
        check.frame(adata.var[[informative]], f"mdata[{modality!r}].var", bools=[informative])


def check_cis(mdata, key: str, *, cells: bool = False) -> None:
    """Record, guide table, per-cell columns and dosage samples of a cis fit.

    The per-cell columns in ``mdata.obs`` are checked when present and required with
    ``cells=True``.
    """
    check = _Check(f"ds.tl.fit_cis(mdata, cis_feature=..., key_added={key!r})")
    where = f"mdata.uns[{key!r}]"
    record = mdata.uns[key]
    check.header(record, "cis", where, ("guides", "x_ntc", "params", "loss"))
    guides = check.frame(
        record["guides"],
        f"{where}['guides']",
        required=GUIDE_COLUMNS,
        bools=("is_control", "control_active"),
        strings=("target",),
        integers=("n_cells", "n_guides"),
    )
    check.positive(record, "x_ntc", where)
    if "dose_range" in record:
        check.grid(record, "dose_range", where)
    obs_columns = list(CisKeys(key).doses.values())
    for column in obs_columns if cells else ():
        if column not in mdata.obs.columns:
            check.fail(
                "mdata.obs",
                f"required column {column!r} is missing",
                "the per-cell dosage columns of the cis fit",
            )
    for column in obs_columns:  # dose_sd >= 0 by its name
        if column in mdata.obs.columns:
            check.values(mdata.obs[column], "mdata.obs", column)
    n_samples = record["params"].get("n_samples") if isinstance(record["params"], Mapping) else None
    width = int(n_samples) if isinstance(n_samples, int | np.integer) else None
    samples = CisKeys(key).samples
    if samples in mdata.obsm:
        value = mdata.obsm[samples]
        if sparse.issparse(value):  # sparse_samples: the fitted cells' rows only
            value = np.broadcast_to(np.zeros((), dtype=value.dtype), value.shape)  # no copy
        check.array(value, f"mdata.obsm[{samples!r}]", "the array", (mdata.n_obs, width))
        width = np.shape(value)[1]
    if "guide_dose_samples" in record:
        check.array(
            record["guide_dose_samples"], where, "field 'guide_dose_samples'", (len(guides), width)
        )


def check_trans(adata, modality: str, key: str) -> None:
    """Record, results table, curve bands and posterior frame of a trans fit.

    ``adata.varm`` is read once: anndata validates every entry on each read, so on a screen
    of hundreds of targets each read costs tens of milliseconds.
    """
    varm = adata.varm
    check = _Check(f"ds.tl.fit_trans(mdata, modality={modality!r}, key_added={key!r})")
    where = f"mdata[{modality!r}].uns[{key!r}]"
    record = adata.uns[key]
    check.header(
        record,
        "trans",
        where,
        ("dose_grid", "distribution", "function", "params", "priors", "loss"),
    )
    grid = check.grid(record, "dose_grid", where)
    for field in ("distribution", "function"):
        if not isinstance(record[field], str):
            check.fail(where, f"field {field!r} is {record[field]!r}", "a string")
    check.positive(record, "x_ref", where)
    if "dose_range" in record:
        check.grid(record, "dose_range", where)
    if "dose_in_range" in record:
        check.array(record["dose_in_range"], where, "field 'dose_in_range'", (len(grid),), kind="b")
    axis = check.grid(record, "dose_axis_grid", where, required=False, log=True)
    if "dose_axis_shift" in record and axis is not None:
        check.array(record["dose_axis_shift"], where, "field 'dose_axis_shift'", (None, len(axis)))
    table = check.frame(
        varm[key],
        f"mdata[{modality!r}].varm[{key!r}]",
        required=TRANS_COLUMNS,
        bools=("fitted", "tested", "converged", "ec50_in_range", "significant", "refined"),
        strings=("distribution", "function", "shape"),
        integers=("n_cells",),
    )
    for stat in CURVE_STATS:
        name = TransKeys(key).curve(stat)
        curve_where = f"mdata[{modality!r}].varm[{name!r}]"
        if name not in varm:
            check.fail(curve_where, "the curve band is missing", "features x len(dose_grid) values")
        band = varm[name]
        if sparse.issparse(band):  # a two-stage fit stores the fitted features' rows only
            band = np.broadcast_to(np.zeros((), dtype=band.dtype), band.shape)  # no copy
        check.array(band, curve_where, "the curve band", (adata.n_vars, len(grid)))
    posterior = TransKeys(key).posterior
    post_where = f"mdata[{modality!r}].varm[{posterior!r}]"
    if posterior not in varm:
        check.fail(
            post_where,
            "the variational posterior is missing",
            "the `<site>_loc` / `<site>_scale` frame",
        )
    check.frame(varm[posterior], post_where)
    n_tested = int(TransKeys.tested(table).sum())
    if "null_scores" in record:
        check.array(record["null_scores"], where, "field 'null_scores'", (None, n_tested))
    if "calibration" in record:
        _check_calibration(check, record["calibration"], f"{where}['calibration']")


def _check_calibration(check: _Check, calibration: object, where: str) -> None:
    if not isinstance(calibration, Mapping) or not {"alpha", "scores", "table"} <= set(calibration):
        check.fail(
            where, "is not a calibration record", "a dict with 'alpha', 'scores' and 'table'"
        )
    alpha = np.asarray(calibration["alpha"])
    if alpha.ndim != 0 or not _numeric(alpha) or not 0 < float(alpha) < 1:
        check.fail(where, f"field 'alpha' is {calibration['alpha']!r}", "a number in (0, 1)")
    check.array(calibration["scores"], where, "field 'scores'", (None, None))
    table = check.frame(
        calibration["table"],
        f"{where}['table']",
        required=("n_features", "n_false_discoveries", "min_qvalue", "ks_pvalue"),
        integers=("n_features", "n_false_discoveries"),
    )
    for column in ("min_qvalue", "ks_pvalue"):
        check.values(table[column], f"{where}['table']", column)
        check.within(
            table[column],
            f"{where}['table']",
            column,
            lambda v: (v < 0) | (v > 1),
            "values in [0, 1] or NaN",
        )


def check_screen(mdata, key: str, modality: str) -> None:
    """The screen record of ``fit_screen`` (its cis and trans fits are checked when read)."""
    check = _Check(f"ds.tl.fit_screen(mdata, modality={modality!r}, key_added={key!r})")
    where = f"mdata.uns[{key!r}]"
    record = mdata.uns[key]
    check.header(record, "screen", where, ("targets", "cis_keys", "trans_keys"))
    lengths = set()
    for field in ("targets", "cis_keys", "trans_keys"):
        values = np.asarray(record[field]).ravel()
        if pd.api.types.infer_dtype(values, skipna=False) not in ("string", "empty"):
            check.fail(where, f"field {field!r} is {record[field]!r}", "a list of strings")
        lengths.add(values.size)
    if len(lengths) != 1:
        check.fail(
            where,
            "fields 'targets', 'cis_keys' and 'trans_keys' differ in length",
            "one entry per target in each",
        )
    if "modality" in record and not isinstance(record["modality"], str):
        check.fail(where, f"field 'modality' is {record['modality']!r}", "a string")


def check_fit_header(record: Mapping, where: str) -> None:
    """A run record found by scanning ``uns`` whose ``kind`` is not known (always raises)."""
    _Check(None).header(record, None, where, ())


def check_fit(mdata, kind: str, key: str, modality: str | None) -> None:
    """Dispatch to the check of ``kind`` (used when listing every stored fit)."""
    if kind == "cis":
        check_cis(mdata, key)
    elif kind == "technical":
        check_technical(mdata[modality], modality, key)
    elif kind == "trans":
        check_trans(mdata[modality], modality, key)
