"""The convergence check warns for fits still improving, not for noise (issue 16)."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import dream_sc as ds
from dream_sc.engine.config import FitConfig
from dream_sc.engine.svi import run_svi, smoothed_converged


def test_flat_noisy_loss_with_a_low_last_window_is_converged():
    """The demo's false alarm: flat loss, last window 2+ standard errors below the previous."""
    rng = np.random.default_rng(0)
    loss = -4230.0 + rng.normal(0.0, 48.0, 400)
    loss[-40:] += -4230.0 - loss[-40:].mean() - 25.0  # 2.3 se below, the windows before flat
    loss[-80:-40] += -4230.0 - loss[-80:-40].mean()
    loss[-120:-80] += -4230.0 - loss[-120:-80].mean()
    se = np.std(np.diff(loss[-120:])) / np.sqrt(2.0) * np.sqrt(2.0 / 40)
    assert loss[-80:-40].mean() - loss[-40:].mean() > 2.0 * se  # the former check's alarm
    assert smoothed_converged(loss)


def test_falling_in_the_last_two_windows_only_is_not_converged():
    rng = np.random.default_rng(2)
    loss = 1000.0 + rng.normal(0.0, 5.0, 300)
    loss[-60:] -= np.linspace(0.0, 30.0, 60)  # a late but persistent decrease
    assert not smoothed_converged(loss)


def _svi(n_steps: int, lr: float):
    pyro.clear_param_store()
    torch.manual_seed(0)
    y = torch.randn(500) + 50.0
    loc = torch.zeros((), requires_grad=True)

    def model(batch):
        mu = pyro.sample("mu", dist.Normal(0.0, 100.0))
        with pyro.plate("obs", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    def guide(batch):
        pyro.sample("mu", dist.Normal(loc, 0.001))

    return run_svi(
        model,
        guide,
        lambda: [loc],
        lambda step: {},
        FitConfig(n_steps=n_steps, lr=lr),
        loss_scale=len(y),
    )


def test_truly_unconverged_svi_fit_is_flagged():
    slow = _svi(200, 0.2)  # the mean moves from 0 towards 50 but runs out of steps
    assert not slow.converged
    windows = slow.loss[-60:].reshape(3, 20).mean(axis=1)
    assert np.all(np.diff(windows) < -1.0)  # still falling at the end
    assert _svi(400, 2.0).converged


def test_too_short_tl_fit_warns(tiny_screen):
    mdata = tiny_screen.copy()
    with pytest.warns(UserWarning, match="fit_technical on 'rna' did not converge in 12 steps"):
        ds.tl.fit_technical(mdata, n_steps=12, seed=0)
    assert mdata["rna"].uns["dream_technical"]["converged"] is False
