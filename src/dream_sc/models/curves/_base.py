"""The interface of a dose-response curve (pure torch/numpy).

A curve owns everything that differs between curve functions: its latent sample sites and their
priors, the natural parameters built from them, its link-scale evaluation, the summary columns
it reports, its link- and response-scale EC50s, its refinement coordinates, its warm start, an
optional fused likelihood kernel, its memory cost per entry and the prior density of each of its
sites for plots. The rest of the package asks the curve (:func:`~dream_sc.models.curves.get_curve`)
instead of branching on its name.

Every curve has the value at the reference dosage ``eta_ref`` (sampled and initialised by
:mod:`dream_sc.models.trans`, shared by all curves); the methods below handle the other sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..guide import Site

if TYPE_CHECKING:  # pragma: no cover
    from ..families import Family
    from ..trans import TransPriors
    from ..trans_summary import Grid
    from ..warm_start import GuidePoints


@dataclass(frozen=True)
class SitePrior:
    """The prior of one latent site, for plots: ``Normal(loc, scale)`` or the log half-Cauchy.

    ``dist`` is ``"normal"`` or ``"log_half_cauchy"`` (``log lambda`` for
    ``lambda ~ HalfCauchy(1)``; ``loc`` and ``scale`` unused).
    """

    dist: str
    loc: float = 0.0
    scale: float = 1.0


def summary_stats(name: str, x: torch.Tensor) -> dict[str, np.ndarray]:
    """``{name}_mean``, ``_q05``, ``_q95`` over draws (first axis)."""
    q = torch.quantile(x, torch.tensor([0.05, 0.95]), dim=0)
    return {
        f"{name}_mean": x.mean(0).numpy(),
        f"{name}_q05": q[0].numpy(),
        f"{name}_q95": q[1].numpy(),
    }


class Curve:
    """A curve function: subclass it in one module of :mod:`dream_sc.models.curves`.

    Required: :attr:`name`, :meth:`sites`, :meth:`sample`, :meth:`natural_params` and
    :meth:`evaluate`. Everything else has a working default (no EC50, no refinement, no warm
    start, no fused kernel).

    Attributes
    ----------
    name
        The ``function=`` of ``fit_trans``.
    bytes_per_entry
        Bytes per (cell, feature) entry of one trans SVI step (memory planner); measured with
        ``benchmarks/bench_pipeline.py``.
    dose_params
        Natural parameters that are natural-log dosages (EC50s): moved along the dosage axis
        by :class:`~dream_sc.models.trans_summary.DoseAxis`.
    coordinates
        Names of the refinement coordinates (``None``: the curve's intervals are not refined);
        a name may stand for a block of them (the polynomial's ``coef``, one per degree).
    refine_default
        Whether ``fit_trans(refine_intervals=True)`` refines the curve (needs
        :attr:`coordinates`).
    fused
        Whether :meth:`fused_log_likelihood` exists (families with ``fused_hill``, CPU).
    site_labels
        Axis labels of the latent sites in ``pl.prior_posterior``.
    """

    name: str = ""
    bytes_per_entry: int = 160
    dose_params: tuple[str, ...] = ()
    coordinates: tuple[str, ...] | None = None
    refine_default: bool = True
    fused: bool = False
    site_labels: Mapping[str, str] = {
        "eta_ref": "eta_ref (link-scale value at the NTC dosage)",
    }

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # --- model --------------------------------------------------------------------------------

    def sites(self, n: int, priors: TransPriors) -> list[Site]:
        """Latent sites (besides ``eta_ref``) of ``n`` features with their default starts."""
        raise NotImplementedError

    def sample(self, n: int, priors: TransPriors, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sample every latent site (besides ``eta_ref``) from its prior (inside a Pyro model).

        Prior tensors take the dtype and device of ``like`` (a float32 tensor of the fit).
        """
        raise NotImplementedError

    def natural_params(
        self, latent: Mapping[str, torch.Tensor], scale: torch.Tensor, priors: TransPriors
    ) -> dict[str, torch.Tensor]:
        """Curve parameters (besides ``eta_ref``) from latent values, trailing feature axis.

        ``scale`` is the amplitude prior scale of the features.
        """
        raise NotImplementedError

    def evaluate(
        self,
        params: Mapping[str, torch.Tensor],
        log_x: torch.Tensor,
        log_x_ref: float,
        half_range: float,
        log_x_var: torch.Tensor | None = None,
        mean_link: str | None = None,
    ) -> torch.Tensor:
        """Link-scale curve ``[..., B, T]``; see :func:`dream_sc.models.curves.evaluate_curve`."""
        raise NotImplementedError

    # --- summaries ----------------------------------------------------------------------------

    def parameter_columns(self, params: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Mean and 90% interval of every natural parameter (draws ``[S, T]``)."""
        cols = summary_stats("eta_ref", params["eta_ref"])
        for name, values in params.items():
            if name != "eta_ref":
                cols.update(summary_stats(name, values))
        return cols

    def ec50_columns(self, params: Mapping[str, torch.Tensor], grid: Grid) -> dict[str, np.ndarray]:
        """Link-scale EC50 and inflection columns (default: the curve has none, NaN)."""
        n_feat = params["eta_ref"].shape[-1]
        nan = np.full(n_feat, np.nan)
        return {
            "ec50_mean": nan,
            "ec50_q05": nan,
            "ec50_q95": nan,
            "ec50_in_range": np.zeros(n_feat, bool),
            "inflection_mean": nan,
        }

    def response_log_ec50(
        self, family: Family, params: Mapping[str, torch.Tensor], log_x_ref: float
    ) -> torch.Tensor | None:
        """Closed-form natural-log response-scale EC50 draws, or ``None`` (found numerically).

        See :mod:`dream_sc.models.ec50`.
        """
        return None

    # --- refinement (models/refine.py) ----------------------------------------------------------

    def to_coordinates(
        self, latent: Mapping[str, torch.Tensor], amplitude_scale: np.ndarray
    ) -> np.ndarray:
        """Variational draws ``[S, T]`` per site -> refinement coordinates ``[T, S, D]``."""
        raise ValueError(f"No refinement coordinates for {self.name!r}.")

    def coordinate_params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Natural curve parameters ``[..., T]`` (with ``eta_ref``) from coordinates ``[..., T, D]``."""
        raise ValueError(f"No refinement coordinates for {self.name!r}.")

    def coordinate_log_prior(
        self, theta: torch.Tensor, priors: TransPriors, features: np.ndarray
    ) -> torch.Tensor:
        """Log prior density ``[S, T]`` of coordinates ``[S, T, D]``."""
        raise ValueError(f"No refinement coordinates for {self.name!r}.")

    def add_curve(
        self,
        out: torch.Tensor,
        params: Mapping[str, torch.Tensor],
        log_x: torch.Tensor,
        log_x_var: torch.Tensor | None,
        priors: TransPriors,
        mean_link: str | None,
    ) -> torch.Tensor:
        """``out += evaluate(...)`` over a ``[B, T]`` block of cells (no autograd).

        Curves may do it in place (the refinement's hot loop); the default adds the curve.
        """
        curve = self.evaluate(
            params, log_x, priors.log_x_ref, priors.half_range, log_x_var, mean_link
        )
        return out.add_(curve)

    # --- warm start and fused kernel ----------------------------------------------------------

    def warm_start(self, points: GuidePoints, priors: TransPriors) -> dict[str, np.ndarray] | None:
        """Initial posterior means of the sites from guide-level means (``None``: priors' centres).

        See :func:`dream_sc.models.warm_start.warm_start`.
        """
        return None

    def fused_log_likelihood(self, params: Mapping[str, torch.Tensor], cells: Any) -> torch.Tensor:
        """Total log-likelihood of a minibatch in one sweep (see :mod:`dream_sc.models.fused`)."""
        raise NotImplementedError(f"No fused kernel for {self.name!r}.")

    # --- plots ----------------------------------------------------------------------------------

    def site_label(self, site: str) -> str:
        """Axis label of a latent site (posterior columns ``{site}_loc``) in plots."""
        return self.site_labels.get(site, site)

    def site_prior(self, site: str, priors: Mapping, row: int | None) -> SitePrior:
        """The prior of ``site`` from a stored prior record (``TransPriors.as_dict``).

        ``row`` is the feature for per-feature priors (``eta_ref``).
        """
        if site == "eta_ref":
            loc = float(np.asarray(priors["eta_ref"]["loc"], dtype=float)[row])
            return SitePrior("normal", loc, float(priors["eta_ref"]["scale"]))
        if site.startswith("log_lambda"):
            return SitePrior("log_half_cauchy")
        return SitePrior("normal", 0.0, 1.0)
