"""The one-sweep Hill curve + NB likelihood equals the autograd path (value and gradient)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import dream_sc as ds
from dream_sc.models import fused as FU
from dream_sc.models import trans as TR
from dream_sc.models.curves import evaluate_curve
from dream_sc.models.families import get_family
from dream_sc.models.families.negbinom import negbinom_log_prob
from dream_sc.models.sparse import CSRMatrix

N_CELLS, N_FEAT, N_GROUPS = 700, 37, 3
LOG_X_REF = 0.7


def _problem(function: str, with_var: bool, with_sf: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = torch.float64
    counts = rng.negative_binomial(2, 0.4, size=(N_CELLS, N_FEAT)) * (
        rng.random((N_CELLS, N_FEAT)) < 0.3
    )
    counts[5] = 0  # an empty row
    y = CSRMatrix.from_scipy(sp.csr_matrix(counts), dtype=d)
    inputs = {
        "delta": torch.as_tensor(rng.normal(0, 0.3, (N_GROUPS, N_FEAT))),
        "group": torch.as_tensor(rng.integers(0, N_GROUPS, N_CELLS)),
        "log_sf": torch.as_tensor(rng.normal(0, 0.2, N_CELLS)) if with_sf else None,
        "log_x": torch.as_tensor(rng.normal(1.0, 1.0, N_CELLS)),
        "log_x_var": torch.as_tensor(rng.uniform(0, 0.4, N_CELLS)) if with_var else None,
        "log_r": torch.as_tensor(rng.normal(0.5, 1.0, N_FEAT)),
    }
    params = {
        "eta_ref": torch.as_tensor(rng.normal(0, 1, N_FEAT)),
        "v1": torch.as_tensor(rng.normal(0, 1, N_FEAT)),
        "log_k1": torch.as_tensor(rng.normal(1, 1, N_FEAT)),
        "n1": torch.as_tensor(rng.uniform(0.3, 4, N_FEAT)),
    }
    if function == "additive_hill":
        params["v2"] = torch.as_tensor(rng.normal(0, 1, N_FEAT))
        params["log_k2"] = params["log_k1"] + torch.as_tensor(rng.uniform(0.2, 2, N_FEAT))
        params["n2"] = torch.as_tensor(rng.uniform(0.3, 4, N_FEAT))
    # a batch that is not a multiple of the block, with a repeated row
    rows = torch.as_tensor(np.r_[rng.choice(N_CELLS, 300, replace=False), 5, 17, 17])
    return y, inputs, {k: v.requires_grad_(True) for k, v in params.items()}, rows


def _reference(function, y, inputs, params, rows):
    lv = inputs["log_x_var"]
    eta = evaluate_curve(
        function,
        params,
        inputs["log_x"][rows],
        LOG_X_REF,
        3.0,
        None if lv is None else lv[rows],
        "log",
    )
    eta = eta + inputs["delta"][inputs["group"][rows]]
    if inputs["log_sf"] is not None:
        eta = eta + inputs["log_sf"][rows, None]
    return negbinom_log_prob(eta, inputs["log_r"], y.to_dense_rows(rows)).sum()


@pytest.mark.parametrize("function", ["single_hill", "additive_hill"])
@pytest.mark.parametrize("with_var", [False, True])
@pytest.mark.parametrize("with_sf", [False, True])
def test_fused_sweep_equals_autograd(function, with_var, with_sf):
    y, inputs, params, rows = _problem(function, with_var, with_sf)
    ref = _reference(function, y, inputs, params, rows)
    ref_grad = torch.autograd.grad(ref * 1.7, list(params.values()))
    cells = FU.FusedCells(y, log_x_ref=LOG_X_REF, **inputs).at(rows)
    out = FU.hill_negbinom_log_likelihood(function, params, cells)
    grad = torch.autograd.grad(out * 1.7, list(params.values()))
    np.testing.assert_allclose(float(out.detach()), float(ref.detach()), rtol=1e-12)
    for name, g, r in zip(params, grad, ref_grad, strict=True):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-9, atol=1e-9, err_msg=name)


def test_fused_sweep_without_gradient_gives_the_same_value():
    y, inputs, params, rows = _problem("single_hill", True, True)
    cells = FU.FusedCells(y, log_x_ref=LOG_X_REF, **inputs).at(rows)
    with_grad = FU.hill_negbinom_log_likelihood("single_hill", params, cells)
    with torch.no_grad():
        without = FU.hill_negbinom_log_likelihood("single_hill", params, cells)
    assert float(without) == pytest.approx(float(with_grad), rel=1e-14)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 22])
def test_cell_constants_are_summed_in_chunks(chunk):
    y, inputs, _, _ = _problem("single_hill", False, False)
    r = inputs["log_r"].exp()
    dense = y.to_dense_rows(torch.arange(N_CELLS))
    expected = (torch.lgamma(dense + r) - torch.lgamma(r)).sum(1)
    got = FU._cell_constants(y, r, chunk=chunk)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-10, atol=1e-9)
    assert float(got[5]) == 0.0  # the empty row


def test_fused_sweep_only_where_it_applies():
    y = CSRMatrix.from_scipy(sp.csr_matrix(np.eye(3)))
    nb, binom = get_family("negbinom"), get_family("binomial")
    assert FU.fused_available(nb, "single_hill", y)
    assert FU.fused_available(nb, "additive_hill", y)
    assert not FU.fused_available(nb, "polynomial", y)
    assert not FU.fused_available(binom, "single_hill", y)
    assert not FU.fused_available(nb, "single_hill", torch.eye(3))
    assert not FU.fused_available(nb, "single_hill", y.to("meta"))  # off the CPU: autograd


def test_fit_trans_with_and_without_the_fused_sweep_agree(monkeypatch):
    """Same fit through both paths: float32 rounding differs, the posterior does not."""
    mdata = ds.datasets.simulate_screen(
        n_cells=600, n_genes=30, n_junctions=0, n_isoform_genes=0, seed=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=60, seed=0, progress=False)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=60, seed=0, progress=False)
        kw = {"function": "single_hill", "n_steps": 150, "seed": 0, "test": False}
        ds.tl.fit_trans(mdata, key_added="fused", refine_intervals=False, **kw)
        monkeypatch.setattr(TR, "fused_available", lambda *a, **k: False)
        ds.tl.fit_trans(mdata, key_added="autograd", refine_intervals=False, **kw)
    a = ds.get.trans_results(mdata, key="fused")
    b = ds.get.trans_results(mdata, key="autograd")
    np.testing.assert_allclose(a["response_mean"], b["response_mean"], atol=0.05)
    np.testing.assert_allclose(a["prob_dose_dependent"], b["prob_dose_dependent"], atol=0.05)
