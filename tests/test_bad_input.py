"""Bad input: every public entry point fails early, says what is wrong and how to fix it, and
leaves the MuData exactly as it was (CONTRACT.md, Guarantees).

Each case of ``CASES`` starts from a small screen (fitted as far as the call needs, in module
fixtures with very few steps), breaks one thing, snapshots the MuData, checks the error type and
message, and compares the snapshot after the failed call. Bad input must fail before any
fitting, so every case runs in milliseconds. The positive tests at the end cover inputs that
look unusual but must work: cells missing from a modality, modalities in different row order,
guides without cells, size factors that are NaN only on cells a fit does not use.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse

import dream_sc as ds

SIM = {"n_cells": 200, "n_genes": 15, "n_junctions": 10, "n_isoform_genes": 4}
STEPS = {"technical": 10, "cis": 20, "trans": 5}
OBS_COLUMNS = ["guide", "target", "cell_line", "sum_factor"]


# --------------------------------------------------------------------------------------------
# snapshot of everything a failed call could have touched
# --------------------------------------------------------------------------------------------
def _hash_array(values) -> str:
    h = hashlib.sha1()
    if sparse.issparse(values):
        csr = sparse.csr_matrix(values)
        h.update(f"sparse{csr.shape}{csr.dtype}".encode())
        for part in (csr.data, csr.indices, csr.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        arr = np.ascontiguousarray(np.asarray(values))
        h.update(f"dense{arr.shape}{arr.dtype}".encode())
        h.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
    return h.hexdigest()


def _hash_frame(frame: pd.DataFrame) -> str:
    h = hashlib.sha1(repr(list(frame.columns)).encode())
    h.update(repr(list(frame.index)).encode())
    if frame.shape[1]:
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def snapshot(mdata: md.MuData) -> dict:
    """Modality keys, global obs/obsm/uns and, per modality, var/varm/uns/layers and X."""
    snap = {
        "mod": list(mdata.mod),
        "obs_columns": list(mdata.obs.columns),
        "obs": _hash_frame(mdata.obs),
        "obsm": sorted(mdata.obsm.keys()),
        "uns": sorted(mdata.uns.keys()),
    }
    for name, adata in mdata.mod.items():
        snap[name] = {
            "shape": adata.shape,
            "obs_names": _hash_array(adata.obs_names.to_numpy(dtype=object)),
            "var_columns": list(adata.var.columns),
            "var": _hash_frame(adata.var),
            "varm": sorted(adata.varm.keys()),
            "uns": sorted(adata.uns.keys()),
            "registration": repr(dict(adata.uns.get("dream_sc", {}))),
            "layers": {k: _hash_array(v) for k, v in adata.layers.items()},
            "X": _hash_array(adata.X),
        }
    return snap


# --------------------------------------------------------------------------------------------
# fixtures: tiny screens fitted as far as a case needs (copy before use)
# --------------------------------------------------------------------------------------------
def _quiet(function: Callable, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.fixture(scope="module")
def screen():
    return _quiet(ds.datasets.simulate_screen, **SIM, seed=0)


@pytest.fixture(scope="module")
def technical(screen):
    mdata = screen.copy()
    _quiet(ds.tl.fit_technical, mdata, n_steps=STEPS["technical"], seed=0)
    _quiet(ds.tl.fit_technical, mdata, modality="splicing", n_steps=STEPS["technical"], seed=0)
    return mdata


@pytest.fixture(scope="module")
def cis(technical):
    mdata = technical.copy()
    _quiet(ds.tl.fit_cis, mdata, cis_feature="GFI1B", n_steps=STEPS["cis"], seed=0)
    return mdata


@pytest.fixture(scope="module")
def trans(cis):
    mdata = cis.copy()
    _quiet(ds.tl.fit_trans, mdata, n_steps=STEPS["trans"], test=False, seed=0)
    return mdata


@pytest.fixture(scope="module")
def high_moi():
    mdata = _quiet(ds.datasets.simulate_screen, **SIM, seed=0, moi="high")
    _quiet(ds.tl.fit_technical, mdata, n_steps=STEPS["technical"], use_all_cells=True, seed=0)
    return mdata


def guide_targets(mdata: md.MuData) -> dict[str, str]:
    return dict(mdata.uns["truth"]["guide_targets"])


# --------------------------------------------------------------------------------------------
# short calls (small n_steps: a case that reached the fit would still finish quickly)
# --------------------------------------------------------------------------------------------
def technical_fit(mdata, **kwargs):
    return ds.tl.fit_technical(mdata, **{"n_steps": 5, "seed": 0, **kwargs})


def cis_fit(mdata, **kwargs):
    return ds.tl.fit_cis(mdata, **{"cis_feature": "GFI1B", "n_steps": 5, "seed": 0, **kwargs})


def trans_fit(mdata, **kwargs):
    return ds.tl.fit_trans(mdata, **{"n_steps": 5, "seed": 0, "test": False, **kwargs})


# --------------------------------------------------------------------------------------------
# ways to break a screen (each mutates its argument)
# --------------------------------------------------------------------------------------------
def rows_of(mdata: md.MuData, target: str) -> np.ndarray:
    """Positions (in mdata.obs) of the cells with this target."""
    return np.flatnonzero((mdata.obs["target"].astype(str) == target).to_numpy())


def set_count(mdata, value, *, target="ntc", feature=3, modality="rna", nth=2):
    """Put ``value`` into one cell (the ``nth`` with ``target``) of ``feature``."""
    adata = mdata[modality]
    row = adata.obs_names.get_loc(mdata.obs_names[rows_of(mdata, target)[nth]])
    X = adata.X.toarray().astype(np.float64)
    X[row, feature] = value
    adata.X = X


def drop_obs(column: str):
    def prepare(mdata):
        del mdata.obs[column]

    return prepare


def set_sum_factor(value, target="ntc", n=1):
    def prepare(mdata):
        column = mdata.obs["sum_factor"].to_numpy().copy()
        column[rows_of(mdata, target)[:n]] = value
        mdata.obs["sum_factor"] = column

    return prepare


def move_to_new_cell_line(mdata, n=10):
    labels = mdata.obs["cell_line"].astype(str).to_numpy()
    labels[rows_of(mdata, "GFI1B")[:n]] = "Jurkat"
    mdata.obs["cell_line"] = pd.Categorical(labels)


def missing_cell_line(mdata):
    labels = mdata.obs["cell_line"].astype(object).to_numpy()
    labels[rows_of(mdata, "ntc")[0]] = None
    mdata.obs["cell_line"] = labels


def empty_rna(mdata):
    mdata.mod["rna"] = mdata["rna"][:, :0].copy()


def duplicate_var_names(mdata):
    names = mdata["rna"].var_names.tolist()
    names[2] = names[1]
    mdata["rna"].var_names = names


def missing_guide(mdata):
    guides = mdata.obs["guide"].astype(object).to_numpy()
    guides[rows_of(mdata, "GFI1B")[0]] = None
    mdata.obs["guide"] = guides


def zero_cis_gene(mdata):
    X = mdata["rna"].X.toarray()
    X[:, mdata["rna"].var_names.get_loc("GFI1B")] = 0
    mdata["rna"].X = sparse.csr_matrix(X)


def successes_above_trials(mdata):
    adata = mdata["splicing"]
    X, total = adata.X.toarray(), adata.layers["total"].toarray()
    row = adata.obs_names.get_loc(mdata.obs_names[rows_of(mdata, "ntc")[0]])
    X[row, 1] = total[row, 1] + 1
    adata.X = sparse.csr_matrix(X)


def group_with_missing_value(mdata):
    groups = mdata["isoform"].var["group"].astype(object).to_numpy()
    groups[0] = None
    mdata["isoform"].var["group"] = groups


def unregistered_float(mdata):
    adata = mdata["rna"]
    del adata.uns["dream_sc"]
    adata.X = np.log1p(adata.X.toarray().astype(np.float64))


def float_counts(mdata):
    mdata["rna"].X = mdata["rna"].X.toarray() * 0.5


def text_sum_factors(mdata):
    mdata.obs["sum_factor"] = "1.0"


def zero_count_cell(mdata):
    X = mdata["rna"].X.toarray()
    X[5] = 0
    mdata["rna"].X = sparse.csr_matrix(X)


def drop_assignment(mdata):
    del mdata.obsm["guide_assignment"]


def negative_assignment(mdata):
    table = mdata.obsm["guide_assignment"].copy()
    table.iloc[0, 0] = -1
    mdata.obsm["guide_assignment"] = table


def duplicated_obs_names(screen: md.MuData) -> md.MuData:
    rna = screen["rna"].copy()
    names = rna.obs_names.tolist()
    names[1] = names[0]
    rna.obs_names = names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData({"rna": rna})
    for column in OBS_COLUMNS:
        mdata.obs[column] = screen.obs[column].to_numpy()
    return mdata


def without_guide(name: str) -> dict[str, str]:
    return {g: t for g, t in guide_targets_of_high_moi().items() if g != name}


def guide_targets_of_high_moi() -> dict[str, str]:
    # the simulator's design: 10 guides against GFI1B and 5 non-targeting guides
    return {
        **{f"GFI1B_{i}": "GFI1B" for i in range(1, 11)},
        **{f"NTC_{i}": "ntc" for i in range(1, 6)},
    }


# --------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    start: str  # fixture: screen / technical / cis / trans / high_moi
    call: Callable[[md.MuData], object]
    error: type[Exception]
    match: str
    prepare: Callable[[md.MuData], None] | None = None
    build: Callable[[md.MuData], md.MuData] | None = None  # replaces the copy entirely
    marks: tuple = ()


NEEDS_SETTINGS_CHECK = (
    "needs `V.check_fit_settings(n_steps=n_steps, lr=lr, batch_size=batch_size, "
    "feature_chunk=feature_chunk, n_samples=n_samples)` (in _validation.py) called at the top of "
    "{func} in {file}, before any work"
)

CASES = [
    # ---- obs columns: missing / misspelt, with suggestions -----------------------------------
    Case(
        "technical-target_key-misspelt",
        "screen",
        lambda m: technical_fit(m, target_key="targets"),
        KeyError,
        r"Column 'targets' \(argument `target_key`\) not found in mdata\.obs\. Did you mean 'target'\?",
    ),
    Case(
        "technical-target-column-missing",
        "screen",
        technical_fit,
        KeyError,
        r"Column 'target' \(argument `target_key`\) not found.*Pass `target_key=`",
        prepare=drop_obs("target"),
    ),
    Case(
        "technical-technical_key-misspelt",
        "screen",
        lambda m: technical_fit(m, technical_key="cell_lines"),
        KeyError,
        r"Column 'cell_lines' \(argument `technical_key`\).*Did you mean 'cell_line'\?",
    ),
    Case(
        "technical-technical-column-missing",
        "screen",
        technical_fit,
        KeyError,
        r"Column 'cell_line' .*Pass `technical_key=` .*\(None if there are no technical covariates\)",
        prepare=drop_obs("cell_line"),
    ),
    Case(
        "technical-technical_key-list-with-unknown",
        "screen",
        lambda m: technical_fit(m, technical_key=["cell_line", "lane"]),
        KeyError,
        r"Column 'lane' \(argument `technical_key`\) not found",
    ),
    Case(
        "technical-technical-column-missing-values",
        "screen",
        technical_fit,
        ValueError,
        r"Technical column 'cell_line' has missing values in 1 cells; fill them",
        prepare=missing_cell_line,
    ),
    Case(
        "technical-sum_factor_key-misspelt",
        "screen",
        lambda m: technical_fit(m, sum_factor_key="sum_factors"),
        KeyError,
        r"Size factors 'sum_factors' not found in mdata\.obs\. Did you mean 'sum_factor'\?",
    ),
    Case(
        "technical-sum_factor-column-missing",
        "screen",
        technical_fit,
        KeyError,
        r"Size factors 'sum_factor' not found.*ds\.pp\.sum_factors\(mdata, key_added='sum_factor'\)",
        prepare=drop_obs("sum_factor"),
    ),
    Case(
        "technical-sum_factor-not-numeric",
        "screen",
        technical_fit,
        ValueError,
        r"Size factors in mdata\.obs\['sum_factor'\] must be numbers",
        prepare=text_sum_factors,
    ),
    Case(
        "cis-guide_key-misspelt",
        "technical",
        lambda m: cis_fit(m, guide_key="guides"),
        KeyError,
        r"Column 'guides' \(argument `guide_key`\).*Did you mean 'guide'\?",
    ),
    Case(
        "cis-guide-missing-values",
        "technical",
        cis_fit,
        ValueError,
        r"mdata\.obs\['guide'\] has 1 missing values",
        prepare=missing_guide,
    ),
    # ---- modality names ----------------------------------------------------------------------
    Case(
        "technical-unknown-modality",
        "screen",
        lambda m: technical_fit(m, modality="RNA"),
        KeyError,
        r"Modality 'RNA' not found in mdata; available: \['rna', 'splicing', 'isoform'\]\. Did you mean 'rna'\?",
    ),
    Case(
        "trans-unknown-modality",
        "cis",
        lambda m: trans_fit(m, modality="splice"),
        KeyError,
        r"Modality 'splice' not found.*Did you mean 'splicing'\?",
    ),
    Case(
        "sum_factors-unknown-modality",
        "screen",
        lambda m: ds.pp.sum_factors(m, modality="rnaa"),
        KeyError,
        r"Did you mean 'rna'\?",
    ),
    # ---- controls and technical groups -------------------------------------------------------
    Case(
        "technical-control-label-case",
        "screen",
        lambda m: technical_fit(m, control_label="NTC"),
        ValueError,
        r"No control cells: no cell has 'target' == 'NTC'\. Did you mean 'ntc'\?",
    ),
    Case(
        "technical-no-control-cells",
        "screen",
        lambda m: technical_fit(m, control_label="non-targeting"),
        ValueError,
        r"No control cells.*Labels present: \['GFI1B', 'ntc'\]\. Pass `control_label=`",
    ),
    Case(
        "cis-control-label-case",
        "technical",
        lambda m: cis_fit(m, control_label="NTC"),
        ValueError,
        r"No control cells.*Did you mean 'ntc'\?",
    ),
    Case(
        "technical-group-without-controls",
        "screen",
        technical_fit,
        ValueError,
        r"Technical group\(s\) \['Jurkat'\] of 'cell_line' have no control cells",
        prepare=move_to_new_cell_line,
    ),
    Case(
        "technical-reference-group-case",
        "screen",
        lambda m: technical_fit(m, reference_group="k562"),
        ValueError,
        r"reference_group 'k562' is not a group of 'cell_line'.*Did you mean 'K562'\?",
    ),
    Case(
        "cis-group-not-in-technical-fit",
        "technical",
        cis_fit,
        ValueError,
        r"Technical group\(s\) \['Jurkat'\] were not in the technical fit.*rerun `ds\.tl\.fit_technical`",
        prepare=move_to_new_cell_line,
    ),
    # ---- the cis gene and its guides ---------------------------------------------------------
    Case(
        "cis-feature-absent",
        "technical",
        lambda m: cis_fit(m, cis_feature="GFI1"),
        KeyError,
        r"cis_feature 'GFI1' is not a feature of modality 'rna'\. Did you mean 'GFI1B'\?",
    ),
    Case(
        "cis-target-absent",
        "technical",
        lambda m: cis_fit(m, cis_target="GFI1"),
        ValueError,
        r"No cells target 'GFI1' in mdata\.obs\['target'\]\. Did you mean 'GFI1B'\?",
    ),
    Case(
        "cis-feature-all-zero",
        "technical",
        cis_fit,
        ValueError,
        r"cis_feature 'GFI1B' has zero counts in every fitted cell",
        prepare=zero_cis_gene,
    ),
    # a single-guide target is fitted since issue 27 (tests/test_cis_single_guide.py)
    Case(
        "cis-escapers-not-bool",
        "technical",
        lambda m: cis_fit(m, escapers="yes"),
        ValueError,
        r"escapers must be True or False; got 'yes'",
    ),
    Case(
        "cis-from-binomial-modality",
        "technical",
        lambda m: cis_fit(m, modality="splicing", cis_feature="sj_0001"),
        ValueError,
        r"The cis gene must come from a count \(negbinom\) modality; 'splicing' is binomial",
    ),
    # ---- counts ------------------------------------------------------------------------------
    Case(
        "technical-nan-count",
        "screen",
        technical_fit,
        ValueError,
        r"Modality 'rna' contains NaN or infinite values.*; counts must be finite",
        prepare=lambda m: set_count(m, np.nan),
    ),
    Case(
        "technical-inf-count",
        "screen",
        technical_fit,
        ValueError,
        r"Modality 'rna' contains NaN or infinite values",
        prepare=lambda m: set_count(m, np.inf),
    ),
    Case(
        "technical-negative-count",
        "screen",
        technical_fit,
        ValueError,
        r"Modality 'rna' contains negative values; negbinom needs raw counts >= 0",
        prepare=lambda m: set_count(m, -1),
    ),
    Case(
        "technical-float-counts",
        "screen",
        technical_fit,
        ValueError,
        r"non-integer values; negbinom needs raw integer counts.*Pass `layer=`.*register the modality as 'normal'",
        prepare=float_counts,
    ),
    Case(
        "cis-nan-count-in-cis-cell",
        "technical",
        cis_fit,
        ValueError,
        r"Modality 'rna' contains NaN or infinite values",
        prepare=lambda m: set_count(m, np.nan, target="GFI1B", feature=0),
    ),
    Case(
        "technical-binomial-successes-above-trials",
        "screen",
        lambda m: technical_fit(m, modality="splicing"),
        ValueError,
        r"Modality 'splicing': successes exceed trials in 1 entries",
        prepare=successes_above_trials,
    ),
    Case(
        "technical-multinomial-group-missing",
        "screen",
        lambda m: technical_fit(m, modality="isoform"),
        ValueError,
        r"var\['group'\] of multinomial modality 'isoform' has 1 missing values",
        prepare=group_with_missing_value,
    ),
    Case(
        "technical-unknown-layer",
        "screen",
        lambda m: technical_fit(m, layer="counts"),
        KeyError,
        r"Layer 'counts' not found in modality 'rna'",
    ),
    # ---- shapes and names --------------------------------------------------------------------
    Case(
        "technical-empty-modality",
        "screen",
        technical_fit,
        ValueError,
        r"Modality 'rna' is empty \(200 cells x 0 features\)",
        prepare=empty_rna,
    ),
    Case(
        "technical-duplicated-var-names",
        "screen",
        technical_fit,
        ValueError,
        r"var_names of modality 'rna' are not unique \(e\.g\. \['gene_0001'\]\).*var_names_make_unique",
        prepare=duplicate_var_names,
    ),
    Case(
        "technical-duplicated-obs-names",
        "screen",
        technical_fit,
        ValueError,
        r"mdata\.obs_names are not unique.*obs_names_make_unique",
        build=duplicated_obs_names,
    ),
    # ---- size factors on used cells ------------------------------------------------------------
    Case(
        "technical-sum-factor-zero",
        "screen",
        technical_fit,
        ValueError,
        r"Size factors in mdata\.obs\['sum_factor'\] must be positive and finite; 1 cells are not",
        prepare=set_sum_factor(0.0),
    ),
    Case(
        "technical-sum-factor-negative",
        "screen",
        technical_fit,
        ValueError,
        r"must be positive and finite; 3 cells are not",
        prepare=set_sum_factor(-1.0, n=3),
    ),
    Case(
        "technical-sum-factor-nan",
        "screen",
        technical_fit,
        ValueError,
        r"must be positive and finite; 2 cells are not",
        prepare=set_sum_factor(np.nan, n=2),
    ),
    Case(
        "cis-sum-factor-nan-in-cis-cell",
        "technical",
        cis_fit,
        ValueError,
        r"must be positive and finite; 1 cells are not",
        prepare=set_sum_factor(np.nan, target="GFI1B"),
    ),
    # ---- high MOI ----------------------------------------------------------------------------
    Case(
        "cis-high-moi-unknown-guide",
        "high_moi",
        lambda m: cis_fit(m, guide_targets=without_guide("GFI1B_3")),
        ValueError,
        r"Guides \['GFI1B_3'\] of mdata\.obsm\['guide_assignment'\] have no entry in `guide_targets`",
    ),
    Case(
        "cis-high-moi-no-assignment",
        "high_moi",
        lambda m: cis_fit(m, guide_targets=guide_targets_of_high_moi()),
        KeyError,
        r"High-MOI fit needs mdata\.obsm\['guide_assignment'\]",
        prepare=drop_assignment,
    ),
    Case(
        "cis-high-moi-negative-assignment",
        "high_moi",
        lambda m: cis_fit(m, guide_targets=guide_targets_of_high_moi()),
        ValueError,
        r"mdata\.obsm\['guide_assignment'\] must hold non-negative finite values",
        prepare=negative_assignment,
    ),
    # ---- earlier steps missing -----------------------------------------------------------------
    Case(
        "cis-without-technical",
        "screen",
        cis_fit,
        KeyError,
        r"No technical fit 'dream_technical' in modality 'rna'; run `ds\.tl\.fit_technical\(mdata, modality='rna'",
    ),
    Case(
        "cis-technical-key-misspelt",
        "technical",
        lambda m: cis_fit(m, technical_key_added="dream_tech"),
        KeyError,
        r"No technical fit 'dream_tech' in modality 'rna'",
    ),
    Case(
        "trans-before-cis",
        "technical",
        trans_fit,
        KeyError,
        r"No cis fit 'dream_cis' found.*run `ds\.tl\.fit_cis\(mdata, cis_feature=\.\.\., key_added='dream_cis'\)` before fit_trans",
    ),
    Case(
        "trans-cis-key-misspelt",
        "cis",
        lambda m: trans_fit(m, cis_key="dream_cis_GFI1B"),
        KeyError,
        r"No cis fit 'dream_cis_GFI1B' found",
    ),
    Case(
        "trans-modality-without-technical",
        "cis",
        lambda m: trans_fit(m, modality="isoform"),
        KeyError,
        r"No technical fit 'dream_technical' in modality 'isoform'",
    ),
    Case(
        "get-cis-dosage-before-fit",
        "technical",
        ds.get.cis_dosage,
        KeyError,
        r"No cis fit 'dream_cis' in mdata\.uns; run `ds\.tl\.fit_cis",
    ),
    Case(
        "get-trans-results-before-fit",
        "cis",
        ds.get.trans_results,
        KeyError,
        r"No trans fit 'dream_trans' in modality 'rna'; run `ds\.tl\.fit_trans",
    ),
    Case(
        "get-trans-curves-before-fit",
        "cis",
        lambda m: ds.get.trans_curves(m, dose=[1.0]),
        KeyError,
        r"No trans fit 'dream_trans' in modality 'rna'",
    ),
    Case(
        "get-trans-results-wrong-key",
        "trans",
        lambda m: ds.get.trans_results(m, key="dream_trans_GFI1B"),
        KeyError,
        r"No trans fit 'dream_trans_GFI1B' in modality 'rna'",
    ),
    # ---- wrong options -----------------------------------------------------------------------
    Case(
        "trans-wrong-function",
        "cis",
        lambda m: trans_fit(m, function="hill"),
        ValueError,
        r"function must be one of single_hill, additive_hill, polynomial; got 'hill'",
    ),
    Case(
        "trans-no-permutations",
        "cis",
        lambda m: trans_fit(m, test=True, n_permutations=0),
        ValueError,
        r"n_permutations must be >= 1 when test=True",
    ),
    Case(
        "technical-wrong-device",
        "screen",
        lambda m: technical_fit(m, device="gpu"),
        ValueError,
        r"device must be 'auto', 'cpu' or 'cuda'; got 'gpu'",
    ),
    Case(
        "cis-cuda-unavailable",
        "technical",
        lambda m: cis_fit(m, device="cuda"),
        ValueError,
        r"device='cuda' was requested but CUDA is not available",
        marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),),
    ),
    Case(
        "get-cis-dosage-wrong-level",
        "cis",
        lambda m: ds.get.cis_dosage(m, level="guides"),
        ValueError,
        r"level must be 'guide' or 'cell'; got 'guides'",
    ),
    Case(
        "get-trans-curves-nonpositive-dose",
        "trans",
        lambda m: ds.get.trans_curves(m, dose=[0.0, 1.0]),
        ValueError,
        r"dose must hold positive finite dosages",
    ),
    Case(
        "get-trans-curves-unfitted-feature",
        "trans",
        lambda m: ds.get.trans_curves(m, features=["GFI1B"]),
        KeyError,
        r"Features \['GFI1B'\] were not fitted in 'rna'",
    ),
    # ---- registration ------------------------------------------------------------------------
    Case(
        "register-wrong-distribution",
        "screen",
        lambda m: ds.pp.register_modality(m, "rna", distribution="negbinomial"),
        ValueError,
        r"distribution must be one of negbinom, binomial, multinomial, normal, studentt; got 'negbinomial'\. Did you mean 'negbinom'",
    ),
    Case(
        "register-binomial-without-total",
        "screen",
        lambda m: ds.pp.register_modality(m, "rna", distribution="binomial"),
        KeyError,
        r"Binomial modality 'rna' needs the trials in layer 'total'; layers present: \[\]\. Pass `total_layer=`",
    ),
    Case(
        "register-total-layer-for-negbinom",
        "screen",
        lambda m: ds.pp.register_modality(
            m, "splicing", distribution="negbinom", total_layer="total"
        ),
        ValueError,
        r"`total_layer` only applies to distribution='binomial'",
    ),
    Case(
        "register-multinomial-unknown-group-key",
        "screen",
        lambda m: ds.pp.register_modality(
            m, "isoform", distribution="multinomial", group_key="gene"
        ),
        KeyError,
        r"Multinomial modality 'isoform' needs var\['gene'\]",
    ),
    Case(
        "register-negbinom-on-float-data",
        "screen",
        lambda m: ds.pp.register_modality(m, "rna", distribution="negbinom"),
        ValueError,
        r"Modality 'rna' contains non-integer values",
        prepare=float_counts,
    ),
    Case(
        "technical-unregistered-non-integer",
        "screen",
        technical_fit,
        ValueError,
        r"Modality 'rna' is not registered and its X is not non-negative integer counts.*"
        r"`ds\.pp\.register_modality\(mdata, 'rna', distribution='normal'\)`",
        prepare=unregistered_float,
    ),
    # ---- sum_factors ---------------------------------------------------------------------------
    Case(
        "sum_factors-unknown-layer",
        "screen",
        lambda m: ds.pp.sum_factors(m, layer="counts"),
        KeyError,
        r"Layer 'counts' not found in modality 'rna'; layers: \[\]",
    ),
    Case(
        "sum_factors-zero-count-cell",
        "screen",
        ds.pp.sum_factors,
        ValueError,
        r"1 cells have zero counts in 'rna'; filter them",
        prepare=zero_count_cell,
    ),
    Case(
        "sum_factors-float-counts",
        "screen",
        ds.pp.sum_factors,
        ValueError,
        r"Modality 'rna' contains non-integer values",
        prepare=float_counts,
    ),
    # ---- not a MuData ------------------------------------------------------------------------
    Case(
        "technical-anndata-input",
        "screen",
        lambda m: technical_fit(m["rna"]),
        ValueError,
        r"Expected a mudata\.MuData, got AnnData\. Wrap an AnnData with `mudata\.MuData\(\{'rna': adata\}\)`",
    ),
    Case(
        "sum_factors-anndata-input",
        "screen",
        lambda m: ds.pp.sum_factors(m["rna"]),
        ValueError,
        r"Expected a mudata\.MuData, got AnnData",
    ),
    Case(
        "register-dataframe-input",
        "screen",
        lambda m: ds.pp.register_modality(m.obs, "rna", distribution="negbinom"),
        ValueError,
        r"Expected a mudata\.MuData, got DataFrame",
    ),
    # ---- optimisation settings (checks still to be wired into the tl functions) --------------
    Case(
        "technical-zero-steps",
        "screen",
        lambda m: technical_fit(m, n_steps=0),
        ValueError,
        r"n_steps must be a positive integer; got 0",
    ),
    Case(
        "technical-negative-batch-size",
        "screen",
        lambda m: technical_fit(m, batch_size=-5),
        ValueError,
        r"batch_size must be a positive integer or None \(automatic\); got -5",
    ),
    Case(
        "technical-negative-feature-chunk",
        "screen",
        lambda m: technical_fit(m, feature_chunk=-1),
        ValueError,
        r"feature_chunk must be a positive integer or None \(automatic\); got -1",
    ),
    Case(
        "cis-zero-steps",
        "technical",
        lambda m: cis_fit(m, n_steps=0),
        ValueError,
        r"n_steps must be a positive integer; got 0",
    ),
    Case(
        "trans-zero-steps",
        "cis",
        lambda m: trans_fit(m, n_steps=0),
        ValueError,
        r"n_steps must be a positive integer; got 0",
    ),
    Case(
        "cis-high-moi-no-guide-with-cells",
        "high_moi",
        lambda m: cis_fit(m, guide_targets=guide_targets_of_high_moi()),
        ValueError,
        r"The cis target 'GFI1B' has no guide with cells",
        prepare=lambda m: _no_cis_guide_with_cells(m),
    ),
    Case(
        "cis-escapers-high-moi",
        "high_moi",
        lambda m: cis_fit(m, guide_targets=guide_targets_of_high_moi(), escapers=True),
        ValueError,
        r"escapers=True needs a low-MOI screen",
    ),
]


def _no_cis_guide_with_cells(mdata):
    """Two GFI1B guides in the assignment, neither with any cell."""
    table = mdata.obsm["guide_assignment"]
    keep = ["GFI1B_1", "GFI1B_2"] + [g for g in table.columns if g.startswith("NTC")]
    table = table[keep].copy()
    table["GFI1B_1"] = 0
    table["GFI1B_2"] = 0
    mdata.obsm["guide_assignment"] = table


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, request):
    source = request.getfixturevalue(case.start)
    mdata = case.build(source) if case.build else source.copy()
    if case.prepare is not None:
        case.prepare(mdata)
    before = snapshot(mdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fit that (wrongly) runs may warn about convergence
        with pytest.raises(case.error, match=case.match):
            case.call(mdata)
    assert snapshot(mdata) == before


def test_case_matrix_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


def test_non_mudata_error_is_type_and_value_error(screen):
    with pytest.raises(TypeError, match="Expected a mudata.MuData"):
        ds.tl.fit_technical(screen["rna"])
    with pytest.raises(ValueError, match="Expected a mudata.MuData"):
        ds.tl.fit_cis(screen["rna"], cis_feature="GFI1B")


def test_snapshot_sees_changes(screen):
    """The helper must notice every kind of write a fit makes."""
    mdata = screen.copy()
    before = snapshot(mdata)
    edits = [
        lambda m: m.obs.__setitem__("x", 1.0),
        lambda m: m.obsm.__setitem__("x", np.zeros((m.n_obs, 1))),
        lambda m: m.uns.__setitem__("x", 1),
        lambda m: m["rna"].var.__setitem__("x", 1.0),
        lambda m: m["rna"].varm.__setitem__("x", np.zeros((m["rna"].n_vars, 1))),
        lambda m: m["rna"].uns.__setitem__("x", 1),
        lambda m: m["rna"].layers.__setitem__("x", m["rna"].X.copy()),
        lambda m: m["rna"].uns.__setitem__("dream_sc", {"distribution": "normal"}),
        lambda m: m.obs.__setitem__("sum_factor", m.obs["sum_factor"] * 2),
        lambda m: setattr(m["splicing"], "X", m["splicing"].X * 2),
    ]
    for edit in edits:
        changed = screen.copy()
        edit(changed)
        assert snapshot(changed) != before
    assert snapshot(mdata) == before


# --------------------------------------------------------------------------------------------
# unusual but valid input
# --------------------------------------------------------------------------------------------
def _rebuild(screen: md.MuData, modalities: dict[str, AnnData]) -> md.MuData:
    """A MuData of ``modalities`` with the screen's obs columns aligned by obs_names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData(modalities)
    for column in OBS_COLUMNS:
        mdata.obs[column] = screen.obs[column].reindex(mdata.obs_names)
    return mdata


def test_modalities_in_different_row_order_align_by_name(screen):
    perm = np.random.default_rng(5).permutation(screen.n_obs)
    straight = _rebuild(
        screen, {"splicing": screen["splicing"].copy(), "rna": screen["rna"].copy()}
    )
    shuffled = _rebuild(
        screen, {"splicing": screen["splicing"].copy(), "rna": screen["rna"][perm].copy()}
    )
    assert list(shuffled.obs_names) == list(straight.obs_names)
    assert list(shuffled["rna"].obs_names) != list(straight["rna"].obs_names)
    for mdata in (straight, shuffled):
        _quiet(ds.tl.fit_technical, mdata, n_steps=STEPS["technical"], seed=0)
        _quiet(ds.tl.fit_cis, mdata, cis_feature="GFI1B", n_steps=STEPS["cis"], seed=0)
    pd.testing.assert_frame_equal(
        shuffled["rna"].varm["dream_technical"], straight["rna"].varm["dream_technical"]
    )
    for stat in ("mean", "sd", "q05", "q95"):
        column = f"dream_cis_dose_{stat}"
        np.testing.assert_array_equal(shuffled.obs[column], straight.obs[column])
    # and the shuffled fit is not the same as fitting the rows by position
    positional = straight.copy()
    positional["rna"].X = screen["rna"][perm].X.copy()
    _quiet(ds.tl.fit_technical, positional, n_steps=STEPS["technical"], seed=0)
    assert not np.allclose(
        positional["rna"].varm["dream_technical"]["baseline_mean"],
        straight["rna"].varm["dream_technical"]["baseline_mean"],
    )


def test_cells_missing_from_a_modality_are_left_out(screen):
    rng = np.random.default_rng(1)
    ntc, cis_cells = rows_of(screen, "ntc"), rows_of(screen, "GFI1B")
    absent = np.concatenate(
        [rng.choice(ntc, 8, replace=False), rng.choice(cis_cells, 20, replace=False)]
    )
    present = np.setdiff1d(np.arange(screen.n_obs), absent)
    mdata = _rebuild(
        screen, {"splicing": screen["splicing"].copy(), "rna": screen["rna"][present].copy()}
    )
    assert mdata.n_obs == screen.n_obs and mdata["rna"].n_obs == screen.n_obs - 28
    _quiet(ds.tl.fit_technical, mdata, n_steps=STEPS["technical"], seed=0)
    assert mdata["rna"].uns["dream_technical"]["n_cells"] == len(ntc) - 8
    _quiet(ds.tl.fit_cis, mdata, cis_feature="GFI1B", n_steps=STEPS["cis"], seed=0)
    assert mdata.uns["dream_cis"]["n_cells"] == screen.n_obs - 28
    dose = mdata.obs["dream_cis_dose_mean"]
    missing = ~mdata.obs_names.isin(mdata["rna"].obs_names)
    assert missing.sum() == 28
    assert dose[missing].isna().all() and np.isfinite(dose[~missing]).all()
    guides = ds.get.cis_dosage(mdata)
    counts = mdata.obs.loc[~missing, "guide"].astype(str).value_counts()
    assert guides["n_cells"].to_dict() == counts.loc[guides.index].to_dict()
    _quiet(ds.tl.fit_trans, mdata, n_steps=STEPS["trans"], test=False, seed=0)
    assert mdata["rna"].uns["dream_trans"]["n_cells"] == screen.n_obs - 28
    # the splicing modality has every cell: its fits use all of them
    _quiet(ds.tl.fit_technical, mdata, modality="splicing", n_steps=STEPS["technical"], seed=0)
    assert mdata["splicing"].uns["dream_technical"]["n_cells"] == len(ntc)


def test_sum_factors_of_unused_cells_may_be_missing(screen):
    mdata = screen.copy()
    set_sum_factor(np.nan, target="GFI1B", n=10)(mdata)
    _quiet(ds.tl.fit_technical, mdata, n_steps=STEPS["technical"], seed=0)
    table = mdata["rna"].varm["dream_technical"]
    assert np.isfinite(table.to_numpy()).all()


def test_unused_guide_category_is_ignored(technical):
    mdata = technical.copy()
    mdata.obs["guide"] = mdata.obs["guide"].cat.add_categories(["GFI1B_99"])
    _quiet(ds.tl.fit_cis, mdata, cis_feature="GFI1B", n_steps=STEPS["cis"], seed=0)
    guides = ds.get.cis_dosage(mdata)
    assert "GFI1B_99" not in guides.index
    assert sorted(guides.index) == sorted(technical.obs["guide"].astype(str).unique())
    assert (guides["n_cells"] > 0).all()


def test_high_moi_guide_without_cells_is_ignored(high_moi):
    mdata = high_moi.copy()
    table = mdata.obsm["guide_assignment"].copy()
    table["GFI1B_3"] = 0
    mdata.obsm["guide_assignment"] = table
    _quiet(
        ds.tl.fit_cis,
        mdata,
        cis_feature="GFI1B",
        n_steps=STEPS["cis"],
        seed=0,
        guide_targets=guide_targets_of_high_moi(),
    )
    guides = ds.get.cis_dosage(mdata)
    assert "GFI1B_3" not in guides.index
    assert len(guides) == table.shape[1] - 1
    assert (guides["n_cells"] > 0).all()


def test_high_moi_guide_without_cells_is_logged(high_moi, caplog):
    mdata = high_moi.copy()
    table = mdata.obsm["guide_assignment"].copy()
    table["GFI1B_3"] = 0
    mdata.obsm["guide_assignment"] = table
    logger = logging.getLogger("dream_sc")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="dream_sc"):
            _quiet(
                ds.tl.fit_cis,
                mdata,
                cis_feature="GFI1B",
                n_steps=STEPS["cis"],
                seed=0,
                guide_targets=guide_targets_of_high_moi(),
            )
    finally:
        logger.removeHandler(caplog.handler)
    assert any("GFI1B_3" in r.getMessage() for r in caplog.records)


def test_failed_registration_keeps_previous_one(screen):
    mdata = screen.copy()
    previous = dict(mdata["isoform"].uns["dream_sc"])
    with pytest.raises(KeyError, match="needs var\\['gene'\\]"):
        ds.pp.register_modality(mdata, "isoform", distribution="multinomial", group_key="gene")
    assert dict(mdata["isoform"].uns["dream_sc"]) == previous
    del mdata["rna"].uns["dream_sc"]
    float_counts(mdata)
    with pytest.raises(ValueError, match="non-integer"):
        ds.pp.register_modality(mdata, "rna", distribution="negbinom")
    assert "dream_sc" not in mdata["rna"].uns
    ds.pp.register_modality(mdata, "rna", distribution="normal")
    assert mdata["rna"].uns["dream_sc"]["distribution"] == "normal"
