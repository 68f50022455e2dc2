"""io.read_junction_table, io.read_transcript_counts and pp.from_anndata."""

from __future__ import annotations

import gzip

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.io
from anndata import AnnData
from scipy import sparse

import dream_sc as ds

CELLS = ["AAAC-1", "CCTG-1", "GGTA-1"]
# junctions in 1-based intron coordinates (first and last intron base)
JUNCTIONS = pd.DataFrame(
    {
        "chrom": ["chr1", "chr1", "chr2"],
        "start": [100, 100, 300],
        "end": [200, 400, 350],
        "strand": ["+", "+", "-"],
    }
)
COUNTS = np.array([[3, 0, 1], [0, 2, 5], [7, 1, 0]])  # cells x junctions


def _long(zero_based: bool) -> pd.DataFrame:
    rows = []
    for i, cell in enumerate(CELLS):
        for j, junction in JUNCTIONS.iterrows():
            if COUNTS[i, j]:
                start = junction["start"] - 1 if zero_based else junction["start"]
                rows.append(
                    (
                        cell[:-2],
                        junction["chrom"],
                        start,
                        junction["end"],
                        junction["strand"],
                        COUNTS[i, j],
                    )
                )
    return pd.DataFrame(rows, columns=["cell", "chrom", "start", "end", "strand", "count"])


@pytest.mark.parametrize("zero_based", [False, True])
def test_long_table(tmp_path, zero_based):
    path = tmp_path / "junctions.tsv.gz"
    _long(zero_based).to_csv(path, sep="\t", index=False)
    adata = ds.io.read_junction_table(
        path,
        coordinates="0-based" if zero_based else "1-based",
        columns={"barcode": "cell"},
        cells=CELLS,
    )
    assert adata.obs_names.tolist() == CELLS
    assert adata.var_names.tolist() == ["chr1:100-200:+", "chr1:100-400:+", "chr2:300-350:-"]
    assert (
        adata.var[["start", "end"]].to_numpy().tolist()
        == JUNCTIONS[["start", "end"]].to_numpy().tolist()
    )
    np.testing.assert_array_equal(adata.X.toarray(), COUNTS)
    mdata = md.MuData({"junctions": adata})
    mdata["junctions"].var["gene"] = ["G", "G", "H"]
    ds.pp.splicing_from_junctions(mdata, kinds=("donor",), min_cells_covered=0, min_total_reads=0)
    assert mdata["donor"].var["group"].tolist() == ["chr1:100:+:donor"] * 2


def test_wide_leafcutter_table(tmp_path):
    ids = [
        "chr1:99:200:clu_1_+",
        "chr1:99:400:clu_1_+",
        "chr2:299:350:clu_2_-",
        "chr3:10:20:clu_3_NA",
    ]
    table = pd.DataFrame(np.column_stack([COUNTS.T.tolist() + [[1, 1, 1]]]), columns=CELLS)
    table.insert(0, "junction", ids)
    table.to_csv(tmp_path / "perind_numers.counts.txt", sep="\t", index=False)
    adata = ds.io.read_junction_table(
        tmp_path / "perind_numers.counts.txt", coordinates="0-based", layout="wide"
    )
    assert adata.var_names.tolist() == ["chr1:100-200:+", "chr1:100-400:+", "chr2:300-350:-"]
    np.testing.assert_array_equal(adata.X.toarray(), COUNTS)
    coords = JUNCTIONS.assign(**{c: COUNTS[i] for i, c in enumerate(CELLS)})
    same = ds.io.read_junction_table(
        coords, coordinates="1-based", layout="wide", chrom_style="ensembl"
    )
    assert same.var_names.tolist() == ["1:100-200:+", "1:100-400:+", "2:300-350:-"]
    np.testing.assert_array_equal(same.X.toarray(), COUNTS)


def test_junction_table_errors():
    long = _long(False)
    with pytest.raises(
        ValueError, match=r"`coordinates` must be declared as '1-based' .* or '0-based'"
    ):
        ds.io.read_junction_table(long, coordinates="bed")
    with pytest.raises(
        ValueError, match=r"lacks column\(s\) \['barcode'\] .*columns=\{'barcode': 'cell'\}"
    ):
        ds.io.read_junction_table(long, coordinates="1-based")
    renamed = long.rename(columns={"cell": "barcode"})
    with pytest.raises(
        ValueError, match=r"several rows for barcode 'AAAC' and junction chr1:100-200:\+; sum them"
    ):
        ds.io.read_junction_table(pd.concat([renamed, renamed.iloc[[0]]]), coordinates="1-based")
    with pytest.raises(ValueError, match=r"counts must be non-negative integers"):
        ds.io.read_junction_table(renamed.assign(count=-1), coordinates="1-based")
    with pytest.raises(ValueError, match=r"junction ids \['chr1_100_200'\] are not of the form"):
        ds.io.read_junction_table(
            pd.DataFrame({"id": ["chr1_100_200"], "A": [1]}), coordinates="1-based", layout="wide"
        )
    with pytest.raises(ValueError, match=r"start > end after reading them as 1-based"):
        ds.io.read_junction_table(renamed.assign(start=500), coordinates="1-based")


TX = ["ENST01.1", "ENST02.3", "ENST03.1", "ENST04.2"]
TX_COUNTS = np.array([[5, 1, 0, 2], [0, 3, 4, 0], [2, 2, 1, 9]])  # cells x transcripts


def test_transcripts_csv_transposed_with_versions(tmp_path):
    matrix = pd.DataFrame(TX_COUNTS.T, index=TX, columns=[c[:-2] for c in CELLS])
    matrix.to_csv(tmp_path / "tx.csv.gz")
    pd.DataFrame({"TXNAME": ["ENST01", "ENST02", "ENST03"], "GENEID": ["A", "A", "B"]}).to_csv(
        tmp_path / "tx2gene.csv", index=False
    )
    adata = ds.io.read_transcript_counts(
        tmp_path / "tx.csv.gz", tmp_path / "tx2gene.csv", cells=CELLS
    )
    assert adata.obs_names.tolist() == CELLS and adata.var_names.tolist() == TX
    assert [None if pd.isna(g) else g for g in adata.var["gene"]] == ["A", "A", "B", None]
    np.testing.assert_array_equal(adata.X.toarray(), TX_COUNTS)
    mdata = md.MuData({"transcripts": adata})
    ds.pp.isoform_usage(mdata, min_cells_covered=0, min_total_reads=0)
    assert mdata["isoform"].var_names.tolist() == ["ENST01.1", "ENST02.3"]


def test_transcripts_mtx_folder(tmp_path):
    folder = tmp_path / "tx"
    folder.mkdir()
    scipy.io.mmwrite(str(folder / "matrix.mtx"), sparse.coo_matrix(TX_COUNTS.T), field="integer")
    with gzip.open(folder / "features.tsv.gz", "wt") as handle:
        handle.write("".join(f"{t}\t{t}\n" for t in TX))
    (folder / "barcodes.tsv").write_text("".join(f"{c}\n" for c in CELLS))
    adata = ds.io.read_transcript_counts(folder, dict(zip(TX, ["A", "A", "B", "B"], strict=True)))
    np.testing.assert_array_equal(adata.X.toarray(), TX_COUNTS)
    assert adata.var["gene"].tolist() == ["A", "A", "B", "B"]


def test_transcripts_errors():
    counts = pd.DataFrame(TX_COUNTS, index=CELLS, columns=TX)
    with pytest.raises(
        ValueError,
        match=r"Only 0 of 4 transcripts of the transcript table are in `tx2gene` \(transcripts look like \['ENST01\.1'",
    ):
        ds.io.read_transcript_counts(counts, {"ENSG1": "A"})
    with pytest.raises(ValueError, match=r"counts must be non-negative integers"):
        ds.io.read_transcript_counts(counts * 0.5, dict.fromkeys(TX, "A"))
    dup = pd.DataFrame(TX_COUNTS, index=["a", "a", "b"], columns=TX)
    with pytest.raises(ValueError, match=r"repeats cell id\(s\) \['a'\]"):
        ds.io.read_transcript_counts(dup, dict.fromkeys(TX, "A"))


def test_from_anndata():
    obs = pd.DataFrame(
        {
            "guide": ["A_1", "NTC_1", None, "A_2|NTC_1", "unassigned", "A_2"],
            "gene_target": ["A", "Non-Targeting", None, "A", None, "A"],
            "lane": ["l1", "l2", "l1", "l1", "l2", "l2"],
        },
        index=[f"c{i}" for i in range(6)],
    )
    adata = AnnData(np.arange(12, dtype=np.float32).reshape(6, 2), obs=obs)
    mdata = ds.pp.from_anndata(adata, target_key="gene_target")
    assert mdata.obs_names.tolist() == ["c0", "c1", "c5"]
    assert mdata.obs["guide"].tolist() == ["A_1", "NTC_1", "A_2"]
    assert mdata.obs["gene_target"].tolist() == ["A", "ntc", "A"]
    assert mdata.obs["gene_target"].cat.categories.tolist() == ["ntc", "A"]
    assert mdata.obs["lane"].tolist() == ["l1", "l2", "l2"]
    assert "rna:guide" not in mdata.obs and list(mdata["rna"].obs.columns) == []
    np.testing.assert_array_equal(mdata["rna"].X, adata.X[[0, 1, 5]])
    assert adata.n_obs == 6  # the input is untouched
    via_map = ds.pp.from_anndata(
        adata.copy(), target_key=None, guide_targets={"A_1": "A", "A_2": "A", "NTC_1": "NTC"}
    )
    assert via_map.obs["target"].tolist() == ["A", "ntc", "A"]


def test_from_anndata_errors():
    adata = AnnData(np.ones((2, 2)), obs=pd.DataFrame({"sgRNA": ["A_1", "B_1"]}, index=["a", "b"]))
    with pytest.raises(KeyError, match=r"Column 'guide' \(argument `guide_key`\) not found"):
        ds.pp.from_anndata(adata)
    with pytest.raises(
        KeyError,
        match=r"Column 'target' \(argument `target_key`\) not found .* or pass `guide_targets=`",
    ):
        ds.pp.from_anndata(adata, guide_key="sgRNA")
    with pytest.raises(ValueError, match=r"Guide\(s\) \['B_1'\] have no target"):
        ds.pp.from_anndata(adata, guide_key="sgRNA", target_key=None, guide_targets={"A_1": "A"})
