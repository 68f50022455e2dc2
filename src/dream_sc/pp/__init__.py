"""Preprocessing: guide calls, register modalities, size factors, splicing and isoform builders."""

from ._annotate_junctions import annotate_junctions
from ._assign_guides import assign_guides
from ._from_anndata import from_anndata
from ._isoform import isoform_usage
from ._register import register_modality
from ._splicing import splicing_from_junctions
from ._sum_factors import sum_factors

__all__ = [
    "annotate_junctions",
    "assign_guides",
    "from_anndata",
    "isoform_usage",
    "register_modality",
    "splicing_from_junctions",
    "sum_factors",
]
