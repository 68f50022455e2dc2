"""Line-specific (CRISPRi line + CRISPRa line) and unequal-mix designs of ``simulate_screen``."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

import dream_sc as ds


def _digest(mdata) -> str:
    h = hashlib.sha256()
    for mod in sorted(mdata.mod):
        X = mdata[mod].X
        dense = X.toarray() if hasattr(X, "toarray") else X
        h.update(np.asarray(dense, dtype=np.float64).tobytes())
    h.update(mdata.obs["true_dose"].to_numpy().tobytes())
    h.update(mdata.obs["guide"].astype(str).str.cat().encode())
    h.update(mdata.obs["cell_line"].astype(str).str.cat().encode())
    h.update(mdata.obs["true_size_factor"].to_numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"n_cells": 300, "n_genes": 20, "seed": 0}, "9a3ad823c12a9e0d"),
        (
            {
                "n_cells": 200,
                "n_genes": 15,
                "n_targets": 2,
                "moi": "high",
                "seed": 3,
                "continuous": True,
            },
            "61ce244fe6f5c50f",
        ),
        (
            {
                "n_cells": 250,
                "n_genes": 12,
                "cell_lines": ("a", "b", "c"),
                "seed": 5,
                "splicing_concentration": 5.0,
            },
            "ec7fe60e2451b54c",
        ),
    ],
)
def test_default_streams_unchanged(kwargs, expected):
    """Digests computed with the simulator before the new designs existed (main, 8e685f5)."""
    assert _digest(ds.datasets.simulate_screen(**kwargs)) == expected


def test_line_specific_design():
    mdata = ds.datasets.simulate_screen(
        n_cells=1200,
        n_genes=20,
        n_junctions=0,
        n_isoform_genes=0,
        guides_per_target=2,
        guide_design="line_specific",
        seed=2,
    )
    guides = mdata.uns["truth"]["guides"]
    assert list(guides.index) == [
        "GFI1B_i1",
        "GFI1B_i2",
        "GFI1B_a1",
        "GFI1B_a2",
        "NTC_1",
        "NTC_2",
        "NTC_3",
        "NTC_4",
        "NTC_5",
    ]
    assert mdata.uns["truth"]["guide_design"] == "line_specific"
    table = pd.crosstab(mdata.obs["guide"], mdata.obs["cell_line"])
    # CRISPRi guides in K562 only, CRISPRa in HEK293T only, NTC in both
    assert (table.loc[["GFI1B_i1", "GFI1B_i2"], "HEK293T"] == 0).all()
    assert (table.loc[["GFI1B_a1", "GFI1B_a2"], "K562"] == 0).all()
    assert (table.loc[[f"NTC_{k}" for k in range(1, 6)]] > 0).all().all()
    eff = guides["log2_effect"]
    assert eff[["GFI1B_i1", "GFI1B_i2"]].between(-3.0, -0.5).all()
    assert eff[["GFI1B_a1", "GFI1B_a2"]].between(0.5, 2.0).all()
    assert (
        guides.loc[guides["modality"] == "CRISPRa", "dose"] > mdata.uns["truth"]["x_ntc"]["GFI1B"]
    ).all()
    # NTC fraction holds in each line
    ntc = mdata.obs["target"] == "ntc"
    for line in ("K562", "HEK293T"):
        cells = mdata.obs["cell_line"] == line
        assert abs(ntc[cells].mean() - 0.25) < 0.01
    # activated cells carry more of the cis gene than NTC cells of their line
    hek = (mdata.obs["cell_line"] == "HEK293T").to_numpy()
    tgt = (mdata.obs["target"] == "GFI1B").to_numpy()
    assert np.median(mdata.obs["true_log2_dose"][hek & tgt]) > np.median(
        mdata.obs["true_log2_dose"][hek & ntc.to_numpy()]
    )


def test_unequal_guide_mix():
    mdata = ds.datasets.simulate_screen(
        n_cells=3000, n_genes=10, n_junctions=0, n_isoform_genes=0, guide_mix_skew=1.5, seed=0
    )
    obs = mdata.obs[mdata.obs["target"] == "GFI1B"]
    by_line = obs.groupby("cell_line", observed=True)["true_log2_dose"].mean()
    # the first line over-represents the high-dosage guides
    assert by_line["K562"] - by_line["HEK293T"] > 1.0
    same = ds.datasets.simulate_screen(
        n_cells=3000, n_genes=10, n_junctions=0, n_isoform_genes=0, seed=0
    )
    obs = same.obs[same.obs["target"] == "GFI1B"]
    by_line = obs.groupby("cell_line", observed=True)["true_log2_dose"].mean()
    assert abs(by_line["K562"] - by_line["HEK293T"]) < 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"guide_design": "lines"}, "guide_design must be one of 'shared', 'line_specific'"),
        (
            {"guide_design": "line_specific", "cell_lines": ("a", "b", "c")},
            "guide_design='line_specific' needs exactly two cell_lines",
        ),
        ({"guide_mix_skew": 1.0, "moi": "high"}, "need moi='low'"),
        ({"crispra_log2_range": (2.0, 1.0)}, "crispra_log2_range must be a pair"),
        ({"guide_mix_skew": np.nan}, "guide_mix_skew must be a number"),
    ],
)
def test_design_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ds.datasets.simulate_screen(n_cells=50, n_genes=5, **kwargs)
