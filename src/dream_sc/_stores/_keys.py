"""The names of every stored entry, one class per result kind.

These classes are the only place that spells out where a result kind lives (``uns``,
``varm``, ``obs``, ``obsm`` keys and column names). The readers and writers of
:mod:`dream_sc._stores` and the checks of :mod:`dream_sc._record_checks` use them; ``get``,
``pl`` and ``tl`` ask them instead of building key strings. This module imports nothing of
the package, so every other module can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: Statistics of the stored trans curve bands (``varm[TransKeys(key).curve(stat)]``).
CURVE_STATS = ("mean", "q05", "q95")
#: Statistics of the per-cell cis dosage columns (``obs[CisKeys(key).dose(stat)]``).
CIS_STATS = ("mean", "sd", "q05", "q95")


@dataclass(frozen=True)
class _RunKeys:
    """A result stored under ``key``: its run record lives in ``uns[key]``."""

    key: str

    @property
    def record(self) -> str:
        """``uns`` key of the run record (``mdata.uns`` or the modality's ``uns``)."""
        return self.key


@dataclass(frozen=True)
class TechnicalKeys(_RunKeys):
    """Where a technical fit ``key`` lives in its modality.

    Examples
    --------
    >>> TechnicalKeys("dream_technical").informative
    'dream_technical_informative'
    """

    @property
    def results(self) -> str:
        """``adata.varm`` key of the per-feature summaries."""
        return self.key

    @property
    def informative(self) -> str:
        """``adata.var`` column flagging features with information in the fitted cells."""
        return f"{self.key}_informative"


@dataclass(frozen=True)
class CisKeys(_RunKeys):
    """Where a cis fit ``key`` lives in the ``MuData``.

    Examples
    --------
    >>> CisKeys("dream_cis").dose("mean"), CisKeys("dream_cis").samples
    ('dream_cis_dose_mean', 'dream_cis_dose_samples')
    """

    def dose(self, stat: str) -> str:
        """``mdata.obs`` column of the per-cell dosage statistic ``stat`` (``mean``, ``sd``, ...)."""
        return f"{self.key}_dose_{stat}"

    @property
    def doses(self) -> dict[str, str]:
        """Every per-cell dosage column, ``stat -> column`` (in :data:`CIS_STATS` order)."""
        return {stat: self.dose(stat) for stat in CIS_STATS}

    @property
    def samples(self) -> str:
        """``mdata.obsm`` key of the cells x samples dosage draws."""
        return f"{self.key}_dose_samples"


@dataclass(frozen=True)
class TransKeys(_RunKeys):
    """Where a trans fit ``key`` lives in its modality.

    Examples
    --------
    >>> TransKeys("dream_trans").curve("q05"), TransKeys("dream_trans").posterior
    ('dream_trans_curve_q05', 'dream_trans_posterior')
    """

    @property
    def results(self) -> str:
        """``adata.varm`` key of the per-feature results table."""
        return self.key

    def curve(self, stat: str) -> str:
        """``adata.varm`` key of the curve band ``stat`` (one of :data:`CURVE_STATS`)."""
        return f"{self.key}_curve_{stat}"

    @property
    def posterior(self) -> str:
        """``adata.varm`` key of the variational posterior frame."""
        return f"{self.key}_posterior"

    @staticmethod
    def tested(table: pd.DataFrame) -> np.ndarray:
        """Features of a results table with a score and q-value (``tested``).

        Fits before the two-stage option have no ``tested`` column: there every fitted
        feature was tested.
        """
        column = "tested" if "tested" in table.columns else "fitted"
        return table[column].to_numpy(dtype=bool)


@dataclass(frozen=True)
class ScreenKeys(_RunKeys):
    """Where a screen ``key`` and the fits of its targets live.

    Examples
    --------
    >>> ScreenKeys("dream_screen").fit_key("dream_trans", "GFI1B")
    'dream_trans_GFI1B'
    """

    @staticmethod
    def fit_key(prefix: str, target: str) -> str:
        """Key of the cis or trans fit of ``target`` in a screen fitted with ``prefix``."""
        return f"{prefix}_{target}"
