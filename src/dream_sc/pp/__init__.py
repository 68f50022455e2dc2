"""Preprocessing: register modalities, size factors, splicing and isoform builders."""

from ._isoform import isoform_usage
from ._register import register_modality
from ._splicing import splicing_from_junctions
from ._sum_factors import sum_factors

__all__ = ["isoform_usage", "register_modality", "splicing_from_junctions", "sum_factors"]
