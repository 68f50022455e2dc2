"""Fingerprints of the fits: everything a checkpointed result depends on.

Each ``tl`` step builds one mapping ``label -> value`` (settings as values, data as digests, see
:mod:`dream_sc._checkpoints`) that is written with its checkpoint files and compared before any
of them is reused. The labels are what an error message names when something changed.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from scipy import sparse

from .. import _checkpoints as ckpt
from .._lazy import feature_blockwise


def package_version() -> str:
    """Installed dream_sc version (results may change between versions)."""
    try:
        return version("dream_sc")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


#: Entries converted at a time while hashing (bounds the memory of the dtype casts).
HASH_BLOCK = 1 << 22


class ColumnStream:
    """Digest of a matrix's values fed column block by column block, in any storage.

    The canonical CSC form (per-column entry counts, row indices, values; no explicit zeros,
    int64 indices, float64 values) is streamed into three hashes, so the digest does not depend
    on dense/sparse storage, dtype or how the columns were split into blocks: an in-memory
    matrix and the same matrix read out of core give the same digest. Sparse data are never
    densified (an in-memory CSR matrix is converted to CSC once).
    """

    def __init__(self) -> None:
        self.hashes = [hashlib.blake2b(digest_size=16) for _ in range(3)]
        self.shape = [None, 0]

    def add(self, block) -> None:
        """Append the columns of ``block`` (cells x columns)."""
        matrix = sparse.csc_matrix(block if sparse.issparse(block) else np.asarray(block))
        if not matrix.has_canonical_format or (matrix.data == 0).any():
            matrix = matrix.copy()
            matrix.sum_duplicates()
            matrix.eliminate_zeros()
        self.shape = [matrix.shape[0], self.shape[1] + matrix.shape[1]]
        parts = (np.diff(matrix.indptr), matrix.indices, matrix.data)
        for h, part, dtype in zip(
            self.hashes, parts, (np.int64, np.int64, np.float64), strict=True
        ):
            for start in range(0, len(part), HASH_BLOCK):
                h.update(np.ascontiguousarray(part[start : start + HASH_BLOCK], dtype=dtype))

    def value(self) -> dict[str, str]:
        """The fingerprint value."""
        return ckpt.hashed(list(map(str, self.shape)), [h.hexdigest() for h in self.hashes])


def matrix_digest(X) -> dict[str, str]:
    """Digest of a data matrix: in memory at once, lazy column block by column block."""
    stream = ColumnStream()
    feature_blockwise(lambda x, _t, _s: stream.add(x), X)
    return stream.value()


def data_entries(modality: str, data, cell_names) -> dict[str, Any]:
    """Fingerprint entries of the modality data a fit reads (a ``ModalityData``)."""
    out = {
        "distribution": str(data.distribution),
        "the cell names and order": ckpt.hashed(np.asarray(cell_names, dtype=str)),
        "the feature names and order": ckpt.hashed(np.asarray(data.var_names, dtype=str)),
        f"the counts of modality {modality!r}": matrix_digest(data.X),
    }
    if data.total is not None:
        out[f"the trials of modality {modality!r}"] = matrix_digest(data.total)
    if data.group_index is not None:
        out["the multinomial groups"] = ckpt.hashed(data.group_index, data.group_names)
    return out


def technical_fingerprint(
    modality: str, data, cell_names, codes, group_names, sum_factor, *, config, overdispersed
) -> dict[str, Any]:
    """Fingerprint of a ``fit_technical`` run (seed, steps, lr, chunks: added by the fit)."""
    return ckpt.fingerprint(
        **{
            "dream_sc version": package_version(),
            **data_entries(modality, data, cell_names),
            "the sum factors": ckpt.hashed(sum_factor),
            "the technical groups": ckpt.hashed(codes, list(map(str, group_names))),
            "overdispersed": bool(overdispersed),
            "batch_size": int(config.batch_size),
        }
    )


def trans_fingerprint(job, inputs, priors, init, permutation=None) -> dict[str, Any]:
    """Fingerprint of a trans fit of a prepared ``TransJob`` (seed, steps, lr, chunks: added)."""
    s = job.settings
    tech = job.tech
    entries = {
        "dream_sc version": package_version(),
        "function": s.function,
        "degree": int(s.degree),
        "use_dose_mean": bool(s.use_dose_mean),
        "warm_start": bool(s.warm_start),
        "batch_size": int(job.batch_size),
        **data_entries(s.modality, job.data, np.asarray(job.cell_names, dtype=str)),
        "the fitted features": ckpt.hashed(job.fitted),
        "the sum factors": ckpt.hashed(inputs.log_sf),
        f"the dosage record {s.cis_key!r}": ckpt.hashed(
            inputs.log_dose_mean, inputs.log_dose_var, inputs.order
        ),
        "the technical groups": ckpt.hashed(inputs.group),
        f"the technical fit {s.technical_key_added!r}": ckpt.hashed(
            tech.groups,
            tech.baseline,
            tech.effects,
            tech.log_phi,
            tech.log_sigma,
            tech.log_nu,
            tech.log_conc,
        ),
        "the priors": ckpt.hashed(priors),
        "the warm start": ckpt.hashed(init),
    }
    if permutation is not None:
        entries["the permutation"] = ckpt.hashed(permutation)
    return ckpt.fingerprint(**entries)


def cis_fingerprint(data, cell_names, guide_names, *, config, warm_start) -> dict[str, Any]:
    """Fingerprint of a ``fit_cis`` run (``CisData``; seed added here, steps and lr by SVI).

    ``config``: the fit's :class:`~dream_sc.engine.config.FitConfig` (its batch size).
    """
    return ckpt.fingerprint(
        **{
            "dream_sc version": package_version(),
            "batch_size": int(config.batch_size),
            "warm_start": bool(warm_start),
            "the cell names and order": ckpt.hashed(np.asarray(cell_names, dtype=str)),
            "the counts of the cis feature": ckpt.hashed(data.y),
            "the sum factors": ckpt.hashed(data.log_sf),
            "the technical groups": ckpt.hashed(data.group),
            "the guide assignment": ckpt.hashed(
                data.assignment, data.is_cis_guide, np.asarray(guide_names, dtype=str)
            ),
            "the technical fit": ckpt.hashed(
                data.tech_effect_prior, data.log_r, data.log2_x_ntc_prior
            ),
        }
    )
