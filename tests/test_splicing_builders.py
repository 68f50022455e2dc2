"""Splicing builders: hand-made junction tables with hand-computed answers, plus real coordinates.

Hand-made table (4 cells, 10 junctions; intron coordinates = first/last intron base):

    id  chrom strand start  end  gene   donor site        acceptor site
    pA  chr1  +      100    200  P      100 {pA,pC,u1}    200 (alone)
    pB  chr1  +      300    400  P      300 {pB,pD}       400 {pB,pC}
    pC  chr1  +      100    400  P      100               400
    pD  chr1  +      300    500  P      300               500 (alone)
    u1  chr1  +      100    150  (none) 100               150 (alone)
    mA  chr1  -     1000   1100  M     1100 {mA,mE}      1000 {mA,mC}
    mB  chr1  -     1200   1300  M     1300 {mB,mC}      1200 (alone)
    mC  chr1  -     1000   1300  M     1300              1000
    mE  chr1  -      900   1100  M     1100               900 (alone)
    s1  chr2  +       50     80  S       50 (alone)        80 (alone)

On ``-`` the donor is ``end`` and the acceptor ``start``. Cassette exons: skip pC (100-400) with
inclusion pairs (pA, pB) and (u1, pB) on ``+``; skip mC (1000-1300) with (mA, mB) on ``-``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

from dream_sc._registration import get_registration
from dream_sc.pp._junction_sites import find_cassette_exons, junction_table
from dream_sc.pp._splicing import splicing_from_junctions

DATA = Path(__file__).parent / "data"
IDS = ["pA", "pB", "pC", "pD", "u1", "mA", "mB", "mC", "mE", "s1"]
COUNTS = np.array(
    [
        # pA pB pC pD u1 mA mB mC mE s1
        [5, 3, 1, 0, 2, 4, 6, 2, 1, 7],
        [0, 2, 4, 1, 0, 3, 0, 5, 0, 0],
        [2, 2, 0, 3, 1, 0, 1, 1, 2, 1],
        [1, 0, 0, 0, 0, 2, 2, 0, 3, 0],
    ]
)
CELLS = ["c0", "c1", "c2", "c3"]
NO_FILTER = {"min_cells_covered": 0, "min_total_reads": 0}
STRAND_CODES = {
    "symbols": ("+", "-"),
    "star_int": (1, 2),
    "star_str": ("1", "2"),
    "star_float": (1.0, 2.0),
}


def junction_var(plus: object = "+", minus: object = "-") -> pd.DataFrame:
    strand = [plus] * 5 + [minus] * 4 + [plus]
    return pd.DataFrame(
        {
            "chrom": ["chr1"] * 9 + ["chr2"],
            "start": [100, 300, 100, 300, 100, 1000, 1200, 1000, 900, 50],
            "end": [200, 400, 400, 500, 150, 1100, 1300, 1300, 1100, 80],
            "strand": np.array(strand),
            "gene": ["P", "P", "P", "P", None, "M", "M", "M", "M", "S"],
        },
        index=IDS,
    )


def make_mdata(
    matrix_format: str = "dense", strand: str = "symbols", counts: np.ndarray = COUNTS
) -> md.MuData:
    x = sparse.csr_matrix(counts) if matrix_format == "sparse" else counts.copy()
    adata = AnnData(X=x, obs=pd.DataFrame(index=CELLS), var=junction_var(*STRAND_CODES[strand]))
    return md.MuData({"junctions": adata})


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def column(mdata: md.MuData, mod: str, feature: str, layer: str | None = None) -> list[int]:
    adata = mdata[mod]
    matrix = adata.X if layer is None else adata.layers[layer]
    return dense(matrix)[:, adata.var_names.get_loc(feature)].astype(int).tolist()


@pytest.fixture(params=["dense", "sparse"])
def matrix_format(request) -> str:
    return request.param


# --------------------------------------------------------------------------------------------
# donor / acceptor groups
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strand", list(STRAND_CODES))
def test_donor_groups_both_strands(strand, matrix_format):
    mdata = make_mdata(matrix_format, strand)
    splicing_from_junctions(mdata, kinds=("donor",), **NO_FILTER)
    var = mdata["donor"].var
    assert var["group"].to_dict() == {
        "pA": "chr1:100:+:donor",
        "pB": "chr1:300:+:donor",
        "pC": "chr1:100:+:donor",
        "pD": "chr1:300:+:donor",
        "u1": "chr1:100:+:donor",
        "mA": "chr1:1100:-:donor",
        "mB": "chr1:1300:-:donor",
        "mC": "chr1:1300:-:donor",
        "mE": "chr1:1100:-:donor",
    }  # s1 (alone at its donor) is dropped
    assert var["strand"].tolist() == ["+"] * 5 + ["-"] * 4
    np.testing.assert_array_equal(dense(mdata["donor"].X), COUNTS[:, :9])
    assert get_registration(mdata["donor"], "donor")["distribution"] == "multinomial"
    assert get_registration(mdata["donor"], "donor")["group_key"] == "group"


@pytest.mark.parametrize("strand", list(STRAND_CODES))
def test_acceptor_groups_both_strands(strand, matrix_format):
    mdata = make_mdata(matrix_format, strand)
    splicing_from_junctions(mdata, kinds=("acceptor",), **NO_FILTER)
    assert mdata["acceptor"].var["group"].to_dict() == {
        "pB": "chr1:400:+:acceptor",
        "pC": "chr1:400:+:acceptor",
        "mA": "chr1:1000:-:acceptor",
        "mC": "chr1:1000:-:acceptor",
    }
    expected = COUNTS[:, [IDS.index(j) for j in ("pB", "pC", "mA", "mC")]]
    np.testing.assert_array_equal(dense(mdata["acceptor"].X), expected)


def test_junction_shared_by_donor_and_acceptor_group():
    mdata = make_mdata()
    splicing_from_junctions(mdata, kinds=("donor", "acceptor"), **NO_FILTER)
    # mA shares its donor (1100) with mE and its acceptor (1000) with mC
    assert mdata["donor"].var.loc["mA", "group"] == "chr1:1100:-:donor"
    assert mdata["acceptor"].var.loc["mA", "group"] == "chr1:1000:-:acceptor"
    assert column(mdata, "donor", "mA") == column(mdata, "acceptor", "mA") == [4, 3, 0, 2]
    donor_mates = mdata["donor"].var.index[mdata["donor"].var["group"] == "chr1:1100:-:donor"]
    acceptor_mates = mdata["acceptor"].var.index[
        mdata["acceptor"].var["group"] == "chr1:1000:-:acceptor"
    ]
    assert donor_mates.tolist() == ["mA", "mE"]
    assert acceptor_mates.tolist() == ["mA", "mC"]


# --------------------------------------------------------------------------------------------
# sj trials
# --------------------------------------------------------------------------------------------
def test_sj_trials_gene(matrix_format):
    mdata = make_mdata(matrix_format)
    splicing_from_junctions(mdata, kinds=("sj",), sj_trials="gene", **NO_FILTER)
    sj = mdata["sj"]
    # u1 has no gene, s1 is alone in gene S: both dropped
    assert sj.var_names.tolist() == ["pA", "pB", "pC", "pD", "mA", "mB", "mC", "mE"]
    gene_p = [9, 7, 7, 1]  # pA+pB+pC+pD per cell (u1 is not in gene P)
    gene_m = [13, 8, 4, 7]  # mA+mB+mC+mE
    expected_total = np.array([gene_p] * 4 + [gene_m] * 4).T
    np.testing.assert_array_equal(dense(sj.layers["total"]), expected_total)
    keep = [IDS.index(j) for j in sj.var_names]
    np.testing.assert_array_equal(dense(sj.X), COUNTS[:, keep])
    assert (sj.var["trials_from"] == "gene").all()
    assert sj.var["gene"].astype(str).tolist() == ["P"] * 4 + ["M"] * 4
    assert sj.var[["start", "end"]].loc["mC"].tolist() == [1000, 1300]
    assert sj.var["total_trials"].tolist() == [24] * 4 + [32] * 4
    assert sj.uns["dream_sc"]["distribution"] == "binomial"
    assert sj.uns["dream_sc"]["total_layer"] == "total"


def test_sj_trials_site_entry_by_entry(matrix_format):
    mdata = make_mdata(matrix_format)
    splicing_from_junctions(mdata, kinds=("sj",), sj_trials="site", **NO_FILTER)
    sj = mdata["sj"]
    # union of donor and acceptor groups, each junction once; s1 shares no site -> dropped
    expected = {
        "pA": [8, 4, 3, 1],  # {pA, pC, u1}
        "pB": [4, 7, 5, 0],  # {pB, pC, pD}
        "pC": [11, 6, 5, 1],  # {pA, pB, pC, u1}
        "pD": [3, 3, 5, 0],  # {pB, pD}
        "u1": [8, 4, 3, 1],  # {pA, pC, u1}
        "mA": [7, 8, 3, 5],  # {mA, mC, mE}
        "mB": [8, 5, 2, 2],  # {mB, mC}
        "mC": [12, 8, 2, 4],  # {mA, mB, mC}
        "mE": [5, 3, 2, 5],  # {mA, mE}
    }
    assert sj.var_names.tolist() == list(expected)
    for junction, trials in expected.items():
        assert column(mdata, "sj", junction, "total") == trials, junction
        assert column(mdata, "sj", junction) == COUNTS[:, IDS.index(junction)].tolist()
    assert (sj.var["trials_from"] == "site").all()
    assert sj.var.loc["pC", "donor_site"] == "chr1:100:+:donor"
    assert sj.var.loc["pC", "acceptor_site"] == "chr1:400:+:acceptor"
    assert pd.isna(sj.var.loc["u1", "gene"])


# --------------------------------------------------------------------------------------------
# exon skipping
# --------------------------------------------------------------------------------------------
EVENTS = {
    "P:chr1:100-400:exon_200-300": ("pC", "pA", "pB"),
    "P:chr1:100-400:exon_150-300": ("pC", "u1", "pB"),
    "M:chr1:1000-1300:exon_1100-1200": ("mC", "mA", "mB"),
}


def test_exon_skip_events_min(matrix_format):
    mdata = make_mdata(matrix_format)
    splicing_from_junctions(mdata, kinds=("exon_skip",), exon_skip_inclusion="min", **NO_FILTER)
    es = mdata["exon_skip"]
    assert es.var_names.tolist() == list(EVENTS)
    for event, (skip, inc1, inc2) in EVENTS.items():
        assert es.var.loc[event, ["skip", "inclusion1", "inclusion2"]].tolist() == [
            skip,
            inc1,
            inc2,
        ]
    # min(inc1, inc2) and + skip, per cell
    assert column(mdata, "exon_skip", "P:chr1:100-400:exon_200-300") == [3, 0, 2, 0]
    assert column(mdata, "exon_skip", "P:chr1:100-400:exon_200-300", "total") == [4, 4, 2, 0]
    assert column(mdata, "exon_skip", "P:chr1:100-400:exon_150-300") == [2, 0, 1, 0]
    assert column(mdata, "exon_skip", "P:chr1:100-400:exon_150-300", "total") == [3, 4, 1, 0]
    assert column(mdata, "exon_skip", "M:chr1:1000-1300:exon_1100-1200") == [4, 0, 0, 2]
    assert column(mdata, "exon_skip", "M:chr1:1000-1300:exon_1100-1200", "total") == [6, 5, 1, 2]
    minus = es.var.loc["M:chr1:1000-1300:exon_1100-1200"]
    assert (minus["strand"], minus["start"], minus["end"]) == ("-", 1000, 1300)
    assert (minus["exon_start"], minus["exon_end"]) == (1100, 1200)
    assert es.var["inclusion_rule"].eq("min").all()
    assert es.uns["dream_sc"]["distribution"] == "binomial"


def test_exon_skip_mean_rounds_half_up(matrix_format):
    mdata = make_mdata(matrix_format)
    splicing_from_junctions(mdata, kinds=("exon_skip",), exon_skip_inclusion="mean", **NO_FILTER)
    # (inc1 + inc2 + 1) // 2
    assert column(mdata, "exon_skip", "P:chr1:100-400:exon_200-300") == [4, 1, 2, 1]
    assert column(mdata, "exon_skip", "P:chr1:100-400:exon_200-300", "total") == [5, 5, 2, 1]
    assert column(mdata, "exon_skip", "P:chr1:100-400:exon_150-300") == [3, 1, 2, 0]
    assert column(mdata, "exon_skip", "P:chr1:100-400:exon_150-300", "total") == [4, 5, 2, 0]
    assert column(mdata, "exon_skip", "M:chr1:1000-1300:exon_1100-1200") == [5, 2, 1, 2]
    assert column(mdata, "exon_skip", "M:chr1:1000-1300:exon_1100-1200", "total") == [7, 7, 2, 2]
    assert mdata["exon_skip"].var["inclusion_rule"].eq("mean").all()


def test_cassette_search_needs_exon_between_and_same_strand():
    var = pd.DataFrame(
        {
            "chrom": ["c", "c", "c", "c", "c", "c"],
            "start": [10, 20, 10, 10, 20, 10],
            "end": [30, 40, 40, 25, 60, 60],
            "strand": ["+", "+", "+", "+", "-", "-"],
            "gene": "G",
        },
        index=["a", "b", "skip", "overlap", "other_strand", "skip_minus"],
    )
    events = find_cassette_exons(junction_table(var, "gene"))
    # (a, b): a ends at 30 >= b's start 20 -> overlapping introns, no exon between them;
    # (overlap=10-25, b=20-40): 25 >= 20 too. other_strand pairs with nothing on "-".
    assert len(events) == 0
    var.loc["skip", "end"] = 40
    var.loc["b", "start"] = 30  # touches a's end (30): no exon between a and b
    events = find_cassette_exons(junction_table(var, "gene"))
    assert events[["skip", "inclusion1", "inclusion2"]].values.tolist() == [
        ["skip", "overlap", "b"]
    ]
    var.loc["b", "start"] = 31
    events = find_cassette_exons(junction_table(var, "gene"))
    assert events[["skip", "inclusion1", "inclusion2"]].values.tolist() == [
        ["skip", "a", "b"],
        ["skip", "overlap", "b"],
    ]


# --------------------------------------------------------------------------------------------
# coverage filters
# --------------------------------------------------------------------------------------------
def test_donor_min_total_reads_then_groups_left_alone(caplog):
    mdata = make_mdata()
    with caplog.at_level(logging.INFO, logger="dream_sc"):
        splicing_from_junctions(mdata, kinds=("donor",), min_total_reads=5, min_cells_covered=0)
    # reads: pD 4 and u1 3 < 5 -> dropped; pB is then alone at donor 300 -> dropped
    assert mdata["donor"].var_names.tolist() == ["pA", "pC", "mA", "mB", "mC", "mE"]
    assert mdata["donor"].var["total_reads"].tolist() == [8, 5, 9, 9, 8, 6]
    assert (
        "donor: kept 6 of 10 junctions; dropped 4 (1 in single-junction groups, "
        "2 with < 5 total reads, 1 in groups left with < 2 junctions)"
    ) in caplog.text


def test_donor_min_cells_covered():
    mdata = make_mdata()
    splicing_from_junctions(mdata, kinds=("donor",), min_total_reads=0, min_cells_covered=3)
    # pC, pD, u1 have reads in 2 cells -> dropped; pA and pB are then alone
    assert mdata["donor"].var_names.tolist() == ["mA", "mB", "mC", "mE"]
    assert mdata["donor"].var["n_cells_covered"].tolist() == [3, 3, 3, 3]


def test_sj_min_total_reads_on_trials(caplog):
    mdata = make_mdata()
    with caplog.at_level(logging.INFO, logger="dream_sc"):
        splicing_from_junctions(mdata, kinds=("sj",), min_total_reads=25, min_cells_covered=0)
    # trials sum to 24 for every gene-P junction and 32 for gene M
    assert mdata["sj"].var_names.tolist() == ["mA", "mB", "mC", "mE"]
    assert (
        "sj: kept 4 of 10 junctions; dropped 6 (1 without a gene annotation, "
        "1 alone in their gene, 4 with < 25 total reads)"
    ) in caplog.text


def test_exon_skip_filters(caplog):
    mdata = make_mdata()
    splicing_from_junctions(mdata, kinds=("exon_skip",), min_total_reads=10, min_cells_covered=0)
    # trial sums: 10, 8, 14
    assert mdata["exon_skip"].var_names.tolist() == [
        "P:chr1:100-400:exon_200-300",
        "M:chr1:1000-1300:exon_1100-1200",
    ]
    with (
        caplog.at_level(logging.INFO, logger="dream_sc"),
        pytest.warns(UserWarning, match="Replacing the existing modality 'exon_skip'"),
    ):
        splicing_from_junctions(mdata, kinds=("exon_skip",), min_total_reads=0, min_cells_covered=4)
    # cells with trials: 3, 3, 4
    assert mdata["exon_skip"].var_names.tolist() == ["M:chr1:1000-1300:exon_1100-1200"]
    assert mdata["exon_skip"].var["n_cells_covered"].tolist() == [4]
    assert "exon_skip: kept 1 of 3 cassette-exon events; dropped 2 (2 covered in < 4 cells)" in (
        caplog.text
    )


def test_default_filters_drop_everything_with_a_warning():
    mdata = make_mdata()
    with pytest.warns(UserWarning, match="No 'exon_skip' feature passed the filters"):
        splicing_from_junctions(mdata, kinds=("exon_skip",))
    assert "exon_skip" not in mdata.mod


# --------------------------------------------------------------------------------------------
# sparse vs dense, output layout, copy, replacement
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{"sj_trials": "gene"}, {"sj_trials": "site"}])
def test_sparse_and_dense_identical(options):
    out = {}
    for fmt in ("dense", "sparse"):
        mdata = make_mdata(fmt)
        splicing_from_junctions(mdata, min_total_reads=3, min_cells_covered=1, **options)
        out[fmt] = mdata
    for kind in ("sj", "donor", "acceptor", "exon_skip"):
        dn, sp = out["dense"][kind], out["sparse"][kind]
        assert isinstance(dn.X, np.ndarray)
        assert sparse.isspmatrix_csr(sp.X)
        pd.testing.assert_frame_equal(dn.var, sp.var)
        np.testing.assert_array_equal(dn.X, sp.X.toarray())
        for layer in dn.layers:
            assert sparse.isspmatrix_csr(sp.layers[layer])
            np.testing.assert_array_equal(dn.layers[layer], sp.layers[layer].toarray())


def test_obs_names_follow_junctions_when_cells_are_missing():
    rna = AnnData(
        np.ones((6, 2)),
        obs=pd.DataFrame(index=["c9", *CELLS, "c8"][::-1]),
        var=pd.DataFrame(index=["g1", "g2"]),
    )
    mdata = md.MuData({"rna": rna, "junctions": make_mdata()["junctions"].copy()})
    splicing_from_junctions(mdata, **NO_FILTER)
    for kind in ("sj", "donor", "acceptor", "exon_skip"):
        assert mdata[kind].obs_names.tolist() == CELLS
    assert mdata.n_obs == 6
    assert sorted(mdata.mod) == ["acceptor", "donor", "exon_skip", "junctions", "rna", "sj"]


def test_copy_leaves_input_alone():
    mdata = make_mdata()
    out = splicing_from_junctions(mdata, copy=True, **NO_FILTER)
    assert list(mdata.mod) == ["junctions"]
    assert sorted(out.mod) == ["acceptor", "donor", "exon_skip", "junctions", "sj"]
    assert splicing_from_junctions(mdata, kinds="sj", **NO_FILTER) is None
    assert sorted(mdata.mod) == ["junctions", "sj"]


def test_existing_modality_replaced_with_warning():
    mdata = make_mdata()
    splicing_from_junctions(mdata, kinds=("sj",), sj_trials="gene", **NO_FILTER)
    with pytest.warns(UserWarning, match="Replacing the existing modality 'sj'"):
        splicing_from_junctions(mdata, kinds=("sj",), sj_trials="site", **NO_FILTER)
    assert mdata["sj"].n_vars == 9
    assert (mdata["sj"].var["trials_from"] == "site").all()


def test_layer_argument_reads_raw_counts():
    mdata = make_mdata()
    mdata["junctions"].layers["raw"] = mdata["junctions"].X.copy()
    mdata["junctions"].X = np.log1p(mdata["junctions"].X)
    splicing_from_junctions(mdata, kinds=("donor",), layer="raw", **NO_FILTER)
    np.testing.assert_array_equal(dense(mdata["donor"].X), COUNTS[:, :9])


# --------------------------------------------------------------------------------------------
# validation: errors name the fix, nothing is written
# --------------------------------------------------------------------------------------------
def snapshot(mdata: md.MuData) -> dict:
    return {
        "mods": list(mdata.mod),
        "X": {k: dense(a.X).copy() for k, a in mdata.mod.items()},
        "var": {k: a.var.copy() for k, a in mdata.mod.items()},
        "uns": {k: dict(a.uns) for k, a in mdata.mod.items()},
    }


def assert_unchanged(mdata: md.MuData, before: dict) -> None:
    assert list(mdata.mod) == before["mods"]
    for k, adata in mdata.mod.items():
        np.testing.assert_array_equal(dense(adata.X), before["X"][k])
        pd.testing.assert_frame_equal(adata.var, before["var"][k])
        assert dict(adata.uns) == before["uns"][k]


def _set_var(column, value, row="pA"):
    def edit(mdata):
        var = mdata["junctions"].var
        values = var[column].astype(object)
        values[row] = value
        var[column] = values

    return edit


def _drop_var(column):
    def edit(mdata):
        del mdata["junctions"].var[column]

    return edit


def _set_count(value):
    def edit(mdata):
        x = mdata["junctions"].X.astype(float)
        x[0, 0] = value
        mdata["junctions"].X = x

    return edit


ERROR_CASES = [
    ("missing modality", None, {"junctions": "sjs"}, KeyError, "Modality 'sjs' not found"),
    (
        "missing strand",
        _drop_var("strand"),
        {},
        KeyError,
        r"missing column\(s\) \['strand'\].*intron coordinates",
    ),
    ("missing gene", None, {"gene_key": "symbol"}, KeyError, r"pass `gene_key=`"),
    ("strand dot", _set_var("strand", "."), {}, ValueError, r"unrecognised values \[\"'\.'\"\]"),
    ("strand zero", _set_var("strand", 0), {}, ValueError, r"unrecognised values \['0'\]"),
    ("strand 3", _set_var("strand", "3"), {}, ValueError, "use '\\+'/'-' or STAR's 1"),
    ("negative", _set_count(-1), {}, ValueError, "raw read counts"),
    ("fraction", _set_count(0.5), {}, ValueError, "non-negative integers"),
    ("nan count", _set_count(np.nan), {}, ValueError, "raw read counts"),
    ("reversed", _set_var("end", 50), {}, ValueError, "'pA' has start > end"),
    ("nan start", _set_var("start", np.nan), {}, ValueError, r"var\['start'\] must hold integer"),
    ("duplicate", _set_var("end", 400, row="pA"), {}, ValueError, "share the same coordinates"),
    ("kind", None, {"kinds": ("sj", "introns")}, ValueError, r"got unknown \['introns'\]"),
    ("no kinds", None, {"kinds": ()}, ValueError, "non-empty selection.*got an empty selection"),
    ("sj_trials", None, {"sj_trials": "cell"}, ValueError, "`sj_trials` must be one of"),
    ("inclusion", None, {"exon_skip_inclusion": "max"}, ValueError, "`exon_skip_inclusion`"),
    ("min cells", None, {"min_cells_covered": -1}, ValueError, "`min_cells_covered` must be"),
    ("min reads", None, {"min_total_reads": 2.5}, ValueError, "`min_total_reads` must be"),
    ("bool", None, {"min_total_reads": True}, ValueError, "`min_total_reads` must be"),
    ("layer", None, {"layer": "raw"}, KeyError, "Layer 'raw' not found"),
]


@pytest.mark.parametrize(
    ("edit", "kwargs", "error", "match"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_validation_errors_leave_mdata_unchanged(edit, kwargs, error, match, matrix_format):
    mdata = make_mdata(matrix_format)
    splicing_from_junctions(mdata, kinds=("sj",), **NO_FILTER)  # an earlier result must survive
    if edit is not None:
        edit(mdata)
    before = snapshot(mdata)
    with pytest.raises(error, match=match):
        splicing_from_junctions(mdata, **{**NO_FILTER, **kwargs})
    assert_unchanged(mdata, before)


def test_kind_named_like_input_modality_is_refused():
    adata = make_mdata()["junctions"].copy()
    mdata = md.MuData({"sj": adata})
    before = snapshot(mdata)
    with pytest.raises(ValueError, match="would overwrite the input modality 'sj'"):
        splicing_from_junctions(mdata, "sj", **NO_FILTER)
    assert_unchanged(mdata, before)


# --------------------------------------------------------------------------------------------
# real junction coordinates (bayesDREAM toy data slice)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_junctions() -> pd.DataFrame:
    meta = pd.read_csv(DATA / "sj_meta_slice.csv")
    return pd.DataFrame(
        {
            "chrom": meta["chrom"].to_numpy(),
            "start": meta["intron_start"].to_numpy(),
            "end": meta["intron_end"].to_numpy(),
            "strand": meta["strand"].to_numpy(),  # STAR codes 1/2
            "gene": meta["gene_name_start"].fillna(meta["gene_name_end"]).to_numpy(),
        },
        index=meta["SJ"].to_numpy(),
    )


@pytest.fixture(scope="module")
def real_mdata(real_junctions) -> md.MuData:
    rng = np.random.default_rng(7)
    counts = rng.negative_binomial(1, 0.4, size=(40, len(real_junctions)))
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(40)])
    adata = AnnData(sparse.csr_matrix(counts), obs=obs, var=real_junctions)
    mdata = md.MuData({"junctions": adata})
    splicing_from_junctions(mdata, sj_trials="site", **NO_FILTER)
    return mdata


def test_real_slice_has_both_strands(real_junctions):
    assert set(real_junctions["strand"]) == {1, 2}
    assert real_junctions.groupby("strand").size().to_dict() == {1: 19, 2: 17}


@pytest.mark.parametrize("site", ["donor", "acceptor"])
def test_real_site_groups_match_pandas_groupby(real_junctions, real_mdata, site):
    df = real_junctions.copy()
    plus = df["strand"] == 1
    five_prime = df["start"].where(plus, df["end"])
    three_prime = df["end"].where(plus, df["start"])
    df["pos"] = five_prime if site == "donor" else three_prime
    expected = {
        tuple(sorted(members.index))
        for _, members in df.groupby(["chrom", "strand", "pos"])
        if len(members) >= 2
    }
    var = real_mdata[site].var
    found = {tuple(sorted(members.index)) for _, members in var.groupby("group", observed=True)}
    assert found == expected
    assert len(found) >= 5
    # the group label names the shared site
    for junction, label in var["group"].items():
        chrom, pos, strand, kind = label.split(":")
        row = df.loc[junction]
        assert (chrom, int(pos), kind) == (row["chrom"], row["pos"], site)
        assert strand == ("+" if row["strand"] == 1 else "-")


def test_real_cassette_events_match_brute_force(real_junctions, real_mdata):
    expected = set()
    rows = list(real_junctions.itertuples())
    for skip in rows:
        for inc1 in rows:
            for inc2 in rows:
                same = skip.chrom == inc1.chrom == inc2.chrom and (
                    skip.strand == inc1.strand == inc2.strand
                )
                if (
                    same
                    and inc1.start == skip.start
                    and inc2.end == skip.end
                    and inc1.end < inc2.start
                ):
                    expected.add((skip.Index, inc1.Index, inc2.Index))
    var = real_mdata["exon_skip"].var
    found = set(map(tuple, var[["skip", "inclusion1", "inclusion2"]].to_numpy()))
    assert found == expected
    assert len(found) >= 10
    minus = var[var["strand"] == "-"]
    assert len(minus) > 0 and len(var) > len(minus)


def test_real_sj_site_trials_match_loop(real_junctions, real_mdata):
    df = real_junctions
    plus = df["strand"] == 1
    donor = list(zip(df["chrom"], df["strand"], df["start"].where(plus, df["end"]), strict=True))
    acceptor = list(zip(df["chrom"], df["strand"], df["end"].where(plus, df["start"]), strict=True))
    counts = real_mdata["junctions"].X.toarray()
    sj = real_mdata["sj"]
    trials = sj.layers["total"].toarray()
    n_checked = 0
    for j in range(len(df)):
        mates = [k for k in range(len(df)) if donor[k] == donor[j] or acceptor[k] == acceptor[j]]
        if len(mates) == 1:
            assert df.index[j] not in sj.var_names
            continue
        col = sj.var_names.get_loc(df.index[j])
        np.testing.assert_array_equal(trials[:, col], counts[:, mates].sum(axis=1))
        n_checked += 1
    assert n_checked == sj.n_vars >= 20


@pytest.mark.filterwarnings("ignore:Cannot join columns with the same name")
def test_round_trip_keeps_modalities_and_registrations(real_mdata, tmp_path):
    path = tmp_path / "splicing.h5mu"
    real_mdata.write(path)
    back = md.read_h5mu(path)
    for kind in ("sj", "donor", "acceptor", "exon_skip"):
        before, after = real_mdata[kind], back[kind]
        assert get_registration(after, kind) == get_registration(before, kind)
        assert after.var_names.tolist() == before.var_names.tolist()
        np.testing.assert_array_equal(dense(after.X), dense(before.X))
        for layer in before.layers:
            np.testing.assert_array_equal(dense(after.layers[layer]), dense(before.layers[layer]))
    assert back["donor"].var["group"].astype(str).tolist() == (
        real_mdata["donor"].var["group"].astype(str).tolist()
    )
    assert back["exon_skip"].var["skip"].astype(str).tolist() == (
        real_mdata["exon_skip"].var["skip"].astype(str).tolist()
    )
    assert get_registration(back["sj"], "sj")["total_layer"] == "total"
    assert get_registration(back["acceptor"], "acceptor")["group_key"] == "group"


@pytest.mark.filterwarnings("ignore:Cannot join columns with the same name")
def test_round_trip_hand_made_with_unannotated_junction(tmp_path):
    mdata = make_mdata("sparse", "star_int")
    splicing_from_junctions(mdata, sj_trials="site", **NO_FILTER)
    mdata.write(tmp_path / "hand.h5mu")
    back = md.read_h5mu(tmp_path / "hand.h5mu")
    assert pd.isna(back["sj"].var.loc["u1", "gene"])
    assert back["sj"].var.loc["pA", "gene"] == "P"
    assert column(back, "sj", "pC", "total") == [11, 6, 5, 1]
    assert column(back, "exon_skip", "M:chr1:1000-1300:exon_1100-1200") == [4, 0, 0, 2]
    assert back["exon_skip"].var.loc["P:chr1:100-400:exon_150-300", "inclusion1"] == "u1"
    assert back["donor"].var["group"].astype(str).tolist() == (
        mdata["donor"].var["group"].astype(str).tolist()
    )
    for kind in ("sj", "donor", "acceptor", "exon_skip"):
        assert back[kind].uns["dream_sc"] == mdata[kind].uns["dream_sc"]


# --------------------------------------------------------------------------------------------
# scale
# --------------------------------------------------------------------------------------------
def _synthetic_junction_var(n_genes: int, seed: int = 0) -> pd.DataFrame:
    """Genes of 6 exons with all exon-skipping introns between exon ends (up to 15 per gene)."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_genes):
        base = 10_000 * g
        bounds = base + np.cumsum(rng.integers(50, 500, size=12))  # exon starts/ends
        ends, starts = bounds[1::2][:-1], bounds[2::2]
        strand = "+" if g % 2 else "-"
        for i in range(len(ends)):
            for k in range(i, len(starts)):
                if rng.random() < 0.8 or k == i:
                    rows.append(("chr1", ends[i] + 1, starts[k] - 1, strand, f"G{g}"))
    var = pd.DataFrame(rows, columns=["chrom", "start", "end", "strand", "gene"])
    var.index = [f"j{i}" for i in range(len(var))]
    return var


def test_cassette_search_is_fast_on_many_junctions():
    import time

    var = _synthetic_junction_var(3000)
    assert len(var) > 30_000
    table = junction_table(var, "gene")
    t0 = time.perf_counter()
    events = find_cassette_exons(table)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0
    # an independent count: for every skip (s1, e2), #inc1 (same start, end < e2) x
    # #inc2 (same end, start > s1) with inc1.end < inc2.start
    sample = var[var["gene"] == "G7"]
    n = 0
    for _, skip in sample.iterrows():
        inc1 = sample[(sample["start"] == skip["start"]) & (sample["end"] < skip["end"])]
        inc2 = sample[(sample["end"] == skip["end"]) & (sample["start"] > skip["start"])]
        n += sum(int(a < b) for a in inc1["end"] for b in inc2["start"])
    assert (events["gene"] == "G7").sum() == n > 0
