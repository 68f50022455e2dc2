"""pp.assign_guides: thresholds, the mixture, Cell Ranger calls, high MOI, errors; pl QC plot."""

from __future__ import annotations

import mudata as md
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib import pyplot as plt

import dream_sc as ds
from dream_sc.pp._guide_mixture import fit_guide_mixture

GUIDES = ["A_1", "A_2", "B_1", "NTC_1"]
TARGETS = {"A_1": "A", "A_2": "A", "B_1": "B", "NTC_1": "ntc"}


def _mdata(umis: np.ndarray, with_target: bool = True) -> md.MuData:
    var = pd.DataFrame(index=GUIDES)
    if with_target:
        var["target"] = [TARGETS[g] for g in GUIDES]
    cells = [f"c{i}" for i in range(umis.shape[0])]
    guides = AnnData(umis.astype(np.float32), obs=pd.DataFrame(index=cells), var=var)
    rna = AnnData(np.ones((umis.shape[0], 2), np.float32), obs=pd.DataFrame(index=cells))
    return md.MuData({"rna": rna, "guides": guides})


UMIS = np.array(
    [
        [30, 0, 1, 0],  # A_1
        [0, 4, 0, 0],  # A_2 below 5 -> no call
        [2, 0, 50, 7],  # B_1 and NTC_1 -> several
        [0, 0, 0, 90],  # NTC_1
        [0, 5, 0, 0],  # A_2 exactly at threshold
    ]
)


def test_umi_threshold_low_moi():
    mdata = _mdata(UMIS)
    ds.pp.assign_guides(mdata, threshold=5)
    assert mdata.obs_names.tolist() == ["c0", "c3", "c4"]
    assert mdata["rna"].n_obs == 3 and mdata["guides"].n_obs == 3
    assert mdata.obs["guide"].tolist() == ["A_1", "NTC_1", "A_2"]
    assert mdata.obs["target"].tolist() == ["A", "ntc", "A"]
    assert mdata.obs["target"].cat.categories.tolist() == ["ntc", "A"]
    assert mdata.obs["n_guides"].tolist() == [1, 1, 1]
    record = mdata.uns["guide_assignment"]
    assert record["dropped"] == {"no guide call": 1, "several guides": 1}
    assert record["n_cells_before"] == 5 and record["n_cells_kept"] == 3
    var = mdata["guides"].var
    assert var["umi_threshold"].tolist() == [5.0] * 4
    assert var["n_cells_called"].tolist() == [1, 1, 1, 2]
    np.testing.assert_array_equal(
        mdata.obsm["guide_assignment"].to_numpy(), [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]]
    )


def test_high_moi_uses_calls_not_raw_umis(tmp_path):
    mdata = _mdata(UMIS)
    ds.pp.assign_guides(mdata, moi="high", threshold={"A_1": 3, "A_2": 5, "B_1": 5, "NTC_1": 5})
    assert mdata.obs_names.tolist() == ["c0", "c2", "c3", "c4"]
    table = mdata.obsm["guide_assignment"]
    # ambient UMIs (1, 2 reads) are not assignments
    np.testing.assert_array_equal(
        table.to_numpy(), [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 0, 0]]
    )
    assert mdata.obs["guide"].tolist() == ["A_1", "B_1|NTC_1", "NTC_1", "A_2"]
    assert mdata.obs["target"].tolist() == ["A", "B", "ntc", "A"]
    assert mdata.obs["n_guides"].tolist() == [1, 2, 1, 1]
    assert mdata.uns["guide_assignment"]["dropped"] == {"no guide call": 1}
    mdata.write(tmp_path / "calls.h5mu")
    back = md.read_h5mu(tmp_path / "calls.h5mu")
    assert back.obsm["guide_assignment"].to_numpy().tolist() == table.to_numpy().tolist()
    assert back.uns["guide_assignment"]["guide_targets"] == TARGETS


def test_copy_and_guide_targets_argument():
    mdata = _mdata(UMIS, with_target=False)
    out = ds.pp.assign_guides(mdata, threshold=5, guide_targets=TARGETS, copy=True)
    assert mdata.n_obs == 5 and "guide" not in mdata.obs
    assert out.obs["target"].tolist() == ["A", "ntc", "A"]


def test_mixture_recovers_simulated_calls():
    rng = np.random.default_rng(0)
    n = 600
    truth = rng.integers(0, 4, n)
    signal = np.round(rng.lognormal(np.log([40, 15, 80, 25]), 0.5, (n, 4)))
    umis = rng.poisson(0.5, (n, 4)) + np.where(truth[:, None] == np.arange(4), signal, 0)
    mdata = _mdata(umis)
    ds.pp.assign_guides(mdata, method="mixture")
    kept = mdata.obs_names.str[1:].astype(int).to_numpy()
    assert len(kept) >= 0.97 * n
    np.testing.assert_array_equal(
        mdata.obs["guide"].astype(str).to_numpy(), np.array(GUIDES)[truth[kept]]
    )
    thresholds = mdata["guides"].var["umi_threshold"].to_numpy()
    assert np.all((thresholds >= 3) & (thresholds <= 10))


def test_mixture_without_a_guide_component():
    counts = np.random.default_rng(1).poisson(1.0, 900)
    assert fit_guide_mixture(counts).threshold == np.inf
    assert fit_guide_mixture(np.zeros(10, int)).threshold == np.inf


def test_cellranger_calls(tmp_path):
    calls = pd.DataFrame(
        {
            "cell_barcode": ["c0", "c2", "c3"],
            "num_features": [1, 2, 1],
            "feature_call": ["A_1", "B_1|NTC_1", "NTC_1"],
            "num_umis": ["30", "50|7", "90"],
        }
    )
    calls.to_csv(tmp_path / "calls.csv", index=False)
    mdata = _mdata(UMIS)
    ds.pp.assign_guides(mdata, method="cellranger", calls=tmp_path / "calls.csv")
    assert mdata.obs["guide"].tolist() == ["A_1", "NTC_1"]
    var = mdata["guides"].var
    assert var.loc["NTC_1", "umi_threshold"] == 7.0 and np.isnan(var.loc["A_2", "umi_threshold"])
    (tmp_path / "protospacer_umi_thresholds_json.json").write_text('{"A_1": 4, "NTC_1": 6}')
    mdata = _mdata(UMIS)
    ds.pp.assign_guides(mdata, method="cellranger", calls=tmp_path / "calls.csv")
    assert mdata["guides"].var["umi_threshold"].fillna(-1).tolist() == [4.0, -1, -1, 6.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"method": "kmeans"},
            ValueError,
            r"`method` must be one of \['umi_threshold', 'mixture', 'cellranger'\]; got 'kmeans'\.",
        ),
        ({"moi": "medium"}, ValueError, r"`moi` must be one of \['low', 'high'\]; got 'medium'\."),
        ({"threshold": 0}, ValueError, r"`threshold` must be a positive number of UMIs; got 0\."),
        (
            {"threshold": {"A_1": 3}},
            ValueError,
            r"`threshold` has no value for guide\(s\) \['A_2', 'B_1', 'NTC_1'\]",
        ),
        ({"method": "cellranger"}, ValueError, r"method='cellranger' needs `calls=`"),
        ({"guides": "sgRNA"}, KeyError, r"Modality 'sgRNA' not found"),
        (
            {"threshold": 1000},
            ValueError,
            r"No cell keeps a guide call \(\{'no guide call': 5, 'several guides': 0\}\)",
        ),
        (
            {"guide_targets": {"A_1": "A"}},
            KeyError,
            r"`guide_targets` has no entry for guide\(s\) \['A_2', 'B_1', 'NTC_1'\]",
        ),
    ],
)
def test_errors_leave_mdata_unchanged(kwargs, error, message):
    mdata = _mdata(UMIS)
    with pytest.raises(error, match=message):
        ds.pp.assign_guides(mdata, **kwargs)
    assert mdata.n_obs == 5 and "guide" not in mdata.obs
    assert "guide_assignment" not in mdata.obsm and "umi_threshold" not in mdata["guides"].var


def test_missing_targets_and_non_integer_umis():
    with pytest.raises(
        KeyError, match=r"mdata\['guides'\]\.var has no 'target' column; pass `guide_targets=`"
    ):
        ds.pp.assign_guides(_mdata(UMIS, with_target=False))
    with pytest.raises(ValueError, match=r"must be raw read counts"):
        ds.pp.assign_guides(_mdata(UMIS + 0.5))


def test_plot_guide_assignment():
    mdata = _mdata(UMIS)
    ds.pp.assign_guides(mdata, threshold=5)
    axes = ds.pl.guide_assignment(mdata, show=False)
    assert len(axes) == 2
    ticks = [c for c in axes[0].collections if c.get_gid() == "thresholds"][0]
    np.testing.assert_allclose(ticks.get_offsets()[:, 0], [5.5] * 4)
    bars = [p.get_width() for p in axes[1].patches]
    assert bars == [1, 1, 0, 1]
    fig, given = plt.subplots(1, 2)
    assert ds.pl.guide_assignment(mdata, ax=given, show=False) == list(given)
    assert isinstance(ds.pl.guide_assignment(mdata, return_fig=True), plt.Figure)
    plt.close("all")
    with pytest.raises(
        KeyError, match=r"No guide calls under key 'calls'; run `ds\.pp\.assign_guides"
    ):
        ds.pl.guide_assignment(mdata, key="calls")
