"""isoform_usage: hand-made transcript tables with hand-computed answers."""

from __future__ import annotations

import logging

import mudata as md
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

from dream_sc._registration import get_registration
from dream_sc.pp._isoform import isoform_usage

TRANSCRIPTS = ["A-201", "A-202", "A-203", "B-201", "C-201", "C-202", "D-201", "E-201", "E-202"]
GENES = ["A", "A", "A", "B", "C", "C", None, "E", "E"]
COUNTS = np.array(
    [
        # A1 A2 A3 B1 C1 C2 D1 E1 E2
        [4, 1, 0, 9, 2, 0, 3, 5, 5],
        [3, 0, 1, 8, 0, 1, 2, 5, 5],
        [5, 2, 0, 7, 1, 0, 0, 5, 5],
        [0, 1, 0, 6, 3, 0, 1, 5, 5],
        [2, 0, 0, 5, 0, 0, 0, 5, 5],
    ]
)
# per transcript: total reads 14, 4, 1, 35, 6, 1, 6, 25, 25; cells with reads 4, 3, 1, 5, 3, 1,
# 3, 5, 5
CELLS = [f"c{i}" for i in range(5)]
NO_FILTER = {"min_cells_covered": 0, "min_total_reads": 0}


def make_mdata(matrix_format: str = "dense") -> md.MuData:
    x = sparse.csr_matrix(COUNTS) if matrix_format == "sparse" else COUNTS.copy()
    var = pd.DataFrame({"gene": np.array(GENES, dtype=object)}, index=TRANSCRIPTS)
    return md.MuData({"transcripts": AnnData(x, obs=pd.DataFrame(index=CELLS), var=var)})


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


@pytest.fixture(params=["dense", "sparse"])
def matrix_format(request) -> str:
    return request.param


def test_groups_are_genes_and_single_isoform_genes_dropped(matrix_format, caplog):
    mdata = make_mdata(matrix_format)
    with caplog.at_level(logging.INFO, logger="dream_sc"):
        isoform_usage(mdata, **NO_FILTER)
    iso = mdata["isoform"]
    assert iso.var["group"].to_dict() == {
        "A-201": "A",
        "A-202": "A",
        "A-203": "A",
        "C-201": "C",
        "C-202": "C",
        "E-201": "E",
        "E-202": "E",
    }
    keep = [TRANSCRIPTS.index(t) for t in iso.var_names]
    np.testing.assert_array_equal(dense(iso.X), COUNTS[:, keep])
    assert sparse.isspmatrix_csr(iso.X) == (matrix_format == "sparse")
    assert iso.obs_names.tolist() == CELLS
    assert iso.var["total_reads"].tolist() == [14, 4, 1, 6, 1, 25, 25]
    assert iso.var["n_cells_covered"].tolist() == [4, 3, 1, 3, 1, 5, 5]
    reg = get_registration(iso, "isoform")
    assert (reg["distribution"], reg["group_key"]) == ("multinomial", "group")
    assert (
        "isoform: kept 7 of 9 transcripts; dropped 2 (1 without a gene, "
        "1 from single-isoform genes)"
    ) in caplog.text


def test_min_total_reads_then_genes_left_with_one_isoform(caplog):
    mdata = make_mdata()
    with caplog.at_level(logging.INFO, logger="dream_sc"):
        isoform_usage(mdata, min_total_reads=2, min_cells_covered=0)
    # A-203 and C-202 have 1 read; C-201 is then alone in C
    assert mdata["isoform"].var_names.tolist() == ["A-201", "A-202", "E-201", "E-202"]
    assert (
        "isoform: kept 4 of 9 transcripts; dropped 5 (1 without a gene, 1 from single-isoform "
        "genes, 2 with < 2 total reads, 1 from genes left with one isoform)"
    ) in caplog.text


def test_min_cells_covered():
    mdata = make_mdata()
    isoform_usage(mdata, min_total_reads=0, min_cells_covered=4)
    # C-201, C-202 in < 4 cells; A-201 is then alone in A
    assert mdata["isoform"].var_names.tolist() == ["E-201", "E-202"]


def test_sparse_and_dense_identical():
    out = {}
    for fmt in ("dense", "sparse"):
        mdata = make_mdata(fmt)
        isoform_usage(mdata, min_total_reads=2, min_cells_covered=1)
        out[fmt] = mdata["isoform"]
    pd.testing.assert_frame_equal(out["dense"].var, out["sparse"].var)
    np.testing.assert_array_equal(out["dense"].X, out["sparse"].X.toarray())


def test_key_added_copy_and_replacement():
    mdata = make_mdata()
    out = isoform_usage(mdata, key_added="usage", copy=True, **NO_FILTER)
    assert list(mdata.mod) == ["transcripts"]
    assert sorted(out.mod) == ["transcripts", "usage"]
    isoform_usage(mdata, **NO_FILTER)
    with pytest.warns(UserWarning, match="Replacing the existing modality 'isoform'"):
        isoform_usage(mdata, min_total_reads=2, min_cells_covered=0)
    assert mdata["isoform"].n_vars == 4


def test_gene_key_and_layer():
    mdata = make_mdata()
    adata = mdata["transcripts"]
    adata.var = adata.var.rename(columns={"gene": "gene_name"})
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X)
    isoform_usage(mdata, gene_key="gene_name", layer="counts", **NO_FILTER)
    assert mdata["isoform"].var["gene"].tolist() == ["A", "A", "A", "C", "C", "E", "E"]
    np.testing.assert_array_equal(dense(mdata["isoform"].X)[:, 0], COUNTS[:, 0])


def test_nothing_left_warns_and_writes_nothing():
    mdata = make_mdata()
    with pytest.warns(UserWarning, match="No transcript passed the filters"):
        isoform_usage(mdata, min_total_reads=100)
    assert list(mdata.mod) == ["transcripts"]


def _set_count(value):
    def edit(mdata):
        x = mdata["transcripts"].X.astype(float)
        x[1, 2] = value
        mdata["transcripts"].X = x

    return edit


ERROR_CASES = [
    ("modality", None, {"transcripts": "tx"}, KeyError, "Modality 'tx' not found"),
    ("gene_key", None, {"gene_key": "symbol"}, KeyError, r"Column 'symbol' not found.*gene_key="),
    ("negative", _set_count(-2), {}, ValueError, "raw read counts"),
    ("fraction", _set_count(1.5), {}, ValueError, "non-negative integers"),
    ("layer", None, {"layer": "raw"}, KeyError, "Layer 'raw' not found"),
    ("reads", None, {"min_total_reads": -1}, ValueError, "`min_total_reads` must be"),
    ("cells", None, {"min_cells_covered": 0.5}, ValueError, "`min_cells_covered` must be"),
    ("same name", None, {"key_added": "transcripts"}, ValueError, "would overwrite the input"),
    ("colon", None, {"key_added": "iso:form"}, ValueError, "without ':'"),
]


@pytest.mark.parametrize(
    ("edit", "kwargs", "error", "match"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_validation_errors_leave_mdata_unchanged(edit, kwargs, error, match, matrix_format):
    mdata = make_mdata(matrix_format)
    isoform_usage(mdata, **NO_FILTER)
    if edit is not None:
        edit(mdata)
    before_mods = list(mdata.mod)
    before_x = {k: dense(a.X).copy() for k, a in mdata.mod.items()}
    before_var = {k: a.var.copy() for k, a in mdata.mod.items()}
    with pytest.raises(error, match=match):
        isoform_usage(mdata, **{**NO_FILTER, "min_total_reads": 2, **kwargs})
    assert list(mdata.mod) == before_mods
    for k, adata in mdata.mod.items():
        np.testing.assert_array_equal(dense(adata.X), before_x[k])
        pd.testing.assert_frame_equal(adata.var, before_var[k])
    assert mdata["isoform"].n_vars == 7  # the earlier result is untouched


@pytest.mark.filterwarnings("ignore:Cannot join columns with the same name")
def test_round_trip(tmp_path):
    mdata = make_mdata("sparse")
    isoform_usage(mdata, **NO_FILTER)
    path = tmp_path / "iso.h5mu"
    mdata.write(path)
    back = md.read_h5mu(path)
    assert get_registration(back["isoform"], "isoform") == get_registration(
        mdata["isoform"], "isoform"
    )
    assert back["isoform"].var["group"].astype(str).tolist() == ["A"] * 3 + ["C"] * 2 + ["E"] * 2
    np.testing.assert_array_equal(back["isoform"].X.toarray(), mdata["isoform"].X.toarray())
