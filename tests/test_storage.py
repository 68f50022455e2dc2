"""The storage codec: record kinds and versions, legacy records, priors and posterior round trips."""

from __future__ import annotations

import ast
from pathlib import Path

import mudata as md
import numpy as np
import pytest

import dream_sc
import dream_sc as ds
from dream_sc import _storage as S
from dream_sc.models.trans import LOG_GAP_PRIOR_SD, TransPriors

SRC = Path(dream_sc.__file__).parent


def test_get_and_pl_never_import_tl():
    offenders = []
    for package in ("get", "pl"):
        for path in (SRC / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    module = "." * node.level + (node.module or "")
                    if module.startswith("..tl") or module.startswith("dream_sc.tl"):
                        offenders.append(f"{package}/{path.name}: {module}")
                if isinstance(node, ast.Import):
                    offenders += [
                        f"{package}/{path.name}: {a.name}"
                        for a in node.names
                        if a.name.startswith("dream_sc.tl")
                    ]
    assert offenders == []


def test_every_fit_writes_its_kind_and_schema_version(fitted):
    assert fitted.uns["dream_cis"]["kind"] == "cis"
    assert fitted["rna"].uns["dream_technical"]["kind"] == "technical"
    assert fitted["rna"].uns["dream_trans"]["kind"] == "trans"
    for record in (fitted.uns["dream_cis"], fitted["rna"].uns["dream_trans"]):
        assert S.schema_version(record) == S.SCHEMA_VERSION == 1
    kinds = [(f.kind, f.key, f.modality) for f in S.stored_fits(fitted)]
    assert kinds == [
        ("cis", "dream_cis", None),
        ("technical", "dream_technical", "rna"),
        ("trans", "dream_trans", "rna"),
    ]


def test_stamp_rejects_unknown_kinds():
    with pytest.raises(
        ValueError, match="kind must be one of technical, cis, trans, screen; got 'x'"
    ):
        S.stamp({}, "x")


def _strip_kinds(mdata: md.MuData) -> None:
    """Make the records look like those of the previous version (no kind, no version)."""
    for uns in [mdata.uns] + [mdata[m].uns for m in mdata.mod]:
        for key in list(uns):
            if isinstance(uns[key], dict) and "kind" in uns[key]:
                record = dict(uns[key])
                del record["kind"], record["schema_version"]
                uns[key] = record


def test_records_of_the_previous_version_still_load(fitted, tmp_path):
    expected = ds.get.trans_curves(fitted, dose=[0.5, 2.0])
    _strip_kinds(fitted)
    path = tmp_path / "old.h5mu"
    fitted.write(path)
    old = md.read_h5mu(path)
    assert "kind" not in old["rna"].uns["dream_trans"]
    assert S.schema_version(old["rna"].uns["dream_trans"]) == 0
    assert [f.kind for f in S.stored_fits(old)] == ["cis", "technical", "trans"]
    got = ds.get.trans_curves(old, dose=[0.5, 2.0])
    np.testing.assert_array_equal(got["mean"].to_numpy(), expected["mean"].to_numpy())
    axes = ds.pl.loss(old, None, show=False)  # one axes per stored fit, found by kind
    assert len(axes) == 3


def test_record_kind_of_legacy_and_foreign_entries():
    assert S.record_kind({"loss": [1.0], "guides": 1, "x_ntc": 2.0}) == "cis"
    assert S.record_kind({"loss": [1.0], "dose_grid": [1.0]}) == "trans"
    assert S.record_kind({"loss": [1.0], "groups": ["a"]}) == "technical"
    assert S.record_kind({"distribution": "negbinom"}) is None  # a registration
    assert S.record_kind("not a record") is None
    # an explicit kind wins over the keys
    assert S.record_kind({"kind": "technical", "loss": [1.0], "dose_grid": [1.0]}) == "technical"


def test_trans_priors_round_trip_exactly(fitted, tmp_path):
    path = tmp_path / "fit.h5mu"
    fitted.write(path)
    record = md.read_h5mu(path)["rna"].uns["dream_trans"]
    priors = S.read_trans_priors(record)
    assert isinstance(priors, TransPriors)
    again = priors.as_dict()
    for name in ("log_k", "log_gap", "log_n"):
        assert again[name] == {k: record["priors"][name][k] for k in again[name]}
    np.testing.assert_array_equal(
        again["amplitude"]["scale"], record["priors"]["amplitude"]["scale"]
    )
    np.testing.assert_array_equal(again["eta_ref"]["loc"], record["priors"]["eta_ref"]["loc"])
    assert again["log_gap"]["scale"] == LOG_GAP_PRIOR_SD
    back = TransPriors.from_dict(again)
    for field in ("log_k_loc", "log_k_scale", "log_gap_loc", "log_x_ref", "half_range", "degree"):
        assert getattr(back, field) == getattr(priors, field)


def test_guide_observed_pools_counts_per_guide_and_group(fitted, tmp_path):
    feature = [v for v in fitted["rna"].var_names if v != "GFI1B"][0]
    table = ds.get.guide_observed(fitted, feature, by_group=True, n_boot=30, seed=1)
    assert list(table.columns) == [
        "guide",
        "technical_group",
        "feature",
        "dose",
        "value",
        "q05",
        "q95",
        "n_cells",
        "is_control",
    ]
    ref = fitted["rna"].uns["dream_technical"]["groups"][0]
    row = table[table["technical_group"] == ref].iloc[0]
    cells = fitted.obs_names[
        (fitted.obs["guide"].astype(str) == row["guide"]).to_numpy()
        & (fitted.obs["cell_line"].astype(str) == ref).to_numpy()
        & np.isfinite(fitted.obs["dream_cis_dose_mean"].to_numpy())
    ]
    counts = np.asarray(fitted["rna"][cells, feature].X.sum())
    size = fitted.obs.loc[cells, "sum_factor"].sum()
    np.testing.assert_allclose(row["value"], counts / size)  # reference group: no correction
    assert row["n_cells"] == len(cells)
    assert row["q05"] <= row["value"] <= row["q95"]
    guides = ds.get.cis_dosage(fitted)
    assert row["dose"] == guides.loc[row["guide"], "dose_mean"]
    assert set(table.loc[table["is_control"], "guide"]) <= set(
        guides.index[guides["is_control"].to_numpy(dtype=bool)]
    )
    pooled = ds.get.guide_observed(fitted, [feature], n_boot=30, seed=1)
    assert set(pooled["technical_group"]) == {"all"}


def test_guide_observed_bad_input(fitted):
    with pytest.raises(KeyError, match="Feature 'nope' not found in modality 'rna'"):
        ds.get.guide_observed(fitted, "nope")
    with pytest.raises(ValueError, match="n_boot must be a positive integer; got 0"):
        ds.get.guide_observed(fitted, fitted["rna"].var_names[1], n_boot=0)
    with pytest.raises(KeyError, match="No trans fit 'other' in modality 'rna'"):
        ds.get.guide_observed(fitted, fitted["rna"].var_names[1], key="other")


def test_models_do_not_read_package_settings():
    for path in (SRC / "models").rglob("*.py"):
        assert "_settings" not in path.read_text(), path.name


def test_trans_settings_round_trip_through_the_record(fitted, tmp_path):
    from dream_sc.engine.config import FitConfig
    from dream_sc.tl._trans_settings import TransSettings

    path = tmp_path / "fit.h5mu"
    fitted.write(path)
    params = md.read_h5mu(path)["rna"].uns["dream_trans"]["params"]
    settings = TransSettings.from_params(params)
    assert settings == TransSettings.from_params(fitted["rna"].uns["dream_trans"]["params"])
    stored = settings.as_params()
    for name, value in stored.items():  # every setting is in params, None stored as ""
        assert params[name] == ("" if value is None else value), name
    assert settings.function == "additive_hill"
    assert FitConfig.from_record(params).seed == 0  # the fit settings: the job's FitConfig
    assert TransSettings.from_params(params, min_effect=0.5).min_effect == 0.5
    with pytest.raises(AttributeError):
        settings.function = "single_hill"  # frozen
