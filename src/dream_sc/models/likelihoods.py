"""The log-likelihood kernels of every family under their historical names.

The kernels live with their family in :mod:`dream_sc.models.families`; this module gathers
them for code that wants a likelihood by name.
"""

from __future__ import annotations

from .families import LIKELIHOODS
from .families._kernels import (  # noqa: F401  (numerical helpers, tested directly)
    _lgamma_ratio,
    _lgamma_ratio_grad,
    _lgamma_ratio_value,
    _patch_large,
    _stirling_ratio,
    _stirling_ratio_grad,
)
from .families.binomial import betabinomial_log_prob, binomial_log_prob
from .families.multinomial import dirichletmultinomial_log_prob, multinomial_log_prob
from .families.negbinom import negbinom_log_prob
from .families.normal import normal_log_prob
from .families.studentt import studentt_log_prob
from .sparse import paired_sparse

__all__ = [
    "LIKELIHOODS",
    "betabinomial_log_prob",
    "binomial_log_prob",
    "dirichletmultinomial_log_prob",
    "multinomial_log_prob",
    "negbinom_log_prob",
    "normal_log_prob",
    "paired_sparse",
    "studentt_log_prob",
]
