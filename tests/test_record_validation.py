"""Stored results are validated when read: kind, schema version, dtypes, shapes, grids, ranges."""

from __future__ import annotations

import re
import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest

import dream_sc as ds
from dream_sc import _storage as S

TRANS = "mdata['rna'].uns['dream_trans']"
TRANS_TABLE = "mdata['rna'].varm['dream_trans']"
TRANS_FIX = (
    " Refit with `ds.tl.fit_trans(mdata, modality='rna', key_added='dream_trans')` "
    "(or write the results again with this version of dream_sc)."
)
TECH = "mdata['rna'].uns['dream_technical']"
TECH_TABLE = "mdata['rna'].varm['dream_technical']"
TECH_FIX = (
    " Refit with `ds.tl.fit_technical(mdata, modality='rna', key_added='dream_technical')` "
    "(or write the results again with this version of dream_sc)."
)
CIS = "mdata.uns['dream_cis']"
CIS_FIX = (
    " Refit with `ds.tl.fit_cis(mdata, cis_feature=..., key_added='dream_cis')` "
    "(or write the results again with this version of dream_sc)."
)
SCREEN = "mdata.uns['dream_screen']"
SCREEN_FIX = (
    " Refit with `ds.tl.fit_screen(mdata, modality='rna', key_added='dream_screen')` "
    "(or write the results again with this version of dream_sc)."
)
GRID = "expected finite positive dosages in strictly increasing order."
KINDS = "known kinds: technical, cis, trans, screen."


def newer(where: str) -> str:
    return (
        f"{where}: field 'schema_version' is 99, but this dream_sc ({ds.__version__}) reads "
        "records up to schema_version 1: the file was written by a newer dream_sc. Upgrade "
        "dream_sc (`pip install -U dream_sc`) to read it."
    )


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def set_column(mdata, where: str, column: str, values) -> None:
    """Replace one column of a stored table (a copy of it: views stay untouched)."""
    if where == "obs":
        mdata.obs[column] = values
        return
    if where == "guides":
        table = mdata.uns["dream_cis"]["guides"].copy()
        table[column] = values
        mdata.uns["dream_cis"]["guides"] = table
        return
    table = mdata["rna"].varm[where].copy()
    table[column] = values
    mdata["rna"].varm[where] = table


def set_value(mdata, where: str, column: str, row: int, value: float) -> str:
    """Set one value; returns the row name."""
    frame = {
        "obs": lambda: mdata.obs,
        "guides": lambda: mdata.uns["dream_cis"]["guides"],
    }.get(where, lambda: mdata["rna"].varm[where])()
    values = frame[column].to_numpy(dtype=np.float64).copy()
    values[row] = value
    set_column(mdata, where, column, values)
    return str(frame.index[row])


def read_trans(mdata):
    return ds.get.trans_curves(mdata)


def read_technical(mdata):
    return S.read_technical(mdata, "rna", "dream_technical")


def read_cis(mdata):
    return ds.get.cis_dosage(mdata, level="cell")


# ----------------------------------------------------------------------------- trans
def _int_response(m):
    set_column(m, "dream_trans", "response_mean", np.arange(m["rna"].n_vars))
    return (
        f"{TRANS_TABLE}: column 'response_mean' has dtype int64; expected a floating dtype "
        f"(integers would truncate the results).{TRANS_FIX}"
    )


def _reversed_grid(m):
    m["rna"].uns["dream_trans"]["dose_grid"] = m["rna"].uns["dream_trans"]["dose_grid"][::-1]
    return f"{TRANS}: field 'dose_grid' is not strictly increasing; {GRID}{TRANS_FIX}"


def _nan_grid(m):
    grid = np.array(m["rna"].uns["dream_trans"]["dose_grid"], dtype=np.float64)
    grid[3] = np.nan
    m["rna"].uns["dream_trans"]["dose_grid"] = grid
    return f"{TRANS}: field 'dose_grid' holds NaN or infinite values; {GRID}{TRANS_FIX}"


def _curve_shape(m):
    curve = m["rna"].varm["dream_trans_curve_q95"]
    m["rna"].varm["dream_trans_curve_q95"] = curve[:, :-1]
    n, g = curve.shape
    return (
        f"mdata['rna'].varm['dream_trans_curve_q95']: the curve band has dtype float32 and "
        f"shape ({n}, {g - 1}); expected a floating array of shape ({n} x {g}).{TRANS_FIX}"
    )


def _negative_scale(m):
    name = set_value(m, "dream_trans_posterior", "eta_ref_scale", 5, -0.5)
    return (
        "mdata['rna'].varm['dream_trans_posterior']: column 'eta_ref_scale' has 1 value(s) out "
        f"of range (first: {name!r} = -0.5); expected finite values > 0 or NaN.{TRANS_FIX}"
    )


def _negative_sd(m):
    name = set_value(m, "dream_trans", "response_sd", 5, -1.0)
    return (
        f"{TRANS_TABLE}: column 'response_sd' has 1 value(s) out of range (first: {name!r} = "
        f"-1); expected finite values >= 0 or NaN.{TRANS_FIX}"
    )


def _newer_trans(m):
    m["rna"].uns["dream_trans"]["schema_version"] = 99
    return newer(TRANS)


def _unknown_trans(m):
    m["rna"].uns["dream_trans"]["kind"] = "hill"
    return (
        f"{TRANS}: field 'kind' is 'hill', an unknown kind; expected kind 'trans'; {KINDS}"
        f"{TRANS_FIX}"
    )


def _other_kind(m):
    m["rna"].uns["dream_trans"]["kind"] = "cis"
    return (
        f"{TRANS}: field 'kind' is 'cis'; expected kind 'trans': pass the key of a trans fit."
        f"{TRANS_FIX}"
    )


def _missing_column(m):
    m["rna"].varm["dream_trans"] = m["rna"].varm["dream_trans"].drop(columns="response_q95")
    return (
        f"{TRANS_TABLE}: required column 'response_q95' is missing; expected every column the "
        f"fit writes.{TRANS_FIX}"
    )


def _missing_field(m):
    del m["rna"].uns["dream_trans"]["priors"]
    return (
        f"{TRANS}: required field 'priors' is missing; expected every field the trans fit "
        f"writes.{TRANS_FIX}"
    )


def _qvalue(m):
    name = set_value(m, "dream_trans", "qvalue", 5, 1.5)
    return (
        f"{TRANS_TABLE}: column 'qvalue' has 1 value(s) out of range (first: {name!r} = 1.5); "
        f"expected values in [0, 1] or NaN.{TRANS_FIX}"
    )


def _float_bool(m):
    set_column(m, "dream_trans", "significant", m["rna"].varm["dream_trans"]["significant"] * 1.0)
    return f"{TRANS_TABLE}: column 'significant' has dtype float64; expected bool.{TRANS_FIX}"


def _int_strings(m):
    set_column(m, "dream_trans", "shape", np.zeros(m["rna"].n_vars, dtype=np.int64))
    return f"{TRANS_TABLE}: column 'shape' has dtype int64; expected strings.{TRANS_FIX}"


def _calibration(m):
    m["rna"].uns["dream_trans"]["calibration"] = {
        "alpha": 0.1,
        "scores": np.zeros((1, 3)),
        "table": pd.DataFrame(
            {
                "n_features": [3],
                "n_false_discoveries": [0],
                "min_qvalue": [1.5],
                "ks_statistic": [0.1],
                "ks_pvalue": [0.5],
            }
        ),
    }
    return (
        f"{TRANS}['calibration']['table']: column 'min_qvalue' has 1 value(s) out of range "
        f"(first: 0 = 1.5); expected values in [0, 1] or NaN.{TRANS_FIX}"
    )


TRANS_DAMAGE = [
    _int_response,
    _reversed_grid,
    _nan_grid,
    _curve_shape,
    _negative_scale,
    _negative_sd,
    _newer_trans,
    _unknown_trans,
    _other_kind,
    _missing_column,
    _missing_field,
    _qvalue,
    _float_bool,
    _int_strings,
    _calibration,
]


@pytest.mark.parametrize("damage", TRANS_DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_damaged_trans_fits_fail_on_read(fitted, damage):
    message = damage(fitted)
    with pytest.raises(ValueError, match=exactly(message)):
        read_trans(fitted)
    with pytest.raises(ValueError, match=exactly(message)):
        ds.get.trans_results(fitted)


def test_damaged_trans_fits_fail_in_plots(fitted):
    message = _reversed_grid(fitted)
    with pytest.raises(ValueError, match=exactly(message)):
        ds.pl.dose_response(fitted, [fitted["rna"].var_names[5]], show=False)
    with pytest.raises(ValueError, match=exactly(message)):
        ds.pl.loss(fitted, None, show=False)


# ----------------------------------------------------------------------------- technical
def _int_baseline(m):
    set_column(m, "dream_technical", "baseline_mean", np.arange(m["rna"].n_vars))
    return (
        f"{TECH_TABLE}: column 'baseline_mean' has dtype int64; expected a floating dtype "
        f"(integers would truncate the results).{TECH_FIX}"
    )


def _negative_dispersion(m):
    name = set_value(m, "dream_technical", "dispersion_q50", 2, -0.5)
    return (
        f"{TECH_TABLE}: column 'dispersion_q50' has 1 value(s) out of range (first: {name!r} = "
        f"-0.5); expected finite values > 0 or NaN.{TECH_FIX}"
    )


def _negative_tech_sd(m):
    name = set_value(m, "dream_technical", "baseline_sd", 2, -0.5)
    return (
        f"{TECH_TABLE}: column 'baseline_sd' has 1 value(s) out of range (first: {name!r} = "
        f"-0.5); expected finite values >= 0 or NaN.{TECH_FIX}"
    )


def _newer_tech(m):
    m["rna"].uns["dream_technical"]["schema_version"] = 99
    return newer(TECH)


def _unknown_tech(m):
    m["rna"].uns["dream_technical"]["kind"] = "batch"
    return (
        f"{TECH}: field 'kind' is 'batch', an unknown kind; expected kind 'technical'; {KINDS}"
        f"{TECH_FIX}"
    )


def _missing_effect(m):
    column = [c for c in m["rna"].varm["dream_technical"] if c.startswith("effect_")][0]
    column = column.rsplit("_", 1)[0] + "_mean"
    m["rna"].varm["dream_technical"] = m["rna"].varm["dream_technical"].drop(columns=column)
    return (
        f"{TECH_TABLE}: required column {column!r} is missing; expected every column the fit "
        f"writes.{TECH_FIX}"
    )


def _bad_groups(m):
    m["rna"].uns["dream_technical"]["groups"] = np.array([], dtype=object)
    return (
        f"{TECH}: field 'groups' is array([], dtype=object); expected a non-empty list of group "
        f"names.{TECH_FIX}"
    )


TECH_DAMAGE = [
    _int_baseline,
    _negative_dispersion,
    _negative_tech_sd,
    _newer_tech,
    _unknown_tech,
    _missing_effect,
    _bad_groups,
]


@pytest.mark.parametrize("damage", TECH_DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_damaged_technical_fits_fail_on_read(fitted, damage):
    message = damage(fitted)
    with pytest.raises(ValueError, match=exactly(message)):
        read_technical(fitted)
    if damage is _unknown_tech:  # listing every fit: the expected kind is not known
        message = message.split("; expected")[0]
    with pytest.raises(ValueError, match=re.escape(message)):
        ds.pl.loss(fitted, "dream_technical", show=False)  # every stored fit is checked


# ----------------------------------------------------------------------------- cis
def _int_guide_dose(m):
    set_column(m, "guides", "dose_mean", np.arange(len(m.uns["dream_cis"]["guides"])))
    return (
        f"{CIS}['guides']: column 'dose_mean' has dtype int64; expected a floating dtype "
        f"(integers would truncate the results).{CIS_FIX}"
    )


def _int_cell_dose(m):
    set_column(m, "obs", "dream_cis_dose_q95", np.arange(m.n_obs))
    return (
        "mdata.obs: column 'dream_cis_dose_q95' has dtype int64; expected a floating dtype "
        f"(integers would truncate the results).{CIS_FIX}"
    )


def _reversed_range(m):
    m.uns["dream_cis"]["dose_range"] = m.uns["dream_cis"]["dose_range"][::-1]
    return f"{CIS}: field 'dose_range' is not strictly increasing; {GRID}{CIS_FIX}"


def _nan_range(m):
    m.uns["dream_cis"]["dose_range"] = np.array([np.nan, 3.0])
    return f"{CIS}: field 'dose_range' holds NaN or infinite values; {GRID}{CIS_FIX}"


def _samples_width(m):
    samples = m.obsm["dream_cis_dose_samples"]
    m.obsm["dream_cis_dose_samples"] = samples[:, :-1]
    n, s = samples.shape
    return (
        "mdata.obsm['dream_cis_dose_samples']: the array has dtype float32 and shape "
        f"({n}, {s - 1}); expected a floating array of shape ({n} x {s}).{CIS_FIX}"
    )


def _guide_samples(m):
    samples = m.uns["dream_cis"]["guide_dose_samples"]
    m.uns["dream_cis"]["guide_dose_samples"] = samples[:-1]
    g, s = samples.shape
    return (
        f"{CIS}: field 'guide_dose_samples' has dtype float64 and shape ({g - 1}, {s}); "
        f"expected a floating array of shape ({g} x {s}).{CIS_FIX}"
    )


def _negative_dose_sd(m):
    name = set_value(m, "obs", "dream_cis_dose_sd", 4, -2.0)
    return (
        f"mdata.obs: column 'dream_cis_dose_sd' has 1 value(s) out of range (first: {name!r} = "
        f"-2); expected finite values >= 0 or NaN.{CIS_FIX}"
    )


def _newer_cis(m):
    m.uns["dream_cis"]["schema_version"] = 99
    return newer(CIS)


def _unknown_cis(m):
    m.uns["dream_cis"]["kind"] = "dosage"
    return (
        f"{CIS}: field 'kind' is 'dosage', an unknown kind; expected kind 'cis'; {KINDS}{CIS_FIX}"
    )


def _missing_cell_column(m):
    del m.obs["dream_cis_dose_sd"]
    return (
        "mdata.obs: required column 'dream_cis_dose_sd' is missing; expected the per-cell "
        f"dosage columns of the cis fit.{CIS_FIX}"
    )


def _missing_guide_column(m):
    m.uns["dream_cis"]["guides"] = m.uns["dream_cis"]["guides"].drop(columns="dose_q05")
    return (
        f"{CIS}['guides']: required column 'dose_q05' is missing; expected every column the fit "
        f"writes.{CIS_FIX}"
    )


def _escape_fraction(m):
    guides = m.uns["dream_cis"]["guides"]
    values = np.full(len(guides), 0.2)
    values[1] = 1.5
    set_column(m, "guides", "escape_fraction_mean", values)
    return (
        f"{CIS}['guides']: column 'escape_fraction_mean' has 1 value(s) out of range (first: "
        f"{guides.index[1]!r} = 1.5); expected values in [0, 1] or NaN.{CIS_FIX}"
    )


def _int_control(m):
    guides = m.uns["dream_cis"]["guides"]
    set_column(m, "guides", "is_control", guides["is_control"].astype(np.int64))
    return f"{CIS}['guides']: column 'is_control' has dtype int64; expected bool.{CIS_FIX}"


CIS_DAMAGE = [
    _int_guide_dose,
    _int_cell_dose,
    _reversed_range,
    _nan_range,
    _samples_width,
    _guide_samples,
    _negative_dose_sd,
    _newer_cis,
    _unknown_cis,
    _missing_cell_column,
    _missing_guide_column,
    _escape_fraction,
    _int_control,
]


@pytest.mark.parametrize("damage", CIS_DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_damaged_cis_fits_fail_on_read(fitted, damage):
    message = damage(fitted)
    with pytest.raises(ValueError, match=exactly(message)):
        read_cis(fitted)
    if damage is not _missing_cell_column:  # per-cell columns are required by level="cell"
        with pytest.raises(ValueError, match=exactly(message)):
            ds.get.cis_dosage(fitted)


# ----------------------------------------------------------------------------- screen
def _screen_record(m) -> None:
    """A screen record over the fixture's fits, as ``fit_screen`` stores it."""
    S.write_screen(
        m,
        "dream_screen",
        {
            "targets": ["GFI1B"],
            "cis_keys": ["dream_cis"],
            "trans_keys": ["dream_trans"],
            "modality": "rna",
        },
    )


def _newer_screen(m):
    m.uns["dream_screen"]["schema_version"] = 99
    return newer(SCREEN)


def _unknown_screen(m):
    m.uns["dream_screen"]["kind"] = "campaign"
    return (
        f"{SCREEN}: field 'kind' is 'campaign', an unknown kind; expected kind 'screen'; "
        f"{KINDS}{SCREEN_FIX}"
    )


def _screen_lengths(m):
    m.uns["dream_screen"]["trans_keys"] = ["dream_trans", "dream_trans_2"]
    return (
        f"{SCREEN}: fields 'targets', 'cis_keys' and 'trans_keys' differ in length; expected "
        f"one entry per target in each.{SCREEN_FIX}"
    )


def _screen_missing(m):
    del m.uns["dream_screen"]["cis_keys"]
    return (
        f"{SCREEN}: required field 'cis_keys' is missing; expected every field the screen fit "
        f"writes.{SCREEN_FIX}"
    )


@pytest.mark.parametrize(
    "damage",
    [_newer_screen, _unknown_screen, _screen_lengths, _screen_missing],
    ids=lambda f: f.__name__.strip("_"),
)
def test_damaged_screen_records_fail_on_read(fitted, damage):
    _screen_record(fitted)
    assert ds.get.screen_results(fitted).shape[0] == fitted["rna"].n_vars
    message = damage(fitted)
    with pytest.raises(ValueError, match=exactly(message)):
        ds.get.screen_results(fitted)


def test_trans_fits_of_a_screen_are_checked(fitted):
    _screen_record(fitted)
    message = _int_response(fitted)
    with pytest.raises(ValueError, match=exactly(message)):
        ds.get.screen_results(fitted)


# ----------------------------------------------------------------------------- files
def _round_trip(mdata, path):
    mdata.write(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.read_h5mu(path)


@pytest.mark.parametrize("damage", [_int_response, _reversed_grid])
def test_damage_is_caught_after_an_h5mu_round_trip(fitted, damage, tmp_path):
    message = damage(fitted)
    again = _round_trip(fitted, tmp_path / "damaged.h5mu")
    with pytest.raises(ValueError, match=exactly(message)):
        ds.get.trans_curves(again)
    with pytest.raises(ValueError, match=exactly(message)):
        ds.get.trans_results(again)


def test_cell_and_technical_damage_is_caught_after_a_round_trip(fitted, tmp_path):
    cis, technical = _int_cell_dose(fitted), _int_baseline(fitted)
    again = _round_trip(fitted, tmp_path / "damaged.h5mu")
    with pytest.raises(ValueError, match=exactly(cis)):
        read_cis(again)
    with pytest.raises(ValueError, match=exactly(technical)):
        read_technical(again)


def test_unknown_kinds_are_reported_when_listing_fits(fitted):
    fitted["rna"].uns["dream_trans"]["kind"] = "hill"
    with pytest.raises(
        ValueError,
        match=exactly(
            f"{TRANS}: field 'kind' is 'hill', an unknown kind; expected one of the {KINDS} "
            "Refit with the ds.tl function that wrote it (or write the results again with "
            "this version of dream_sc)."
        ),
    ):
        S.stored_fits(fitted)


def test_legacy_records_pass(fitted):
    for uns in (fitted.uns, fitted["rna"].uns):
        for key in ("dream_cis", "dream_technical", "dream_trans"):
            if key in uns:
                record = dict(uns[key])
                del record["kind"], record["schema_version"]
                uns[key] = record
    fitted.uns["dream_screen"] = {
        "targets": ["GFI1B"],
        "cis_keys": ["dream_cis"],
        "trans_keys": ["dream_trans"],
    }  # a screen record without kind, as fit_screen wrote it before
    assert [f.kind for f in S.stored_fits(fitted)] == ["cis", "technical", "trans"]
    assert len(ds.get.screen_results(fitted)) == fitted["rna"].n_vars
    fitted["rna"].uns["dream_trans"]["schema_version"] = 1  # a version without a kind
    with pytest.raises(ValueError, match=re.escape(f"{TRANS}: field 'kind' is missing")):
        ds.get.trans_results(fitted)


def _check_everything(mdata, trans_keys, cis_keys) -> None:
    """Read every stored fit through the validating readers."""
    fits = S.stored_fits(mdata)  # every fit, each validated
    assert {(f.kind, f.key) for f in fits} >= {("technical", "dream_technical")} | {
        ("cis", k) for k in cis_keys
    } | {("trans", k) for k in trans_keys}
    read_technical(mdata)
    for key in cis_keys:
        ds.get.cis_dosage(mdata, key=key, level="cell")
    for key in trans_keys:
        assert len(ds.get.trans_curves(mdata, key=key)) > 0


def test_everything_the_package_writes_passes(fitted, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_trans(
            fitted, function="polynomial", n_steps=5, seed=0, test=False, key_added="untested"
        )
        ds.tl.calibration_check(fitted, n_null_screens=1)
    again = _round_trip(fitted, tmp_path / "fitted.h5mu")
    assert "calibration" in again["rna"].uns["dream_trans"]
    assert "null_scores" not in again["rna"].uns["untested"]
    _check_everything(again, ["dream_trans", "untested"], ["dream_cis"])


@pytest.mark.slow  # a real screen: tests/test_screen.py reads one after a round trip by default
def test_a_screen_passes_after_a_round_trip(fitted, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_screen(
            fitted,
            n_steps={"technical": 80, "cis": 20, "trans": 20},
            technical_key="cell_line",
            trans_kwargs={"refine_intervals": False, "n_permutations": 2},
            seed=0,
        )
    again = _round_trip(fitted, tmp_path / "screen.h5mu")
    _check_everything(again, ["dream_trans", "dream_trans_GFI1B"], ["dream_cis", "dream_cis_GFI1B"])
    assert len(ds.get.screen_results(again)) == again["rna"].n_vars
