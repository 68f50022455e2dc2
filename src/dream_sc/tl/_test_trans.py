"""``tl.test_trans``: calibrated significance of a trans fit, recomputed with new settings."""

from __future__ import annotations

import logging

import numpy as np
from mudata import MuData

from .. import _validation as V
from .._stores.trans import read_trans_posterior, update_record, write_results
from ..engine.backends import resolve_backend  # [dask hunk]
from ..engine.config import FitConfig
from ..models.significance import DEFAULT_N_PERMUTATIONS
from ._null import significance
from ._test_cells import test_job
from ._trans_job import job_from_record
from ._trans_stages import curve_job, expand

logger = logging.getLogger("dream_sc")


def test_trans(
    mdata: MuData,
    *,
    modality: str = "rna",
    key: str = "dream_trans",
    n_permutations: int | None = None,
    alpha: float = 0.1,
    min_effect: float | None = None,
    device: str | None = None,
    progress: bool | None = None,
    copy: bool = False,
    backend: str = "local",
    client=None,
) -> MuData | None:
    """Calibrated significance of every feature's dose-response.

    Procedure (see the significance page of the docs):

    1. Score: the efficient score test of "no dose dependence" in a model with one free
       intercept per technical group and feature and the noise of step 1 (Pearson-scaled),
       against the cell's log dosage and its square (``score``; the ranking column). The
       posterior ``prob_dose_dependent``, ``lfsr`` and ``posterior_score`` (``|posterior mean
       response| / posterior sd``) come from the curve fit.
    2. Null: the cells' dosages are permuted among cells of the same technical group
       ``n_permutations`` times and the score is recomputed on the same residuals - no refit.
       For a feature without dose response the real and permuted scores are exchangeable
       exactly (conditional randomisation), whatever the design; the free group intercepts
       keep responsive features' null scores flat-like when the groups differ in dosage.
    3. FDR: target-decoy (knockoff+) estimate
       ``(1 + #null >= s) / (n_permutations * #observed >= s)``, turned into monotone q-values;
       ``significant = qvalue < alpha``.
    4. Shape: a significant feature with ``prob_non_monotonic >= 0.95`` is called
       ``non_monotonic``, else ``increasing`` / ``decreasing``.

    The exchangeability check (:func:`dream_sc.models.null.exchangeability`) is stored with
    the null and logged as a warning when it fails. A new ``alpha``, ``min_effect`` or
    ``n_permutations`` recomputes everything in seconds (permutations are seeded by number,
    so the first ``n`` are the same for every ``n``).

    Parameters
    ----------
    mdata
        A screen fitted with :func:`dream_sc.tl.fit_trans`.
    modality, key
        Which trans fit.
    n_permutations
        Number of permutations (default: those stored, else 50).
    alpha
        FDR level of ``significant``.
    min_effect
        Minimal effect of ``prob_dose_dependent`` (default: that of the fit).
    device, progress
        Kept for compatibility; the null needs no fit.
    copy
        Return a copy instead of updating in place.
    backend, client
        Where the new permutation fits run: ``"local"`` or ``"dask"`` (see
        :func:`dream_sc.tl.fit_trans` and :doc:`/cluster`); identical results either way.

    Returns
    -------
    ``None`` (or the updated copy). Updates ``prob_dose_dependent``, ``lfsr``, ``score``,
    ``posterior_score``, ``prob_non_monotonic``, ``qvalue``,
    ``significant`` and ``shape`` in ``mdata[modality].varm[key]`` and ``null_scores``,
    ``null_method``, ``null_seconds``, ``exchangeability``, ``min_effect``,
    ``params["alpha"]``, ``params["n_permutations"]``, ``params["test"]`` (and
    ``params["min_effect"]`` when given) in ``mdata[modality].uns[key]``.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, test=False, progress=False)
    >>> ds.tl.test_trans(mdata, alpha=0.05, progress=False)
    >>> bool(mdata["rna"].varm["dream_trans"]["qvalue"].notna().any())
    True
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, modality)
    runner = resolve_backend(backend, client)  # [dask hunk]
    adata = mdata[modality]
    if key not in adata.uns or key not in adata.varm:
        raise KeyError(
            f"No trans fit {key!r} in modality {modality!r}; run `ds.tl.fit_trans(mdata, "
            f"modality={modality!r}, key_added={key!r})` first."
        )
    record = adata.uns[key]
    have = int(np.asarray(record["null_scores"]).shape[0]) if "null_scores" in record else 0
    wanted = (have or DEFAULT_N_PERMUTATIONS) if n_permutations is None else n_permutations
    if isinstance(wanted, bool) or not isinstance(wanted, int | np.integer) or wanted < 1:
        raise ValueError(f"n_permutations must be an integer >= 1; got {n_permutations!r}.")
    config = FitConfig.from_record(record["params"], device=device, progress=progress)
    job = job_from_record(mdata, modality, record, config, min_effect=min_effect)
    job.backend = runner  # [dask hunk]
    # a two-stage fit (curves="discoveries") has curves for some of its tested features only
    keep = adata.varm[key]["fitted"].to_numpy(dtype=bool)[job.fitted]
    cjob = curve_job(mdata, job, keep, config)
    loc, scale, corr = read_trans_posterior(adata, key, cjob.fitted)
    columns, _ = cjob.summarise(loc, scale, corr=corr)
    columns = expand(columns, keep)
    sig, null_record = significance(test_job(mdata, job), columns, int(wanted), alpha=alpha)
    target = mdata.copy() if copy else mdata
    adata = target[modality]
    table = adata.varm[key].copy()
    fitted = job.fitted
    for name in ("prob_dose_dependent", "lfsr", "prob_non_monotonic"):
        table.loc[fitted, name] = columns[name]
    for name, values in sig.items():
        if name == "shape":
            table.loc[fitted, name] = values
        elif name == "significant":
            col = np.zeros(len(table), bool)
            col[fitted] = values
            table[name] = col
        else:
            table.loc[fitted, name] = values
    write_results(adata, key, table)
    params = dict(adata.uns[key]["params"])
    params.update(alpha=alpha, n_permutations=int(wanted), test=True)
    if min_effect is not None:
        params["min_effect"] = float(min_effect)
    entries = {**null_record, "min_effect": job.min_effect.astype(np.float64), "params": params}
    stale = ("null_non_monotonic_scores", "null_loss")  # written by older versions
    update_record(adata, key, drop=stale, **entries)
    logger.info(
        "test_trans: %d significant features at alpha=%g", int(sig["significant"].sum()), alpha
    )
    return target if copy else None


# Not a test: keeps pytest from collecting ``test_trans`` where a test module imports it by name.
test_trans.__test__ = False  # type: ignore[attr-defined]
