"""The likelihood-family registry: every family implements the interface; only it knows names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from scipy import sparse

import dream_sc
from dream_sc._registration import DISTRIBUTIONS, OVERDISPERSIBLE
from dream_sc.models.families import FAMILIES, Distribution, Family, get_family
from dream_sc.models.families._base import ABSTRACT, INTERFACE
from dream_sc.models.observation import ObservationData

SRC = Path(dream_sc.__file__).parent


def test_registry_matches_the_public_distribution_names():
    assert tuple(FAMILIES) == get_args(Distribution) == DISTRIBUTIONS
    assert OVERDISPERSIBLE == ("binomial", "multinomial")
    for name, family in FAMILIES.items():
        assert family.name == name
        assert get_family(name) is family


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="Unknown distribution 'poisson'; known: negbinom, "):
        get_family("poisson")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_implements_the_full_interface(name):
    family = get_family(name)
    assert isinstance(family, Family)
    for member in INTERFACE:
        assert hasattr(family, member), f"{name} lacks {member}"
    for method in ABSTRACT:
        assert getattr(type(family), method) is not getattr(Family, method), (
            f"{name} does not implement {method}"
        )
    assert isinstance(family.default_min_effect, float) and family.default_min_effect > 0
    assert family.value_label and family.response_label


# comparisons or dict keys on a family name outside the registry
_NAMES = "|".join(FAMILIES)
_BRANCH = re.compile(
    rf"""(==|!=)\s*["']({_NAMES})["']|["']({_NAMES})["']\s*(==|!=)|"""
    rf"""\bin\s*[(\[{{]\s*["']({_NAMES})["']|^\s*["']({_NAMES})["']\s*:""",
    re.MULTILINE,
)


def test_only_the_registry_branches_on_distribution_names():
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        # the families own their names
        if rel.startswith("models/families/"):
            continue
        for match in _BRANCH.finditer(path.read_text()):
            offenders.append(f"{rel}: {match.group(0).strip()}")
    assert offenders == []


def _data(name: str, rng: np.random.Generator):
    """Tiny observations of a family: X, total, group_index (6 cells x 4 features)."""
    total = group_index = None
    if get_family(name).continuous:
        X = rng.normal(size=(6, 4)).astype(np.float32)
        X[0, 1] = np.nan
    else:
        X = rng.poisson(3.0, size=(6, 4)).astype(np.float32)
    if "total_layer" in get_family(name).options:
        total = X + rng.poisson(2.0, size=X.shape).astype(np.float32)
    if get_family(name).grouped:
        group_index = np.array([0, 0, 1, 1])
    return sparse.csr_matrix(X) if not get_family(name).continuous else X, total, group_index


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_likelihood_through_observation_data_is_finite_and_shaped(name):
    rng = np.random.default_rng(0)
    X, total, gi = _data(name, rng)
    obs = ObservationData.build(name, X, total=total, group_index=gi)
    eta = torch.zeros(6, 4, requires_grad=True)
    noise = {"log_r": torch.zeros(4), "log_sigma": torch.zeros(4), "log_nu": torch.ones(4)}
    ll = obs.feature_log_likelihood(eta, torch.arange(6), **noise)
    assert ll.shape == ((2,) if get_family(name).grouped else (4,))
    assert torch.isfinite(ll).all()
    ll.sum().backward()
    assert torch.isfinite(eta.grad).all()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_moments_cells_and_observed_parts(name):
    rng = np.random.default_rng(1)
    X, total, gi = _data(name, rng)
    family = get_family(name)
    group = np.array([0, 0, 0, 1, 1, 1])
    moments = family.link_moments(
        X, group=group, n_groups=2, sum_factor=np.ones(6), total=total, group_index=gi
    )
    assert moments.link.shape == (2, 4) and np.isfinite(moments.link).all()
    assert moments.informative.shape == (4,)
    cells = family.cells_with_data(X, total=total, group_index=gi)
    dense = X.toarray() if sparse.issparse(X) else X
    if family.continuous:
        expected = np.isfinite(dense).sum(0)  # one missing value in feature 1
        assert expected[1] == 5
    elif total is not None:
        expected = (total > 0).sum(0)
    elif gi is not None:
        per_group = [int((dense[:, gi == g].sum(1) > 0).sum()) for g in (0, 1)]
        expected = [per_group[g] for g in gi]
    else:
        expected = [6, 6, 6, 6]
    np.testing.assert_array_equal(cells, expected)
    num, den = family.observed_parts(dense, total=total, size_factor=np.full(6, 2.0))
    assert num.shape == den.shape == (6, 4)
    # the natural scale of a zero predictor: exp(0), sigmoid(0), uniform shares, or 0
    eta = torch.zeros(1, 4)
    group_t = None if gi is None else torch.as_tensor(gi)
    natural = family.natural_scale(eta, group_t, 0 if gi is None else 2)
    want = {"negbinom": 1.0, "binomial": 0.5, "multinomial": 0.5, "normal": 0.0, "studentt": 0.0}
    np.testing.assert_allclose(natural.numpy(), want[name])
