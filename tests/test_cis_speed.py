"""The per-target cost of the cis step (issue 26): same numbers, less work.

A many-target screen fits one cis model per target. The shortcuts taken for speed must not
change what a fit returns: the per-cell draws in blocks of draws equal one draw at a time, the
quadrature with its ``lgamma`` terms outside equals the one with them inside, and a target's
fit reads neither the other targets' cells nor other results stored in ``obs``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

import dream_sc as ds
from dream_sc.engine.cis import fit_cis_model
from dream_sc.engine.config import FitConfig
from dream_sc.engine.memory import plan_cis
from dream_sc.models import cis as C
from dream_sc.models import cis_dosage as CD
from dream_sc.tl._cis import _label_mask


def _small_cis_data(escapers: bool = False) -> C.CisData:
    rng = np.random.default_rng(3)
    n = 300
    guide = rng.integers(0, 5, n)  # guides 0-2 target the gene, 3-4 are controls
    A = np.eye(5, dtype=np.float32)[guide]
    effect = np.array([-1.5, -0.8, -2.5, 0.0, 0.0])[guide]
    log_sf = rng.normal(0.0, 0.3, n)
    group = rng.integers(0, 2, n)
    mean = np.exp(log_sf + np.array([0.0, 0.2])[group]) * 8.0 * np.exp2(effect)
    y = rng.negative_binomial(10, 10 / (10 + mean)).astype(np.float64)
    return C.CisData(
        y=y,
        log_sf=log_sf,
        group=group,
        tech_effect_prior=np.array([0.0, 0.2]),
        assignment=A,
        is_cis_guide=np.array([True, True, True, False, False]),
        log_r=np.log(10.0),
        log2_x_ntc_prior=3.0,
        escapers=escapers,
    )


@pytest.mark.parametrize("escapers", [False, True])
def test_cell_draws_in_blocks_equal_one_draw_at_a_time(monkeypatch, escapers):
    data = _small_cis_data(escapers)
    config = FitConfig.resolve("cis", seed=1, n_steps=30, device="cpu", progress=False)
    config = plan_cis(data, config).config
    post = fit_cis_model(data, config)
    blocked, picks = CD.sample_cell_dosage(data, post, 40, 5, torch.device("cpu"))
    share = post.cell_escape
    assert CD._draw_block_size(data.y.size) > 1
    monkeypatch.setattr(CD, "GRID_BLOCK", 1)  # one draw per block: the former loop
    assert CD._draw_block_size(data.y.size) == 1
    single, picks_single = CD.sample_cell_dosage(data, post, 40, 5, torch.device("cpu"))
    np.testing.assert_array_equal(blocked, single)
    np.testing.assert_array_equal(picks, picks_single)
    if escapers:
        np.testing.assert_array_equal(share, post.cell_escape)
        assert 0 < share.max() <= 1
    else:
        assert share is None


@pytest.mark.parametrize("r", [0.7, 4.0, 300.0])
def test_marginal_with_lgamma_outside_equals_it_inside(r):
    """The dosage-free ``lgamma`` terms taken out of the quadrature sum change nothing."""
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.poisson(6.0, 50).astype(np.float64))
    base = torch.as_tensor(rng.normal(0.0, 0.3, 50))
    mu = torch.as_tensor(rng.normal(2.5, 1.0, 50))
    sigma = torch.as_tensor(rng.uniform(0.1, 0.8, 50))
    log_r = torch.tensor(np.log(r), dtype=torch.float64)
    got = C.cell_log_marginal(y, base, mu, sigma, log_r)
    nodes = torch.as_tensor(C._NODES)
    log_w = torch.as_tensor(np.log(C._WEIGHTS / C._WEIGHTS.sum()))
    eta = base[:, None] + C.LN2 * (mu[:, None] + sigma[:, None] * nodes)
    inside = torch.logsumexp(C.nb_log_pmf(y[:, None], eta, log_r) + log_w, dim=-1)
    np.testing.assert_allclose(got.numpy(), inside.numpy(), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(pd.Categorical(["a", "ntc", "b", None, "ntc"])),
        pd.Series(pd.Categorical([1, 2, 2, 3])),
        pd.Series(["a", "ntc", None, "b"], dtype=object),
        pd.Series([1, 2, 2, 3]),
    ],
)
@pytest.mark.parametrize("label", ["ntc", "2", "nan", "absent"])
def test_label_mask_equals_the_string_comparison(column, label):
    expected = (column.astype(str) == label).to_numpy()
    np.testing.assert_array_equal(_label_mask(column, label), expected)


def _fit(mdata, **kwargs) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_cis(mdata, cis_feature="TGT0002", n_steps=40, seed=2, progress=False, **kwargs)
    rec = mdata.uns["dream_cis"]
    used = np.isfinite(mdata.obs["dream_cis_dose_mean"].to_numpy())
    return {
        "cells": mdata.obs_names[used].to_numpy(),
        "mean": mdata.obs["dream_cis_dose_mean"].to_numpy()[used],
        "samples": np.asarray(mdata.obsm["dream_cis_dose_samples"])[used],
        "guides": rec["guides"][["dose_mean", "log2_effect_mean"]].to_numpy(),
        "loss": np.asarray(rec["loss"]),
    }


def test_fit_does_not_depend_on_other_targets_or_stored_results():
    """A target's fit equals the fit on its own cells plus the controls alone.

    Neither the cells of other targets nor other targets' results in ``obs`` (a screen holds
    many) change anything.
    """
    full = ds.datasets.simulate_many_targets(
        n_cells=900, n_genes=30, n_targets=3, control_fraction=0.4, seed=0
    )
    ds.tl.fit_technical(full, n_steps=30, progress=False, seed=0)
    obs = full.obs
    fitted = (obs["target"].astype(str) == "TGT0002") | (obs["target"].astype(str) == "ntc")
    assert (~fitted).sum() > 300
    alone = full[fitted.to_numpy()].copy()
    for i in range(30):  # a screen's earlier results
        full.obs[f"dream_cis_other{i}_dose_mean"] = np.random.default_rng(i).random(full.n_obs)
    expected = _fit(alone, control_cells=25)
    got = _fit(full, control_cells=25)
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("escapers", [False, True])
def test_log_joint_equals_the_conditioned_trace(escapers):
    """The Laplace start's objective without Pyro: same value and gradient, bit for bit."""
    from pyro import poutine
    from pyro.infer.autoguide import AutoMultivariateNormal, init_to_value

    pyro.clear_param_store()
    data = _small_cis_data(escapers)
    model32 = C.CisModel(data, torch.device("cpu"))  # the guide is built as in the fit
    model = C.CisModel(data, torch.device("cpu"), dtype=torch.float64)
    batch = {"cell_index": torch.arange(data.y.size), "n_cells": data.y.size}
    guide = AutoMultivariateNormal(
        model32, init_loc_fn=init_to_value(values=C.initial_values(data, model32))
    )
    guide(batch)
    z0 = guide.loc.detach().double() + 0.01 * torch.arange(guide.loc.numel()).double()

    def gradient(objective):
        z = z0.clone().requires_grad_(True)
        values = {site["name"]: value for site, value in guide._unpack_latent(z)}
        value = objective(values)
        return value.detach(), torch.autograd.grad(value, z)[0]

    def traced(values):
        conditioned = poutine.condition(model, data=values)
        return poutine.trace(conditioned).get_trace(batch).log_prob_sum()

    got = gradient(lambda values: model.log_joint(values, batch))
    expected = gradient(traced)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


@pytest.mark.parametrize("sparse_samples", [False, True])
def test_samples_stored_from_the_fitted_rows_equal_the_full_matrix(sparse_samples):
    """Samples placed from the fitted rows equal those stored from a NaN-filled full matrix."""
    from scipy import sparse

    from dream_sc._stores.cis import write_cis

    rng = np.random.default_rng(0)
    n, draws = 50, 7
    rows = np.sort(rng.choice(n, 12, replace=False))
    samples = rng.gamma(2.0, 3.0, (12, draws)).astype(np.float32)
    samples[3, 2] = 0.0  # a draw that underflowed: not stored in the sparse matrix either
    full = np.full((n, draws), np.nan, dtype=np.float32)
    full[rows] = samples
    screens = []
    for kwargs in ({"samples": full}, {"samples": samples, "rows": rows}):
        mdata = ds.datasets.simulate_screen(n_cells=n, n_genes=5, n_junctions=4, seed=0)
        kw = {"sparse_samples": sparse_samples, **kwargs}
        write_cis(mdata, "dream_cis", {"guides": pd.DataFrame()}, {}, kw.pop("samples"), **kw)
        screens.append(mdata.obsm["dream_cis_dose_samples"])
    a, b = screens
    assert type(a) is type(b)
    if sparse_samples:
        assert sparse.issparse(b) and b.dtype == a.dtype and b.indices.dtype == a.indices.dtype
        for part in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(b, part), getattr(a, part))
    else:
        np.testing.assert_array_equal(b, a)
        assert b.dtype == a.dtype


def test_small_fits_run_on_one_thread_with_the_same_results(monkeypatch):
    """A screen-sized cis fit runs on one torch thread; the caller's count comes back."""
    from dream_sc.engine import cis as engine_cis

    assert engine_cis.cis_threads(1_200) == 1
    assert engine_cis.cis_threads(engine_cis.ONE_THREAD_CELLS + 1) is None
    seen = []
    original = engine_cis._fit_cis_model
    monkeypatch.setattr(
        engine_cis,
        "_fit_cis_model",
        lambda *a, **k: (seen.append(torch.get_num_threads()), original(*a, **k))[1],
    )
    mdata = ds.datasets.simulate_many_targets(
        n_cells=600, n_genes=20, n_targets=2, control_fraction=0.4, seed=1
    )
    ds.tl.fit_technical(mdata, n_steps=30, progress=False, seed=0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = _fit(mdata.copy())
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one = _fit(mdata.copy())
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]
    for key, value in one.items():
        np.testing.assert_array_equal(two[key], value, err_msg=key)
