"""pp builders give the same MuData under mudata 0.3 and 0.4 (issue 16).

mudata 0.3's ``update()`` and ``copy()`` pull every modality's obs/var columns into the global
tables by default, 0.4's do not; the builders force the 0.4 behaviour, whatever the installed
version or the user's ``pull_on_update`` setting. CI runs this file under both versions.
"""

from __future__ import annotations

import contextlib
import warnings

import mudata as md
import numpy as np
import pytest

import dream_sc as ds
from dream_sc.pp._feature_counts import _non_legacy_update
from test_isoform_usage import make_mdata as make_transcripts
from test_splicing_builders import make_mdata as make_junctions


def pull_on_update(value: bool | None) -> contextlib.AbstractContextManager:
    """mudata's ``pull_on_update`` set to ``value`` (0.3 options, 0.4 settings; None: as is)."""
    if value is None:
        return contextlib.nullcontext()
    if hasattr(md, "set_options"):
        return md.set_options(pull_on_update=value)
    return md.settings.override(pull_on_update=value)


def screen(make) -> md.MuData:
    """An input MuData built the same way under both mudata versions, with obs columns."""
    with _non_legacy_update(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = make()
        mdata.update()
    mdata.obs["cell_line"] = "A"
    (mod,) = mdata.mod
    mdata[mod].obs["qc"] = np.arange(mdata.n_obs, dtype=float)
    return mdata


def check_built(mdata: md.MuData, source: str, built: list[str]) -> None:
    assert list(mdata.mod) == [source, *built]
    assert list(mdata.obs.columns) == ["cell_line", "sum_factor"]  # no `<mod>:qc` pulled
    assert list(mdata.var.columns) == []  # no `<mod>:gene` pulled
    assert list(mdata[source].obs.columns) == ["qc"]
    for name in built:
        assert list(mdata[name].obs.columns) == []
        assert list(mdata[name].obs_names) == list(mdata[source].obs_names)


BUILDERS = {
    "splicing": (make_junctions, "junctions", ["sj", "donor", "acceptor", "exon_skip"]),
    "isoform": (make_transcripts, "transcripts", ["isoform"]),
}


def build(kind: str, mdata: md.MuData, *, copy: bool):
    source = BUILDERS[kind][1]
    out = ds.pp.sum_factors(mdata, modality=source, copy=copy)
    target = out if copy else mdata
    if kind == "splicing":
        res = ds.pp.splicing_from_junctions(target, min_total_reads=1, min_cells_covered=1)
    else:
        res = ds.pp.isoform_usage(target, min_total_reads=1, min_cells_covered=1)
    assert res is None
    return target


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("user_pull", [None, False, True])
def test_builders_do_not_depend_on_pull_on_update(kind, copy, user_pull):
    make, source, built = BUILDERS[kind]
    mdata = screen(make)
    with pull_on_update(user_pull), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no legacy update on our side
        out = build(kind, mdata, copy=copy)
    check_built(out, source, built)
    reference = screen(make)
    build(kind, reference, copy=False)
    for name in built:
        a, b = out[name], reference[name]
        assert list(a.var_names) == list(b.var_names)
        np.testing.assert_array_equal(
            np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X),
            np.asarray(b.X.todense() if hasattr(b.X, "todense") else b.X),
        )
    if copy:  # the input is left as it was
        assert list(mdata.mod) == [source]
        assert list(mdata.obs.columns) == ["cell_line"]
