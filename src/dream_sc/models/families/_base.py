"""The interface every likelihood family implements, and the moment helpers they share.

A family is everything the package knows about one distribution: which data it accepts and
how they are checked, how they sit on the device, its link and log-likelihood, the moment
estimates that initialise the technical fit, its technical noise (sites, priors, summaries),
what the trans fit keeps fixed from it, its default minimal effect, the observed values plots
draw and how cells with data are counted. Every layer asks the family; no layer branches on
the distribution's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import sparse

from ..guide import Site
from ..sparse import CSRMatrix

#: Range of the concentration (beta-binomial ``a + b``, Dirichlet total) of over-dispersed
#: binomial / multinomial features: from strongly over-dispersed to practically binomial. The
#: upper end is also the neutral value of features without information about it.
CONCENTRATION_RANGE = (0.5, 1e4)


@dataclass
class FamilyData:
    """What a family reads besides the observations ``X`` (see :meth:`Family.read`)."""

    total: Any = None  # binomial trials, same layout as X
    group_index: np.ndarray | None = None  # [T] group of every category feature
    group_names: np.ndarray | None = None  # names of the groups in group_index order


@dataclass
class LinkMoments:
    """Closed-form moment estimates of one family (see :meth:`Family.link_moments`)."""

    link: np.ndarray  # [C, T] per technical group, link scale
    informative: np.ndarray  # [T] bool
    log_phi: np.ndarray | None = None  # [T] NB log dispersion
    log_sigma: np.ndarray | None = None  # [T] continuous log noise sd


def group_sums(matrix, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Column sums per technical group: ``[C, T]``."""
    indicator = sparse.csr_matrix(
        (np.ones(len(group)), (group, np.arange(len(group)))), shape=(n_groups, len(group))
    )
    out = indicator @ matrix
    return np.asarray(out.toarray() if sparse.issparse(out) else out, dtype=np.float64)


def trial_residuals(
    y: np.ndarray, onehot: np.ndarray, trials: np.ndarray, log_conc
) -> tuple[np.ndarray, np.ndarray]:
    """Score-test residuals/weights of successes out of trials (binomial, multinomial category).

    Group proportions are pooled per technical group; over-dispersed features inflate the
    variance by the beta-binomial factor ``1 + (n - 1) / (conc + 1)``.
    """
    n = np.asarray(trials, dtype=np.float64)
    p = (onehot.T @ y) / np.maximum(onehot.T @ n, 1e-12)
    p = np.clip(onehot @ p, 1e-9, 1 - 1e-9)
    inflate = np.ones_like(n)
    if log_conc is not None:
        conc = np.exp(np.asarray(log_conc, dtype=np.float64))[None, :]
        inflate = 1.0 + np.maximum(n - 1.0, 0.0) / (conc + 1.0)
    return (y - n * p) / inflate, n * p * (1.0 - p) / inflate


def rows_csr(matrix, rows: np.ndarray) -> sparse.csr_matrix:
    """Rows ``rows`` of a sparse or dense matrix as CSR."""
    return sparse.csr_matrix(matrix[rows] if sparse.issparse(matrix) else np.asarray(matrix)[rows])


def rho_to_log_conc(numerator: np.ndarray, denominator: np.ndarray) -> tuple:
    """Log concentration ``log(1/rho - 1)`` from an intra-class correlation ``rho = num/den``.

    Clipped to :data:`CONCENTRATION_RANGE`; where ``den`` is 0 (no cell with two or more
    trials, or a proportion of exactly 0 or 1) the neutral upper end is used.
    """
    lo, hi = CONCENTRATION_RANGE
    ok = denominator > 0
    rho = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=ok)
    rho = np.clip(rho, 1.0 / (1.0 + hi), 1.0 / (1.0 + lo))
    return np.where(ok, np.log1p(-rho) - np.log(rho), np.log(hi)), ok


def summed(ind: sparse.csr_matrix, matrix) -> np.ndarray:
    """``ind @ matrix`` as a dense array (sums of cells per guide)."""
    return np.asarray((ind @ matrix).todense() if sparse.issparse(matrix) else ind @ matrix)


class Family:
    """One likelihood family. Subclasses set the class attributes and override the methods.

    Attributes
    ----------
    name
        Distribution name as passed to :func:`dream_sc.pp.register_modality`.
    options
        Registration arguments only this family accepts (``total_layer``, ``group_key``).
    continuous
        Dense values with NaN for missing entries (else sparse counts).
    grouped
        Features are the categories of groups sharing one likelihood term (their curves and
        log-likelihoods are coupled: no per-feature refinement).
    size_factors
        The linear predictor includes the cell's log size factor.
    overdispersible
        Accepts ``overdispersed=True`` (a concentration per feature learned in step 1).
    cis_capable
        A cis gene's dosage can be read from this family's data.
    lazy_input
        Fits read the data feature block by feature block only, so the matrix may stay out
        of core (a Dask array or a backed h5mu; see :mod:`dream_sc._lazy`). Families whose
        checks or moments need whole rows (multinomial groups, continuous data) keep it False.
    fused_hill
        CPU trans fits of Hill curves use the one-pass curve + likelihood kernel
        (:mod:`dream_sc.models.fused`) instead of torch operations and autograd.
    noise_scaled
        Effects are measured in multiples of the feature's noise sd (continuous data): the
        technical effect prior, the amplitude floor and the minimal effect scale with it.
    default_min_effect
        Minimal effect of ``prob_dose_dependent`` on the response scale (``tl.fit_trans``).
    value_label, response_label
        Axis labels of the natural scale and of ``response_mean``.
    noise_columns
        ``(column prefix, site)`` of the technical noise summaries (log-Normal posteriors).
    mean_link
        Link of the mean for the dosage-uncertainty correction of the curve (``"log"``,
        ``"logit"``; ``None``: none needed or none applied), see
        :func:`dream_sc.models.curves.evaluate_curve`.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    continuous: ClassVar[bool] = False
    grouped: ClassVar[bool] = False
    size_factors: ClassVar[bool] = False
    overdispersible: ClassVar[bool] = False
    cis_capable: ClassVar[bool] = False
    noise_scaled: ClassVar[bool] = False
    lazy_input: ClassVar[bool] = False
    fused_hill: ClassVar[bool] = False
    default_min_effect: ClassVar[float]
    value_label: ClassVar[str]
    response_label: ClassVar[str]
    noise_columns: ClassVar[tuple[tuple[str, str], ...]] = ()
    mean_link: ClassVar[str | None] = None

    def __repr__(self) -> str:
        return f"<likelihood family {self.name!r}>"

    # ------------------------------------------------------------------ registration, data
    def check_options(self, *, total_layer: str | None, group_key: str | None) -> None:
        """Reject registration arguments of other families."""
        for option, value in (("total_layer", total_layer), ("group_key", group_key)):
            if value is not None and option not in self.options:
                from . import FAMILIES

                owner = next(n for n, f in FAMILIES.items() if option in f.options)
                raise ValueError(f"`{option}` only applies to distribution={owner!r}.")

    def registration_options(
        self, *, total_layer: str | None, group_key: str | None, layers, modality: str
    ) -> tuple[str | None, str | None]:
        """Check the family-specific registration arguments and fill their defaults."""
        self.check_options(total_layer=total_layer, group_key=group_key)
        return total_layer, group_key

    def read(
        self,
        X,
        *,
        registration: dict,
        var,
        load_layer: Callable[[str], Any],
        modality: str,
        what: str,
    ) -> FamilyData:
        """Validate the observations ``X`` and read what else the family needs.

        Parameters
        ----------
        X
            Observations of the requested cells (float32, CSR or dense).
        registration
            The modality's registration (:func:`dream_sc._registration.get_registration`).
        var
            The modality's ``var`` DataFrame.
        load_layer
            Returns a layer's rows for the same cells as ``X``.
        modality, what
            Names for error messages.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ device, likelihood
    def tensors(self, X, total) -> tuple:
        """Observations (and trials) as host tensors in the layout the likelihood wants.

        :meth:`~dream_sc.models.observation.ObservationData.to` moves them to the fit's device.
        """
        return CSRMatrix.from_scipy(sparse.csr_matrix(X)), None

    def gather(self, y, total, rows: torch.Tensor) -> tuple:
        """The observations of the cells ``rows``."""
        return y.take_rows(rows), None if total is None else total.take_rows(rows)

    def log_likelihood(self, obs, eta: torch.Tensor, y, total, **noise) -> torch.Tensor:
        """Log-likelihood ``[T]`` (``[G]`` for grouped families) of gathered observations.

        ``noise`` holds ``log_r`` / ``log_sigma`` / ``log_nu`` / ``log_conc`` (``None`` when
        absent); ``obs`` is the :class:`~dream_sc.models.observation.ObservationData`.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ technical fit
    def link_moments(
        self, X, *, group: np.ndarray, n_groups: int, sum_factor, total, group_index
    ) -> LinkMoments:
        """Per-technical-group moment estimates on the link scale and the noise estimate."""
        raise NotImplementedError

    def concentration_moments(self, X, *, total, group, n_groups, group_index) -> tuple:
        """Moment estimate ``(log_conc [T], informative [T])`` of an over-dispersed fit."""
        raise ValueError(f"The {self.name} likelihood has no concentration.")

    def technical_noise(
        self, init, features: np.ndarray, n_feat: int, as_tensor: Callable
    ) -> tuple[list[Site], Callable[[], dict]]:
        """Latent noise sites of the technical fit and a sampler of the likelihood kwargs.

        The sampler runs inside the Pyro model and returns e.g. ``{"log_r": ...}``.
        """
        return [], dict

    def noise_priors(self, init) -> dict:
        """Priors of the technical noise as stored in the run record."""
        return {}

    def fixed_noise(self, tech, features: np.ndarray) -> dict[str, np.ndarray]:
        """Noise of step 1 kept fixed in step 3, for the features ``features`` (global)."""
        out = {}
        if tech.log_conc is not None:  # over-dispersed binomial / multinomial
            out["log_conc"] = tech.log_conc[features]
        return out

    def noise_unit(self, tech, features: np.ndarray) -> np.ndarray:
        """Unit of effects per feature: the noise sd (``noise_scaled``) or 1."""
        return np.ones(len(features))

    # ------------------------------------------------------------------ trans fit
    def guide_link_means(
        self, X, *, total, group_index, ind, codes, group, sf, eff, mean_delta
    ) -> np.ndarray:
        """Technically corrected per-guide means on the link scale ``[guides, T]``."""
        raise NotImplementedError

    def natural_scale(
        self, eta: torch.Tensor, group: torch.Tensor | None, n_groups: int
    ) -> torch.Tensor:
        """Curve on the natural scale (inverse link; reference group, unit size factor)."""
        return eta

    def response_scale(self, eta: torch.Tensor, natural: torch.Tensor) -> torch.Tensor:
        """Scale on which responses are reported."""
        return natural

    def half_way_fraction(self, eta0: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        """Hill fraction ``h`` where ``natural(eta0 + v h)`` is half-way between ``h = 0`` and 1.

        The response-scale EC50 of a single Hill term on this family's link (identity link:
        ``h = 1/2``). ``None`` where the natural scale couples features (no closed form).
        """
        return torch.full_like(v, 0.5)

    def dense_kernel(self, gathered: tuple, noise: dict) -> Callable | None:
        """Dense float64 log-likelihood of a cell block up to curve-free terms, or ``None``.

        The returned kernel may overwrite its ``eta`` argument (the refinement hands it a
        scratch block).
        """
        return None

    def cells_with_data(self, X, *, total, group_index) -> np.ndarray:
        """Number of cells with an observation, per feature."""
        return np.full(X.shape[1], X.shape[0])

    def cells_detected(self, X, *, total, group_index) -> np.ndarray:
        """Number of cells in which a feature is detected (``min_cells`` of ``fit_trans``).

        Cells with an observation, except for counts (non-zero counts).
        """
        return self.cells_with_data(X, total=total, group_index=group_index)

    # ------------------------------------------------------------------ observed data
    def observed_parts(self, X: np.ndarray, *, total, size_factor) -> tuple:
        """Numerator and denominator ``[N, K]`` of the observed ratio of every cell."""
        raise NotImplementedError

    def score_trials(self, X, cols: np.ndarray, *, total, group_index) -> np.ndarray | None:
        """Trials ``[N, len(cols)]`` of the score test's no-dose model (None: no trials)."""
        return None

    def score_residuals(
        self, y: np.ndarray, onehot: np.ndarray, *, log_sf, trials, noise: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """Working residuals ``e`` and weights ``w`` ``[N, T]`` of the no-dose model.

        The model has one mean per technical group and feature (see
        :func:`dream_sc.models.null.null_model`); ``noise`` holds the fixed technical noise
        of the features (``log_r``, ``log_conc``, ``log_sigma``).
        """
        raise NotImplementedError(f"{self.name}: score_residuals")

    def normalise(self, ratio: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Remove technical effects ``delta`` (link scale) from raw ratios ``[..., K]``."""
        return ratio - delta


#: Methods and attributes every registered family provides (checked by the tests).
INTERFACE = (
    "name",
    "continuous",
    "grouped",
    "size_factors",
    "overdispersible",
    "cis_capable",
    "noise_scaled",
    "lazy_input",
    "fused_hill",
    "default_min_effect",
    "value_label",
    "response_label",
    "read",
    "tensors",
    "gather",
    "log_likelihood",
    "link_moments",
    "technical_noise",
    "noise_priors",
    "fixed_noise",
    "noise_unit",
    "guide_link_means",
    "natural_scale",
    "response_scale",
    "half_way_fraction",
    "dense_kernel",
    "cells_with_data",
    "cells_detected",
    "observed_parts",
    "normalise",
)
#: Methods a family must define itself (the base class only raises).
ABSTRACT = (
    "read",
    "log_likelihood",
    "link_moments",
    "guide_link_means",
    "observed_parts",
    "score_residuals",
)
