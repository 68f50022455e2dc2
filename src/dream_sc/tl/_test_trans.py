"""``tl.test_trans``: calibrated significance of a trans fit, recomputed with new settings."""

from __future__ import annotations

import logging

import numpy as np
from mudata import MuData

from .. import _validation as V
from .._backends import resolve_backend  # [dask hunk]
from ..models.significance import DEFAULT_N_PERMUTATIONS
from ._common import resolve_device, resolve_progress
from ._significance import null_fits, significance_columns
from ._trans_job import job_from_record, posterior_from_frame

logger = logging.getLogger("dream_sc")


def test_trans(
    mdata: MuData,
    *,
    modality: str = "rna",
    key: str = "dream_trans",
    n_permutations: int | None = None,
    alpha: float = 0.1,
    min_effect: float | None = None,
    device: str = "auto",
    progress: bool | None = None,
    copy: bool = False,
    backend: str = "local",
    client=None,
) -> MuData | None:
    """Calibrated significance of every feature's dose-response.

    Procedure:

    1. Score: ``|posterior mean response| / posterior sd`` of the response over the observed
       dosage range; ``prob_dose_dependent = P(|response| > min_effect)`` and ``lfsr`` come
       from the same posterior samples.
    2. Null: the trans model is refitted with the cells' dosage posteriors permuted among cells
       of the same technical group (same settings and seed; the amplitude prior recomputed from
       the permuted guide labels), ``n_permutations`` times. This keeps technical structure,
       per-cell noise and the dosage distribution and breaks only the dose-observation link.
    3. FDR: target-decoy (knockoff+) estimate
       ``(1 + #null >= s) / (n_permutations * #observed >= s)``, turned into monotone q-values;
       ``significant = qvalue < alpha``.
    4. Non-monotonicity: the same procedure on the non-monotonic amplitude
       ``min(largest rise, largest fall)`` of the curve gives ``qvalue_non_monotonic``; a
       significant feature whose non-monotonic evidence is significant too is called
       ``non_monotonic``.

    Stored null scores are reused; only permutations beyond those already run are fitted. A new
    ``alpha`` or ``min_effect`` only rescores.

    Parameters
    ----------
    mdata
        A screen fitted with :func:`dream_sc.tl.fit_trans`.
    modality, key
        Which trans fit.
    n_permutations
        Total number of permutation nulls wanted (default: those stored, at least 2).
    alpha
        FDR level of ``significant``.
    min_effect
        Minimal effect of ``prob_dose_dependent`` (default: that of the fit).
    device, progress
        For new permutation fits.
    copy
        Return a copy instead of updating in place.
    backend, client
        Where the new permutation fits run: ``"local"`` or ``"dask"`` (see
        :func:`dream_sc.tl.fit_trans` and :doc:`/cluster`); identical results either way.

    Returns
    -------
    ``None`` (or the updated copy). Updates ``prob_dose_dependent``, ``lfsr``, ``score``,
    ``prob_non_monotonic``, ``qvalue``, ``qvalue_non_monotonic``, ``significant`` and
    ``shape`` in ``mdata[modality].varm[key]`` and ``null_scores``,
    ``null_non_monotonic_scores``, ``null_loss``, ``min_effect``, ``params["alpha"]``,
    ``params["n_permutations"]``, ``params["test"]`` (and ``params["min_effect"]`` when given)
    in ``mdata[modality].uns[key]``.

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
    null_old = None
    if "null_scores" in record:
        null_old = {
            "score": np.asarray(record["null_scores"]),
            "non_monotonic_score": np.asarray(record["null_non_monotonic_scores"]),
            "loss": np.asarray(record.get("null_loss", [])),
        }
    have = 0 if null_old is None else null_old["score"].shape[0]
    wanted = max(have, DEFAULT_N_PERMUTATIONS) if n_permutations is None else int(n_permutations)
    if wanted < 1:
        raise ValueError("n_permutations must be >= 1.")
    job = job_from_record(
        mdata,
        modality,
        record,
        device=resolve_device(device),
        progress=resolve_progress(progress),
        min_effect=min_effect,
    )
    job.backend = runner  # [dask hunk]
    loc, scale, corr = posterior_from_frame(adata.varm[f"{key}_posterior"], job.fitted)
    columns, _ = job.summarise(loc, scale, corr=corr)
    if wanted > have:
        extra = null_fits(job, wanted - have, start=have)
        null = (
            extra
            if null_old is None
            else {
                k: np.concatenate([null_old[k], extra[k]])
                for k in ("score", "non_monotonic_score", "loss")
            }
        )
    else:
        null = {k: v[:wanted] for k, v in null_old.items()}
    sig = significance_columns(columns, null, alpha=alpha, n_permutations=wanted)
    target = mdata.copy() if copy else mdata
    adata = target[modality]
    table = adata.varm[key].copy()
    fitted = job.fitted
    for name in ("prob_dose_dependent", "lfsr", "score", "prob_non_monotonic"):
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
    adata.varm[key] = table
    rec = dict(adata.uns[key])
    rec["null_scores"] = null["score"]
    rec["null_non_monotonic_scores"] = null["non_monotonic_score"]
    rec["null_loss"] = null["loss"]
    rec["min_effect"] = job.min_effect.astype(np.float64)
    params = dict(rec["params"])
    params.update(alpha=alpha, n_permutations=wanted, test=True)
    if min_effect is not None:
        params["min_effect"] = float(min_effect)
    rec["params"] = params
    adata.uns[key] = rec
    logger.info(
        "test_trans: %d significant features at alpha=%g", int(sig["significant"].sum()), alpha
    )
    return target if copy else None


# Not a test: keeps pytest from collecting ``test_trans`` where a test module imports it by name.
test_trans.__test__ = False  # type: ignore[attr-defined]
