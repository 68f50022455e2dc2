"""``polynomial``: ``eta_ref + sum_{d=1..D} c_d u^d`` in the scaled log2 dosage.

``u = (log2 x - log2 x_ref) / half_range``; coefficients ``c_d = s_t * lambda * z_d`` share one
horseshoe scale per feature. With an uncertain dosage the expectation over ``u`` is exact
(Gaussian moments). No EC50 of its own (``ec50_*`` NaN; the response-scale EC50 is found
numerically), no fused kernel.

Refinement coordinates (:mod:`dream_sc.models.refine`): ``theta = (eta_ref, c_1, ..., c_D)``,
the coefficients themselves, in which the shared horseshoe scale is integrated out
(:func:`~dream_sc.models.curves._priors.shared_horseshoe_log_density`), so the importance
sampler targets the exact posterior of the cubic rather than the variational Normal over
``(z_d, log lambda)``. Not applied by ``fit_trans`` by default
(:attr:`Polynomial.refine_default`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pyro
import torch

from ..guide import Site
from ._base import Curve, summary_stats
from ._math import PROBIT_FACTOR, gaussian_powers, mean_scale_correction, polynomial_slope
from ._priors import (
    ETA_REF_PRIOR_SD,
    log_half_cauchy,
    normal_log_pdf,
    normal_prior,
    shared_horseshoe_log_density,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..trans import TransPriors
    from ..warm_start import GuidePoints


class Polynomial(Curve):
    """Polynomial of degree ``priors.degree`` in the centred, scaled log2 dosage."""

    name = "polynomial"
    #: measured 2026-12-05 (1,024 cells x 12,000 genes, dosage variance marginalised): 72
    bytes_per_entry = 80
    #: ``coef`` stands for the ``degree`` coefficients (one coordinate each, in order)
    coordinates: tuple[str, ...] | None = ("eta_ref", "coef")
    #: Off: the exact posterior of a cubic is narrower than the variational one, and against
    #: Hill-shaped truths its response-scale EC50 intervals then cover less (misspecification
    #: bias, not posterior error; measured 2026-12-07, benchmarks/ec50_coverage.py, see
    #: benchmarks/README.md). Set it to ``True`` to refine polynomial fits.
    refine_default = False
    fused = False
    site_labels: Mapping[str, str] = {
        **Curve.site_labels,
        "log_lambda": "log lambda (horseshoe local scale)",
    }

    def site_label(self, site: str) -> str:  # noqa: D102
        if site.startswith("coef_z"):  # posterior columns coef_z_<d>
            return f"{site} (standardised polynomial coefficient)"
        return super().site_label(site)

    def sites(self, n: int, priors: TransPriors) -> list[Site]:  # noqa: D102
        return [
            Site("coef_z", (n, priors.degree), 0.0, 0.1),
            Site("log_lambda", (n,), -1.0, 0.1),
        ]

    def sample(self, n: int, priors: TransPriors, like: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: D102
        coef_z = pyro.sample("coef_z", normal_prior(0.0, 1.0, [n, priors.degree], like))
        log_lambda = pyro.sample("log_lambda", log_half_cauchy().expand([n]).to_event(1))
        return {"coef_z": coef_z, "log_lambda": log_lambda}

    def natural_params(  # noqa: D102
        self, latent: Mapping[str, torch.Tensor], scale: torch.Tensor, priors: TransPriors
    ) -> dict[str, torch.Tensor]:
        lam = latent["log_lambda"].exp().unsqueeze(-1)
        return {"coef": scale.unsqueeze(-1) * lam * latent["coef_z"]}

    def evaluate(  # noqa: D102
        self,
        params: Mapping[str, torch.Tensor],
        log_x: torch.Tensor,
        log_x_ref: float,
        half_range: float,
        log_x_var: torch.Tensor | None = None,
        mean_link: str | None = None,
    ) -> torch.Tensor:
        lx = log_x.unsqueeze(-1)
        lv = None if log_x_var is None else log_x_var.unsqueeze(-1)
        eta_ref = params["eta_ref"].unsqueeze(-2)
        coef = params["coef"]  # [..., T, D]
        unit = float(np.log(2.0)) * half_range
        u = (lx - log_x_ref) / unit  # [..., B, 1]
        u_var = None if lv is None else lv / unit**2
        powers = gaussian_powers(u, u_var, coef.shape[-1])  # [..., B, 1, D]
        out = eta_ref + (powers * coef.unsqueeze(-3)).sum(-1)
        if u_var is None or mean_link is None:
            return out
        slope = polynomial_slope(coef, u, u_var) / unit  # per natural-log dosage
        return mean_scale_correction(out, slope.square() * lv, mean_link)

    def parameter_columns(self, params: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:  # noqa: D102
        cols = summary_stats("eta_ref", params["eta_ref"])
        for d in range(params["coef"].shape[-1]):
            cols.update(summary_stats(f"coef{d + 1}", params["coef"][..., d]))
        return cols

    # --- refinement ---------------------------------------------------------------------------

    def to_coordinates(  # noqa: D102
        self, latent: Mapping[str, torch.Tensor], amplitude_scale: np.ndarray
    ) -> np.ndarray:
        scale = np.asarray(amplitude_scale, dtype=np.float64)[:, None]  # [T, 1]
        lam = np.exp(latent["log_lambda"].double().numpy())[..., None]  # [S, T, 1]
        coef = scale * lam * latent["coef_z"].double().numpy()  # [S, T, D]
        theta = np.concatenate([latent["eta_ref"].double().numpy()[..., None], coef], axis=-1)
        return np.moveaxis(theta, 0, 1)

    def coordinate_params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: D102
        return {"eta_ref": theta[..., 0], "coef": theta[..., 1:]}

    def coordinate_log_prior(  # noqa: D102
        self, theta: torch.Tensor, priors: TransPriors, features: np.ndarray
    ) -> torch.Tensor:
        loc = torch.as_tensor(priors.eta_ref_loc[features], dtype=theta.dtype)
        lp = normal_log_pdf(theta[..., 0], loc, ETA_REF_PRIOR_SD)
        scale = np.asarray(priors.amplitude_scale[features], dtype=np.float64)  # [T]
        coef = theta[..., 1:].double().numpy()  # [S, T, D]
        dens = shared_horseshoe_log_density(coef / scale[:, None])
        dens = dens - coef.shape[-1] * np.log(scale)
        return lp + torch.as_tensor(dens, dtype=theta.dtype)

    def add_curve(
        self,
        out: torch.Tensor,
        params: Mapping[str, torch.Tensor],
        log_x: torch.Tensor,
        log_x_var: torch.Tensor | None,
        priors: TransPriors,
        mean_link: str | None,
    ) -> torch.Tensor:
        """``out += evaluate(...)`` over a ``[B, T]`` block: the sums over degrees as matmuls.

        The same value as :meth:`evaluate` (with ``mean_link``) to float32 rounding, without its
        ``[B, T, D]`` temporaries.
        """
        coef = params["coef"].to(out.dtype)  # [T, D]
        degree = coef.shape[-1]
        unit = float(np.log(2.0)) * priors.half_range
        u = (log_x.to(out.dtype) - priors.log_x_ref) / unit  # [B]
        u_var = None if log_x_var is None else log_x_var.to(out.dtype) / unit**2
        powers = gaussian_powers(u, u_var, degree)  # [B, D]
        corrected = u_var is not None and mean_link in ("log", "logit")
        curve = torch.zeros_like(out) if corrected and mean_link == "logit" else out
        curve.addmm_(powers, coef.T).add_(params["eta_ref"].to(out.dtype))
        if not corrected:
            return out
        lower = torch.ones_like(powers)  # E[u^(d-1)], d = 1..D
        if degree > 1:
            lower[:, 1:] = powers[:, :-1]
        weights = torch.arange(1, degree + 1, dtype=out.dtype, device=out.device) / unit
        var_eta = (lower @ (coef * weights).T).square_().mul_(log_x_var.to(out.dtype)[:, None])
        if mean_link == "log":
            return out.add_(var_eta, alpha=0.5)
        return out.add_(curve.mul_(var_eta.mul_(PROBIT_FACTOR).add_(1.0).rsqrt_()))  # logit

    def warm_start(  # noqa: D102
        self, points: GuidePoints, priors: TransPriors
    ) -> dict[str, np.ndarray] | None:
        from ..warm_start import warm_start_polynomial  # warm_start.py asks the registry

        return warm_start_polynomial(points, priors)


CURVE = Polynomial()
