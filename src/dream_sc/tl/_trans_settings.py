"""The settings of one trans fit, frozen: written to the run record, read back to rebuild it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TransSettings:
    """Everything that defines a trans fit's data, priors and optimisation.

    ``fit_trans`` builds it from its arguments (with the seed and number of samples actually
    used), stores every field in ``uns[key]["params"]`` and ``test_trans`` /
    ``calibration_check`` rebuild the same job from it (:meth:`from_params`).
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
    seed: int = 0
    n_steps: int = 300
    lr: float = 0.03
    batch_size: int | None = None
    feature_chunk: int | None = None
    n_samples: int = 1000
    warm_start: bool = True

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> TransSettings:
        """Settings from a ``params`` mapping (the arguments of ``fit_trans`` or a run record).

        Stored records write ``None`` as ``""``; it is read back as ``None``. Keys that are not
        settings (``test``, ``key_added``, ...) are ignored; ``overrides`` replace fields.

        Examples
        --------
        >>> s = TransSettings.from_params({"function": "single_hill", "layer": "", "seed": 3})
        >>> s.function, s.layer, s.seed
        ('single_hill', None, 3)
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
