"""Likelihood families: one module per distribution behind one registry.

Every layer asks :func:`get_family` instead of branching on a distribution's name. Adding a
distribution means one new module here (a :class:`~dream_sc.models.families._base.Family`
subclass and its ``FAMILY`` instance), its line in :data:`FAMILIES` and its tests.

Examples
--------
>>> from dream_sc.models.families import get_family
>>> fam = get_family("binomial")
>>> fam.default_min_effect, fam.overdispersible, fam.grouped
(0.03, True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

from . import binomial, multinomial, negbinom, normal, studentt
from ._base import CONCENTRATION_RANGE, Family, FamilyData, LinkMoments

#: Distribution names accepted by :func:`dream_sc.pp.register_modality`.
Distribution = Literal["negbinom", "binomial", "multinomial", "normal", "studentt"]

#: Distribution name -> family, in the order of :data:`Distribution`.
FAMILIES: dict[str, Family] = {
    m.FAMILY.name: m.FAMILY for m in (negbinom, binomial, multinomial, normal, studentt)
}
#: Likelihood of a modality holding integer counts that was never registered.
DEFAULT_COUNTS: str = negbinom.FAMILY.name

assert tuple(FAMILIES) == get_args(Distribution)

#: Likelihood name -> log-likelihood kernel, including the over-dispersed variants.
LIKELIHOODS: dict[str, Callable[..., torch.Tensor]] = {
    "negbinom": negbinom.negbinom_log_prob,
    "binomial": binomial.binomial_log_prob,
    "betabinomial": binomial.betabinomial_log_prob,
    "multinomial": multinomial.multinomial_log_prob,
    "dirichletmultinomial": multinomial.dirichletmultinomial_log_prob,
    "normal": normal.normal_log_prob,
    "studentt": studentt.studentt_log_prob,
}


def get_family(name: str) -> Family:
    """The family of a distribution name.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    """
    try:
        return FAMILIES[str(name)]
    except KeyError:
        raise ValueError(f"Unknown distribution {name!r}; known: {', '.join(FAMILIES)}.") from None


__all__ = [
    "CONCENTRATION_RANGE",
    "DEFAULT_COUNTS",
    "FAMILIES",
    "LIKELIHOODS",
    "Distribution",
    "Family",
    "FamilyData",
    "LinkMoments",
    "get_family",
]
