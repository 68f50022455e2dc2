"""The cells and dose axis of a trans fit's significance test (stage one and its null).

By default the score test of :mod:`dream_sc.models.null` runs on the cells of the curve fit,
against each cell's own posterior dosage (``test_basis="cell"``). Three options serve screens:

``test_basis="guide"``
    Every targeting cell is scored at its guide's dosage (the mean log dosage of the guide's
    fitted cells), every control cell at one level (that of all fitted control cells). A
    cell's own dosage estimate comes from its cis counts divided by its size factor, so it
    shares the error of that size factor with every other feature of the cell. Among
    thousands of control cells, whose dosages differ only by such noise, this is a real
    association between the dose axis and every feature that permutations do not reproduce:
    on a 100,000-cell screen with library-size factors and all 10,000 controls in each
    target's test, the per-cell axis put the screen-wide FDR at 0.33; the guide axis at 0.07
    (``benchmarks/bench_genome_screen.py``). The guides' assignment is random, so the guide
    axis keeps the permutation null exact.
``test_controls="all"``
    Every control cell of the screen joins the test, not only the control cells of the cis
    fit (``fit_cis(control_cells=...)``): the curves are fitted against a control
    subsample, the test compares the target's cells with all controls. The extra cells have
    no dosage of their own and sit at the controls' level, so this needs
    ``test_basis="guide"``.
``test_statistic="combined"``
    The score test on the log dosage alone (a monotone response, one degree of freedom)
    combined with the one on log dosage and its square (:func:`dream_sc.models.null.statistics`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from mudata import MuData

from .._cells import sum_factor_values, technical_groups
from .._data import modality_data
from ..models.families import get_family
from ..models.null import TEST_STATISTICS
from ..models.trans import TransInputs
from ._target_cells import _label_mask

TEST_BASES = ("cell", "guide")
TEST_CONTROLS = ("fitted", "all")
#: The test of a low-MOI :func:`~dream_sc.tl.fit_screen` (``trans_kwargs`` override it).
SCREEN_TEST = {"test_basis": "guide", "test_controls": "all", "test_statistic": "combined"}


def check_test_cells(settings, cis_params: dict, obs) -> None:
    """Errors (before any work) for test options unknown or that the cis fit cannot serve."""
    test_basis, test_controls = settings.test_basis, settings.test_controls
    if settings.test_statistic not in TEST_STATISTICS:
        raise ValueError(
            f"test_statistic must be one of {TEST_STATISTICS}; got {settings.test_statistic!r}."
        )
    if test_basis not in TEST_BASES:
        raise ValueError(f"test_basis must be one of {TEST_BASES}; got {test_basis!r}.")
    if test_controls not in TEST_CONTROLS:
        raise ValueError(f"test_controls must be one of {TEST_CONTROLS}; got {test_controls!r}.")
    if test_controls == "all" and test_basis != "guide":
        raise ValueError(
            "test_controls='all' needs test_basis='guide': control cells outside the cis fit "
            "have no dosage of their own, only their guide's."
        )
    if test_basis == "cell":
        return
    guide_key = str(cis_params.get("guide_key", "guide"))
    if bool(cis_params.get("high_moi", False)) or guide_key not in obs.columns:
        raise ValueError(
            f"test_basis='guide' needs a low-MOI cis fit with one guide per cell in "
            f"obs[{guide_key!r}]; use test_basis='cell' for this fit."
        )
    target_key = str(cis_params.get("target_key", "target"))
    if test_controls == "all" and target_key not in obs.columns:
        raise ValueError(
            f"test_controls='all' finds the control cells in obs[{target_key!r}], which is "
            "missing; use test_controls='fitted'."
        )


def _guide_dose(labels: np.ndarray, fitted_dose: np.ndarray, is_control: np.ndarray) -> np.ndarray:
    """Every cell's test dosage: the mean log dosage of its guide's fitted cells.

    ``fitted_dose`` covers the first cells (the cis fit's); ``is_control`` marks the control
    cells among all of them, which share one level, the mean of the fitted control cells (the
    comparison of a screen's test; non-targeting guides do not differ in dosage).
    """
    n_fitted = len(fitted_dose)
    values, inverse = np.unique(labels, return_inverse=True)
    fitted_inv = inverse[:n_fitted]
    count = np.bincount(fitted_inv, minlength=len(values))
    total = np.bincount(fitted_inv, weights=fitted_dose, minlength=len(values))
    fitted_controls = is_control[:n_fitted]
    control = float(fitted_dose[fitted_controls].mean()) if fitted_controls.any() else np.nan
    fallback = control if fitted_controls.any() else float(fitted_dose.mean())
    dose = np.where(count > 0, total / np.maximum(count, 1), fallback)[inverse]
    if fitted_controls.any():
        dose[is_control] = control
    return dose


def test_job(mdata: MuData, job):
    """The job the significance test runs on (``job`` itself with the default options).

    Built before any fit, so that its errors come before any work.
    """
    settings = job.settings
    if settings.test_basis == "cell":
        return job
    cis_params = dict(mdata.uns[settings.cis_key]["params"])
    rows = np.asarray(job.rows)
    n_fitted = len(rows)
    labels = np.asarray(job.guide_labels).astype(str)
    data = job.data
    target_key = str(cis_params.get("target_key", "target"))
    control = str(cis_params.get("control_label", "ntc"))
    controls = np.zeros(mdata.n_obs, bool)
    if target_key in mdata.obs.columns:
        controls = _label_mask(mdata.obs[target_key], control)
    if settings.test_controls == "all":
        outside = controls.copy()
        outside[rows] = False
        extra = np.flatnonzero(outside)  # the screen's control cells outside the cis fit
        if len(extra):
            union = np.concatenate([rows, extra])
            data = modality_data(
                mdata, settings.modality, mdata.obs.index[union], layer=settings.layer
            )
            keep = data.present
            if not keep[:n_fitted].all():  # the fitted cells are present by construction
                raise RuntimeError("a fitted cell is missing from the modality")
            rows = union[keep]
            guide_key = str(cis_params.get("guide_key", "guide"))
            extra_labels = mdata.obs[guide_key].astype(str).to_numpy()[rows[n_fitted:]]
            labels = np.concatenate([labels, extra_labels])
    dose = _guide_dose(labels, job.inputs.log_dose_mean, controls[rows])
    if len(rows) == n_fitted:
        group, log_sf = job.inputs.group, job.inputs.log_sf
    else:
        tech = job.tech
        group = technical_groups(mdata.obs, tech.technical_key, known=tech.groups).codes[rows]
        log_sf = None
        if get_family(data.distribution).size_factors:
            sf = sum_factor_values(mdata, settings.sum_factor_key)[rows]
            bad = ~(np.isfinite(sf) & (sf > 0))
            if bad.any():
                raise ValueError(
                    f"{int(bad.sum())} control cells have a size factor that is not a positive "
                    f"number in obs[{settings.sum_factor_key!r}]; fix them or use "
                    "test_controls='fitted'."
                )
            log_sf = np.log(sf)
    inputs = TransInputs(dose, np.zeros(len(rows)), group, log_sf, True, None)
    return replace(
        job,
        data=data,
        rows=rows,
        inputs=inputs,
        guide_labels=labels,
        cell_names=np.asarray(mdata.obs_names[rows]),
    )


# Not a test: keeps pytest from collecting ``test_job`` where a test module imports it by name.
test_job.__test__ = False  # type: ignore[attr-defined]
