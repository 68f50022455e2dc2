"""Property tests of the splicing and isoform builders on random junction / transcript tables.

Junctions are drawn on a small coordinate grid (two chromosomes, both strands, STAR or ``+``/``-``
strand codes) so shared splice sites and cassette exons are frequent; counts and coverage
filters are random. Every property is checked against a direct, loop-based recomputation from
the input table.
"""

from __future__ import annotations

import itertools
import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import dream_sc as ds

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GENES = ["g1", "g2", "g3", None]


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------
@st.composite
def junction_screens(draw) -> tuple[pd.DataFrame, np.ndarray]:
    """A junction var table (unique introns) and a cells x junctions count matrix."""
    coords = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["chr1", "chr2"]),
                st.sampled_from(["+", "-"]),
                st.integers(0, 8),  # start on a 10-bp grid
                st.integers(1, 6),  # intron length on the same grid
            ),
            min_size=1,
            max_size=14,
            unique_by=lambda c: (c[0], c[1], c[2], c[2] + c[3]),
        )
    )
    n = len(coords)
    genes = draw(st.lists(st.sampled_from(GENES), min_size=n, max_size=n))
    n_cells = draw(st.integers(1, 6))
    values = draw(st.lists(st.integers(0, 9), min_size=n * n_cells, max_size=n * n_cells))
    star = draw(st.booleans())
    strand = [c[1] for c in coords]
    var = pd.DataFrame(
        {
            "chrom": [c[0] for c in coords],
            "start": [100 + 10 * c[2] for c in coords],
            "end": [100 + 10 * (c[2] + c[3]) for c in coords],
            "strand": [(1 if s == "+" else 2) for s in strand] if star else strand,
            "gene": pd.array(genes, dtype=object),
        },
        index=[f"j{i}" for i in range(n)],
    )
    return var, np.asarray(values, dtype=np.int64).reshape(n_cells, n)


@st.composite
def transcript_screens(draw) -> tuple[pd.DataFrame, np.ndarray]:
    n = draw(st.integers(1, 12))
    genes = draw(st.lists(st.sampled_from(["A", "B", "C", "D", None]), min_size=n, max_size=n))
    n_cells = draw(st.integers(1, 6))
    values = draw(st.lists(st.integers(0, 9), min_size=n * n_cells, max_size=n * n_cells))
    var = pd.DataFrame({"gene": pd.array(genes, dtype=object)}, index=[f"t{i}" for i in range(n)])
    return var, np.asarray(values, dtype=np.int64).reshape(n_cells, n)


FILTERS = st.fixed_dictionaries(
    {"min_cells_covered": st.integers(0, 3), "min_total_reads": st.sampled_from([0, 1, 5, 12])}
)
NO_FILTER = {"min_cells_covered": 0, "min_total_reads": 0}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def make_mdata(name: str, var: pd.DataFrame, counts: np.ndarray, fmt: str = "dense") -> md.MuData:
    X = sparse.csr_matrix(counts) if fmt == "sparse" else counts.copy()
    cells = pd.DataFrame(index=[f"c{i}" for i in range(counts.shape[0])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.MuData({name: AnnData(X=X, obs=cells, var=var.copy())})


def build_splicing(var, counts, fmt="dense", **kwargs) -> md.MuData:
    mdata = make_mdata("junctions", var, counts, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no feature passed the filters" is expected here
        ds.pp.splicing_from_junctions(mdata, **kwargs)
    return mdata


def build_isoform(var, counts, fmt="dense", **kwargs) -> md.MuData:
    mdata = make_mdata("transcripts", var, counts, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.pp.isoform_usage(mdata, **kwargs)
    return mdata


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def normalized(var: pd.DataFrame) -> pd.DataFrame:
    """Strand as +/-, and each junction's donor and acceptor position, recomputed by hand."""
    table = var.copy()
    table["strand"] = [{1: "+", 2: "-"}.get(s, s) for s in var["strand"]]
    plus = table["strand"] == "+"
    table["donor"] = np.where(plus, table["start"], table["end"])
    table["acceptor"] = np.where(plus, table["end"], table["start"])
    table["pos"] = np.arange(len(table))
    return table


def passes(columns: np.ndarray, filters: dict) -> np.ndarray:
    """Coverage filters on the columns of a cells x features matrix."""
    return ((columns > 0).sum(0) >= filters["min_cells_covered"]) & (
        columns.sum(0) >= filters["min_total_reads"]
    )


# --------------------------------------------------------------------------------------------
# donor / acceptor
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(screen=junction_screens(), filters=FILTERS)
def test_site_groups(screen, filters):
    var, counts = screen
    mdata = build_splicing(var, counts, kinds=("donor", "acceptor"), **filters)
    table = normalized(var)
    for kind in ("donor", "acceptor"):
        key = table["chrom"] + ":" + table[kind].astype(str) + ":" + table["strand"]
        size = key.map(key.value_counts()).to_numpy()
        passing = (size >= 2) & passes(counts, filters)
        left = key.map(key[passing].value_counts()).fillna(0).to_numpy()
        expected = table.index[passing & (left >= 2)]
        if len(expected) == 0:
            assert kind not in mdata.mod
            continue
        adata = mdata[kind]
        assert list(adata.var_names) == list(expected)  # input order kept
        assert dict(adata.uns["dream_sc"])["distribution"] == "multinomial"
        assert dict(adata.uns["dream_sc"])["group_key"] == "group"
        for group, members in adata.var.groupby("group", observed=True):
            rows = table.loc[members.index]
            assert len(rows) >= 2
            assert rows["chrom"].nunique() == rows["strand"].nunique() == rows[kind].nunique() == 1
            first = rows.iloc[0]
            assert group == f"{first['chrom']}:{first[kind]}:{first['strand']}:{kind}"
        np.testing.assert_array_equal(dense(adata.X), counts[:, table.loc[expected, "pos"]])
        assert list(adata.obs_names) == list(mdata["junctions"].obs_names)


# --------------------------------------------------------------------------------------------
# sj
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(screen=junction_screens(), filters=FILTERS)
def test_sj_gene_trials(screen, filters):
    var, counts = screen
    mdata = build_splicing(var, counts, kinds="sj", sj_trials="gene", **filters)
    genes = var["gene"].to_numpy(dtype=object)
    annotated = np.array([g is not None for g in genes])
    trials = np.zeros_like(counts)
    for j in np.flatnonzero(annotated):
        trials[:, j] = counts[:, genes == genes[j]].sum(1)
    gene_size = np.array([(genes == g).sum() if g is not None else 0 for g in genes])
    keep = annotated & (gene_size >= 2) & passes(trials, filters)
    if not keep.any():
        assert "sj" not in mdata.mod
        return
    adata = mdata["sj"]
    assert list(adata.var_names) == list(var.index[keep])
    X, total = dense(adata.X), dense(adata.layers["total"])
    np.testing.assert_array_equal(X, counts[:, keep])
    np.testing.assert_array_equal(total, trials[:, keep])
    assert (X <= total).all()
    assert list(adata.var["gene"].astype(str)) == list(genes[keep])
    assert (adata.var["trials_from"] == "gene").all()
    np.testing.assert_array_equal(adata.var["total_trials"], trials[:, keep].sum(0))


@SETTINGS
@given(screen=junction_screens(), filters=FILTERS)
def test_sj_site_trials(screen, filters):
    var, counts = screen
    mdata = build_splicing(var, counts, kinds="sj", sj_trials="site", **filters)
    table = normalized(var)
    n = len(table)
    trials = np.zeros_like(counts)
    alternative = np.zeros(n, bool)
    for j in range(n):
        neighbours = [
            k
            for k in range(n)
            if table["chrom"].iloc[k] == table["chrom"].iloc[j]
            and table["strand"].iloc[k] == table["strand"].iloc[j]
            and (
                table["donor"].iloc[k] == table["donor"].iloc[j]
                or table["acceptor"].iloc[k] == table["acceptor"].iloc[j]
            )
        ]
        trials[:, j] = counts[:, neighbours].sum(1)
        alternative[j] = len(neighbours) >= 2
    keep = alternative & passes(trials, filters)
    if not keep.any():
        assert "sj" not in mdata.mod
        return
    adata = mdata["sj"]
    assert list(adata.var_names) == list(var.index[keep])
    np.testing.assert_array_equal(dense(adata.X), counts[:, keep])
    np.testing.assert_array_equal(dense(adata.layers["total"]), trials[:, keep])
    assert (dense(adata.X) <= dense(adata.layers["total"])).all()


# --------------------------------------------------------------------------------------------
# exon_skip
# --------------------------------------------------------------------------------------------
def cassette_triplets(table: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(skip, inclusion1, inclusion2) by brute force over all ordered triplets."""
    out = set()
    rows = list(table.itertuples())
    for skip, inc1, inc2 in itertools.permutations(rows, 3):
        same = {(r.chrom, r.strand) for r in (skip, inc1, inc2)}
        if (
            len(same) == 1
            and inc1.start == skip.start
            and inc2.end == skip.end
            and inc1.end < inc2.start
        ):
            out.add((skip.Index, inc1.Index, inc2.Index))
    return out


@SETTINGS
@given(screen=junction_screens(), filters=FILTERS, rule=st.sampled_from(["min", "mean"]))
def test_exon_skip_events(screen, filters, rule):
    var, counts = screen
    mdata = build_splicing(var, counts, kinds="exon_skip", exon_skip_inclusion=rule, **filters)
    table = normalized(var)
    events = cassette_triplets(table)
    col = {name: i for i, name in enumerate(table.index)}

    def inclusion_and_trials(skip, inc1, inc2):
        a, b = counts[:, col[inc1]], counts[:, col[inc2]]
        inclusion = np.minimum(a, b) if rule == "min" else (a + b + 1) // 2
        return inclusion, inclusion + counts[:, col[skip]]

    kept = set()
    for event in events:
        _, trials = inclusion_and_trials(*event)
        if passes(trials[:, None], filters)[0]:
            kept.add(event)
    if not kept:
        assert "exon_skip" not in mdata.mod
        return
    adata = mdata["exon_skip"]
    v = adata.var
    found = set(zip(v["skip"], v["inclusion1"], v["inclusion2"], strict=True))
    assert found == kept
    assert len(found) == adata.n_vars  # one feature per event
    X, total = dense(adata.X), dense(adata.layers["total"])
    assert (X <= total).all()
    for i, (skip, inc1, inc2) in enumerate(
        zip(v["skip"], v["inclusion1"], v["inclusion2"], strict=True)
    ):
        s, a, b = table.loc[skip], table.loc[inc1], table.loc[inc2]
        assert {skip, inc1, inc2} <= set(var.index)
        assert a["end"] < b["start"]
        assert (s["start"], s["end"]) == (a["start"], b["end"])
        assert s["chrom"] == a["chrom"] == b["chrom"] == v["chrom"].iloc[i]
        assert s["strand"] == a["strand"] == b["strand"] == v["strand"].iloc[i]
        assert (v["exon_start"].iloc[i], v["exon_end"].iloc[i]) == (a["end"], b["start"])
        inclusion, trials = inclusion_and_trials(skip, inc1, inc2)
        np.testing.assert_array_equal(X[:, i], inclusion)
        np.testing.assert_array_equal(total[:, i], trials)
    assert (v["inclusion_rule"] == rule).all()


# --------------------------------------------------------------------------------------------
# sparse vs dense
# --------------------------------------------------------------------------------------------
def assert_same_modalities(a: md.MuData, b: md.MuData) -> None:
    assert sorted(a.mod) == sorted(b.mod)
    for name in a.mod:
        x, y = a[name], b[name]
        if name not in ("junctions", "transcripts"):
            assert sparse.issparse(y.X) and not sparse.issparse(x.X)
        pd.testing.assert_frame_equal(x.var, y.var)
        np.testing.assert_array_equal(dense(x.X), dense(y.X))
        named = [k for k in x.layers if k is not None]  # anndata 0.13 also lists X as None
        assert sorted(named) == sorted(k for k in y.layers if k is not None)
        for layer in named:
            assert sparse.issparse(y.layers[layer])
            np.testing.assert_array_equal(dense(x.layers[layer]), dense(y.layers[layer]))
        assert dict(x.uns.get("dream_sc", {})) == dict(y.uns.get("dream_sc", {}))


@SETTINGS
@given(
    screen=junction_screens(),
    filters=FILTERS,
    sj_trials=st.sampled_from(["gene", "site"]),
    rule=st.sampled_from(["min", "mean"]),
)
def test_splicing_sparse_equals_dense(screen, filters, sj_trials, rule):
    var, counts = screen
    options = {"sj_trials": sj_trials, "exon_skip_inclusion": rule, **filters}
    assert_same_modalities(
        build_splicing(var, counts, "dense", **options),
        build_splicing(var, counts, "sparse", **options),
    )


# --------------------------------------------------------------------------------------------
# isoform usage
# --------------------------------------------------------------------------------------------
@SETTINGS
@given(screen=transcript_screens(), filters=FILTERS)
def test_isoform_usage(screen, filters):
    var, counts = screen
    mdata = build_isoform(var, counts, **filters)
    genes = var["gene"].to_numpy(dtype=object)
    annotated = np.array([g is not None for g in genes])
    size = np.array([(genes == g).sum() if g is not None else 0 for g in genes])
    passing = annotated & (size >= 2) & passes(counts, filters)
    left = np.array([(passing & (genes == g)).sum() if g is not None else 0 for g in genes])
    keep = passing & (left >= 2)
    if not keep.any():
        assert "isoform" not in mdata.mod
        return
    adata = mdata["isoform"]
    assert list(adata.var_names) == list(var.index[keep])
    assert list(adata.var["group"]) == list(adata.var["gene"]) == list(genes[keep])
    assert adata.var["group"].value_counts().min() >= 2
    X = dense(adata.X)
    np.testing.assert_array_equal(X, counts[:, keep])
    for gene in np.unique(genes[keep]):
        members = (adata.var["group"] == gene).to_numpy()
        group_total = X[:, members].sum(1)
        if filters == NO_FILTER:  # nothing dropped: the group total is the gene's total
            np.testing.assert_array_equal(group_total, counts[:, genes == gene].sum(1))
        covered = group_total > 0
        proportions = X[covered][:, members] / group_total[covered, None]
        np.testing.assert_allclose(proportions.sum(1), 1.0)
    assert dict(adata.uns["dream_sc"]) == {
        "distribution": "multinomial",
        "layer": "",
        "total_layer": "",
        "group_key": "group",
    }


@SETTINGS
@given(screen=transcript_screens(), filters=FILTERS)
def test_isoform_sparse_equals_dense(screen, filters):
    var, counts = screen
    assert_same_modalities(
        build_isoform(var, counts, "dense", **filters),
        build_isoform(var, counts, "sparse", **filters),
    )


# --------------------------------------------------------------------------------------------
# the strategies reach the interesting cases
# --------------------------------------------------------------------------------------------
def test_generator_makes_shared_sites_and_cassettes():
    """A fixed example from the coordinate grid has every feature kind (guards the strategy)."""
    var = pd.DataFrame(
        {
            "chrom": "chr1",
            "start": [100, 100, 150, 150],
            "end": [130, 180, 180, 170],
            "strand": ["+", "+", "+", "-"],
            "gene": ["g1", "g1", "g1", "g2"],
        },
        index=["j0", "j1", "j2", "j3"],
    )
    counts = np.array([[3, 1, 2, 5], [0, 4, 1, 0]])
    mdata = build_splicing(var, counts, **NO_FILTER)
    assert sorted(mdata.mod) == ["acceptor", "donor", "exon_skip", "junctions", "sj"]
    assert cassette_triplets(normalized(var)) == {("j1", "j0", "j2")}
    assert mdata["exon_skip"].X.tolist() == [[2], [0]]
    assert mdata["exon_skip"].layers["total"].tolist() == [[3], [4]]


@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_isoform_group_totals_hand_example(fmt):
    var = pd.DataFrame({"gene": ["A", "A", "B", "B", "B", None]}, index=list("abcdef"))
    counts = np.array([[1, 3, 0, 0, 2, 9], [0, 0, 5, 5, 0, 1]])
    mdata = build_isoform(var, counts, fmt, **NO_FILTER)
    X = dense(mdata["isoform"].X)
    assert list(mdata["isoform"].var_names) == list("abcde")
    np.testing.assert_array_equal(X[:, :2].sum(1), [4, 0])
    np.testing.assert_array_equal(X[:, 2:].sum(1), [2, 10])
