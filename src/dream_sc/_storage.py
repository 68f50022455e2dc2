"""Facade of the stores of stored results (:mod:`dream_sc._stores`), kept for older imports.

Every run record (``uns[key]``) carries its ``kind`` (``"technical"``, ``"cis"``, ``"trans"``
or ``"screen"``) and the ``schema_version`` it was written with; the store of each kind
(:mod:`dream_sc._stores.technical`, ``.cis``, ``.trans``, ``.screen``) owns its key and
column names (:mod:`dream_sc._stores._keys`), writes stamped records and reads them validated
(:mod:`dream_sc._record_checks`). New code imports from the store of its kind.
"""

from __future__ import annotations

from ._record_checks import KINDS, SCHEMA_VERSION
from ._stores._common import StoredFit, record_kind, schema_version, stamp, stored_fits
from ._stores._keys import CURVE_STATS
from ._stores.cis import read_cis, write_cis
from ._stores.screen import read_screen, write_screen
from ._stores.technical import TechnicalFit, read_technical, write_technical
from ._stores.trans import (
    CORR_PREFIX,
    posterior_frame,
    posterior_from_frame,
    read_trans,
    read_trans_posterior,
    read_trans_priors,
    write_trans,
)

__all__ = [
    "CORR_PREFIX",
    "CURVE_STATS",
    "KINDS",
    "SCHEMA_VERSION",
    "StoredFit",
    "TechnicalFit",
    "posterior_frame",
    "posterior_from_frame",
    "read_cis",
    "read_screen",
    "read_technical",
    "read_trans",
    "read_trans_posterior",
    "read_trans_priors",
    "record_kind",
    "schema_version",
    "stamp",
    "stored_fits",
    "write_cis",
    "write_screen",
    "write_technical",
    "write_trans",
]
