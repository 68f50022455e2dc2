"""io.read_cellranger: every written value read back, and bad files rejected with a fix."""

from __future__ import annotations

import gzip
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

import dream_sc as ds
from dream_sc.datasets._write_formats import guide_umis


@pytest.fixture(scope="module")
def screen():
    return ds.datasets.simulate_screen(
        n_cells=120, n_genes=12, n_junctions=0, n_isoform_genes=0, seed=2, guides_per_target=3
    )


@pytest.fixture(scope="module")
def umis(screen):
    return guide_umis(screen, seed=5)


def _write(screen, umis, tmp_path, fmt, compress):
    return ds.datasets.write_cellranger(
        screen, tmp_path / "run", format=fmt, compress=compress, umis=umis, gem_well_key="cell_line"
    )


@pytest.mark.parametrize(("fmt", "compress"), [("h5", False), ("mtx", True), ("mtx", False)])
def test_every_value_read_back(screen, umis, tmp_path, fmt, compress):
    paths = _write(screen, umis, tmp_path, fmt, compress)
    if fmt == "mtx":
        suffix = ".gz" if compress else ""
        for name in ("barcodes.tsv", "features.tsv", "matrix.mtx"):
            assert (paths["matrix"] / f"{name}{suffix}").is_file()
    mdata = ds.io.read_cellranger(paths["outs"], feature_reference=paths["feature_reference"])
    barcodes = paths["barcodes"]
    assert mdata.obs_names.tolist() == barcodes.tolist()
    lines = screen.obs["cell_line"].cat.codes.to_numpy() + 1
    assert mdata.obs_names.str.rsplit("-", n=1).str[-1].astype(int).tolist() == lines.tolist()
    rna, guides = mdata["rna"], mdata["guides"]
    np.testing.assert_array_equal(rna.X.toarray(), screen["rna"].X.toarray())
    assert rna.var_names.tolist() == screen["rna"].var_names.tolist()
    assert rna.var["gene_ids"].tolist() == [f"ENSG{i:011d}" for i in range(1, 13)]
    assert set(rna.var["feature_types"]) == {"Gene Expression"}
    np.testing.assert_array_equal(guides.X.toarray(), umis.to_numpy())
    assert guides.var_names.tolist() == umis.columns.tolist()
    truth = screen.uns["truth"]["guide_targets"]
    assert guides.var["target"].tolist() == [truth[g] for g in guides.var_names]
    # Cell Ranger's calls are the simulated guides: labels equal the truth
    assert mdata.obs["guide"].astype(str).tolist() == screen.obs["guide"].astype(str).tolist()
    assert mdata.obs["target"].astype(str).tolist() == screen.obs["target"].astype(str).tolist()
    assert mdata.obs["target"].cat.categories.tolist() == ["ntc", "GFI1B"]
    assert mdata.obs["n_guides"].tolist() == [1] * screen.n_obs
    assert mdata.uns["guide_assignment"]["method"] == "cellranger"
    assignment = mdata.obsm["guide_assignment"]
    assert assignment.columns.tolist() == umis.columns.tolist()
    expected = screen.obs["guide"].astype(str).to_numpy()[:, None] == umis.columns.to_numpy()
    np.testing.assert_array_equal(assignment.to_numpy(), expected.astype(np.int8))
    back = mdata.copy()
    back.write(tmp_path / "read.h5mu")


def test_h5_path_and_targets_from_h5_tags(screen, umis, tmp_path):
    paths = _write(screen, umis, tmp_path, "h5", False)
    mdata = ds.io.read_cellranger(paths["matrix"], guide_calls="mixture")
    assert mdata.uns["guide_assignment"]["method"] == "mixture"
    # ambient counts are Poisson(0.2), carried guides >= 8 UMIs: the mixture finds every call
    assert mdata.obs["guide"].astype(str).tolist() == screen.obs["guide"].astype(str).tolist()
    with h5py.File(paths["matrix"]) as handle:
        assert handle["matrix/shape"][()].tolist() == [12 + umis.shape[1], screen.n_obs]


def test_high_moi(tmp_path):
    screen = ds.datasets.simulate_screen(
        n_cells=80,
        n_genes=10,
        n_junctions=0,
        n_isoform_genes=0,
        seed=4,
        moi="high",
        guides_per_target=3,
    )
    paths = ds.datasets.write_cellranger(screen, tmp_path / "run", format="mtx")
    mdata = ds.io.read_cellranger(
        paths["outs"], feature_reference=paths["feature_reference"], moi="high"
    )
    truth = screen.obsm["guide_assignment"]
    kept = truth.to_numpy().sum(axis=1) > 0
    np.testing.assert_array_equal(
        mdata.obsm["guide_assignment"].to_numpy(), (truth.to_numpy()[kept] > 0).astype(np.int8)
    )
    assert mdata.obs["n_guides"].tolist() == truth.to_numpy()[kept].sum(axis=1).tolist()
    first = np.flatnonzero(kept)[0]
    called = truth.columns[truth.to_numpy()[first] > 0].tolist()
    assert mdata.obs["guide"].iloc[0] == "|".join(called)


# ------------------------------------------------------------------------------------------
# bad files
# ------------------------------------------------------------------------------------------
@pytest.fixture
def mtx_run(screen, umis, tmp_path):
    return _write(screen, umis, tmp_path, "mtx", False)


def test_mtx_without_feature_reference(mtx_run):
    with pytest.raises(
        ValueError,
        match=r"carries no target_gene_name tags \(mtx files never do\); pass `feature_reference=`",
    ):
        ds.io.read_cellranger(mtx_run["outs"])


def test_feature_reference_wrong_columns(mtx_run, tmp_path):
    bad = pd.read_csv(mtx_run["feature_reference"]).drop(columns=["pattern"])
    bad.to_csv(tmp_path / "ref.csv", index=False)
    with pytest.raises(
        ValueError,
        match=r"lacks column\(s\) \['pattern'\] .*Cell Ranger's header is "
        r"id,name,read,pattern,sequence,feature_type,target_gene_id,target_gene_name\.",
    ):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=tmp_path / "ref.csv")


def test_feature_reference_missing_guide(mtx_run, tmp_path):
    ref = pd.read_csv(mtx_run["feature_reference"])
    ref.iloc[1:].to_csv(tmp_path / "ref.csv", index=False)
    with pytest.raises(
        ValueError, match=r"Guide\(s\) \['GFI1B_1'\] of the matrix are not in the feature reference"
    ):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=tmp_path / "ref.csv")


def test_calls_unknown_guide(mtx_run):
    calls = mtx_run["calls"]
    table = pd.read_csv(calls)
    table.loc[0, "feature_call"] = "GFI1B_99"
    table.to_csv(calls, index=False)
    with pytest.raises(
        ValueError,
        match=r"calls guide\(s\) \['GFI1B_99'\] that are not guide features of the matrix",
    ):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=mtx_run["feature_reference"])


def test_calls_duplicated_barcode(mtx_run):
    table = pd.read_csv(mtx_run["calls"])
    pd.concat([table, table.iloc[[0]]]).to_csv(mtx_run["calls"], index=False)
    with pytest.raises(
        ValueError,
        match=r"lists barcode\(s\) \['" + table["cell_barcode"][0] + r"'\] more than once",
    ):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=mtx_run["feature_reference"])


def test_calls_wrong_columns_and_inconsistent(mtx_run):
    table = pd.read_csv(mtx_run["calls"])
    table.rename(columns={"num_umis": "umis"}).to_csv(mtx_run["calls"], index=False)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['num_umis'\]"):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=mtx_run["feature_reference"])
    table.loc[0, "num_features"] = 2
    table.to_csv(mtx_run["calls"], index=False)
    with pytest.raises(
        ValueError, match=r"num_features=.*disagree; each must list the same number"
    ):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=mtx_run["feature_reference"])


def test_calls_of_another_run(mtx_run):
    table = pd.read_csv(mtx_run["calls"])
    table["cell_barcode"] = "X" + table["cell_barcode"]
    table.to_csv(mtx_run["calls"], index=False)
    with pytest.raises(
        ValueError, match=r"Only 0 of 120 barcodes of the guide calls are cells of mdata"
    ):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=mtx_run["feature_reference"])


def test_duplicated_matrix_barcodes(mtx_run):
    path = mtx_run["matrix"] / "barcodes.tsv"
    lines = path.read_text().splitlines()
    lines[1] = lines[0]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError,
        match=r"are duplicated \(e\.g\. \['"
        + lines[0]
        + r"'\]\); each cell barcode must appear once",
    ):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=mtx_run["feature_reference"])


def test_features_with_two_columns(mtx_run):
    path = mtx_run["matrix"] / "features.tsv"
    rows = [line.split("\t")[:2] for line in path.read_text().splitlines()]
    path.write_text("".join("\t".join(r) + "\n" for r in rows))
    with pytest.raises(
        ValueError, match=r"features\.tsv of .* has 2 column\(s\); Cell Ranger writes 3"
    ):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=mtx_run["feature_reference"])


def test_matrix_shape_mismatch(mtx_run):
    path = mtx_run["matrix"] / "barcodes.tsv"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(
        ValueError,
        match=r"matrix\.mtx of .* is 20 × 120 but features\.tsv has 20 rows and barcodes\.tsv 119",
    ):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=mtx_run["feature_reference"])


def test_no_guides_and_missing_matrix(mtx_run, tmp_path):
    path = mtx_run["matrix"] / "features.tsv"
    path.write_text(path.read_text().replace("CRISPR Guide Capture", "Custom"))
    with pytest.raises(ValueError, match=r"has no 'CRISPR Guide Capture' features"):
        ds.io.read_cellranger(mtx_run["outs"], feature_reference=mtx_run["feature_reference"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"No Cell Ranger matrix in .*expected filtered_feature_bc_matrix\.h5"
    ):
        ds.io.read_cellranger(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"does not exist; check the path"):
        ds.io.read_cellranger(tmp_path / "nowhere")


def test_not_a_cellranger_h5(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as handle:
        handle.create_group("GRCh38")
    with pytest.raises(ValueError, match=r"has no HDF5 group 'matrix' \(groups: \['GRCh38'\]\)"):
        ds.io.read_cellranger(tmp_path / "x.h5")


def test_gzip_text_helpers(tmp_path):
    from dream_sc.io._files import read_lines

    with gzip.open(tmp_path / "b.tsv.gz", "wt") as handle:
        handle.write("A\nB\n")
    shutil.copy(tmp_path / "b.tsv.gz", tmp_path / "c.tsv.gz")
    assert read_lines(tmp_path / "c.tsv.gz") == ["A", "B"]


def test_other_feature_types_and_duplicated_gene_names(tmp_path):
    from scipy import sparse

    from dream_sc.datasets._write_formats import _write_h5

    features = pd.DataFrame(
        {
            "id": ["ENSG1", "ENSG2", "A_1", "A_2", "NTC_1", "CD4"],
            "name": ["TBCE", "TBCE", "A_1", "A_2", "NTC_1", "CD4_TotalSeqB"],
            "feature_type": ["Gene Expression"] * 2
            + ["CRISPR Guide Capture"] * 3
            + ["Antibody Capture"],
            "genome": ["GRCh38"] * 2 + [""] * 4,
            "target_gene_id": ["", "", "ENSG9", "ENSG9", "Non-Targeting", ""],
            "target_gene_name": ["", "", "A", "A", "Non-Targeting", ""],
        }
    )
    counts = np.array([[1, 2, 40, 0, 0, 7], [0, 3, 0, 50, 1, 9], [4, 0, 0, 1, 30, 2]])
    cells = pd.Index(["AAAC-1", "CCCG-1", "GGGT-1"])
    _write_h5(tmp_path / "m.h5", sparse.csr_matrix(counts), cells, features)
    mdata = ds.io.read_cellranger(tmp_path / "m.h5", guide_calls="umi_threshold", threshold=10)
    assert sorted(mdata.mod) == ["guides", "prot", "rna"]
    assert mdata["rna"].var_names.tolist() == ["TBCE", "TBCE-1"]
    assert mdata["rna"].var["gene_ids"].tolist() == ["ENSG1", "ENSG2"]
    np.testing.assert_array_equal(mdata["prot"].X.toarray().ravel(), [7, 9, 2])
    assert mdata["guides"].var["target"].tolist() == ["A", "A", "ntc"]
    assert mdata.obs["guide"].tolist() == ["A_1", "A_2", "NTC_1"]
    assert mdata.obs["target"].tolist() == ["A", "A", "ntc"]
