"""``polynomial``: ``eta_ref + sum_{d=1..D} c_d u^d`` in the scaled log2 dosage.

``u = (log2 x - log2 x_ref) / half_range``; coefficients ``c_d = s_t * lambda * z_d`` share one
horseshoe scale per feature. With an uncertain dosage the expectation over ``u`` is exact
(Gaussian moments). No EC50 of its own (``ec50_*`` NaN; the response-scale EC50 is found
numerically), no refinement, no fused kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pyro
import torch

from ..guide import Site
from ._base import Curve, summary_stats
from ._math import gaussian_powers, mean_scale_correction, polynomial_slope
from ._priors import log_half_cauchy, normal_prior

if TYPE_CHECKING:  # pragma: no cover
    from ..trans import TransPriors
    from ..warm_start import GuidePoints


class Polynomial(Curve):
    """Polynomial of degree ``priors.degree`` in the centred, scaled log2 dosage."""

    name = "polynomial"
    #: measured 2026-12-05 (1,024 cells x 12,000 genes, dosage variance marginalised): 72
    bytes_per_entry = 80
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

    def warm_start(  # noqa: D102
        self, points: GuidePoints, priors: TransPriors
    ) -> dict[str, np.ndarray] | None:
        from ..warm_start import warm_start_polynomial  # warm_start.py asks the registry

        return warm_start_polynomial(points, priors)


CURVE = Polynomial()
