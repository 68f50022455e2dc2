"""``tl.calibration_check``: false discoveries on null screens built from the user's data."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import stats

from .. import _validation as V
from .._stores.trans import update_record
from ..engine.config import FitConfig
from ..models.significance import decoy_qvalues
from ._null import SHARED_SHIFT_DISTRIBUTIONS, permutations, rescore
from ._shift_check import finite_record, shift_diagnostic, shift_message
from ._test_cells import test_job
from ._trans_job import job_from_record

logger = logging.getLogger("dream_sc")

#: Permutation numbers of calibration screens start here, far from those of the q-value nulls.
CHECK_OFFSET = 10_000


def calibration_check(
    mdata: MuData,
    *,
    modality: str = "rna",
    key: str = "dream_trans",
    alpha: float = 0.1,
    n_null_screens: int = 1,
    device: str | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Count false discoveries on null screens made from your own data.

    Each null screen keeps every cell's observations, technical group and size factor but
    assigns it the dosage of another cell of the same technical group (a fresh permutation,
    independent of those behind the q-values), so no feature responds to its dosage - on any
    design, including technical groups that differ in their dosages (a CRISPRi line and a
    CRISPRa line): the score's free group intercepts absorb the group-level mean shift the
    permutation leaves behind. The screen is scored exactly like the real data (same
    statistic, q-values against the stored null). Every discovery is false; a calibrated
    analysis makes few (on a screen without effects any discovery at all in about ``alpha``
    of the screens, and rarely more than two).

    The scores of each null screen are also compared with the stored null scores
    (Kolmogorov-Smirnov): both should follow the same distribution. No model is refitted, so
    many null screens cost seconds.

    For count data it also checks the normalisation: whether the features without a dose
    response are shifted off zero - the shared dose-dependent shift the score test removed
    (``uns[key]["shared_shift"]``) and the median ``response_mean`` of the non-significant
    features (not read when ``curves="discoveries"``: the curves were fitted only on the
    features the test selected, whose responses are large by selection). Either one larger than 0.05 log2 over the dosage range (and significant) means
    the size factors depend on the perturbation; a warning gives the size of the shift and
    what to do (``ds.pp.sum_factors(..., method="dose_aware")``). The numbers are in
    ``table.attrs["shift"]`` and the stored record.

    Parameters
    ----------
    mdata
        A screen fitted with :func:`dream_sc.tl.fit_trans` (with ``test=True``) or
        :func:`dream_sc.tl.test_trans`.
    modality, key
        Which trans fit.
    alpha
        FDR level at which discoveries are counted.
    n_null_screens
        Number of null screens.
    device, progress
        Kept for compatibility; nothing is fitted.

    Returns
    -------
    DataFrame with one row per null screen: ``n_features``, ``n_false_discoveries``,
    ``min_qvalue``, ``ks_statistic``, ``ks_pvalue``. Also stored (with the null-screen scores
    and ``alpha``) in ``mdata[modality].uns[key]["calibration"]``; ``ds.pl.calibration`` draws
    them.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ds.tl.fit_trans(mdata, function="single_hill", n_steps=50, progress=False)
    >>> check = ds.tl.calibration_check(mdata, progress=False)
    >>> check.columns.tolist()
    ['n_features', 'n_false_discoveries', 'min_qvalue', 'ks_statistic', 'ks_pvalue']
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, modality)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}.")
    if int(n_null_screens) < 1:
        raise ValueError(f"n_null_screens must be >= 1; got {n_null_screens}.")
    adata = mdata[modality]
    record = adata.uns.get(key)
    if record is None or record.get("null_method") != "rescore":
        raise KeyError(
            f"No permutation null for trans fit {key!r} of {modality!r}; run "
            f"`ds.tl.test_trans(mdata, modality={modality!r}, key={key!r})` first."
        )
    config = FitConfig.from_record(record["params"], device=device, progress=progress)
    job = test_job(mdata, job_from_record(mdata, modality, record, config))
    null = np.asarray(record["null_scores"])
    rows, scores = [], []
    null_screens = rescore(job, permutations(job, int(n_null_screens), offset=CHECK_OFFSET))[1]
    for screen in null_screens:
        q = decoy_qvalues(screen, null.ravel(), null.shape[0])
        ks = stats.ks_2samp(screen, null.ravel())
        rows.append(
            {
                "n_features": int(len(q)),
                "n_false_discoveries": int((q < alpha).sum()),
                "min_qvalue": float(q.min()),
                "ks_statistic": float(ks.statistic),
                "ks_pvalue": float(ks.pvalue),
            }
        )
        scores.append(screen)
    table = pd.DataFrame(rows, index=pd.RangeIndex(len(rows), name="null_screen"))
    calibration = {
        "alpha": float(alpha),
        "scores": np.asarray(scores, dtype=np.float64),
        "table": table,
    }
    if job.data.distribution in SHARED_SHIFT_DISTRIBUTIONS:
        results = adata.varm[key]
        fitted = np.asarray(job.fitted, dtype=bool)
        # curves fitted only for the test's discoveries: no unselected responses to read
        selected = record["params"].get("curves") == "discoveries"
        diag = shift_diagnostic(
            record.get("shared_shift"),
            None if selected else results["response_mean"].to_numpy(dtype=np.float64)[fitted],
            results["significant"].to_numpy(dtype=bool)[fitted],
        )
        calibration["shift"] = finite_record(diag)
        table.attrs["shift"] = diag
        if diag["warn"]:
            warnings.warn(shift_message(diag), UserWarning, stacklevel=2)
    update_record(adata, key, calibration=calibration)
    logger.info(
        "calibration_check: %d false discoveries at alpha=%g over %d null screen(s)",
        int(table["n_false_discoveries"].sum()),
        alpha,
        len(table),
    )
    return table
