"""The significance test's cells and dose axis (``fit_trans(test_basis=, test_controls=)``)."""

from __future__ import annotations

import numpy as np
import pytest

import dream_sc as ds
from dream_sc.tl._test_cells import test_job as build_test_job
from dream_sc.tl._trans_job import job_from_record

FAST_TRANS = {
    "function": "single_hill",
    "n_steps": 20,
    "n_permutations": 10,
    "progress": False,
    "seed": 0,
}


@pytest.fixture(scope="module")
def subsampled():
    """A screen whose cis fit saw 100 of its 375 control cells."""
    mdata = ds.datasets.simulate_screen(n_cells=1500, n_genes=40, seed=3)
    ds.tl.fit_technical(mdata, n_steps=30, progress=False)
    ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=60, control_cells=100, progress=False)
    return mdata


def _job(mdata, key):
    from dream_sc.engine.config import FitConfig

    record = mdata["rna"].uns[key]
    return job_from_record(mdata, "rna", record, FitConfig.from_record(record["params"]))


def test_all_controls_join_the_test_at_their_guides_dosage(subsampled):
    mdata = subsampled.copy()
    ds.tl.fit_trans(mdata, **FAST_TRANS, test_basis="guide", test_controls="all", key_added="t_all")
    job = _job(mdata, "t_all")
    tested = build_test_job(mdata, job)
    controls = np.flatnonzero(mdata.obs["target"].to_numpy() == "ntc")
    fitted = np.asarray(job.rows)
    assert len(fitted) == 1125 + 100
    assert sorted(tested.rows.tolist()) == sorted(set(fitted) | set(controls))
    # every targeting cell at the mean log dosage of its guide's fitted cells, every control
    # cell at that of all fitted controls
    guides = mdata.obs["guide"].astype(str).to_numpy()
    is_control = mdata.obs["target"].to_numpy() == "ntc"
    dose = job.inputs.log_dose_mean
    control_level = dose[is_control[fitted]].mean()
    np.testing.assert_allclose(
        tested.inputs.log_dose_mean[is_control[tested.rows]], control_level, rtol=1e-12
    )
    for guide in np.unique(guides[tested.rows][~is_control[tested.rows]]):
        expected = dose[guides[fitted] == guide].mean()
        np.testing.assert_allclose(
            tested.inputs.log_dose_mean[guides[tested.rows] == guide], expected, rtol=1e-12
        )
    assert (tested.inputs.log_dose_var == 0).all()
    # the extra cells' size factors and technical groups are the screen's
    np.testing.assert_allclose(
        np.exp(tested.inputs.log_sf), mdata.obs["sum_factor"].to_numpy()[tested.rows]
    )


def test_test_trans_recomputes_the_same_scores(subsampled):
    mdata = subsampled.copy()
    ds.tl.fit_trans(mdata, **FAST_TRANS, test_basis="guide", test_controls="all", key_added="t_all")
    before = mdata["rna"].varm["t_all"][["score", "qvalue"]].copy()
    ds.tl.test_trans(mdata, key="t_all")
    after = mdata["rna"].varm["t_all"][["score", "qvalue"]]
    np.testing.assert_array_equal(before.to_numpy(), after.to_numpy())
    params = mdata["rna"].uns["t_all"]["params"]
    assert (params["test_basis"], params["test_controls"]) == ("guide", "all")


def test_guide_basis_changes_the_test_not_the_curves(subsampled):
    mdata = subsampled.copy()
    ds.tl.fit_trans(mdata, **FAST_TRANS, key_added="t_cell")
    ds.tl.fit_trans(mdata, **FAST_TRANS, test_basis="guide", key_added="t_guide")
    cell, guide = mdata["rna"].varm["t_cell"], mdata["rna"].varm["t_guide"]
    np.testing.assert_array_equal(cell["ec50_mean"].to_numpy(), guide["ec50_mean"].to_numpy())
    assert not np.allclose(cell["score"].to_numpy(), guide["score"].to_numpy(), equal_nan=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"test_controls": "all"},
            "test_controls='all' needs test_basis='guide': control cells outside the cis fit "
            "have no dosage of their own, only their guide's.",
        ),
        ({"test_basis": "guides"}, "test_basis must be one of ('cell', 'guide'); got 'guides'."),
        (
            {"test_basis": "guide", "test_controls": "every"},
            "test_controls must be one of ('fitted', 'all'); got 'every'.",
        ),
    ],
)
def test_bad_options_are_refused_before_any_work(subsampled, kwargs, message):
    mdata = subsampled.copy()
    with pytest.raises(ValueError) as err:
        ds.tl.fit_trans(mdata, **FAST_TRANS, key_added="bad", **kwargs)
    assert str(err.value) == message
    assert "bad" not in mdata["rna"].uns


def test_a_control_without_size_factor_is_refused_before_any_work(subsampled):
    mdata = subsampled.copy()
    fitted = np.isfinite(mdata.obs["dream_cis_dose_mean"].to_numpy())
    outside = np.flatnonzero(~fitted & (mdata.obs["target"].to_numpy() == "ntc"))[:2]
    mdata.obs.iloc[outside, mdata.obs.columns.get_loc("sum_factor")] = np.nan
    with pytest.raises(ValueError) as err:
        ds.tl.fit_trans(
            mdata, **FAST_TRANS, test_basis="guide", test_controls="all", key_added="bad"
        )
    assert str(err.value) == (
        "2 control cells have a size factor that is not a positive number in "
        "obs['sum_factor']; fix them or use test_controls='fitted'."
    )
    assert "bad" not in mdata["rna"].uns


def test_combined_statistic_is_the_cauchy_combination_of_linear_and_quadratic():
    from scipy.stats import chi2

    from dream_sc.models.null import statistics

    u = np.array([[[3.0, 1.0], [0.2, -2.5]]])  # [P=1, T=2, d=2]
    v = np.broadcast_to(np.array([[2.0, 0.5], [0.5, 1.0]]), (1, 2, 2, 2)).copy()
    phi = np.array([1.0, 1.5])
    quad = statistics(u, v, phi)
    combined = statistics(u, v, phi, "combined")
    for t in range(2):
        p1 = chi2.sf(u[0, t, 0] ** 2 / (v[0, t, 0, 0] * phi[t]), 1)
        p2 = chi2.sf(2 * quad[0, t], 2)
        acat = (
            0.5
            - np.arctan(0.5 * np.tan((0.5 - p1) * np.pi) + 0.5 * np.tan((0.5 - p2) * np.pi)) / np.pi
        )
        np.testing.assert_allclose(combined[0, t], -np.log(acat), rtol=1e-10)
    # a p-value combined with itself is itself
    one = statistics(u[..., :1], v[..., :1, :1], phi, "combined")
    np.testing.assert_array_equal(one, statistics(u[..., :1], v[..., :1, :1], phi))


def test_unknown_statistic_is_refused(subsampled):
    with pytest.raises(ValueError) as err:
        ds.tl.fit_trans(subsampled.copy(), **FAST_TRANS, test_statistic="wald")
    assert str(err.value) == "test_statistic must be one of ('quadratic', 'combined'); got 'wald'."


def test_a_low_moi_screen_tests_against_every_control_at_guide_dosages():
    mdata = ds.datasets.simulate_screen(n_cells=600, n_genes=15, seed=1)
    ds.tl.fit_screen(
        mdata, n_steps=10, control_cells=50, trans_kwargs={"n_permutations": 2}, progress=False
    )
    params = mdata["rna"].uns["dream_trans_GFI1B"]["params"]
    assert (params["test_basis"], params["test_controls"], params["test_statistic"]) == (
        "guide",
        "all",
        "combined",
    )
    ds.tl.fit_screen(
        mdata,
        n_steps=10,
        control_cells=50,
        trans_kwargs={"n_permutations": 2, "test_statistic": "quadratic"},
        progress=False,
        key_added="again",
        trans_prefix="again",
        cis_prefix="again_cis",
    )
    assert mdata["rna"].uns["again_GFI1B"]["params"]["test_statistic"] == "quadratic"


def test_collapsed_score_parts_equal_the_dense_ones():
    from dream_sc.models.null import NullModel, constant_rows, score_parts, score_parts_collapsed

    rng = np.random.default_rng(0)
    n, t = 500, 7
    group = rng.integers(0, 3, n)
    onehot = np.eye(3)[group]
    dose = np.where(rng.random(n) < 0.8, 0.3, rng.normal(-1.0, 0.5, n))
    basis = np.column_stack([dose, dose**2])
    basis -= basis.mean(0)
    model = NullModel(rng.normal(size=(n, t)), rng.gamma(2.0, size=(n, t)), np.ones(t))
    common, away = constant_rows(basis)
    assert len(away) == int((dose != 0.3).sum())
    bases = [basis] + [basis[rng.permutation(n)] for _ in range(4)]
    u, v = score_parts(model, onehot, bases)
    uc, vc = score_parts_collapsed(model, onehot, bases, common)
    np.testing.assert_allclose(uc, u, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(vc, v, rtol=1e-9, atol=1e-9)
    assert constant_rows(np.column_stack([rng.normal(size=n), rng.normal(size=n)])) is None
