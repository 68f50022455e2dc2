"""A degenerate cis posterior (dosage draws of 0) is refused before anything is written."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

import dream_sc as ds
from dream_sc.tl._cis import _check_dosage_range


def test_dosage_range_message():
    samples = np.ones((4, 3), dtype=np.float32)
    samples[1, 2] = 0.0
    samples[3, 0] = np.inf
    msg = (
        "fit_cis for 'GENE': the dosage draws of 2 cell(s) are 0 or infinite (log2 dosage "
        "beyond +-126): the guide-level posterior is degenerate, usually a fit stopped too "
        "early (n_steps=20): refit with more `n_steps` and check the cis gene's counts."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        _check_dosage_range(samples, "GENE", 20)
    _check_dosage_range(np.ones((2, 2)), "GENE", 20)  # finite, positive: accepted


@pytest.mark.slow
def test_unconverged_high_moi_cis_fit_is_refused_and_mdata_unchanged():
    # 20 steps on a tiny high-MOI screen: at seed 0 some cells' draws fall below 2^-149 (were
    # stored as 0 and made the trans fit stop with a NaN loss at step 0)
    torch.set_num_threads(1)
    mdata = ds.datasets.simulate_many_targets(
        n_cells=600, n_genes=80, n_targets=5, moi="high", seed=0
    )
    gt = mdata.uns["truth"]["guide_targets"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(
            mdata,
            modality="rna",
            technical_key=None,
            n_steps=20,
            seed=0,
            use_all_cells=True,
            progress=False,
        )
    keys = (set(mdata.uns), set(mdata.obsm), set(mdata.obs.columns))
    with pytest.raises(ValueError, match=r"the dosage draws of \d+ cell\(s\) are 0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.tl.fit_cis(
                mdata,
                cis_feature="TGT0001",
                guide_targets=gt,
                n_steps=20,
                seed=0,
                progress=False,
            )
    assert (set(mdata.uns), set(mdata.obsm), set(mdata.obs.columns)) == keys
