"""Calibration with size factors estimated from the counts (issue 28), CRISPRi + CRISPRa design.

Slow: 4,000 cells x 300 genes, two lines with 2 guides each, the simulator's ``sum_factor``
(``ds.pp.sum_factors`` with its default method, computed from the counts) - never the
generating factors.
"""

from __future__ import annotations

import warnings

import pytest

import dream_sc as ds

pytestmark = pytest.mark.slow


def _calls(frac_responsive: float, seed: int, method: str | None = None):
    mdata = ds.datasets.simulate_screen(
        n_cells=4000,
        n_genes=300,
        n_junctions=0,
        n_isoform_genes=0,
        guide_design="line_specific",
        guides_per_target=2,
        dose_noise=0.7,
        frac_responsive=frac_responsive,
        seed=seed,
    )
    key = "sum_factor"
    if method is not None:
        key = f"sf_{method}"
        ds.pp.sum_factors(mdata, key_added=key, method=method, technical_key="cell_line")
    kw = {"sum_factor_key": key, "progress": False, "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=100, **kw)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=200, **kw)
        ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, refine_intervals=False, **kw)
    res = ds.get.trans_results(mdata)
    truth = mdata["rna"].var["true_responsive"].to_numpy(bool)
    called = res["qvalue"].to_numpy() < 0.1
    return int((called & truth).sum()), int((called & ~truth).sum()), int(truth.sum())


def test_two_line_screen_with_estimated_factors():
    true_calls, false_calls, n_true = _calls(0.25, seed=0)
    assert n_true == 75
    assert true_calls >= 0.8 * n_true
    assert false_calls <= 0.1 * (true_calls + false_calls)


def test_two_line_null_screen_with_estimated_factors():
    true_calls, false_calls, _ = _calls(0.0, seed=2)
    assert true_calls == 0
    assert false_calls <= 2
