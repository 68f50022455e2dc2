"""Diagnostic: whether the effects of the features without a dose response are shifted off zero.

Two measurements of one problem - size factors that depend on the perturbation:

- the **shared shift** the score test estimated across all features and removed
  (:mod:`dream_sc.models.shared_shift`; stored as ``uns[key]["shared_shift"]``), against the
  shifts estimated on the permuted dosages (``shared_shift_z``);
- the **median response** (``response_mean``, log2 over the dosage range) of the features
  that are not significant, with a sign-test p-value.

The q-values are protected by the first; the curves, ``response_mean`` and the posterior
columns are not, so either one off zero gets a warning that says what to do.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

#: Shifts (log2 over the 5th-95th percentile of the dosage) below this size are not reported.
SHIFT_WARN_LOG2 = 0.05
#: p-value below which a median response is reported (sign test).
SHIFT_WARN_PVALUE = 0.01
#: The shared shift is reported when it is this many sds of the permutations' shifts away.
SHIFT_WARN_Z = 3.0
#: Fewest non-significant features for the median-response check.
MIN_FLAT = 20


def shift_diagnostic(
    shared_shift: dict | None,
    response: np.ndarray | None,
    significant: np.ndarray | None,
) -> dict:
    """Size and p-value of both shifts, and whether to warn.

    Parameters
    ----------
    shared_shift
        ``uns[key]["shared_shift"]`` (or ``None`` when not estimated).
    response, significant
        ``response_mean`` and ``significant`` of the fitted features.
    """
    out = {
        "shared_shift_log2": np.nan,
        "shared_shift_pvalue": np.nan,
        "shared_shift_z": np.nan,
        "flat_median_log2": np.nan,
        "flat_pvalue": np.nan,
        "n_flat": 0,
    }
    if shared_shift is not None:
        out["shared_shift_log2"] = float(shared_shift.get("log2_change", np.nan))
        out["shared_shift_pvalue"] = float(shared_shift.get("pvalue", np.nan))
        sd = float(shared_shift.get("null_log2_change_sd", np.nan))
        if sd > 0:
            out["shared_shift_z"] = out["shared_shift_log2"] / sd
    if response is not None and significant is not None:
        flat = np.asarray(response, dtype=np.float64)[~np.asarray(significant, dtype=bool)]
        flat = flat[np.isfinite(flat) & (flat != 0)]
        out["n_flat"] = int(len(flat))
        if len(flat) >= MIN_FLAT:
            out["flat_median_log2"] = float(np.median(flat))
            n_pos = int((flat > 0).sum())
            out["flat_pvalue"] = float(stats.binomtest(n_pos, len(flat), 0.5).pvalue)
    shared = abs(out["shared_shift_log2"]) >= SHIFT_WARN_LOG2 and (
        abs(out["shared_shift_z"]) >= SHIFT_WARN_Z or np.isnan(out["shared_shift_z"])
    )
    median = (
        abs(out["flat_median_log2"]) >= SHIFT_WARN_LOG2 and out["flat_pvalue"] < SHIFT_WARN_PVALUE
    )
    out["warn"] = bool(shared or median)
    return out


def finite_record(diag: dict) -> dict:
    """The diagnostic without its NaN entries (stored records compare equal across runs)."""
    return {k: v for k, v in diag.items() if not (isinstance(v, float) and np.isnan(v))}


def shift_message(diag: dict) -> str:
    """Warning text for a diagnostic with ``warn`` set."""
    return (
        "The features without a dose response are shifted off zero: shared shift "
        f"{diag['shared_shift_log2']:+.2f} log2 over the dosage range ("
        f"{diag['shared_shift_z']:+.1f} sd of the permutations' shifts), median response of the {diag['n_flat']} "
        f"non-significant features {diag['flat_median_log2']:+.2f} log2 (sign test p = "
        f"{diag['flat_pvalue']:.2g}). The size factors probably depend on the perturbation "
        "(the cis gene and its responders move the library size). The q-values have the "
        "shared shift removed, but the curves and response columns carry it: recompute the "
        "size factors with `ds.pp.sum_factors(mdata, method='dose_aware', "
        "technical_key=...)` and refit (docs: significance, 'Normalisation')."
    )
