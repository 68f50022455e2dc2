"""The data and prior settings of one trans fit, frozen: written to the run record, read back.

The optimisation settings (seed, steps, learning rate, batch size, samples, device) are the
fit's :class:`~dream_sc.engine.config.FitConfig`, stored alongside in the same ``params``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TransSettings:
    """Everything that defines a trans fit's data and priors.

    ``fit_trans`` builds it from its arguments, stores every field in ``uns[key]["params"]``
    and ``test_trans`` / ``calibration_check`` rebuild the same job from it
    (:meth:`from_params`, with :meth:`FitConfig.from_record
    <dream_sc.engine.config.FitConfig.from_record>` for the optimisation settings).
    """

    modality: str = "rna"
    function: str = "additive_hill"
    cis_key: str = "dream_cis"
    technical_key_added: str = "dream_technical"
    sum_factor_key: str = "sum_factor"
    layer: str | None = None
    use_dose_mean: bool = False
    min_effect: float | None = None
    degree: int = 3
    include_cis_feature: bool = False
    features: tuple[str, ...] | None = None
    min_cells: int = 0
    feature_chunk: int | None = None
    warm_start: bool = True
    test_basis: str = "cell"
    test_controls: str = "fitted"
    test_statistic: str = "quadratic"

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> TransSettings:
        """Settings from a ``params`` mapping (the arguments of ``fit_trans`` or a run record).

        Stored records write ``None`` as ``""``; it is read back as ``None``. Keys that are not
        settings (``test``, ``key_added``, ...) are ignored; ``overrides`` replace fields.

        Examples
        --------
        >>> s = TransSettings.from_params({"function": "single_hill", "layer": "", "seed": 3})
        >>> s.function, s.layer
        ('single_hill', None)
        """
        types = {f.name: f.type for f in fields(cls)}
        values = {}
        for name, kind in types.items():
            if name not in params:
                continue
            value = params[name]
            if isinstance(value, str) and value == "" and "None" in str(kind):
                value = None
            elif name == "features" and value is not None:
                value = tuple(str(v) for v in np.asarray(value).ravel())
            values[name] = _cast(value, str(kind))
        return replace(cls(**values), **overrides)

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], **overrides: Any) -> TransSettings:
        """Settings from the arguments of ``fit_trans`` as given (no conversion)."""
        values = {f.name: arguments[f.name] for f in fields(cls) if f.name in arguments}
        return cls(**{**values, **overrides})

    def as_params(self) -> dict[str, Any]:
        """The fields as a plain dict (``params`` of the run record, before cleaning)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _cast(value: Any, kind: str) -> Any:
    """A stored value (possibly a numpy scalar) as the field's Python type."""
    if value is None:
        return None
    if kind.startswith("bool"):
        return bool(value)
    if kind.startswith("int"):
        return int(value)
    if kind.startswith("float"):
        return float(value)
    if kind.startswith("str"):
        return str(value)
    return value
