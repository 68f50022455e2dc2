"""Damaged input files: every reader raises a ValueError naming the file and the fix (issue 24).

Small files are written in the exact formats of Cell Ranger, STARsolo and the generic tables,
then damaged one way each: empty, header only, truncated gzip, non-UTF-8 bytes, text where
numbers belong, coordinates below 1, repeated header names, absurd sizes. A property test feeds
random truncations and byte garbage of each file to its reader.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import dream_sc as ds
from dream_sc.datasets._write_formats import _write_h5, _write_mtx
from dream_sc.pp._guide_mixture import fit_guide_mixture

CELLS = pd.Index(["AAAC-1", "CCCG-1", "GGGT-1"])
FEATURES = pd.DataFrame(
    {
        "id": ["ENSG1", "ENSG2", "A_1", "NTC_1"],
        "name": ["TBCE", "CD4", "A_1", "NTC_1"],
        "feature_type": ["Gene Expression"] * 2 + ["CRISPR Guide Capture"] * 2,
        "genome": ["GRCh38"] * 2 + [""] * 2,
        "target_gene_id": ["", "", "ENSG9", "Non-Targeting"],
        "target_gene_name": ["", "", "A", "Non-Targeting"],
    }
)
COUNTS = sparse.csr_matrix(np.array([[1, 2, 40, 0], [0, 3, 0, 50], [4, 0, 30, 1]]))
REFERENCE = (
    "id,name,read,pattern,sequence,feature_type,target_gene_id,target_gene_name\n"
    "A_1,A_1,R2,(BC)GTTT,ACGTACGTACGTACGTACGT,CRISPR Guide Capture,ENSG9,A\n"
    "NTC_1,NTC_1,R2,(BC)GTTT,TTGTACGTACGTACGTACGT,CRISPR Guide Capture,Non-Targeting,"
    "Non-Targeting\n"
)
CALLS = (
    "cell_barcode,num_features,feature_call,num_umis\n"
    "AAAC-1,1,A_1,40\nCCCG-1,1,NTC_1,50\nGGGT-1,1,A_1,30\n"
)
SJ = "chr1\t100\t200\t1\t1\t1\t5\t0\t50\nchr1\t100\t400\t1\t1\t1\t3\t0\t50\n"
SJ_MTX = "%%MatrixMarket matrix coordinate integer general\n%\n2 3 4\n1 1 3\n2 1 1\n1 2 2\n2 3 5\n"
LONG = "barcode,chrom,start,end,strand,count\nAAAC-1,chr1,100,200,+,3\nCCCG-1,chr1,100,400,+,1\n"
WIDE = "junction,AAAC-1,CCCG-1\nchr1:100:200:+,3,0\nchr1:100:400:+,0,1\n"
TX_TABLE = ",ENST1,ENST2\nAAAC-1,3,0\nCCCG-1,1,2\n"
TX2GENE = "ENST1,A\nENST2,A\n"
GTF = (
    '#!genome-build GRCh38\nchr1\tHAVANA\tgene\t50\t500\t.\t+\t.\tgene_id "G1"; gene_name "A";\n'
    'chr1\tHAVANA\texon\t50\t99\t.\t+\t.\tgene_id "G1"; gene_name "A";\n'
)


def _gz(path: Path, text: str | bytes) -> Path:
    with gzip.open(path, "wb") as handle:
        handle.write(text.encode() if isinstance(text, str) else text)
    return path


def _outs(root: Path, *, fmt: str = "mtx") -> Path:
    """A Cell Ranger outs/ folder (gzipped mtx or h5) with guide calls and the reference."""
    outs = root / "outs"
    (outs / "crispr_analysis").mkdir(parents=True)
    if fmt == "h5":
        _write_h5(outs / "filtered_feature_bc_matrix.h5", COUNTS, CELLS, FEATURES)
    else:
        _write_mtx(outs / "filtered_feature_bc_matrix", COUNTS, CELLS, FEATURES, True)
    (outs / "crispr_analysis" / "protospacer_calls_per_cell.csv").write_text(CALLS)
    (root / "feature_reference.csv").write_text(REFERENCE)
    return outs


def _solo(root: Path) -> Path:
    folder = root / "Solo.out" / "SJ" / "raw"
    folder.mkdir(parents=True)
    (folder / "features.tsv").write_text(SJ)
    (folder / "barcodes.tsv").write_text("AAAC\nCCCG\nGGGT\n")
    _gz(folder / "matrix.mtx.gz", SJ_MTX)
    return folder


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(int(len(data) * keep), 12)])


def _read_run(outs: Path, **kwargs) -> Callable[[], object]:
    reference = outs.parent / "feature_reference.csv"
    return lambda: ds.io.read_cellranger(outs, feature_reference=reference, **kwargs)


# ------------------------------------------------------------------------------------------
# one damaged file per case: (reader, damaged file name, expected problem)
# ------------------------------------------------------------------------------------------
def _mtx_truncated(tmp):
    outs = _outs(tmp)
    _truncate(outs / "filtered_feature_bc_matrix" / "matrix.mtx.gz")
    return _read_run(outs), "matrix.mtx.gz", r"truncated or corrupt gzip data"


def _features_not_utf8(tmp):
    outs = _outs(tmp)
    text = "ENSG1\tTBC\xe9\tGene Expression\nENSG2\tCD4\tGene Expression\n"
    text += "A_1\tA_1\tCRISPR Guide Capture\nNTC_1\tNTC_1\tCRISPR Guide Capture\n"
    _gz(outs / "filtered_feature_bc_matrix" / "features.tsv.gz", text.encode("latin1"))
    return _read_run(outs), "features.tsv.gz", r"byte b'\\xe9' at position \d+ is not UTF-8"


def _barcodes_empty(tmp):
    outs = _outs(tmp)
    _gz(outs / "filtered_feature_bc_matrix" / "barcodes.tsv.gz", "")
    return _read_run(outs), "barcodes.tsv.gz", r"the file is empty \(expected one cell barcode"


def _features_empty(tmp):
    outs = _outs(tmp)
    _gz(outs / "filtered_feature_bc_matrix" / "features.tsv.gz", "")
    return _read_run(outs), "features.tsv.gz", r"the file is empty"


def _mtx_absurd_header(tmp):
    outs = _outs(tmp)
    _gz(
        outs / "filtered_feature_bc_matrix" / "matrix.mtx.gz",
        "%%MatrixMarket matrix coordinate integer general\n4 3 1099511627776\n1 1 1\n",
    )
    return _read_run(outs), "matrix.mtx.gz", r"1099511627776 entries, more than a file of"


def _mtx_text_value(tmp):
    outs = _outs(tmp)
    _gz(
        outs / "filtered_feature_bc_matrix" / "matrix.mtx.gz",
        "%%MatrixMarket matrix coordinate integer general\n4 3 2\n1 1 1\n2 1 many\n",
    )
    return _read_run(outs), "matrix.mtx.gz", r"cannot be parsed as a MatrixMarket matrix"


def _mtx_no_banner(tmp):
    outs = _outs(tmp)
    _gz(outs / "filtered_feature_bc_matrix" / "matrix.mtx.gz", "4 3 2\n1 1 1\n2 1 1\n")
    return _read_run(outs), "matrix.mtx.gz", r"not a MatrixMarket file"


def _mtx_negative(tmp):
    outs = _outs(tmp)
    _gz(
        outs / "filtered_feature_bc_matrix" / "matrix.mtx.gz",
        "%%MatrixMarket matrix coordinate integer general\n4 3 2\n1 1 1\n2 1 -7\n",
    )
    return _read_run(outs), "matrix.mtx.gz", r"holds negative or non-finite values"


def _h5_truncated(tmp):
    outs = _outs(tmp, fmt="h5")
    _truncate(outs / "filtered_feature_bc_matrix.h5", 0.5)
    return (
        _read_run(outs),
        "filtered_feature_bc_matrix.h5",
        r"(not a readable HDF5|the HDF5 file is damaged)",
    )


def _h5_absurd_shape(tmp):
    outs = _outs(tmp, fmt="h5")
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "r+") as handle:
        del handle["matrix/shape"]
        handle["matrix/shape"] = np.array([4, 2**40], dtype=np.int64)
    return _read_run(outs), "filtered_feature_bc_matrix.h5", r"the sizes of 'matrix' disagree"


def _h5_bad_indices(tmp):
    outs = _outs(tmp, fmt="h5")
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "r+") as handle:
        handle["matrix/indices"][0] = 99
    return _read_run(outs), "filtered_feature_bc_matrix.h5", r"'matrix/indices' are out of range"


def _reference_header_only(tmp):
    outs = _outs(tmp)
    (tmp / "feature_reference.csv").write_text(REFERENCE.splitlines()[0] + "\n")
    return _read_run(outs), "feature_reference.csv", r"the header has no rows below it"


def _reference_duplicated_header(tmp):
    outs = _outs(tmp)
    lines = REFERENCE.splitlines()
    text = "\n".join([lines[0] + ",target_gene_name"] + [f"{r},X" for r in lines[1:]]) + "\n"
    (tmp / "feature_reference.csv").write_text(text)
    return (
        _read_run(outs),
        "feature_reference.csv",
        r"the header repeats column name\(s\) \['target_gene_name'\]",
    )


def _calls_header_only(tmp):
    outs = _outs(tmp)
    (outs / "crispr_analysis" / "protospacer_calls_per_cell.csv").write_text(
        CALLS.splitlines()[0] + "\n"
    )
    return (
        _read_run(outs),
        "protospacer_calls_per_cell.csv",
        r"has a header but no rows: no cell has a guide call;",
    )


def _calls_header_only_assign(tmp):
    (tmp / "calls.csv").write_text(CALLS.splitlines()[0] + "\n")
    mdata = ds.io.read_cellranger(
        _outs(tmp), feature_reference=tmp / "feature_reference.csv", guide_calls=None
    )
    call = lambda: ds.pp.assign_guides(mdata, method="cellranger", calls=tmp / "calls.csv")  # noqa: E731
    return call, "calls.csv", r"has a header but no rows"


def _calls_empty(tmp):
    outs = _outs(tmp)
    (outs / "crispr_analysis" / "protospacer_calls_per_cell.csv").write_text("")
    return _read_run(outs), "protospacer_calls_per_cell.csv", r"the file is empty"


def _calls_duplicated_header(tmp):
    outs = _outs(tmp)
    text = CALLS.replace("num_umis\n", "num_umis,num_umis\n").replace("\n", ",1\n")
    text = text.replace("num_umis,num_umis,1\n", "num_umis,num_umis\n")
    (outs / "crispr_analysis" / "protospacer_calls_per_cell.csv").write_text(text)
    return (
        _read_run(outs),
        "protospacer_calls_per_cell.csv",
        r"repeats column name\(s\) \['num_umis'\]",
    )


def _calls_absurd_umis(tmp):
    outs = _outs(tmp)
    (outs / "crispr_analysis" / "protospacer_calls_per_cell.csv").write_text(
        CALLS.replace(",40\n", ",1e300\n")
    )
    return _read_run(outs), "protospacer_calls_per_cell.csv", r"'num_umis' must hold non-negative"


def _thresholds_not_json(tmp):
    outs = _outs(tmp)
    (outs / "crispr_analysis" / "protospacer_umi_thresholds_json.json").write_text('{"A_1": ')
    return _read_run(outs), "protospacer_umi_thresholds_json.json", r"not a JSON object"


def _sj_features_empty(tmp):
    (_solo(tmp) / "features.tsv").write_text("")
    return lambda: ds.io.read_starsolo_junctions(tmp / "Solo.out"), "features.tsv", r"is empty"


def _sj_coordinate(tmp, start):
    (_solo(tmp) / "features.tsv").write_text(SJ.replace("\t100\t200\t", f"\t{start}\t-10\t", 1))
    return (
        lambda: ds.io.read_starsolo_junctions(tmp / "Solo.out"),
        "features.tsv",
        r"line 1: intron .* has a coordinate below 1",
    )


def _sj_barcodes_empty(tmp):
    (_solo(tmp) / "barcodes.tsv").write_text("\n")
    return lambda: ds.io.read_starsolo_junctions(tmp / "Solo.out"), "barcodes.tsv", r"is empty"


def _sj_mtx_truncated(tmp):
    folder = _solo(tmp)
    _gz(folder / "matrix.mtx.gz", SJ_MTX * 50)
    _truncate(folder / "matrix.mtx.gz", 0.7)
    return (
        lambda: ds.io.read_starsolo_junctions(tmp / "Solo.out"),
        "matrix.mtx.gz",
        r"truncated or corrupt gzip data",
    )


def _junctions(tmp, text, name="j.csv", **kwargs):
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    options = {"coordinates": "1-based"} | kwargs
    return lambda: ds.io.read_junction_table(path, **options)


def _jt_header_only(tmp):
    return _junctions(tmp, LONG.splitlines()[0] + "\n"), "j.csv", r"header has no rows below it"


def _jt_negative(tmp):
    text = LONG.replace("100,200", "-50,-10")
    return _junctions(tmp, text), "j.csv", r"junction chr1:-50--10 lies before the chromosome"


def _jt_zero(tmp):
    text = LONG.replace("100,200", "0,200")
    return _junctions(tmp, text), "j.csv", r"junction chr1:0-200 lies before the chromosome start"


def _jt_zero_in_id(tmp):
    call = _junctions(tmp, WIDE.replace("chr1:100:200", "chr1:0:200"), layout="wide")
    return call, "j.csv", r"lies before the chromosome start when read as 1-based"


def _jt_duplicated_cell(tmp):
    call = _junctions(tmp, WIDE.replace("CCCG-1", "AAAC-1"), layout="wide")
    return call, "j.csv", r"the header repeats column name\(s\) \['AAAC-1'\]"


def _jt_text_count(tmp):
    return _junctions(tmp, LONG.replace(",+,3", ",+,three")), "j.csv", r"got 'three'"


def _jt_not_utf8(tmp):
    call = _junctions(tmp, LONG.replace("AAAC-1", "AAAC\xff").encode("latin1"))
    return call, "j.csv", r"is not UTF-8"


def _jt_ragged(tmp):
    call = _junctions(tmp, LONG + "GGGT-1,chr1,100,200,+,3,7,8\n")
    return call, "j.csv", r"cannot be parsed as a junction table"


def _transcripts(tmp, table=TX_TABLE, tx2gene=TX2GENE):
    (tmp / "tx.csv").write_text(table)
    (tmp / "tx2gene.csv").write_text(tx2gene)
    return lambda: ds.io.read_transcript_counts(tmp / "tx.csv", tmp / "tx2gene.csv")


def _tx_text_value(tmp):
    call = _transcripts(tmp, TX_TABLE.replace("1,2", "1,abc"))
    return call, "tx.csv", r"row 'CCCG-1', column 'ENST2' holds 'abc', not a number"


def _tx_duplicated_header(tmp):
    call = _transcripts(tmp, TX_TABLE.replace("ENST2", "ENST1"))
    return call, "tx.csv", r"the header repeats column name\(s\) \['ENST1'\]"


def _tx_header_only(tmp):
    return _transcripts(tmp, TX_TABLE.splitlines()[0] + "\n"), "tx.csv", r"header has no rows"


def _tx2gene_empty(tmp):
    return _transcripts(tmp, tx2gene=""), "tx2gene.csv", r"the file is empty"


def _tx_mtx_empty_barcodes(tmp):
    folder = tmp / "txm"
    folder.mkdir()
    (folder / "matrix.mtx").write_text(
        "%%MatrixMarket matrix coordinate integer general\n2 2 1\n1 1 4\n"
    )
    (folder / "features.tsv").write_text("ENST1\nENST2\n")
    (folder / "barcodes.tsv").write_text("")
    call = lambda: ds.io.read_transcript_counts(folder, {"ENST1": "A", "ENST2": "A"})  # noqa: E731
    return call, "barcodes.tsv", r"the file is empty"


def _annotate(tmp, gtf_text, name="genes.gtf"):
    path = tmp / name
    if name.endswith(".gz"):
        _gz(path, gtf_text)
    else:
        path.write_text(gtf_text)
    var = pd.DataFrame(
        {"chrom": ["chr1"], "start": [100], "end": [200], "strand": ["+"]}, index=["j1"]
    )
    obs = pd.DataFrame(index=["AAAC-1"])
    mdata = md.MuData({"junctions": AnnData(np.ones((1, 1), np.float32), obs=obs, var=var)})
    return lambda: ds.pp.annotate_junctions(mdata, gtf=path)


def _gtf_text_start(tmp):
    call = _annotate(tmp, GTF.replace("\t50\t500\t", "\tfifty\t500\t"))
    return call, "genes.gtf", r"the start of the gene line of G1 is 'fifty', not a position >= 1"


def _gtf_negative(tmp):
    call = _annotate(tmp, GTF.replace("\t50\t500\t", "\t-5\t500\t"))
    return call, "genes.gtf", r"is '-5', not a position >= 1"


def _gtf_comments_only(tmp):
    return _annotate(tmp, "#!genome-build GRCh38\n"), "genes.gtf", r"the file is empty"


def _gtf_truncated(tmp):
    call = _annotate(tmp, GTF * 200, name="genes.gtf.gz")
    _truncate(tmp / "genes.gtf.gz", 0.5)
    return call, "genes.gtf.gz", r"truncated or corrupt gzip data"


CASES = {
    "mtx_truncated": _mtx_truncated,
    "features_not_utf8": _features_not_utf8,
    "barcodes_empty": _barcodes_empty,
    "features_empty": _features_empty,
    "mtx_absurd_header": _mtx_absurd_header,
    "mtx_text_value": _mtx_text_value,
    "mtx_no_banner": _mtx_no_banner,
    "mtx_negative": _mtx_negative,
    "h5_truncated": _h5_truncated,
    "h5_absurd_shape": _h5_absurd_shape,
    "h5_bad_indices": _h5_bad_indices,
    "reference_header_only": _reference_header_only,
    "reference_duplicated_header": _reference_duplicated_header,
    "calls_header_only": _calls_header_only,
    "calls_header_only_assign": _calls_header_only_assign,
    "calls_empty": _calls_empty,
    "calls_duplicated_header": _calls_duplicated_header,
    "calls_absurd_umis": _calls_absurd_umis,
    "thresholds_not_json": _thresholds_not_json,
    "sj_features_empty": _sj_features_empty,
    "sj_barcodes_empty": _sj_barcodes_empty,
    "sj_mtx_truncated": _sj_mtx_truncated,
    "jt_header_only": _jt_header_only,
    "jt_negative": _jt_negative,
    "jt_zero": _jt_zero,
    "jt_zero_in_id": _jt_zero_in_id,
    "jt_duplicated_cell": _jt_duplicated_cell,
    "jt_text_count": _jt_text_count,
    "jt_not_utf8": _jt_not_utf8,
    "jt_ragged": _jt_ragged,
    "tx_text_value": _tx_text_value,
    "tx_duplicated_header": _tx_duplicated_header,
    "tx_header_only": _tx_header_only,
    "tx2gene_empty": _tx2gene_empty,
    "tx_mtx_empty_barcodes": _tx_mtx_empty_barcodes,
    "gtf_text_start": _gtf_text_start,
    "gtf_negative": _gtf_negative,
    "gtf_comments_only": _gtf_comments_only,
    "gtf_truncated": _gtf_truncated,
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_file_names_file_and_fix(case, tmp_path):
    call, filename, problem = CASES[case](tmp_path)
    with pytest.raises(ValueError, match=rf"{re.escape(filename)}.*{problem}.*fix: ") as info:
        call()
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("start", ["-50", "0"])
def test_starsolo_coordinates_below_one(start, tmp_path):
    call, filename, problem = _sj_coordinate(tmp_path, start)
    with pytest.raises(ValueError, match=rf"{re.escape(filename)}.*{problem}.*fix: "):
        call()


def test_duplicated_header_in_dataframes():
    frame = pd.DataFrame([["AAAC-1", "chr1", 1, 9, "+", 2]] * 1)
    frame.columns = ["barcode", "chrom", "start", "end", "strand", "strand"]
    with pytest.raises(
        ValueError, match=r"the junction table: the header repeats column name\(s\) \['strand'\]"
    ):
        ds.io.read_junction_table(frame, coordinates="1-based")
    text = pd.DataFrame({"ENST1": [1, "x"]}, index=["AAAC-1", "CCCG-1"])
    with pytest.raises(ValueError, match=r"column 'ENST1' holds 'x', not a number; fix: "):
        ds.io.read_transcript_counts(text, {"ENST1": "A"})


def test_missing_files_still_named(tmp_path):
    with pytest.raises(ValueError, match=r"`calls`: .*nowhere\.csv' is not a file; check the path"):
        ds.pp.assign_guides(
            md.MuData({"guides": AnnData(np.ones((2, 1)), var=pd.DataFrame(index=["A_1"]))}),
            method="cellranger",
            calls=tmp_path / "nowhere.csv",
            guide_targets={"A_1": "A"},
        )
    with pytest.raises(ValueError, match=r"`tx2gene`: .*none\.csv' is not a file"):
        ds.io.read_transcript_counts(pd.DataFrame({"T": [1]}), tmp_path / "none.csv")


# ------------------------------------------------------------------------------------------
# absurd counts in the guide mixture
# ------------------------------------------------------------------------------------------
def test_mixture_with_a_count_of_2_to_the_40():
    umis = np.zeros((300, 1))
    umis[:20, 0] = np.arange(40, 60)
    umis[0, 0] = 2.0**40
    mdata = md.MuData({"guides": AnnData(umis, var=pd.DataFrame(index=["A_1"]))})
    ds.pp.assign_guides(mdata, method="mixture", moi="high", guide_targets={"A_1": "A"})
    assert mdata.n_obs == 20
    fit = fit_guide_mixture(np.r_[np.zeros(500, int), np.full(5, 60), 2**40])
    assert fit.threshold <= 60


def test_mixture_rejects_counts_above_2_to_the_53():
    umis = np.zeros((10, 1))
    umis[0, 0] = 2.0**60
    mdata = md.MuData({"guides": AnnData(umis, var=pd.DataFrame(index=["A_1"]))})
    with pytest.raises(
        ValueError, match=r"Guide 'A_1' of modality 'guides' has a UMI count of .*; fix: check"
    ):
        ds.pp.assign_guides(mdata, method="mixture", guide_targets={"A_1": "A"})
    assert "guide" not in mdata.obs


# ------------------------------------------------------------------------------------------
# property: random truncation and byte garbage never raise anything but ValueError
# ------------------------------------------------------------------------------------------
def _fuzz_targets(root: Path) -> dict[str, tuple[Path, Callable[[], object]]]:
    outs = _outs(root / "cr")
    h5 = _outs(root / "h5", fmt="h5")
    _solo(root / "sj")
    mtx = outs / "filtered_feature_bc_matrix"
    targets = {
        "matrix.mtx.gz": (mtx / "matrix.mtx.gz", _read_run(outs, guide_calls=None)),
        "features.tsv.gz": (mtx / "features.tsv.gz", _read_run(outs, guide_calls=None)),
        "barcodes.tsv.gz": (mtx / "barcodes.tsv.gz", _read_run(outs, guide_calls=None)),
        "h5": (h5 / "filtered_feature_bc_matrix.h5", _read_run(h5, guide_calls=None)),
        "reference": (root / "cr" / "feature_reference.csv", _read_run(outs, guide_calls=None)),
        "calls": (
            outs / "crispr_analysis" / "protospacer_calls_per_cell.csv",
            _read_run(outs, guide_calls="cellranger"),
        ),
        "sj features": (
            root / "sj" / "Solo.out" / "SJ" / "raw" / "features.tsv",
            lambda: ds.io.read_starsolo_junctions(root / "sj" / "Solo.out"),
        ),
        "sj matrix": (
            root / "sj" / "Solo.out" / "SJ" / "raw" / "matrix.mtx.gz",
            lambda: ds.io.read_starsolo_junctions(root / "sj" / "Solo.out"),
        ),
        "junction table": (root / "j.csv", _junctions(root, LONG)),
        "wide table": (root / "w.csv", _junctions(root, WIDE, name="w.csv", layout="wide")),
        "transcripts": (root / "tx.csv", _transcripts(root)),
        "gtf": (root / "genes.gtf", _annotate(root, GTF)),
    }
    return targets


@pytest.fixture(scope="module")
def fuzz_targets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    targets = _fuzz_targets(root)
    originals = {name: path.read_bytes() for name, (path, _) in targets.items()}
    for _, call in targets.values():
        call()  # every undamaged file reads
    return targets, originals


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    target=st.sampled_from(
        [
            "matrix.mtx.gz",
            "features.tsv.gz",
            "barcodes.tsv.gz",
            "h5",
            "reference",
            "calls",
            "sj features",
            "sj matrix",
            "junction table",
            "wide table",
            "transcripts",
            "gtf",
        ]
    ),
    cut=st.floats(0.0, 1.0),
    garbage=st.binary(max_size=24),
    position=st.floats(0.0, 1.0),
)
def test_random_damage_only_raises_value_error(fuzz_targets, target, cut, garbage, position):
    targets, originals = fuzz_targets
    path, call = targets[target]
    data = originals[target]
    damaged = data[: int(len(data) * cut)]
    at = int(len(damaged) * position)
    damaged = damaged[:at] + garbage + damaged[at:]
    path.write_bytes(damaged)
    try:
        call()
    except (ValueError, FileNotFoundError):
        pass
    finally:
        path.write_bytes(data)


def test_json_thresholds_fixture_is_valid(tmp_path):
    """The thresholds file next to good calls is read (guards the JSON error path above)."""
    outs = _outs(tmp_path)
    (outs / "crispr_analysis" / "protospacer_umi_thresholds_json.json").write_text(
        json.dumps({"A_1": 10, "NTC_1": 10})
    )
    mdata = _read_run(outs)()
    assert mdata["guides"].var["umi_threshold"].tolist() == [10.0, 10.0]
