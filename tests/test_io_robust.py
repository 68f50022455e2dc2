"""Damaged input files: every reader raises a ValueError naming the file and the fix (issue 24).

Small files are written in the exact formats of Cell Ranger, STARsolo and the generic tables,
then damaged one way each: empty, header only, truncated gzip, non-UTF-8 bytes, text where
numbers belong, coordinates below 1, repeated header names, absurd sizes. A property test feeds
random truncations and byte garbage of each file to its reader.
"""

from __future__ import annotations

import gzip
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
BANNER = "%%MatrixMarket matrix coordinate integer general\n"
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


def _junctions(tmp, text, name="j.csv", **kwargs):
    (tmp / name).write_text(text)
    return lambda: ds.io.read_junction_table(tmp / name, **({"coordinates": "1-based"} | kwargs))


def _transcripts(tmp):
    (tmp / "tx.csv").write_text(TX_TABLE)
    (tmp / "tx2gene.csv").write_text(TX2GENE)
    return lambda: ds.io.read_transcript_counts(tmp / "tx.csv", tmp / "tx2gene.csv")


def _transcript_folder(tmp):
    folder = tmp / "txm"
    folder.mkdir()
    (folder / "matrix.mtx").write_text(BANNER + "2 2 1\n1 1 4\n")
    (folder / "features.tsv").write_text("ENST1\nENST2\n")
    (folder / "barcodes.tsv").write_text("AAAC-1\nCCCG-1\n")
    return lambda: ds.io.read_transcript_counts(folder, {"ENST1": "A", "ENST2": "A"})


def _annotate(tmp, name="genes.gtf"):
    path = tmp / name
    _gz(path, GTF * 200) if name.endswith(".gz") else path.write_text(GTF)
    var = pd.DataFrame({"chrom": "chr1", "start": [100], "end": [200], "strand": "+"}, ["j1"])
    obs = pd.DataFrame(index=["AAAC-1"])
    mdata = md.MuData({"junctions": AnnData(np.ones((1, 1), np.float32), obs=obs, var=var)})
    return lambda: ds.pp.annotate_junctions(mdata, gtf=path)


def _starsolo(tmp):
    _solo(tmp)
    return lambda: ds.io.read_starsolo_junctions(tmp / "Solo.out")


def _assign(tmp):
    (tmp / "calls.csv").write_text(CALLS)
    mdata = _read_run(_outs(tmp), guide_calls=None)()
    return lambda: ds.pp.assign_guides(mdata, method="cellranger", calls=tmp / "calls.csv")


READERS: dict[str, Callable[[Path], Callable[[], object]]] = {
    "cellranger": lambda tmp: _read_run(_outs(tmp)),
    "h5": lambda tmp: _read_run(_outs(tmp, fmt="h5")),
    "assign_guides": _assign,
    "starsolo": _starsolo,
    "long": lambda tmp: _junctions(tmp, LONG),
    "wide": lambda tmp: _junctions(tmp, WIDE, layout="wide"),
    "transcripts": _transcripts,
    "transcript_folder": _transcript_folder,
    "gtf": _annotate,
    "gtf_gz": lambda tmp: _annotate(tmp, "genes.gtf.gz"),
}

MTX = "outs/filtered_feature_bc_matrix/"
H5 = "outs/filtered_feature_bc_matrix.h5"
CR_CALLS = "outs/crispr_analysis/protospacer_calls_per_cell.csv"
SOLO = "Solo.out/SJ/raw/"
FEATURES_TSV = "".join("\t".join(r) + "\n" for r in FEATURES.iloc[:, :3].to_numpy())
HEADER_ONLY = "header has no rows below it"
# case: (reader, damaged file, new content | fraction kept | {h5 dataset: values}, problem)
CASES = {
    "mtx_truncated": ("cellranger", MTX + "matrix.mtx.gz", 0.6, "truncated or corrupt gzip"),
    "features_not_utf8": (
        "cellranger",
        MTX + "features.tsv.gz",
        FEATURES_TSV.replace("TBCE", "TBC\xe9").encode("latin1"),
        r"byte b'\\xe9' at position \d+ is not UTF-8",
    ),
    "barcodes_empty": ("cellranger", MTX + "barcodes.tsv.gz", "", r"empty \(expected one cell"),
    "features_empty": ("cellranger", MTX + "features.tsv.gz", "", "the file is empty"),
    "mtx_absurd_header": (
        "cellranger",
        MTX + "matrix.mtx.gz",
        BANNER + "4 3 1099511627776\n1 1 1\n",
        "1099511627776 entries, more than a file of",
    ),
    "mtx_text_value": (
        "cellranger",
        MTX + "matrix.mtx.gz",
        BANNER + "4 3 2\n1 1 1\n2 1 many\n",
        "cannot be parsed as a MatrixMarket matrix",
    ),
    "mtx_no_banner": ("cellranger", MTX + "matrix.mtx.gz", "4 3 1\n1 1 1\n", "not a MatrixMarket"),
    "mtx_negative": (
        "cellranger",
        MTX + "matrix.mtx.gz",
        BANNER + "4 3 2\n1 1 1\n2 1 -7\n",
        "holds negative or non-finite values",
    ),
    "h5_truncated": ("h5", H5, 0.5, "(not a readable HDF5|the HDF5 file is damaged)"),
    "h5_absurd_shape": ("h5", H5, {"shape": np.array([4, 2**40])}, "sizes of 'matrix' disagree"),
    "h5_bad_indices": (
        "h5",
        H5,
        {"indices": np.r_[99, COUNTS.indices[1:]]},
        "'matrix/indices' are out of range",
    ),
    "h5_name_not_utf8": (
        "h5",
        H5,
        {"features/name": np.array([b"TBC\xe9", b"CD4", b"A_1", b"NTC_1"])},
        "is not UTF-8",
    ),
    "reference_header_only": (
        "cellranger",
        "feature_reference.csv",
        REFERENCE.splitlines()[0] + "\n",
        HEADER_ONLY,
    ),
    "reference_duplicated_header": (
        "cellranger",
        "feature_reference.csv",
        REFERENCE.replace("target_gene_name", "target_gene_name,target_gene_name").replace(
            "A\n", "A,A\n"
        ),
        r"the header repeats column name\(s\) \['target_gene_name'\]",
    ),
    "calls_header_only": (
        "cellranger",
        CR_CALLS,
        CALLS.splitlines()[0] + "\n",
        "has a header but no rows: no cell has a guide call;",
    ),
    "calls_header_only_assign": (
        "assign_guides",
        "calls.csv",
        CALLS.splitlines()[0] + "\n",
        "has a header but no rows",
    ),
    "calls_empty": ("cellranger", CR_CALLS, "", "the file is empty"),
    "calls_duplicated_header": (
        "cellranger",
        CR_CALLS,
        CALLS.replace("num_umis\n", "num_umis,num_umis\n").replace("0\n", "0,1\n"),
        r"repeats column name\(s\) \['num_umis'\]",
    ),
    "calls_absurd_umis": (
        "cellranger",
        CR_CALLS,
        CALLS.replace(",40\n", ",1e300\n"),
        "'num_umis' must hold non-negative integers",
    ),
    "thresholds_not_json": (
        "cellranger",
        "outs/crispr_analysis/protospacer_umi_thresholds_json.json",
        '{"A_1": ',
        "not a JSON object",
    ),
    "sj_features_empty": ("starsolo", SOLO + "features.tsv", "", "the file is empty"),
    "sj_negative": (
        "starsolo",
        SOLO + "features.tsv",
        SJ.replace("\t100\t200\t", "\t-50\t-10\t", 1),
        "line 1: intron -50--10 has a coordinate below 1",
    ),
    "sj_zero": (
        "starsolo",
        SOLO + "features.tsv",
        SJ.replace("\t100\t200\t", "\t0\t200\t", 1),
        "line 1: intron 0-200 has a coordinate below 1",
    ),
    "sj_barcodes_empty": ("starsolo", SOLO + "barcodes.tsv", "\n", "the file is empty"),
    "sj_mtx_truncated": ("starsolo", SOLO + "matrix.mtx.gz", 0.7, "truncated or corrupt gzip"),
    "jt_header_only": ("long", "j.csv", LONG.splitlines()[0] + "\n", HEADER_ONLY),
    "jt_negative": (
        "long",
        "j.csv",
        LONG.replace("100,200", "-50,-10"),
        "junction chr1:-50--10 lies before the chromosome start",
    ),
    "jt_zero": ("long", "j.csv", LONG.replace("100,200", "0,200"), "chr1:0-200 lies before"),
    "jt_zero_in_id": (
        "wide",
        "j.csv",
        WIDE.replace("chr1:100:200", "chr1:0:200"),
        "lies before the chromosome start when read as 1-based",
    ),
    "jt_duplicated_cell": (
        "wide",
        "j.csv",
        WIDE.replace("CCCG-1", "AAAC-1"),
        r"the header repeats column name\(s\) \['AAAC-1'\]",
    ),
    "jt_text_count": ("long", "j.csv", LONG.replace(",+,3", ",+,three"), "got 'three'"),
    "jt_not_utf8": (
        "long",
        "j.csv",
        LONG.replace("AAAC-1", "AAAC\xff").encode("latin1"),
        "is not UTF-8",
    ),
    "jt_ragged": (
        "long",
        "j.csv",
        LONG + "GGGT-1,chr1,100,200,+,3,7,8\n",
        "cannot be parsed as a junction table",
    ),
    "tx_text_value": (
        "transcripts",
        "tx.csv",
        TX_TABLE.replace("1,2", "1,abc"),
        "row 'CCCG-1', column 'ENST2' holds 'abc', not a number",
    ),
    "tx_duplicated_header": (
        "transcripts",
        "tx.csv",
        TX_TABLE.replace("ENST2", "ENST1"),
        r"the header repeats column name\(s\) \['ENST1'\]",
    ),
    "tx_header_only": ("transcripts", "tx.csv", TX_TABLE.splitlines()[0] + "\n", HEADER_ONLY),
    "tx2gene_empty": ("transcripts", "tx2gene.csv", "", "the file is empty"),
    "tx_folder_empty_barcodes": ("transcript_folder", "txm/barcodes.tsv", "", "file is empty"),
    "gtf_text_start": (
        "gtf",
        "genes.gtf",
        GTF.replace("\t50\t500\t", "\tfifty\t500\t"),
        "the start of the gene line of G1 is 'fifty', not a position >= 1",
    ),
    "gtf_negative": (
        "gtf",
        "genes.gtf",
        GTF.replace("\t50\t500\t", "\t-5\t500\t"),
        "is '-5', not a position >= 1",
    ),
    "gtf_comments_only": ("gtf", "genes.gtf", "#!genome-build GRCh38\n", "the file is empty"),
    "gtf_truncated": ("gtf_gz", "genes.gtf.gz", 0.5, "truncated or corrupt gzip data"),
}


def _damage(path: Path, damage) -> None:
    if isinstance(damage, float):
        _truncate(path, damage)
    elif isinstance(damage, dict):
        with h5py.File(path, "r+") as handle:
            for key, values in damage.items():
                del handle[f"matrix/{key}"]
                handle[f"matrix/{key}"] = values
    elif path.name.endswith(".gz"):
        _gz(path, damage)
    else:
        path.write_bytes(damage if isinstance(damage, bytes) else damage.encode())


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_file_names_file_and_fix(case, tmp_path):
    reader, name, damage, problem = CASES[case]
    call = READERS[reader](tmp_path)
    _damage(tmp_path / name, damage)
    with pytest.raises(
        ValueError, match=rf"{re.escape(name.split('/')[-1])}.*{problem}.*fix: "
    ) as info:
        call()
    assert str(tmp_path) in str(info.value)


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


def test_splicing_builder_rejects_coordinates_below_one():
    var = pd.DataFrame(
        {"chrom": "chr1", "start": [0, 0], "end": [50, 80], "strand": "+", "gene": "A"},
        index=["j1", "j2"],
    )
    mdata = md.MuData({"junctions": AnnData(np.ones((2, 2), np.float32), var=var)})
    with pytest.raises(ValueError, match=r"Junction 'j1' has a coordinate below 1; fix: "):
        ds.pp.splicing_from_junctions(mdata, kinds=("donor",))


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
        "gtf": (root / "genes.gtf", _annotate(root)),
    }
    return targets


FUZZED = (
    "matrix.mtx.gz|features.tsv.gz|barcodes.tsv.gz|h5|reference|calls|sj features|sj matrix|"
    "junction table|wide table|transcripts|gtf"
).split("|")


@pytest.fixture(scope="module")
def fuzz_targets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    targets = _fuzz_targets(root)
    assert sorted(targets) == sorted(FUZZED)
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
    target=st.sampled_from(FUZZED),
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
