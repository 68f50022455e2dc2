"""The convergence check of the shared SVI loop."""

from __future__ import annotations

import numpy as np
import pytest

from dream_sc.engine.config import FitConfig
from dream_sc.engine.svi import smoothed_converged


def test_steady_decrease_is_not_converged():
    assert not smoothed_converged(np.linspace(100.0, 0.0, 300))
    # a slow exponential approach still dropping by ~1% of the scale per window
    steps = np.arange(600)
    assert not smoothed_converged(1000.0 + 500.0 * np.exp(-steps / 400))


def test_flat_loss_is_converged():
    assert smoothed_converged(np.full(100, -5.0))
    assert smoothed_converged(np.r_[np.linspace(100.0, 1.0, 100), np.ones(200)])


def test_minibatch_noise_alone_is_not_an_alarm():
    rng = np.random.default_rng(0)
    false_alarms = sum(
        not smoothed_converged(-39600.0 + rng.normal(0.0, 500.0, 600)) for _ in range(200)
    )
    assert false_alarms <= 10  # two standard errors: ~2.5% one-sided


def test_small_trend_hidden_in_noise_counts_as_converged_but_large_one_does_not():
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 500.0, 600)
    tiny = np.linspace(0.0, -30.0, 600)  # 30 units over 600 steps: far below the noise
    assert smoothed_converged(-39600.0 + tiny + noise)
    large = np.linspace(0.0, -3000.0, 600)  # 300 units per window: many standard errors
    assert not smoothed_converged(-39600.0 + large + noise)


def test_short_or_non_finite_traces_are_not_converged():
    assert not smoothed_converged(np.ones(9))
    assert not smoothed_converged(np.r_[np.ones(95), np.nan, np.ones(4)])


def _toy_problem(nan_from: int | None):
    """One parameter, loss (w - 1)^2 from step 0; infinite from step ``nan_from`` on."""
    import pyro
    import torch

    pyro.clear_param_store()
    w = torch.zeros(3, requires_grad=True)

    def model(batch):
        loss = ((w - 1.0) ** 2).sum()
        if nan_from is not None and batch["step"] >= nan_from:
            loss = loss + float("inf")  # (a NaN factor fails Pyro's argument check first)
        pyro.factor("obs", -loss)

    def guide(batch):
        return {}

    return model, guide, (lambda: [w]), (lambda step: {"step": step}), w


def test_loss_trace_matches_the_per_step_values_and_is_synced_in_blocks(monkeypatch):
    import torch

    from dream_sc.engine import svi as inference

    copies = []
    real_cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        copies.append(self.numel())
        return real_cpu(self, *args, **kwargs)

    model, guide, params, batches, w = _toy_problem(None)
    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    fit = inference.run_svi(model, guide, params, batches, FitConfig(n_steps=120, lr=0.05))
    monkeypatch.undo()
    # 120 steps: host copies after steps 50 and 100 and at the end, never one per step
    assert copies == [50, 50, 20]
    assert np.all(np.isfinite(fit.loss)) and fit.loss[-1] < fit.loss[0]
    # the trace holds the loss of each step: replay the same optimisation by hand
    model, guide, params, batches, w2 = _toy_problem(None)
    again = inference.run_svi(model, guide, params, batches, FitConfig(n_steps=120, lr=0.05))
    np.testing.assert_array_equal(fit.loss, again.loss)
    np.testing.assert_allclose(fit.loss[0], 3.0)  # (0 - 1)^2 * 3 before the first update


@pytest.mark.parametrize("nan_from", [7, 50, 63])
def test_deferred_finiteness_check_names_the_first_bad_step(nan_from):
    from dream_sc.engine.svi import NonFiniteLossError, run_svi

    model, guide, params, batches, _ = _toy_problem(nan_from)
    with pytest.raises(
        NonFiniteLossError, match=rf"^The ELBO became (nan|inf|-inf) at step {nan_from} in x\."
    ):
        run_svi(model, guide, params, batches, FitConfig(n_steps=120, lr=0.05), context=" in x")
