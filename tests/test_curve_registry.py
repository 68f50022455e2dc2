"""The curve registry: stored results unchanged, only the registry knows curve names.

The golden file ``tests/data/curve_golden.npz`` holds every stored column of small trans fits
(one per curve function, several likelihoods, with permutation testing and the interval
refinement) computed by the code before the curve registry existed. Regenerate it only for an
intended change of results: ``DREAM_SC_REGENERATE_GOLDEN=1 pytest tests/test_curve_registry.py``.
"""

from __future__ import annotations

import ast
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyro
import pytest

import dream_sc as ds
from dream_sc.models.curves import (
    CURVE_NAMES,
    Curve,
    get_curve,
    mean_scale_correction,
    register_curve,
    unregister_curve,
)
from dream_sc.models.curves._priors import normal_prior
from dream_sc.models.guide import Site

SRC = Path(ds.__file__).parent
GOLDEN = Path(__file__).parent / "data" / "curve_golden.npz"
#: Record entries that vary between runs or machines (timings, memory plan, versions), the
#: arguments (strings; the settings are fixed below) and the storage format's version label.
VOLATILE = {"seconds", "null_seconds", "plan", "versions", "params", "schema_version"}
#: name -> (modality, fit_trans arguments) of the golden fits.
GOLDEN_FITS = {
    "single": ("rna", {"function": "single_hill", "test": False}),
    "additive": ("rna", {"function": "additive_hill", "test": True, "n_permutations": 20}),
    "poly": ("rna", {"function": "polynomial", "test": False, "degree": 2}),
    "splice": ("splicing", {"function": "single_hill", "test": False}),
    "isoform": ("isoform", {"function": "additive_hill", "test": False}),
}


@pytest.fixture(scope="module")
def cis_screen():
    """A tiny screen with technical fits of every modality and a cis fit."""
    mdata = ds.datasets.simulate_screen(
        n_cells=400, n_genes=30, n_junctions=20, n_isoform_genes=6, seed=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modality in ("rna", "splicing", "isoform"):
            ds.tl.fit_technical(mdata, modality=modality, n_steps=40, seed=0)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=200, seed=0)
    return mdata


def _flatten(prefix: str, value, out: dict[str, np.ndarray]) -> None:
    """Numeric (and boolean / string) arrays of a nested record under ``a__b__c`` keys."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key not in VOLATILE:
                _flatten(f"{prefix}__{key}", item, out)
        return
    arr = np.asarray(value)
    if arr.dtype.kind in "biufU":
        out[prefix] = arr
    elif arr.dtype.kind == "O":
        out[prefix] = arr.astype(str)


def _stored(mdata, modality: str, key: str) -> dict[str, np.ndarray]:
    """Every stored result of a trans fit as plain arrays."""
    adata = mdata[modality]
    out: dict[str, np.ndarray] = {}
    table = adata.varm[key]
    for col in table.columns:
        values = table[col].to_numpy()
        out[f"varm__{col}"] = values.astype(str) if values.dtype.kind == "O" else values
    for suffix in ("curve_mean", "curve_q05", "curve_q95"):
        out[f"varm__{suffix}"] = np.asarray(adata.varm[f"{key}_{suffix}"])
    posterior = adata.varm[f"{key}_posterior"]
    for col in posterior.columns:
        out[f"posterior__{col}"] = posterior[col].to_numpy()
    _flatten("uns", adata.uns[key], out)
    return out


def _golden_results(mdata) -> dict[str, np.ndarray]:
    out = {}
    for name, (modality, kwargs) in GOLDEN_FITS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.tl.fit_trans(
                mdata, modality=modality, n_steps=30, seed=0, key_added=f"gold_{name}", **kwargs
            )
        for k, v in _stored(mdata, modality, f"gold_{name}").items():
            # the dosage axis is an input copied from the cis fit (not a curve result)
            if "dose_axis_shift" not in k:
                out[f"{name}__{k}"] = v
    return out


def test_stored_results_are_bit_identical_to_the_golden_file(cis_screen):
    mdata = cis_screen.copy()
    results = _golden_results(mdata)
    if os.environ.get("DREAM_SC_REGENERATE_GOLDEN"):
        np.savez_compressed(GOLDEN, **results)
        pytest.skip("golden file written")
    with np.load(GOLDEN, allow_pickle=False) as golden:
        assert sorted(golden.files) == sorted(results)
        for key in golden.files:
            np.testing.assert_array_equal(results[key], golden[key], err_msg=key, strict=True)


# --- only the registry branches on curve names ------------------------------------------------

CURVE_LITERALS = {"single_hill", "additive_hill", "polynomial"}


def _is_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in CURVE_LITERALS


def _contains_name(node: ast.AST) -> bool:
    return any(_is_name(n) for n in ast.walk(node))


def curve_branches(tree: ast.AST) -> list[int]:
    """Line numbers of comparisons, ``match`` cases, dict keys and lists of curve names."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            if sum(_is_name(e) for e in node.elts) >= 2:  # a list of names to keep in sync
                lines.append(node.lineno)
        if isinstance(node, ast.Compare):
            if any(_contains_name(n) for n in [node.left, *node.comparators]):
                lines.append(node.lineno)
        elif isinstance(node, ast.match_case):
            if _contains_name(node.pattern):
                lines.append(node.pattern.lineno)
        elif isinstance(node, ast.Dict):
            lines += [k.lineno for k in node.keys if k is not None and _is_name(k)]
    return sorted(lines)


def test_the_branch_finder_finds_branches():
    code = (
        'if f == "polynomial": pass\n'
        'x = f in ("single_hill", "additive_hill")\n'
        'd = {"polynomial": 1}\n'
        'match f:\n    case "single_hill": pass\n'
        'ok = "single_hill"\n'
        'names = ["single_hill", "polynomial"]\n'
    )
    assert curve_branches(ast.parse(code)) == [1, 2, 2, 3, 5, 7]


def test_only_the_registry_branches_on_curve_names():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("models/curves/"):  # the curves own their names
            continue
        offenders += [f"{rel}:{line}" for line in curve_branches(ast.parse(path.read_text()))]
    assert offenders == []


# --- a new curve is one class plus a registration -----------------------------------------


class _Linear(Curve):
    """A toy curve, linear in the log dosage: ``eta_ref + s z (log x - log x_ref)``."""

    name = "toy"
    bytes_per_entry = 80
    site_labels = {**Curve.site_labels, "slope_z": "slope_z (standardised slope)"}

    def sites(self, n, priors):
        return [Site("slope_z", (n,), 0.0, 0.1)]

    def sample(self, n, priors, like):
        return {"slope_z": pyro.sample("slope_z", normal_prior(0.0, 1.0, [n], like))}

    def natural_params(self, latent, scale, priors):
        return {"slope": scale * latent["slope_z"]}

    def evaluate(self, params, log_x, log_x_ref, half_range, log_x_var=None, mean_link=None):
        slope = params["slope"].unsqueeze(-2)
        out = params["eta_ref"].unsqueeze(-2) + slope * (log_x.unsqueeze(-1) - log_x_ref)
        if log_x_var is None or mean_link is None:
            return out
        return mean_scale_correction(out, slope.square() * log_x_var.unsqueeze(-1), mean_link)


@pytest.fixture
def toy_curve():
    curve = register_curve(_Linear())
    try:
        yield curve
    finally:
        unregister_curve(curve.name)
    assert "toy" not in CURVE_NAMES


def test_a_registered_curve_fits_end_to_end(cis_screen, toy_curve):
    mdata = cis_screen.copy()
    assert "toy" in CURVE_NAMES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_trans(mdata, function="toy", n_steps=20, seed=0, n_permutations=10)
    res = ds.get.trans_results(mdata)
    fitted = res[res["fitted"]]
    assert (fitted["function"] == "toy").all()
    assert np.isfinite(fitted[["slope_mean", "slope_q05", "score", "qvalue"]]).all().all()
    assert fitted["ec50_mean"].isna().all() and not fitted["refined"].any()
    assert "slope_z_loc" in mdata["rna"].varm["dream_trans_posterior"]
    # the stored curves are re-evaluated through the registry as well
    again = ds.get.trans_curves(mdata, features=[fitted.index[0]], dose=[1.0, 2.0])
    assert np.isfinite(again["mean"]).all()
    ax = ds.pl.prior_posterior(mdata, "dream_trans", "slope_z", show=False)
    assert ax.get_xlabel() == "slope_z (standardised slope)"


def test_unknown_and_taken_curve_names_are_refused():
    with pytest.raises(ValueError, match="function must be one of single_hill, additive_hill, "):
        get_curve("hill")
    with pytest.raises(ValueError, match="taken"):
        register_curve(get_curve("polynomial"))
    with pytest.raises(ValueError, match="built-in"):
        unregister_curve("single_hill")
