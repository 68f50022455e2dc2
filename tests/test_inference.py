"""The convergence check of the shared SVI loop."""

from __future__ import annotations

import numpy as np

from dream_sc.models.inference import smoothed_converged


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
