"""Tools: the three fitting steps and significance testing."""

from ._cis import fit_cis
from ._technical import fit_technical

__all__ = ["fit_cis", "fit_technical"]
