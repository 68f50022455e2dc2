"""Trans curves on a screen with escapers against the same screen without (issue 27, item 3).

The same simulated screen (``simulate_screen(..., escape_fraction=f)`` keeps guides, curves and
the counts' random stream of ``f = 0``) is fitted with ``f = 0`` and ``f = 0.3`` (default),
one technical fit per screen, then per setting a cis fit ``cis_<setting>`` and a single-Hill
trans fit ``trans_<setting>`` on its per-cell dosage draws:

- ``plain``: ``fit_cis`` without the escaper option (both screens);
- ``escapers``: ``fit_cis(escapers=True)`` (escaper screen);
- ``transcriptome``: the ``escapers`` cis fit, trans with ``escaper_membership="transcriptome"``
  (responsive curves refitted, cross-fitted, on dosages weighted by each cell's responses);
- ``membership`` (``--membership``, diagnostic): the escaper fit, but every cell's dosage is
  drawn from its *true* component (escaped or knocked down): what membership ambiguity costs;
- ``oracle`` (both screens): the trans fit on the true per-cell dosages (``obs["true_dose"]``,
  variance 0), guide table of the ``plain`` fit: the accuracy the dosage axis allows.

Per run: the strong guides' escape-fraction error (``|log2 effect| >= 1``) and guide-effect
error, the median per-cell ``dose_q50 / true`` ratio, the trans curve error (median over
responsive ``rna`` genes of the mean absolute log2 difference between fitted and true curve over
the true dosage window) and the AUROC of ``prob_dose_dependent`` for ``true_responsive``; then
means over seeds and each curve error relative to the clean screen's ``plain`` fit.

Usage::

    python benchmarks/escapers.py --cells 3000 --genes 60 --steps 400 --seeds 0 1 2 3 --membership
"""

from __future__ import annotations

import argparse
import time
import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from _metrics import auroc

import dream_sc as ds
from dream_sc._stores._keys import CisKeys
from dream_sc.models import cis_dosage as CD


def curve_error(mdata, key: str = "dream_trans") -> float:
    """Median over responsive genes of the mean |log2 fitted - log2 true| over the window."""
    lo, hi = (float(v) for v in mdata.uns["truth"]["dose_range"])
    grid = np.geomspace(lo, hi, 25)
    var = mdata["rna"].var
    genes = var.index[var["true_responsive"].to_numpy(bool)]
    fitted = ds.get.trans_curves(mdata, dose=grid, features=list(genes), key=key)
    fitted = fitted.pivot(index="feature", columns="dose", values="mean").loc[genes]
    true = ds.datasets.true_curve(mdata, "rna", grid).loc[genes]
    return float(np.median(np.abs(np.log2(fitted.to_numpy() / true.to_numpy())).mean(1)))


def oracle_cis(mdata, key: str, source: str) -> None:
    """Copy of the cis fit ``source`` whose per-cell dosage draws are the true dosage.

    Every draw of a fitted cell is its ``obs["true_dose"]`` (variance 0, so the trans fit plugs
    it in); the guide table, ``x_ntc`` and the rest of the record stay those of ``source``.
    """
    src, dst = CisKeys(source), CisKeys(key)
    samples = np.asarray(mdata.obsm[src.samples], dtype=np.float32).copy()
    true = mdata.obs["true_dose"].to_numpy(np.float32)
    fitted = np.isfinite(samples).all(1)
    samples[fitted] = true[fitted, None]
    mdata.obsm[dst.samples] = samples
    for stat in (*src.doses, "q50"):
        if src.dose(stat) not in mdata.obs:
            continue
        values = mdata.obs[src.dose(stat)].to_numpy(np.float64).copy()
        values[fitted] = 0.0 if stat == "sd" else true[fitted]
        mdata.obs[dst.dose(stat)] = values
    mdata.uns[dst.record] = mdata.uns[src.record]


def score(mdata, cis_key: str, trans_key: str, escapers: bool) -> dict:
    """Accuracy of one cis fit and the trans fit on it against the simulator's truth."""
    guides = ds.get.cis_dosage(mdata, key=cis_key)
    truth = mdata.uns["truth"]["guides"].loc[guides.index]
    strong = (~guides["is_control"] & (truth["log2_effect"].abs() >= 1)).to_numpy()
    out = {}
    if escapers:
        err = (guides["escape_fraction_mean"] - truth["escape_share"])[strong].abs()
        out["escape_err_max"] = float(err.max())
    effect_err = (guides["log2_effect_mean"] - truth["log2_effect"])[strong].abs()
    out["effect_err_max"] = float(effect_err.max())
    cells_ = ds.get.cis_dosage(mdata, key=cis_key, level="cell").dropna(subset=["dose_mean"])
    out["dose_ratio"] = float(
        np.median(cells_["dose_q50"] / mdata.obs.loc[cells_.index, "true_dose"])
    )
    res = ds.get.trans_results(mdata, key=trans_key)
    res = res[res["fitted"]]
    labels = mdata["rna"].var.loc[res.index, "true_responsive"].to_numpy(bool)
    out["auroc"] = auroc(labels, res["prob_dose_dependent"].to_numpy())
    out["curve_err"] = curve_error(mdata, trans_key)
    return out


@contextmanager
def known_membership(escaped: np.ndarray):
    """Membership oracle: the escaper fit's cell draws with every cell's true escape status.

    Diagnostic only. The per-cell sampler draws a cell of a cis guide as escaped when a uniform
    number falls below its posterior escape probability; forcing it to -1 (escaped) or 2
    (knocked down) gives each cell's dosage posterior *given* its true component, so the
    trans fit on it shows what membership ambiguity costs.
    """
    original = CD._chunk_values
    # outside [0, 1]: a probability that rounds to exactly 0 or 1 cannot overrule the truth
    forced = torch.as_tensor(np.where(escaped, -1.0, 2.0), dtype=torch.float32)

    def chunk_values(model, idx, v, d, delta, log_r, grid, uniforms, components):
        if len(forced) != model.n_cells:
            raise RuntimeError("membership oracle: the cis fit must hold every cell")
        components = [forced.to(c.device) for c in components]
        return original(model, idx, v, d, delta, log_r, grid, uniforms, components)

    CD._chunk_values = chunk_values
    try:
        yield
    finally:
        CD._chunk_values = original


#: Settings of each screen: label -> how the per-cell dosages of the trans fit are made.
CLEAN = ("plain", "oracle")
ESCAPER = ("plain", "escapers", "transcriptome", "membership", "oracle")


def fit_setting(mdata, label: str, seed: int, steps: int) -> None:
    """The cis fit (or oracle dosages) ``cis_<label>`` and the trans fit ``trans_<label>``."""
    cis_key = f"cis_{label}"
    membership = "cis"
    if label == "transcriptome":
        cis_key, membership = "cis_escapers", "transcriptome"
        if cis_key not in mdata.uns:
            ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=seed, escapers=True, key_added=cis_key)
    elif label == "oracle":
        if "cis_plain" not in mdata.uns:
            ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=seed, key_added="cis_plain")
        oracle_cis(mdata, cis_key, "cis_plain")
    elif label == "membership":
        with known_membership(mdata.obs["true_escaped"].to_numpy(bool)):
            ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=seed, escapers=True, key_added=cis_key)
    else:
        escapers = label == "escapers"
        ds.tl.fit_cis(mdata, cis_feature="GFI1B", seed=seed, escapers=escapers, key_added=cis_key)
    ds.tl.fit_trans(
        mdata,
        function="single_hill",
        cis_key=cis_key,
        key_added=f"trans_{label}",
        seed=seed,
        n_steps=steps,
        test=False,
        escaper_membership=membership,
    )


def run(seed: int, cells: int, genes: int, steps: int, fraction: float, labels) -> list:
    """The settings ``labels`` on one simulated screen (escape fraction ``fraction``)."""
    if not labels:
        return []
    mdata = ds.datasets.simulate_screen(
        n_cells=cells,
        n_genes=genes,
        n_junctions=0,
        n_isoform_genes=0,
        frac_responsive=0.3,
        guides_per_target=6,
        seed=seed,
        escape_fraction=fraction,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.tl.fit_technical(mdata, seed=seed)
    rows = []
    for label in labels:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_setting(mdata, label, seed, steps)
        out = {"seed": seed, "escape_fraction": fraction, "setting": label}
        escapers = label in ("escapers", "membership", "transcriptome")
        cis_key = "cis_escapers" if label == "transcriptome" else f"cis_{label}"
        out.update(score(mdata, cis_key, f"trans_{label}", escapers))
        out["seconds"] = time.perf_counter() - start
        rows.append(out)
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--genes", type=int, default=60)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--no-oracle", action="store_true", help="skip the true-dosage trans fits")
    p.add_argument(
        "--membership", action="store_true", help="add the membership-oracle row (diagnostic)"
    )
    p.add_argument(
        "--only", nargs="+", choices=ESCAPER, help="run only these settings (both screens)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds.settings.progress_bar = False
    skip = {"oracle"} if args.no_oracle else set()
    if not args.membership:
        skip.add("membership")
    rows = []
    for seed in args.seeds:
        for fraction, labels in ((0.0, CLEAN), (args.fraction, ESCAPER)):
            labels = [x for x in labels if x not in skip and (not args.only or x in args.only)]
            rows += run(seed, args.cells, args.genes, args.steps, fraction, labels)
    table = pd.DataFrame(rows)
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    print(table.to_string(index=False, float_format=fmt))
    # each row's curve error against the clean screen's plain fit of the same seed
    clean = table[(table["escape_fraction"] == 0) & (table["setting"] == "plain")]
    ref = table["seed"].map(clean.set_index("seed")["curve_err"])
    table["curve_vs_clean"] = table["curve_err"] / ref  # NaN without the clean plain row
    summary = table.groupby(["escape_fraction", "setting"], sort=False)[
        ["curve_err", "curve_vs_clean", "auroc", "effect_err_max"]
        + (["escape_err_max"] if "escape_err_max" in table else [])
    ].mean()
    print("\nmean over seeds:")
    print(summary.to_string(float_format=fmt))


if __name__ == "__main__":
    main()
