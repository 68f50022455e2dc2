"""Observed data of one feature chunk on the device, and its log-likelihood.

Counts stay sparse (device-resident CSR, rows gathered per minibatch); continuous data are
dense with NaN for missing values. The log-likelihood of every distribution is evaluated from a
linear predictor ``[B, T]`` on the distribution's link scale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .families import Family, get_family
from .paired import paired_to
from .sparse import CSRMatrix


@dataclass
class ObservationData:
    """Observations of ``n_cells`` cells x ``n_features`` features for one fit.

    Attributes
    ----------
    distribution
        Likelihood name.
    y
        Counts/successes (CSR) or continuous values (dense tensor, NaN = missing).
    total
        Binomial trials (CSR sharing ``y``'s pattern).
    group_index
        Multinomial: group of every feature (0..n_groups-1, chunk-local).
    n_groups
        Multinomial: number of groups.
    group_first
        Multinomial: index of the first feature of every group (``[n_groups]``). A
        Dirichlet-multinomial concentration passed per feature is read at these features, so
        only they carry the gradient of their group's concentration.
    """

    distribution: str
    y: CSRMatrix | torch.Tensor
    total: CSRMatrix | None
    group_index: torch.Tensor | None
    n_groups: int
    n_cells: int
    n_features: int
    group_first: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        distribution: str,
        X,
        *,
        total=None,
        group_index: np.ndarray | None = None,
    ) -> ObservationData:
        """A chunk's matrices as host tensors in the layout its likelihood wants.

        Move them to the fit's device with :meth:`to`.
        """
        n_cells, n_features = X.shape
        gi = first = None
        n_groups = 0
        family = get_family(distribution)
        y, total_t = family.tensors(X, total)
        if family.grouped:
            codes, first_np, gi_np = np.unique(
                np.asarray(group_index), return_index=True, return_inverse=True
            )
            gi = torch.as_tensor(gi_np.reshape(-1), dtype=torch.long)
            first = torch.as_tensor(first_np, dtype=torch.long)
            n_groups = len(codes)
        return cls(distribution, y, total_t, gi, n_groups, n_cells, n_features, first)

    def to(self, *args: Any, **kwargs: Any) -> ObservationData:
        """The observations moved like :meth:`torch.Tensor.to` (e.g. ``obs.to(config.device)``).

        Values take the target device (and dtype, if given); indices follow them to the device;
        trials keep sharing the pattern of the successes.
        """
        if self.total is not None:
            y, total = paired_to(self.y, self.total, *args, **kwargs)
        else:
            y, total = self.y.to(*args, **kwargs), None
        where = y.device

        def move(index: torch.Tensor | None) -> torch.Tensor | None:
            return None if index is None else index.to(where)

        return replace(
            self,
            y=y,
            total=total,
            group_index=move(self.group_index),
            group_first=move(self.group_first),
        )

    @property
    def device(self) -> torch.device:
        """Device of the observations."""
        return self.y.device

    @property
    def family(self) -> Family:
        """The likelihood family of :attr:`distribution`."""
        return get_family(self.distribution)

    def gather(self, rows: torch.Tensor) -> tuple:
        """The observations of the cells ``rows``: ``(y, total)`` (``total`` only for binomial)."""
        return self.family.gather(self.y, self.total, rows)

    def log_likelihood(self, eta: torch.Tensor, rows: torch.Tensor, **noise) -> torch.Tensor:
        """Summed log-likelihood of the cells ``rows`` (see :meth:`feature_log_likelihood`)."""
        return self.feature_log_likelihood(eta, rows, **noise).sum()

    def feature_log_likelihood(
        self,
        eta: torch.Tensor,
        rows: torch.Tensor,
        *,
        log_r: torch.Tensor | None = None,
        log_sigma: torch.Tensor | None = None,
        log_nu: torch.Tensor | None = None,
        log_conc: torch.Tensor | None = None,
        gathered: tuple | None = None,
    ) -> torch.Tensor:
        """Log-likelihood of the cells ``rows`` given the linear predictor ``eta``.

        Returns ``[n_features]`` (summed over cells) for every distribution but the
        multinomial, whose features are coupled and which returns one value per feature group.

        Parameters
        ----------
        eta
            ``[len(rows), n_features]`` on the link scale (log mean, logit, category logit,
            mean).
        rows
            Cell indices of the minibatch.
        log_r
            negbinom: log inverse dispersion ``[T]``.
        log_sigma
            normal/studentt: log noise scale ``[T]``.
        log_nu
            studentt: log degrees of freedom ``[T]``.
        log_conc
            binomial/multinomial: log concentration ``[T]``; when given, the beta-binomial
            (concentration ``α + β`` per feature) or Dirichlet-multinomial likelihood (total
            concentration per group, read at each group's first feature, see
            ``group_first``) replaces the binomial / multinomial. ``None``: no
            over-dispersion.
        gathered
            :meth:`gather` of ``rows``, when the same rows are evaluated many times.
        """
        y, total = self.gather(rows) if gathered is None else gathered
        return self.family.log_likelihood(
            self, eta, y, total, log_r=log_r, log_sigma=log_sigma, log_nu=log_nu, log_conc=log_conc
        )
