"""Preprocessing: register modalities, size factors, splicing and isoform builders."""

from ._register import register_modality
from ._sum_factors import sum_factors

__all__ = ["register_modality", "sum_factors"]
