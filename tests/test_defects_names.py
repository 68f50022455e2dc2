"""Small defects of issue 16: quantile column names and pytest collection of ``test_trans``."""

from __future__ import annotations

import re

import numpy as np
import pytest

import dream_sc as ds
from dream_sc.get._tables import _quantile_name
from dream_sc.tl import test_trans  # noqa: F401  (must not be collected as a test)


@pytest.mark.parametrize(
    ("q", "name"),
    [
        (0.05, "q05"),
        (0.95, "q95"),
        (0.5, "q50"),
        (0.1, "q10"),
        (0.025, "q025"),
        (0.975, "q975"),
        (0.001, "q001"),
        (0.004, "q004"),
        (0.0, "q00"),
        (1.0, "q100"),
        (np.float32(0.05), "q05"),
        (0.0001, "q0001"),
    ],
)
def test_quantile_names_are_exact(q, name):
    assert _quantile_name(q) == name


def test_trans_curves_names_quantiles_without_rounding(fitted_screen):
    dose = [1.0, 5.0]
    default = ds.get.trans_curves(fitted_screen, dose=dose, features=["gene_0001"])
    wide = ds.get.trans_curves(
        fitted_screen, dose=dose, features=["gene_0001"], quantiles=(0.025, 0.975)
    )
    assert list(default.columns) == ["feature", "dose", "mean", "q05", "q95"]
    assert list(wide.columns) == ["feature", "dose", "mean", "q025", "q975"]
    np.testing.assert_array_equal(wide["mean"], default["mean"])
    assert (wide["q025"] < default["q05"]).all() and (wide["q975"] > default["q95"]).all()
    # two quantiles below 0.005 used to collide in one column (q00)
    tiny = ds.get.trans_curves(
        fitted_screen, dose=dose, features=["gene_0001"], quantiles=(0.001, 0.004)
    )
    assert list(tiny.columns) == ["feature", "dose", "mean", "q001", "q004"]
    assert (tiny["q001"] < tiny["q004"]).all()


def test_trans_curves_rejects_quantiles_sharing_a_name(fitted_screen):
    message = (
        "quantiles (0.1, 0.1000001) would share the column name 'q10' (names keep 6 "
        "decimals); pass quantiles that differ in the first 6 decimals."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        ds.get.trans_curves(fitted_screen, dose=[1.0], quantiles=(0.1, 0.1000001))


def test_imported_test_trans_is_not_collected(pytestconfig):
    assert test_trans.__test__ is False
    ids = [item.nodeid for item in pytestconfig.pluginmanager.get_plugin("session").items]
    mine = [i for i in ids if i.startswith("tests/test_defects_names.py")]
    assert mine  # this module was collected ...
    assert not any(i.endswith("::test_trans") for i in mine)  # ... without the imported tool
