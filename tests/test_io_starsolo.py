"""io.read_starsolo_junctions on real junction coordinates, and pp.annotate_junctions."""

from __future__ import annotations

import logging
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import dream_sc as ds
from dream_sc.datasets._write_formats import barcodes

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def source():
    """Real junctions (36) plus two of undefined strand: motif 3 (-> '+') and motif 0 (dropped)."""
    sj = pd.read_csv(DATA / "sj_meta_slice.csv")
    var = pd.DataFrame(
        {
            "chrom": sj["chrom"],
            "start": sj["intron_start"],
            "end": sj["intron_end"],
            "strand": sj["strand"].astype(str),
            "motif": np.where(sj["strand"] == 1, 1, 2),
            "annotated": sj["annotated"],
            "gene_truth": sj["gene_name_start"],
        }
    )
    extra = pd.DataFrame(
        {
            "chrom": ["chr1", "chr1"],
            "start": [2_000_001, 2_000_101],
            "end": [2_000_050, 2_000_150],
            "strand": ["0", "0"],
            "motif": [3, 0],
            "annotated": [0, 0],
            "gene_truth": [None, None],
        }
    )
    var = pd.concat([var, extra], ignore_index=True)
    var.index = [f"j{i}" for i in range(len(var))]
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, (40, len(var))) * (rng.random((40, len(var))) < 0.6)
    cells = barcodes(40, seed=1)
    return AnnData(
        sparse.csr_matrix(counts.astype(np.float32)), obs=pd.DataFrame(index=cells), var=var
    )


@pytest.mark.parametrize(("compress", "matrix"), [(False, "raw"), (True, "filtered")])
def test_every_value_read_back(source, tmp_path, compress, matrix, caplog):
    folder = ds.datasets.write_starsolo_junctions(
        source, tmp_path / "Solo.out", matrix=matrix, compress=compress
    )
    suffix = ".gz" if compress else ""
    assert (folder / f"matrix.mtx{suffix}").is_file()
    first = (folder / "barcodes.tsv").read_text().split()[0] if not compress else None
    if first is not None:
        assert "-" not in first  # STARsolo barcodes carry no -1 suffix
    cells = source.obs_names[::-1]  # the expression order wins
    with caplog.at_level(logging.INFO, logger="dream_sc"):
        adata = ds.io.read_starsolo_junctions(tmp_path / "Solo.out", cells=list(cells))
    assert (
        "strand resolved from the motif for 1, 1 with undefined strand and non-canonical motif dropped"
        in caplog.text
    )
    assert "matched appending '-1'" in caplog.text
    assert adata.obs_names.tolist() == cells.tolist()
    kept = source.var.iloc[:-1]
    expected_strand = kept["strand"].map({"1": "+", "2": "-", "0": "+"}).tolist()
    assert adata.var["chrom"].tolist() == kept["chrom"].tolist()
    assert adata.var["start"].tolist() == kept["start"].tolist()
    assert adata.var["end"].tolist() == kept["end"].tolist()
    assert adata.var["strand"].tolist() == expected_strand
    assert adata.var["motif"].tolist() == kept["motif"].tolist()
    assert adata.var["strand_from_motif"].tolist() == [False] * 36 + [True]
    assert adata.var_names[0] == "chr1:999433-999525:-"
    np.testing.assert_array_equal(adata.X.toarray(), source.X.toarray()[::-1, :-1])


def test_path_forms_and_chrom_style(source, tmp_path):
    ds.datasets.write_starsolo_junctions(source, tmp_path / "Solo.out")
    a = ds.io.read_starsolo_junctions(tmp_path / "Solo.out" / "SJ", barcode_suffix=None)
    b = ds.io.read_starsolo_junctions(tmp_path / "Solo.out" / "SJ" / "raw", chrom_style="ensembl")
    assert a.obs_names[0] == source.obs_names[0][:-2]
    assert b.var["chrom"].iloc[0] == "1" and b.var_names[0] == "1:999433-999525:-"
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())


def test_splicing_builders_on_read_junctions(source, tmp_path):
    """The read junctions give the same splicing modalities as the source coordinates."""
    ds.datasets.write_starsolo_junctions(source, tmp_path / "Solo.out")
    adata = ds.io.read_starsolo_junctions(tmp_path / "Solo.out", cells=source)
    adata.var["gene"] = source.var["gene_truth"].iloc[:-1].to_numpy()
    read = md.MuData({"junctions": adata})
    ds.pp.splicing_from_junctions(read, min_cells_covered=0, min_total_reads=0)
    direct_var = source.var.iloc[:-1].assign(
        strand=lambda v: v["strand"].replace({"0": "1"}), gene=lambda v: v["gene_truth"]
    )
    direct_var.index = adata.var_names
    direct = md.MuData(
        {"junctions": AnnData(source.X[:, :-1], obs=source.obs.copy(), var=direct_var)}
    )
    ds.pp.splicing_from_junctions(direct, min_cells_covered=0, min_total_reads=0)
    for kind in ("sj", "donor", "acceptor", "exon_skip"):
        assert read[kind].var_names.tolist() == direct[kind].var_names.tolist()
        np.testing.assert_array_equal(read[kind].X.toarray(), direct[kind].X.toarray())
    assert read["exon_skip"].n_vars > 0


def test_barcode_errors(source, tmp_path):
    ds.datasets.write_starsolo_junctions(source, tmp_path / "Solo.out")
    other = list(barcodes(10, seed=9))
    with pytest.raises(
        ValueError,
        match=r"Fewer than 50% of the expression cells are among the barcodes of STARsolo folder .*"
        r"\(tried as written: 0 of 10; appending '-1': 0 of 10\)\. Expression cells look like \['"
        + other[0]
        + r"'.*barcodes like \['"
        + source.obs_names[0][:-2]
        + r"'",
    ):
        ds.io.read_starsolo_junctions(tmp_path / "Solo.out", cells=other)
    aggr = [b[:-2] + "-1" for b in source.obs_names] + [b[:-2] + "-2" for b in source.obs_names]
    with pytest.raises(
        ValueError, match=r"match the expression cells equally well .*pass `barcode_suffix=`"
    ):
        ds.io.read_starsolo_junctions(tmp_path / "Solo.out", cells=aggr)
    second = ds.io.read_starsolo_junctions(tmp_path / "Solo.out", cells=aggr, barcode_suffix="-2")
    assert second.obs_names.tolist() == aggr[40:]


def test_bad_files(source, tmp_path):
    folder = ds.datasets.write_starsolo_junctions(source, tmp_path / "Solo.out")
    features = (folder / "features.tsv").read_text()
    (folder / "features.tsv").write_text(
        "".join("\t".join(line.split("\t")[:4]) + "\n" for line in features.splitlines())
    )
    with pytest.raises(
        ValueError,
        match=r"features\.tsv of .* has 4 column\(s\); STARsolo's SJ features are in SJ\.out\.tab layout",
    ):
        ds.io.read_starsolo_junctions(tmp_path / "Solo.out")
    (folder / "features.tsv").write_text(features.replace("\t2\t2\t", "\t+\t2\t", 1))
    with pytest.raises(ValueError, match=r"line 1: column 'strand' must be an integer, got '\+'"):
        ds.io.read_starsolo_junctions(tmp_path / "Solo.out")
    (folder / "features.tsv").write_text(features)
    lines = (folder / "barcodes.tsv").read_text().splitlines()
    (folder / "barcodes.tsv").write_text("\n".join([lines[0]] + lines[:-1]) + "\n")
    with pytest.raises(
        ValueError, match=r"barcodes\.tsv of .* repeats barcode\(s\) \['" + lines[0]
    ):
        ds.io.read_starsolo_junctions(tmp_path / "Solo.out")
    (folder / "barcodes.tsv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(
        ValueError,
        match=r"matrix\.mtx of .* is 38 × 40 but features\.tsv has 38 junctions and barcodes\.tsv 39 barcodes",
    ):
        ds.io.read_starsolo_junctions(tmp_path / "Solo.out")
    with pytest.raises(
        ValueError,
        match=r"No STARsolo junction matrix under .*run STARsolo with `--soloFeatures SJ`",
    ):
        ds.io.read_starsolo_junctions(tmp_path)


def _gtf_genes(source) -> pd.DataFrame:
    var = source.var.dropna(subset=["gene_truth"])
    spans = var.groupby("gene_truth").agg(
        chrom=("chrom", "first"),
        start=("start", "min"),
        end=("end", "max"),
        strand=("strand", "first"),
    )
    return pd.DataFrame(
        {
            "gene_id": "ENSG_" + spans.index,
            "gene_name": spans.index,
            "chrom": spans["chrom"].to_numpy(),
            "start": spans["start"].to_numpy() - 1,
            "end": spans["end"].to_numpy() + 1,
            "strand": spans["strand"].map({"1": "+", "2": "-"}).to_numpy(),
        }
    )


@pytest.mark.parametrize("gzip_gtf", [False, True])
def test_annotate_junctions_from_ensembl_gtf(source, tmp_path, gzip_gtf):
    ds.datasets.write_starsolo_junctions(source, tmp_path / "Solo.out")
    adata = ds.io.read_starsolo_junctions(tmp_path / "Solo.out", cells=source)
    genes = _gtf_genes(source)
    # a nested gene inside HES4: its junctions go to the innermost gene
    hes4 = genes[genes["gene_name"] == "HES4"].iloc[0]
    nested = pd.DataFrame(
        [
            {
                "gene_id": "ENSG_IN",
                "gene_name": "INNER",
                "chrom": "chr1",
                "start": 999432,
                "end": 999600,
                "strand": "-",
            }
        ]
    )
    gtf = ds.datasets.write_gtf(tmp_path / "genes.gtf", pd.concat([genes, nested]))
    assert gtf.read_text().splitlines()[1].startswith("1\tdream_sc\tgene\t")
    if gzip_gtf:
        import gzip
        import shutil

        with open(gtf, "rb") as src, gzip.open(tmp_path / "genes.gtf.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        gtf = tmp_path / "genes.gtf.gz"
    mdata = md.MuData({"junctions": adata})
    ds.pp.annotate_junctions(mdata, gtf=gtf)
    got = mdata["junctions"].var["gene"].astype(object)
    expected = source.var["gene_truth"].iloc[:-1].astype(object).to_numpy()
    inner = (
        (adata.var["chrom"] == "chr1")
        & (adata.var["strand"] == "-")
        & (adata.var["start"] >= 999432)
        & (adata.var["end"] <= 999600)
    )
    assert inner.sum() >= 1 and hes4["start"] == 999432 and hes4["end"] > 999600
    expected = np.where(inner.to_numpy(), "INNER", expected)
    assert [None if pd.isna(g) else g for g in got] == [None if pd.isna(g) else g for g in expected]
    assert mdata["junctions"].var["gene_id"].astype(object).iloc[0] in ("ENSG_HES4", "ENSG_IN")
    mdata.write(tmp_path / "annotated.h5mu")


def test_annotate_junctions_errors(source, tmp_path):
    mdata = md.MuData(
        {
            "junctions": AnnData(
                np.ones((2, 1)),
                var=pd.DataFrame(
                    {"chrom": ["chr9"], "start": [5], "end": [9], "strand": ["+"]}, index=["j"]
                ),
            )
        }
    )
    genes = pd.DataFrame(
        {"chrom": ["1"], "start": [1], "end": [100], "strand": ["+"], "gene_id": ["G"]}
    )
    with pytest.raises(
        ValueError,
        match=r"No chromosome of the junctions \(e\.g\. \['chr9'\]\) is in the GTF \(e\.g\. \['chr1'\]\)",
    ):
        ds.pp.annotate_junctions(mdata, gtf=genes)
    (tmp_path / "bad.gtf").write_text("chr1\t1\t2\n")
    with pytest.raises(ValueError, match=r"has 3 tab-separated columns; a GTF has 9"):
        ds.pp.annotate_junctions(mdata, gtf=tmp_path / "bad.gtf")
    del mdata["junctions"].var["strand"]
    with pytest.raises(KeyError, match=r"lacks \['strand'\]"):
        ds.pp.annotate_junctions(mdata, gtf=genes)
