"""Out-of-core input: Dask arrays and backed h5mu fit exactly like the in-memory data."""

from __future__ import annotations

import pickle
import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import dream_sc as ds
from dream_sc import _lazy
from dream_sc._data import modality_data
from dream_sc.models.trans_summary import DoseAxis
from dream_sc.tl import _null as null_module
from dream_sc.tl._chunk_recipes import chunk_data

da = pytest.importorskip("dask.array")

from test_bad_input import snapshot  # noqa: E402

STEPS = {"technical": 12, "cis": 30, "trans": 10}
TECH = dict(n_steps=STEPS["technical"], feature_chunk=5, seed=0)
TRANS = dict(
    n_steps=STEPS["trans"],
    feature_chunk=5,
    seed=0,
    n_permutations=2,
    n_refine_draws=20,
    function="single_hill",
)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Whole-matrix passes read 3-column blocks (160 cells), so blocks really are joined."""
    monkeypatch.setattr(_lazy, "BLOCK_ELEMENTS", 480)
    before = ds.settings.torch_threads
    ds.settings.torch_threads = 1
    yield
    ds.settings.torch_threads = before


@pytest.fixture(scope="module")
def screen():
    """Counts (dense), splicing (binomial, sparse), isoforms and scores; cis fit done."""
    mdata = _quiet(
        ds.datasets.simulate_screen,
        n_cells=160,
        n_genes=14,
        n_junctions=8,
        n_isoform_genes=2,
        continuous=True,
        n_scores=4,
        seed=3,
    )
    mdata["rna"].X = mdata["rna"].X.toarray()
    _quiet(ds.tl.fit_technical, mdata, **TECH)
    _quiet(ds.tl.fit_cis, mdata, cis_feature="GFI1B", n_steps=STEPS["cis"], seed=0)
    return mdata


def _fit(mdata, modality: str, **backend):
    """Technical then trans fit of ``modality`` (in place)."""
    _quiet(ds.tl.fit_technical, mdata, modality=modality, **TECH, **backend)
    _quiet(ds.tl.fit_trans, mdata, modality=modality, **TRANS, **backend)
    return mdata


@pytest.fixture(scope="module")
def reference(screen):
    """The in-memory fits of both count modalities."""
    mdata = screen.copy()
    for modality in ("rna", "splicing"):
        _fit(mdata, modality)
    return mdata


def _assert_same(a, b, key: str) -> None:
    """Every stored varm entry of ``key`` and its uns record (but timings) are identical."""
    varm = [k for k in a.varm if k.startswith(key)]
    assert varm and varm == [k for k in b.varm if k.startswith(key)]
    for k in varm:
        x, y = a.varm[k], b.varm[k]
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y, check_exact=True)
        else:
            np.testing.assert_array_equal(x, y)
    for k, value in a.uns[key].items():
        if k in ("params", "seconds", "null_seconds", "versions"):
            continue
        if isinstance(value, dict):
            assert value.keys() == b.uns[key][k].keys()
        else:
            np.testing.assert_array_equal(np.asarray(value), np.asarray(b.uns[key][k]), k)


def _assert_fits_equal(a, b, modality: str) -> None:
    _assert_same(a[modality], b[modality], "dream_technical")
    _assert_same(a[modality], b[modality], "dream_trans")


def _as_dask(matrix, chunks=(64, 5)):
    return da.from_array(matrix, chunks=chunks, asarray=False)


def test_dask_arrays_equal_in_memory(screen, reference):
    mdata = screen.copy()
    mdata["rna"].X = _as_dask(mdata["rna"].X)
    mdata["splicing"].X = _as_dask(sparse.csr_matrix(mdata["splicing"].X))
    mdata["splicing"].layers["total"] = _as_dask(
        sparse.csr_matrix(mdata["splicing"].layers["total"])
    )
    for modality in ("rna", "splicing"):
        data = modality_data(mdata, modality, mdata.obs_names)
        assert data.lazy
        _fit(mdata, modality)
        _assert_fits_equal(reference, mdata, modality)
    assert isinstance(mdata["rna"].X, type(_as_dask(np.zeros((2, 2)))))  # never replaced
    # the cis fit and the observed guide summaries read their columns the same way
    _quiet(ds.tl.fit_cis, mdata, cis_feature="GFI1B", n_steps=STEPS["cis"], seed=0)
    np.testing.assert_array_equal(
        mdata.obsm["dream_cis_dose_samples"], screen.obsm["dream_cis_dose_samples"]
    )
    for modality, names in (("rna", ["gene_0003", "gene_0001"]), ("splicing", None)):
        names = names or list(mdata[modality].var_names[[5, 2]])
        pd.testing.assert_frame_equal(
            ds.get.guide_observed(mdata, names, modality=modality),
            ds.get.guide_observed(reference, names, modality=modality),
            check_exact=True,
        )


def _write(mdata, path, layout: str) -> None:
    out = mdata.copy()
    for modality in ("rna", "splicing"):
        adata = out[modality]
        names = [None, *adata.layers]
        for name in names:
            matrix = adata.X if name is None else adata.layers[name]
            if layout == "dense":
                matrix = matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)
            else:
                matrix = getattr(sparse.csr_matrix(matrix), f"to{layout}")()
            if name is None:
                adata.X = matrix
            else:
                adata.layers[name] = matrix
    _quiet(out.write, path)


@pytest.mark.parametrize("layout", ["dense", "csc", "csr"])
def test_backed_h5mu_equals_in_memory(screen, reference, tmp_path, layout):
    path = tmp_path / f"screen_{layout}.h5mu"
    _write(screen, path, layout)
    backed = _quiet(md.read_h5mu, path, backed=True)
    modalities = ("rna", "splicing") if layout == "csc" else ("rna",)
    for modality in modalities:
        assert modality_data(backed, modality, backed.obs_names).lazy
        _fit(backed, modality)
        # the original in-memory object, not a reload: the h5mu round trip changes nothing
        _assert_fits_equal(reference, backed, modality)


class _Recording:
    """An array that records every slice read from it and refuses the whole matrix."""

    def __init__(self, values: np.ndarray):
        self.values, self.shape, self.dtype, self.ndim = values, values.shape, values.dtype, 2
        self.widths: list[int] = []

    def __getitem__(self, key):
        out = self.values[key]
        if out.shape == self.shape:
            raise AssertionError("the whole matrix was read")
        self.widths.append(out.shape[1])
        return out


def test_whole_matrix_is_never_read(screen, tmp_path, monkeypatch):
    # whole-matrix passes and the score test's feature blocks: 1-3 columns at a time
    monkeypatch.setattr(_lazy, "BLOCK_ELEMENTS", 100)
    monkeypatch.setattr(null_module, "_DENSE_BUDGET", 500)
    reference = _fit(screen.copy(), "rna")  # (score-test blocks change the last digits)
    mdata = screen.copy()
    recording = _Recording(np.asarray(mdata["rna"].X))
    mdata["rna"].X = da.from_array(
        recording, chunks=recording.shape, asarray=False, meta=np.empty((0, 0))
    )
    _fit(mdata, "rna")
    _assert_fits_equal(reference, mdata, "rna")
    n_features = mdata["rna"].n_vars
    assert recording.widths and max(recording.widths) <= TRANS["feature_chunk"] < n_features

    # backed h5mu: every read of the file is a narrow column range
    path = tmp_path / "screen.h5mu"
    _write(screen, path, "csc")
    widths = []
    read = _lazy.H5Source.read

    def recorded(self, start, stop):
        widths.append(stop - start)
        return read(self, start, stop)

    monkeypatch.setattr(_lazy.H5Source, "read", recorded)
    backed = _quiet(md.read_h5mu, path, backed=True)
    _fit(backed, "splicing")
    _assert_fits_equal(_fit(screen.copy(), "splicing"), backed, "splicing")
    assert widths and max(widths) <= TRANS["feature_chunk"] < backed["splicing"].n_vars


def test_chunk_tasks_carry_the_file_not_the_data(screen, tmp_path):
    path = tmp_path / "screen.h5mu"
    _write(screen, path, "csc")
    backed = _quiet(md.read_h5mu, path, backed=True)
    data = modality_data(backed, "splicing", backed.obs_names[::2])
    part = chunk_data(data, np.arange(2, 6))
    assert isinstance(part.X, _lazy.LazyMatrix) and isinstance(part.total, _lazy.LazyMatrix)
    assert part.X.source == _lazy.H5Source(str(path), "/mod/splicing/X")
    assert part.total.source.key == "/mod/splicing/layers/total"
    assert len(pickle.dumps(part)) < 2000  # a path, a packed row mask and 4 column numbers
    memory = modality_data(screen, "splicing", screen.obs_names[::2])
    loaded = pickle.loads(pickle.dumps(part))
    expected = chunk_data(memory, np.arange(2, 6))
    for a, b in ((loaded.X, expected.X), (loaded.total, expected.total)):
        a = _lazy.materialise(a)  # what the chunk task does where it runs
        assert a.format == b.format == "csr" and a.dtype == b.dtype == np.float32
        for field in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_dask_backend_reads_slices_on_the_workers(screen, reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    path = tmp_path / "screen.h5mu"
    _write(screen, path, "csc")
    from anndata.experimental import read_elem_lazy

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        backed = _quiet(md.read_h5mu, path, backed=True)
        _fit(backed, "splicing", backend="dask", client=client)
        _assert_fits_equal(reference, backed, "splicing")

        import h5py

        lazy = screen.copy()  # a Dask array from the file (anndata's lazy reader)
        with h5py.File(path, "r") as f:
            lazy["rna"].X = read_elem_lazy(f["mod/rna/X"])
        _fit(lazy, "rna", backend="dask", client=client)
        _assert_fits_equal(reference, lazy, "rna")
        assert lazy["rna"].uns["dream_trans"]["params"]["backend"] == "dask"


REFUSAL = (
    "Modality {m!r} is out of core (a Dask array or a backed h5mu) but its {d!r} likelihood "
    "needs the whole matrix in memory; out-of-core input is supported for 'negbinom' and "
    "'binomial' modalities. Load it into memory first: `mdata[{m!r}].X = "
    "mdata[{m!r}].X.compute()` for a Dask array (the same for its layers), or read the file "
    "without `backed=True`."
)


@pytest.mark.parametrize(("modality", "family"), [("isoform", "multinomial"), ("score", "normal")])
def test_families_needing_memory_are_refused(screen, modality, family):
    mdata = screen.copy()
    matrix = mdata[modality].X
    mdata[modality].X = _as_dask(matrix.toarray() if sparse.issparse(matrix) else matrix)
    before = snapshot(mdata)
    message = REFUSAL.format(m=modality, d=family)
    with pytest.raises(ValueError) as err:
        ds.tl.fit_technical(mdata, modality=modality, n_steps=5)
    assert str(err.value) == message
    assert snapshot(mdata) == before


def test_bad_counts_are_found_block_by_block(screen):
    mdata = screen.copy()
    X = np.asarray(mdata["rna"].X, dtype=np.float64).copy()
    control = np.flatnonzero((mdata.obs["target"] == "ntc").to_numpy())  # fitted cells
    X[control[7], 12] = 2.5  # in the last block
    mdata["rna"].X = _as_dask(X)
    before = snapshot(mdata)
    with pytest.raises(ValueError, match=r"^Modality 'rna' contains non-integer values; negbinom"):
        ds.tl.fit_technical(mdata, n_steps=5)
    assert snapshot(mdata) == before

    total = sparse.csr_matrix(mdata["splicing"].layers["total"]).toarray()
    X = sparse.csr_matrix(mdata["splicing"].X).toarray()
    rows, cols = np.nonzero(total[control])
    X[control[rows[:3]], cols[:3]] += 1000  # 3 successes > trials
    mdata["splicing"].X = _as_dask(sparse.csr_matrix(X))
    with pytest.raises(ValueError, match=r": successes exceed trials in 3 entries; X must hold"):
        ds.tl.fit_technical(mdata, modality="splicing", n_steps=5)


def test_dose_axis_is_independent_of_memory_layout():
    """Guide draws come back C-ordered from an h5mu: the axis must not depend on the layout."""
    draws = np.asfortranarray(np.random.default_rng(0).normal(size=(12, 300)))
    assert not np.array_equal(
        (draws * np.log(2)).mean(1), (np.ascontiguousarray(draws) * np.log(2)).mean(1)
    )
    a = DoseAxis.from_guides(draws, np.arange(12) + 3.0)
    b = DoseAxis.from_guides(np.ascontiguousarray(draws), np.arange(12) + 3.0)
    np.testing.assert_array_equal(a.grid, b.grid)
    np.testing.assert_array_equal(a.shift, b.shift)


def test_overdispersed_binomial_registered_and_fitted_out_of_core(screen):
    """Registration checks and the concentration moments run block by block as well."""
    memory, lazy = screen.copy(), screen.copy()
    lazy["splicing"].X = _as_dask(sparse.csr_matrix(lazy["splicing"].X))
    lazy["splicing"].layers["total"] = _as_dask(sparse.csr_matrix(lazy["splicing"].layers["total"]))
    for mdata in (memory, lazy):
        ds.pp.register_modality(
            mdata, "splicing", distribution="binomial", total_layer="total", overdispersed=True
        )
        _quiet(ds.tl.fit_technical, mdata, modality="splicing", **TECH)
    _assert_same(memory["splicing"], lazy["splicing"], "dream_technical")
    assert "concentration_mean" in lazy["splicing"].varm["dream_technical"]


def test_lazy_trials_of_another_shape_are_refused():
    from dream_sc._validation import check_binomial

    k = _lazy.LazyMatrix(_lazy.DaskSource(_as_dask(np.zeros((6, 4)))))
    n = _lazy.LazyMatrix(_lazy.DaskSource(_as_dask(np.ones((6, 3)))))
    message = (
        "Modality 'x': successes (6, 4) and trials (6, 3) differ in shape; the `total_layer` "
        "must hold the trials of every cell and feature of X."
    )
    with pytest.raises(ValueError) as err:
        check_binomial(k, n, "Modality 'x'")
    assert str(err.value) == message
