"""Shared fixtures: tiny simulated screens, fitted once per test session."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("MPLBACKEND", "agg")

import dream_sc as ds  # noqa: E402

ds.settings.progress_bar = False
ds.settings.verbosity = 1
warnings.filterwarnings("ignore", message=".*pull_on_update.*")

FAST = {"technical": 80, "cis": 300, "trans": 80}


@pytest.fixture(scope="session")
def tiny_screen():
    """A small simulated screen (unfitted); copy before modifying."""
    return ds.datasets.simulate_screen(
        n_cells=400, n_genes=30, n_junctions=20, n_isoform_genes=6, seed=1
    )


@pytest.fixture(scope="session")
def fitted_screen(tiny_screen):
    """The tiny screen after technical, cis and trans fits of ``rna`` (additive Hill, tested)."""
    mdata = tiny_screen.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=FAST["technical"], seed=0)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=FAST["cis"], seed=0)
        ds.tl.fit_trans(mdata, n_steps=FAST["trans"], seed=0)
    return mdata


@pytest.fixture
def fitted(fitted_screen):
    """A private copy of the fitted tiny screen."""
    return fitted_screen.copy()


@pytest.fixture(scope="session")
def two_target_screen():
    """Factory of a fresh small 2-target screen (rna only): ``two_target_screen(n_genes=14)``."""

    def make(n_genes: int = 14):
        return ds.datasets.simulate_screen(
            n_cells=360,
            n_genes=n_genes,
            n_junctions=0,
            n_isoform_genes=0,
            n_targets=2,
            guides_per_target=3,
            n_ntc_guides=3,
            seed=1,
        )

    return make
