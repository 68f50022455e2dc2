"""Tools: the three fitting steps and significance testing."""

from ._technical import fit_technical

__all__ = ["fit_technical"]
