"""The dose-association score, its conditional-randomisation null and the exchangeability check."""

from __future__ import annotations

import numpy as np
import pytest

from dream_sc.models.null import (
    dose_basis,
    exchangeability,
    null_model,
    score_statistics,
)
from dream_sc.models.significance import decoy_qvalues, permute_within_groups


def _onehot(group: np.ndarray) -> np.ndarray:
    out = np.zeros((len(group), group.max() + 1))
    out[np.arange(len(group)), group] = 1.0
    return out


def test_normal_score_is_the_within_group_correlation_test():
    """Normal data, one basis column: S = (n - C) r^2, r the within-group correlation."""
    rng = np.random.default_rng(0)
    n = 60
    group = rng.integers(0, 3, n)
    x = rng.normal(size=n) + group
    y = 0.3 * x[:, None] + group[:, None] + rng.normal(size=(n, 2))
    onehot = _onehot(group)
    model = null_model("normal", y, onehot, log_sigma=np.log([0.5, 2.0]))
    basis = (x - x.mean())[:, None]
    stat = score_statistics(model, onehot, [basis])[0]
    xc = x - (onehot @ (onehot.T @ x / onehot.sum(0)))
    yc = y - onehot @ (onehot.T @ y / onehot.sum(0)[:, None])
    r = (xc @ yc) / np.sqrt((xc @ xc) * (yc**2).sum(0))
    np.testing.assert_allclose(stat, (n - 3) * r**2, rtol=1e-8)


def test_score_ignores_group_level_shifts():
    """A mean shift between groups that also differ in dosage is not a dose response."""
    rng = np.random.default_rng(1)
    n = 4000
    group = np.repeat([0, 1], n // 2)
    log_x = np.where(group == 0, -1.0, 1.0) + rng.normal(0, 0.3, n)
    sf = np.exp(rng.normal(0, 0.3, n))
    shift = np.where(group == 0, 0.0, 1.0)  # group effect only
    y = rng.poisson(sf[:, None] * np.exp(1.0 + shift[:, None]) * np.ones((1, 40)))
    onehot = _onehot(group)
    model = null_model("negbinom", y, onehot, log_sf=np.log(sf), log_r=np.full(40, 5.0))
    stat = score_statistics(model, onehot, [dose_basis(log_x)])[0]
    assert np.median(stat) < 2.0
    # ... while one pooled intercept mistakes the shift for a dose response
    pooled = np.ones((n, 1))
    model = null_model("negbinom", y, pooled, log_sf=np.log(sf), log_r=np.full(40, 5.0))
    assert np.median(score_statistics(model, pooled, [dose_basis(log_x)])[0]) > 50


def _two_line_scores(confounded: bool, seed: int = 0):
    """Scores of a synthetic CRISPRi line + CRISPRa line screen (60 of 300 features respond)."""
    rng = np.random.default_rng(seed)
    n, t, n_resp = 3000, 300, 60
    group = np.repeat([0, 1], n // 2)
    ntc = rng.random(n) < 0.25
    log_x = np.where(ntc, 0.0, np.where(group == 0, -1.5, 1.0)) + rng.normal(0, 0.5, n)
    sf = np.exp(rng.normal(0, 0.3, n))
    slope = np.zeros(t)
    slope[:n_resp] = rng.choice([-0.4, 0.4], n_resp)
    eta = 1.0 + 0.3 * group[:, None] + log_x[:, None] * slope[None, :]
    y = rng.poisson(sf[:, None] * np.exp(eta))
    onehot = _onehot(group)
    # a group-confounded score: the group offsets are fixed (one pooled intercept), so a
    # within-group permutation keeps the group-level association of the responsive features
    fit_groups = np.ones((n, 1)) if confounded else onehot
    model = null_model("negbinom", y, fit_groups, log_sf=np.log(sf), log_r=np.full(t, 6.0))
    perms = [permute_within_groups(group, np.random.SeedSequence(0), k) for k in range(20)]
    basis = dose_basis(log_x)
    stats = score_statistics(model, fit_groups, [basis] + [basis[p] for p in perms])
    truth = np.arange(t) < n_resp
    return stats[0], stats[1:], truth


def test_exchangeability_check_rejects_a_group_confounded_null():
    real, null, _ = _two_line_scores(confounded=True)
    check = exchangeability(real, null)
    assert check.top_share > 0.8, check
    assert check.top_pvalue < 0.01
    assert not check.passed


def test_exchangeable_null_passes_and_keeps_power():
    true_calls = false_calls = 0
    for seed in (0, 1):
        real, null, truth = _two_line_scores(confounded=False, seed=seed)
        check = exchangeability(real, null)
        assert check.passed, check
        assert 0.4 < check.top_share < 0.6 and 0.4 < check.lower_share < 0.6
        called = decoy_qvalues(real, null.ravel(), null.shape[0]) < 0.1
        true_calls += (called & truth).sum()
        false_calls += (called & ~truth).sum()
    assert true_calls >= 0.9 * 2 * truth.sum()
    assert false_calls / (true_calls + false_calls) <= 0.1  # measured: 10 of 140


def test_flat_scores_are_exchangeable_with_their_permutations():
    """Conditional randomisation: without dose response the real score's rank among its own
    permutations is uniform (pooled over features and screens)."""
    ranks = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        n = 800
        group = rng.integers(0, 2, n)
        log_x = group * 1.0 + rng.normal(0, 0.7, n)
        k = rng.binomial(20, 0.3, size=(n, 100)).astype(float)
        onehot = _onehot(group)
        model = null_model("binomial", k, onehot, total=np.full((n, 100), 20.0))
        basis = dose_basis(log_x)
        perms = [permute_within_groups(group, np.random.SeedSequence(seed), j) for j in range(19)]
        s = score_statistics(model, onehot, [basis] + [basis[p] for p in perms])
        ranks.append((s[1:] >= s[0]).sum(0))
    counts = np.bincount(np.concatenate(ranks), minlength=20)
    expected = counts.sum() / 20
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts


@pytest.mark.parametrize("distribution", ["multinomial", "studentt"])
def test_other_distributions_score(distribution):
    rng = np.random.default_rng(3)
    n = 500
    group = rng.integers(0, 2, n)
    log_x = rng.normal(size=n)
    onehot = _onehot(group)
    if distribution == "multinomial":
        p = np.exp(np.column_stack([0.8 * log_x, np.zeros(n), np.zeros(n)]))
        p /= p.sum(1, keepdims=True)
        y = np.vstack([rng.multinomial(30, row) for row in p]).astype(float)
        model = null_model(distribution, y, onehot, total=np.full_like(y, 30.0))
    else:
        y = np.column_stack([0.8 * log_x, np.zeros(n)]) + rng.normal(size=(n, 2))
        y[rng.random((n, 2)) < 0.1] = np.nan
        model = null_model(distribution, y, onehot, log_sigma=np.zeros(2))
    stat = score_statistics(model, onehot, [dose_basis(log_x)])[0]
    if distribution == "multinomial":  # every proportion of the group moves
        assert stat.min() > 20, stat
    else:
        assert stat[0] > 20 and stat[-1] < 10, stat


@pytest.mark.parametrize("n_finite", [0, 1, 3])
def test_exchangeability_with_too_few_features_is_not_checked(n_finite):
    """A degenerate fit (every score or null score NaN) reports the check as not run."""
    scores = np.full(10, np.nan)
    scores[:n_finite] = np.arange(1.0, n_finite + 1)
    null = np.ones((2, 10))
    check = exchangeability(scores, null)
    assert check.checked is False and check.passed is True
    assert np.isnan(check.top_share) and np.isnan(check.lower_share)
    assert (check.n_top, check.n_lower, check.top_pvalue) == (0, 0, 1.0)
    assert exchangeability(np.arange(10.0), np.full((0, 10), 1.0)).checked is False
    assert exchangeability(np.arange(10.0), np.ones((2, 10))).checked is True
