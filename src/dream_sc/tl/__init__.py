"""Tools: the three fitting steps, significance testing and calibration checks."""

from ._calibration import calibration_check
from ._cis import fit_cis
from ._escaper_check import escaper_check
from ._screen import fit_screen
from ._technical import fit_technical
from ._test_trans import test_trans
from ._trans import fit_trans

__all__ = [
    "calibration_check",
    "escaper_check",
    "fit_cis",
    "fit_screen",
    "fit_technical",
    "fit_trans",
    "test_trans",
]
