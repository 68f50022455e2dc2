"""Plots: rendering, returned objects, labels, artists, ``ax=``/``show``/``return_fig``, errors."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import matplotlib
import mudata
import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import sparse, stats

import dream_sc as ds
from dream_sc.get._observed import normalise

DOSE_LABEL = "cis dosage (GFI1B counts per unit size factor)"
EXPR_LABEL = "expression (counts per unit size factor)"
GENE = "gene_0005"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def multi(fitted_screen):
    """The fitted tiny screen plus quick fits of the isoform and splicing modalities."""
    mdata = fitted_screen.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod in ("isoform", "splicing"):
            ds.tl.fit_technical(mdata, modality=mod, n_steps=30, seed=0)
            ds.tl.fit_trans(
                mdata, modality=mod, function="single_hill", n_steps=30, test=False, seed=0
            )
    return mdata


def by_gid(ax: Axes, gid: str, kind=object) -> list:
    return [a for a in ax.get_children() if a.get_gid() == gid and isinstance(a, kind)]


def offsets(ax: Axes, gid: str) -> np.ndarray:
    """Stacked point positions of the scatter collections tagged ``gid`` (plain array)."""
    return np.vstack([np.asarray(c.get_offsets()) for c in by_gid(ax, gid, PathCollection)])


def top_axis_label(ax: Axes) -> str:
    (sec,) = ax.child_axes
    return sec.get_xlabel()


# --- dose_response -------------------------------------------------------------------------


def test_dose_response_single_feature(fitted):
    ax = ds.pl.dose_response(fitted, GENE, show=False)
    assert isinstance(ax, Axes)
    assert ax.get_xlabel() == DOSE_LABEL
    assert ax.get_ylabel() == EXPR_LABEL
    assert ax.get_xscale() == "log"
    assert top_axis_label(ax) == "log2 fold change vs NTC"
    assert len(by_gid(ax, "curve", Line2D)) == 1
    assert len(by_gid(ax, "band", PolyCollection)) == 1
    row = ds.get.trans_results(fitted).loc[GENE]
    assert len(by_gid(ax, "ec50", Line2D)) == int(row["ec50_in_range"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["K562", "HEK293T", "control guide"] + ["EC50"] * int(row["ec50_in_range"])
    assert ax.get_title() == f"{GENE}: {row['shape']}, q = {row['qvalue']:.2g}"
    # the curve is the stored posterior mean on the stored grid
    curve = ds.get.trans_curves(fitted, features=[GENE])
    (line,) = by_gid(ax, "curve", Line2D)
    np.testing.assert_allclose(line.get_xdata(), curve["dose"])
    np.testing.assert_allclose(line.get_ydata(), curve["mean"])
    # one summary per (guide, cell line) present, no per-cell points by default
    used = fitted.obs["target"].isin(["GFI1B", "ntc"])
    n_units = fitted.obs.loc[used].groupby(["guide", "cell_line"], observed=True).ngroups
    assert sum(len(c.get_offsets()) for c in by_gid(ax, "guides", PathCollection)) == n_units
    assert by_gid(ax, "cells") == []
    # the secondary axis reads log2 fold change vs NTC: x_ntc maps to 0
    x_ntc = fitted.uns["dream_cis"]["x_ntc"]
    (sec,) = ax.child_axes
    forward, _ = sec._functions
    np.testing.assert_allclose(np.log2(forward(np.array([x_ntc, 2 * x_ntc]))), [0.0, 1.0])


def test_dose_response_guide_values_are_normalised_means(fitted):
    """Pooled per-guide values = sum(counts / exp(technical effect)) / sum(size factors)."""
    ax = ds.pl.dose_response(fitted, GENE, technical_groups=False, show=False)
    points = offsets(ax, "guides")
    obs = fitted.obs
    rna = fitted["rna"]
    y = np.asarray(rna[:, GENE].X.toarray() if sparse.issparse(rna.X) else rna[:, GENE].X).ravel()
    effect = rna.varm["dream_technical"].loc[GENE, "effect_HEK293T_mean"]
    y = y * np.exp(-np.where(obs["cell_line"] == "HEK293T", effect, 0.0))
    sf = obs["sum_factor"].to_numpy()
    guides = ds.get.cis_dosage(fitted)
    assert len(points) == len(guides)
    for guide, dose in guides["dose_mean"].items():
        cells = (obs["guide"] == guide).to_numpy()
        expected = y[cells].sum() / sf[cells].sum()
        (i,) = np.flatnonzero(np.isclose(points[:, 0], dose))
        assert points[i, 1] == pytest.approx(expected, rel=1e-9)
    # intervals (bootstrap, seeded) bracket the means and are reproducible
    (bars,) = by_gid(ax, "guide_interval", LineCollection)
    segs = np.array([s[:, 1] for s in bars.get_segments()])
    assert np.all(segs[:, 0] <= points[:, 1] + 1e-12) and np.all(points[:, 1] <= segs[:, 1] + 1e-12)
    ax2 = ds.pl.dose_response(fitted, GENE, technical_groups=False, show=False)
    (bars2,) = by_gid(ax2, "guide_interval", LineCollection)
    np.testing.assert_array_equal(segs, np.array([s[:, 1] for s in bars2.get_segments()]))


def test_normalise_removes_technical_effects():
    np.testing.assert_allclose(
        normalise("negbinom", np.array([2.0]), np.array([np.log(2.0)])), [1.0]
    )
    np.testing.assert_allclose(
        normalise("binomial", np.array([0.5]), np.array([1.0])), [stats.logistic.cdf(-1.0)]
    )
    np.testing.assert_allclose(
        normalise("binomial", np.array([0.0, 1.0]), np.array([1.0, 1.0])), [0.0, 1.0]
    )
    np.testing.assert_allclose(
        normalise("multinomial", np.array([0.5, 0.5]), np.array([np.log(3.0), 0.0])), [0.25, 0.75]
    )
    np.testing.assert_allclose(normalise("normal", np.array([3.0]), np.array([1.0])), [2.0])


def test_dose_response_grid_and_return_fig(fitted):
    features = ["gene_0005", "gene_0006", "gene_0009", "gene_0013"]
    axes = ds.pl.dose_response(fitted, features, ncols=3, show=False)
    assert isinstance(axes, list) and len(axes) == 4
    fig = axes[0].figure
    assert len(fig.axes) == 4
    np.testing.assert_allclose(fig.get_size_inches(), [3 * 4.6, 2 * 3.9])
    for ax, feature in zip(axes, features, strict=True):
        assert ax.get_title().startswith(f"{feature}: ")
        assert len(by_gid(ax, "curve", Line2D)) == 1
        assert len(by_gid(ax, "band", PolyCollection)) == 1
    assert axes[0].get_legend() is not None and axes[1].get_legend() is None
    fig = ds.pl.dose_response(fitted, features[:2], show=False, return_fig=True)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2


def test_dose_response_respects_ax(fitted):
    fig, ax = plt.subplots()
    out = ds.pl.dose_response(fitted, GENE, ax=ax, show=False)
    assert out is ax
    assert plt.get_fignums() == [fig.number]
    assert fig.axes == [ax]
    assert len(by_gid(ax, "curve", Line2D)) == 1
    fig2, axes = plt.subplots(1, 2)
    out = ds.pl.dose_response(fitted, ["gene_0005", "gene_0006"], ax=list(axes), show=False)
    assert out == list(axes)
    assert len(plt.get_fignums()) == 2
    with pytest.raises(ValueError, match=re.escape("ax holds 1 Axes but 2 panels are drawn")):
        ds.pl.dose_response(fitted, ["gene_0005", "gene_0006"], ax=ax, show=False)


def test_show_follows_autoshow(fitted, monkeypatch):
    calls = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(ds.settings, "autoshow", True)
    assert ds.pl.dose_response(fitted, GENE) is None
    assert calls == [1]
    monkeypatch.setattr(ds.settings, "autoshow", False)
    assert isinstance(ds.pl.cis_dosage(fitted), Axes)
    assert calls == [1]


def test_dose_response_cells_capped(fitted):
    ax = ds.pl.dose_response(fitted, GENE, show_cells=True, max_cells=100, show=False)
    (cells,) = by_gid(ax, "cells", PathCollection)
    assert len(cells.get_offsets()) == 100
    assert cells.get_rasterized()
    alphas = cells.get_facecolors()[:, 3]
    assert (
        alphas.min() >= 0.04 - 1e-9 and alphas.max() <= 0.6 + 1e-9 and alphas.max() > alphas.min()
    )
    ax = ds.pl.dose_response(fitted, GENE, show_cells=True, show=False)
    (cells,) = by_gid(ax, "cells", PathCollection)
    assert len(cells.get_offsets()) == 400  # the 400 fitted cells, under the cap


def _tiled(fitted, reps: int) -> mudata.MuData:
    """``reps`` copies of every cell of the fitted screen with the fits' records (rna only)."""
    rna = fitted["rna"]
    names = [f"{n}-{r}" for r in range(reps) for n in fitted.obs_names]
    X = sparse.vstack([sparse.csr_matrix(rna.X)] * reps).tocsr()
    big = ad.AnnData(X=X, obs=pd.DataFrame(index=names), var=rna.var.copy())
    for k, v in rna.varm.items():
        big.varm[k] = v
    big.uns.update({k: rna.uns[k] for k in rna.uns})
    out = mudata.MuData({"rna": big})
    cols = ["guide", "target", "cell_line", "sum_factor", "dream_cis_dose_mean"]
    for col in cols:
        out.obs[col] = np.tile(fitted.obs[col].to_numpy(), reps)
    out.uns["dream_cis"] = fitted.uns["dream_cis"]
    return out


def test_dose_response_many_cells_default_cap(fitted):
    big = _tiled(fitted, 15)  # 6,000 cells
    ax = ds.pl.dose_response(big, GENE, show_cells=True, show=False)
    (cells,) = by_gid(ax, "cells", PathCollection)
    assert len(cells.get_offsets()) == 5000
    # guide summaries do not grow with the number of cells
    n_units = (
        fitted.obs.loc[fitted.obs["target"].isin(["GFI1B", "ntc"])]
        .groupby(["guide", "cell_line"], observed=True)
        .ngroups
    )
    assert sum(len(c.get_offsets()) for c in by_gid(ax, "guides", PathCollection)) == n_units


def test_dose_response_multinomial_one_curve_per_category(multi):
    ax = ds.pl.dose_response(multi, "tx_0001", modality="isoform", show=False)
    var = multi["isoform"].var
    members = list(var.index[var["group"] == var.loc["tx_0001", "group"]])
    assert len(members) == 3
    assert len(by_gid(ax, "curve", Line2D)) == len(members)
    assert len(by_gid(ax, "band", PolyCollection)) == len(members)
    assert ax.get_ylabel() == "usage (proportion of group)"
    assert ax.get_title() == f"{var.loc['tx_0001', 'group']} (3 categories)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for m in members:
        assert any(t.startswith(m) for t in legend)
    assert {"K562", "HEK293T", "control guide"} <= set(legend)  # groups are marker shapes
    total = sum(line.get_ydata() for line in by_gid(ax, "curve", Line2D))
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    # the group name gives the same axes; two features of one group give one axes
    ax2 = ds.pl.dose_response(
        multi, str(var.loc["tx_0001", "group"]), modality="isoform", show=False
    )
    assert len(by_gid(ax2, "curve", Line2D)) == 3
    axes = ds.pl.dose_response(multi, ["tx_0001", "tx_0002"], modality="isoform", show=False)
    assert len(axes) == 1
    np.testing.assert_allclose(axes[0].figure.get_size_inches(), [4.6 + 1.8, 3.9])


def test_dose_response_binomial_label(multi):
    ax = ds.pl.dose_response(multi, "sj_0001", modality="splicing", show=False)
    assert ax.get_ylabel() == "PSI (successes / trials)"
    assert ax.get_title().startswith("sj_0001: flat, lfsr = ")  # test=False: no q-value
    values = offsets(ax, "guides")[:, 1]
    assert np.all((values >= 0) & (values <= 1))


def test_dose_response_errors(fitted):
    with pytest.raises(
        KeyError, match=re.escape("Feature 'gene_9999' not found in modality 'rna'.")
    ):
        ds.pl.dose_response(fitted, "gene_9999", show=False)
    with pytest.raises(
        KeyError,
        match=re.escape("Feature 'GFI1B' was not fitted by 'dream_trans' in modality 'rna'"),
    ):
        ds.pl.dose_response(fitted, "GFI1B", show=False)
    with pytest.raises(KeyError, match=re.escape("No trans fit 'dream_trans_X' in modality 'rna'")):
        ds.pl.dose_response(fitted, GENE, key="dream_trans_X", show=False)
    with pytest.raises(KeyError, match=re.escape("No cis fit 'dream_cis_X' in mdata.uns")):
        ds.pl.dose_response(fitted, GENE, cis_key="dream_cis_X", show=False)
    with pytest.raises(ValueError, match="features is empty"):
        ds.pl.dose_response(fitted, [], show=False)


def test_non_default_keys(fitted):
    """Results stored under other keys are found with ``key=`` in every plot."""
    m = fitted
    m.uns["dream_cis_G"] = m.uns["dream_cis"]
    m.obs["dream_cis_G_dose_mean"] = m.obs["dream_cis_dose_mean"]
    rna = m["rna"]
    for suffix in ("", "_curve_mean", "_curve_q05", "_curve_q95", "_posterior"):
        rna.varm[f"dream_trans_G{suffix}"] = rna.varm[f"dream_trans{suffix}"]
    record = dict(rna.uns["dream_trans"])
    record["cis_key"] = "dream_cis_G"
    rna.uns["dream_trans_G"] = record
    ax = ds.pl.dose_response(m, GENE, key="dream_trans_G", show=False)
    assert len(by_gid(ax, "curve", Line2D)) == 1
    assert isinstance(ds.pl.cis_dosage(m, key="dream_cis_G", show=False), Axes)
    assert isinstance(ds.pl.trans_summary(m, key="dream_trans_G", show=False), Axes)
    assert isinstance(ds.pl.calibration(m, key="dream_trans_G", show=False), Axes)
    assert isinstance(ds.pl.loss(m, "dream_trans_G", show=False), Axes)
    assert isinstance(
        ds.pl.prior_posterior(m, "dream_trans_G", "z1", feature=GENE, show=False), Axes
    )


# --- cis_dosage ----------------------------------------------------------------------------


def test_cis_dosage(fitted):
    ax = ds.pl.cis_dosage(fitted, show=False)
    guides = ds.get.cis_dosage(fitted).sort_values("dose_mean")
    assert ax.get_xlabel() == DOSE_LABEL
    assert ax.get_ylabel() == "guide (ordered by dosage)"
    assert ax.get_xscale() == "log"
    assert top_axis_label(ax) == "log2 fold change vs NTC"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(guides.index)
    (points,) = by_gid(ax, "dose", PathCollection)
    np.testing.assert_allclose(points.get_offsets()[:, 0], guides["dose_mean"])
    (bars,) = by_gid(ax, "interval", LineCollection)
    ends = np.array([s[:, 0] for s in bars.get_segments()])
    np.testing.assert_allclose(ends, guides[["dose_q05", "dose_q95"]].to_numpy())
    (ntc,) = by_gid(ax, "x_ntc", Line2D)
    assert ntc.get_xdata()[0] == pytest.approx(fitted.uns["dream_cis"]["x_ntc"])
    grey = matplotlib.colors.to_rgba("0.6")
    face = points.get_facecolors()
    np.testing.assert_allclose(face[guides["is_control"].to_numpy()], [grey] * 5)
    assert not np.isclose(face[~guides["is_control"].to_numpy()], grey).all(axis=1).any()
    ax = ds.pl.cis_dosage(fitted, orientation="vertical", show=False)
    assert ax.get_ylabel() == DOSE_LABEL and ax.get_yscale() == "log"
    with pytest.raises(KeyError, match=re.escape("No cis fit 'nope' in mdata.uns")):
        ds.pl.cis_dosage(fitted, key="nope", show=False)


# --- trans_summary and calibration ---------------------------------------------------------


def test_trans_summary(fitted):
    ax = ds.pl.trans_summary(fitted, n_labels=5, show=False)
    res = ds.get.trans_results(fitted)
    res = res[res["fitted"]]
    assert ax.get_xlabel() == "log2 fold change over dosage range"
    assert ax.get_ylabel() == "-log10(q-value)"
    points = offsets(ax, "features")
    assert len(points) == len(res) == 29
    expected = np.column_stack([res["response_mean"], -np.log10(res["qvalue"])])
    order = np.lexsort(points.T[::-1])
    np.testing.assert_allclose(points[order], expected[np.lexsort(expected.T[::-1])])
    assert len(by_gid(ax, "label")) == 5
    assert ax.get_title() == f"rna: {int((res['qvalue'] < 0.1).sum())} of 29 features with q < 0.1"
    # a looser alpha is rescored by test_trans, then plotted with its stored shape calls
    message = (
        "The stored significance and shape calls were made at alpha=0.1, not 0.5; rescore "
        "with `ds.tl.test_trans(mdata, alpha=0.5)` (no refit) and plot again."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        ds.pl.trans_summary(fitted, alpha=0.5, show=False)
    loose = ds.tl.test_trans(fitted, alpha=0.5, progress=False, copy=True)
    ax = ds.pl.trans_summary(loose, alpha=0.5, n_labels=0, show=False)
    n_sig = int((res["qvalue"] < 0.5).sum())
    assert n_sig > 0
    coloured = [
        c for c in by_gid(ax, "features", PathCollection) if c.get_label() != "not significant"
    ]
    assert sum(len(c.get_offsets()) for c in coloured) == n_sig
    assert by_gid(ax, "label") == []


def test_trans_summary_colours_are_the_stored_shapes(multi):
    """Untested fits are called on prob_dose_dependent and lfsr: the plot shows those calls."""
    res = ds.get.trans_results(multi, modality="splicing")
    res = res[res["fitted"]]
    ax = ds.pl.trans_summary(multi, modality="splicing", n_labels=0, show=False)
    drawn = {}
    for c in by_gid(ax, "features", PathCollection):
        label = c.get_label().split(" (")[0].replace("-", "_")
        for x, y in np.asarray(c.get_offsets()):
            drawn[(round(x, 12), round(y, 12))] = "flat" if label == "not significant" else label
    floor = 0.5 / int(multi["splicing"].uns["dream_trans"]["params"]["n_samples"])
    y = -np.log10(np.maximum(res["lfsr"].to_numpy(dtype=float), floor))
    expected = {
        (round(a, 12), round(b, 12)): s
        for a, b, s in zip(res["response_mean"], y, res["shape"], strict=True)
    }
    assert drawn == expected
    n_sig = int(res["significant"].sum())
    assert ax.get_title() == (
        f"splicing: {n_sig} of {len(res)} features significant (posterior call, untested)"
    )
    assert by_gid(ax, "threshold") == []


def test_trans_summary_untested_uses_lfsr(multi):
    ax = ds.pl.trans_summary(multi, modality="isoform", show=False)
    assert ax.get_xlabel() == "Δ proportion over dosage range"
    assert ax.get_ylabel() == "-log10(lfsr)"
    ax = ds.pl.trans_summary(multi, modality="splicing", show=False)
    assert ax.get_xlabel() == "Δ PSI over dosage range"
    points = offsets(ax, "features")
    assert np.isfinite(points).all()  # lfsr = 0 is floored, not infinite


def test_calibration(fitted):
    ax = ds.pl.calibration(fitted, show=False)
    res = ds.get.trans_results(fitted)
    res = res[res["fitted"]]
    null = np.asarray(fitted["rna"].uns["dream_trans"]["null_scores"]).ravel()
    assert ax.get_xlabel() == "permutation null score (quantile)"
    assert ax.get_ylabel() == "observed score"
    points = offsets(ax, "qq")
    points = points[np.argsort(points[:, 1])]
    observed = np.sort(res["score"].to_numpy())
    np.testing.assert_allclose(points[:, 1], observed)
    probs = (np.arange(1, 30) - 0.5) / 29
    np.testing.assert_allclose(points[:, 0], np.quantile(null, probs))
    (diag,) = by_gid(ax, "diagonal", Line2D)
    np.testing.assert_allclose(diag.get_xdata(), diag.get_ydata())
    (text,) = by_gid(ax, "annotation")
    n_sig = int((res["qvalue"] < 0.1).sum())
    assert text.get_text() == f"{n_sig} of 29 features with q < 0.1\n{null.size} null scores"


def test_calibration_needs_null(multi):
    with pytest.raises(
        ValueError,
        match=re.escape("has no permutation null; run `ds.tl.test_trans(mdata, modality='isoform'"),
    ):
        ds.pl.calibration(multi, modality="isoform", show=False)


@pytest.mark.slow
def test_calibration_null_screen_on_diagonal():
    mdata = ds.datasets.simulate_screen(
        n_cells=300, n_genes=15, n_junctions=4, n_isoform_genes=2, seed=3, frac_responsive=0.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, n_steps=40, seed=0)
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=150, seed=0)
        ds.tl.fit_trans(mdata, function="single_hill", n_steps=40, n_permutations=3, seed=0)
    ax = ds.pl.calibration(mdata, show=False)
    points = offsets(ax, "qq")
    # observed scores are exchangeable with the null scores: same distribution
    null = np.asarray(mdata["rna"].uns["dream_trans"]["null_scores"]).ravel()
    assert stats.ks_2samp(points[:, 1], null).pvalue > 0.05
    assert np.median(np.abs(points[:, 1] - points[:, 0])) < 0.5
    (text,) = by_gid(ax, "annotation")
    assert text.get_text().startswith("0 of 14 features with q < 0.1")


# --- loss ----------------------------------------------------------------------------------


def test_loss(fitted):
    axes = ds.pl.loss(fitted, show=False)
    assert [a.get_title() for a in axes] == [
        "cis fit dream_cis (mdata.uns)",
        "technical fit dream_technical (rna)",
        "trans fit dream_trans (rna)",
    ]
    records = [
        fitted.uns["dream_cis"],
        fitted["rna"].uns["dream_technical"],
        fitted["rna"].uns["dream_trans"],
    ]
    for ax, record in zip(axes, records, strict=True):
        assert ax.get_xlabel() == "SVI step"
        assert ax.get_ylabel() == "loss (negative ELBO per observation)"
        (trace,) = by_gid(ax, "loss", Line2D)
        np.testing.assert_allclose(trace.get_ydata(), record["loss"])
        (flag,) = by_gid(ax, "converged")
        assert flag.get_text() == ("converged" if record["converged"] else "not converged")
    # the null needs no refit, so there is no null loss to mark
    assert by_gid(axes[2], "null_loss") == [] and by_gid(axes[1], "null_loss") == []
    ax = ds.pl.loss(fitted, "dream_cis", show=False)
    assert isinstance(ax, Axes)
    fig, own = plt.subplots()
    assert ds.pl.loss(fitted, "dream_technical", modality="rna", ax=own, show=False) is own
    assert fig.axes == [own]
    with pytest.raises(
        KeyError,
        match=re.escape(
            "No fit 'nope' found in mdata; available fits: dream_cis (mdata.uns), "
            "dream_technical (rna), dream_trans (rna)."
        ),
    ):
        ds.pl.loss(fitted, "nope", show=False)


# --- prior_posterior -----------------------------------------------------------------------


def test_prior_posterior_trans(fitted):
    ax = ds.pl.prior_posterior(fitted, "dream_trans", "log_k1", feature=GENE, show=False)
    assert ax.get_xlabel() == "log K1 (natural log of cis dosage)"
    assert ax.get_ylabel() == "density"
    (prior,) = by_gid(ax, "prior", Line2D)
    (post,) = by_gid(ax, "posterior", Line2D)
    pri = fitted["rna"].uns["dream_trans"]["priors"]["log_k"]
    x = prior.get_xdata()
    np.testing.assert_allclose(prior.get_ydata(), stats.norm.pdf(x, pri["loc"], pri["scale"]))
    row = fitted["rna"].varm["dream_trans_posterior"].loc[GENE]
    np.testing.assert_allclose(
        post.get_ydata(), stats.norm.pdf(x, row["log_k1_loc"], row["log_k1_scale"])
    )
    assert x[np.argmax(post.get_ydata())] == pytest.approx(
        row["log_k1_loc"], abs=float(row["log_k1_scale"]) / 20
    )
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == f"prior: Normal({pri['loc']:.3g}, {pri['scale']:.3g})"
    # per-feature prior of eta_ref: index among fitted features (GFI1B is not fitted)
    ax = ds.pl.prior_posterior(fitted, "dream_trans", "eta_ref", feature=GENE, show=False)
    (prior,) = by_gid(ax, "prior", Line2D)
    loc = fitted["rna"].uns["dream_trans"]["priors"]["eta_ref"]["loc"][
        list(fitted["rna"].var_names[1:]).index(GENE)
    ]
    assert prior.get_xdata()[np.argmax(prior.get_ydata())] == pytest.approx(loc, abs=0.05)
    # all features: histogram of posterior means against a shared prior
    ax = ds.pl.prior_posterior(fitted, "dream_trans", "log_lambda1", show=False)
    assert len(by_gid(ax, "posterior_means")) > 0 and by_gid(ax, "posterior") == []
    (prior,) = by_gid(ax, "prior", Line2D)
    area = np.trapezoid(prior.get_ydata(), prior.get_xdata())
    assert 0.95 < area < 1.0  # log-HalfCauchy density on [-5, 4]


def test_prior_posterior_technical_and_cis(fitted):
    ax = ds.pl.prior_posterior(
        fitted, "dream_technical", "dispersion", modality="rna", feature=GENE, show=False
    )
    assert ax.get_xlabel() == "log dispersion"
    (post,) = by_gid(ax, "posterior", Line2D)
    row = fitted["rna"].varm["dream_technical"].loc[GENE]
    peak = post.get_xdata()[np.argmax(post.get_ydata())]
    assert peak == pytest.approx(np.log(row["dispersion_q50"]), abs=0.05)
    ax = ds.pl.prior_posterior(
        fitted, "dream_technical", "effect_HEK293T", feature=GENE, show=False
    )
    assert ax.get_xlabel() == "effect_HEK293T (link scale)"
    ax = ds.pl.prior_posterior(fitted, "dream_cis", "log2_x_ntc", show=False)
    (post,) = by_gid(ax, "posterior", Line2D)
    rec = fitted.uns["dream_cis"]
    assert post.get_xdata()[np.argmax(post.get_ydata())] == pytest.approx(
        rec["log2_x_ntc_mean"], abs=0.01
    )
    ax = ds.pl.prior_posterior(fitted, "dream_cis", "guide_effect", feature="GFI1B_3", show=False)
    (post,) = by_gid(ax, "posterior", Line2D)
    g = rec["guides"].loc["GFI1B_3"]
    assert post.get_xdata()[np.argmax(post.get_ydata())] == pytest.approx(
        g["log2_effect_mean"], abs=0.01
    )
    ax = ds.pl.prior_posterior(fitted, "dream_cis", "reference_effect", show=False)
    assert "StudentT(3, 0, 0.1)" in ax.get_legend().get_texts()[0].get_text()


def test_prior_posterior_errors(fitted, multi):
    with pytest.raises(
        KeyError,
        match=re.escape(
            "Parameter 'log_k' not available for the trans fit dream_trans (rna); available: "
            "eta_ref, log_gap, log_k1, log_lambda1, log_lambda2, log_n1, log_n2, z1, z2."
        ),
    ):
        ds.pl.prior_posterior(fitted, "dream_trans", "log_k", feature=GENE, show=False)
    with pytest.raises(
        KeyError,
        match=re.escape(
            "Parameter 'phi' not available for the technical fit dream_technical (rna); "
            "available: baseline, effect_HEK293T, dispersion."
        ),
    ):
        ds.pl.prior_posterior(fitted, "dream_technical", "phi", show=False)
    with pytest.raises(
        ValueError, match=re.escape("The prior of 'eta_ref' differs per feature; pass `feature=`")
    ):
        ds.pl.prior_posterior(fitted, "dream_trans", "eta_ref", show=False)
    with pytest.raises(
        KeyError, match=re.escape("Feature 'gene_9999' not found in the fit dream_trans (rna).")
    ):
        ds.pl.prior_posterior(fitted, "dream_trans", "z1", feature="gene_9999", show=False)
    with pytest.raises(
        ValueError, match=re.escape("Fit 'dream_technical' exists in several places")
    ):
        ds.pl.prior_posterior(multi, "dream_technical", "baseline", feature=GENE, show=False)


# --- gene_splicing_panel -------------------------------------------------------------------


def test_gene_splicing_panel(multi):
    gene = "gene_0005"
    fig = ds.pl.gene_splicing_panel(
        multi, gene, splicing_modality="splicing", show=False, return_fig=True
    )
    assert isinstance(fig, Figure)
    spl = ds.get.trans_results(multi, modality="splicing")
    mine = spl[(multi["splicing"].var["gene"] == gene).to_numpy()]
    assert len(mine) == 4
    assert len(fig.axes) == 1 + 4
    assert fig.axes[0].get_ylabel() == EXPR_LABEL
    assert fig.axes[0].get_title().startswith(f"{gene}: ")
    order = mine.sort_values("lfsr", kind="stable").index  # untested splicing fit: lfsr order
    assert [a.get_title().split(":")[0] for a in fig.axes[1:]] == list(order)
    for ax in fig.axes[1:]:
        assert ax.get_ylabel() == "PSI (successes / trials)"
        assert ax.get_xlabel() == DOSE_LABEL
    axes = ds.pl.gene_splicing_panel(
        multi, gene, splicing_modality="splicing", max_junctions=2, show=False
    )
    assert isinstance(axes, list) and len(axes) == 3 and len(axes[0].figure.axes) == 3
    with pytest.raises(
        ValueError,
        match=re.escape("No fitted feature of modality 'splicing' has var['gene'] == 'gene_0002'."),
    ):
        ds.pl.gene_splicing_panel(multi, "gene_0002", splicing_modality="splicing", show=False)


def test_gene_splicing_panel_draws_into_given_axes(multi):
    fig, given = plt.subplots(1, 3)
    fig.suptitle("mine")
    out = ds.pl.gene_splicing_panel(
        multi, "gene_0005", splicing_modality="splicing", max_junctions=2, ax=given, show=False
    )
    assert out == list(given)
    assert fig._suptitle.get_text() == "mine"
    assert out[0].get_ylabel() == EXPR_LABEL
    assert [a.get_ylabel() for a in out[1:]] == ["PSI (successes / trials)"] * 2
    assert (
        ds.pl.gene_splicing_panel(
            multi,
            "gene_0005",
            splicing_modality="splicing",
            max_junctions=2,
            ax=given,
            show=False,
            return_fig=True,
        )
        is fig
    )
    with pytest.raises(
        ValueError,
        match=re.escape(
            "ax holds 2 Axes but 3 panels are drawn; pass one Axes per panel or ax=None for a "
            "new grid."
        ),
    ):
        ds.pl.gene_splicing_panel(
            multi, "gene_0005", splicing_modality="splicing", max_junctions=2, ax=given[:2]
        )


def test_gene_splicing_panel_defaults_to_the_builders_sj_modality(multi):
    mdata = multi.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata.mod["sj"] = mdata.mod.pop("splicing")  # the name pp.splicing_from_junctions uses
        mdata.update()
    axes = ds.pl.gene_splicing_panel(mdata, "gene_0005", max_junctions=2, show=False)
    assert [a.get_title().split(":")[0] for a in axes[1:]] == [
        a.get_title().split(":")[0]
        for a in ds.pl.gene_splicing_panel(
            multi, "gene_0005", splicing_modality="splicing", max_junctions=2, show=False
        )[1:]
    ]
    assert axes[0].figure._suptitle.get_text() == "gene_0005: expression (rna) and splicing (sj)"


# --- round trip and rendering --------------------------------------------------------------


def test_h5mu_round_trip_then_plot(multi, tmp_path):
    path = tmp_path / "fitted.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        multi.write(path)
        back = mudata.read_h5mu(path)
    figures = [
        ds.pl.dose_response(back, GENE, show_cells=True, show=False, return_fig=True),
        ds.pl.dose_response(back, "tx_0006", modality="isoform", show=False, return_fig=True),
        ds.pl.cis_dosage(back, show=False, return_fig=True),
        ds.pl.trans_summary(back, show=False, return_fig=True),
        ds.pl.calibration(back, show=False, return_fig=True),
        ds.pl.loss(back, "dream_trans", show=False, return_fig=True),
        ds.pl.prior_posterior(
            back,
            "dream_technical",
            "baseline",
            modality="isoform",
            feature="tx_0001",
            show=False,
            return_fig=True,
        ),
        ds.pl.gene_splicing_panel(
            back, GENE, splicing_modality="splicing", max_junctions=2, show=False, return_fig=True
        ),
    ]
    assert all(isinstance(fig, Figure) for fig in figures)
    for i in (0, 7):  # full draws (the others were laid out, which draws their axes)
        figures[i].savefig(tmp_path / f"plot_{i}.png", dpi=40)
        assert (tmp_path / f"plot_{i}.png").stat().st_size > 3000
    assert len(figures[5].axes) == 3  # the trans fits of rna, splicing and isoform
    assert len(figures[7].axes) == 3
