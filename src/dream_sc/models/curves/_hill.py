"""What the Hill curves share: components ``v_c (H(x; K_c, n_c) - H(x_ref; K_c, n_c))``.

Component ``c`` has the sites ``z{c}``, ``log_lambda{c}`` (amplitude ``v = s lambda z``,
horseshoe) and ``log_n{c}``; its EC50 is ``log_k1`` for the first component (subclasses define
the others, e.g. the additive gap). :class:`HillCurve` is the single-component curve; subclasses
add components by overriding the ``_extra_*`` hooks and :attr:`components`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch

from ..guide import Site
from ._base import Curve, SitePrior, summary_stats
from ._math import PROBIT_FACTOR, hill_fraction, hill_terms, mean_scale_correction
from ._priors import (
    ETA_REF_PRIOR_SD,
    LOG_N_PRIOR,
    horseshoe_log_density,
    log_half_cauchy,
    normal_log_pdf,
    normal_prior,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..trans import TransPriors
    from ..trans_summary import Grid
    from ..warm_start import GuidePoints


class HillCurve(Curve):
    """Sums of Hill components on the link scale (one component here)."""

    components: tuple[str, ...] = ("1",)
    coordinates: tuple[str, ...] | None = ("eta_ref", "v1", "log_k1", "log_n1")
    fused = True
    site_labels: Mapping[str, str] = {
        **Curve.site_labels,
        "log_k1": "log K1 (natural log of cis dosage)",
        "log_n1": "log n1 (log Hill coefficient)",
        "z1": "z1 (standardised amplitude)",
        "log_lambda1": "log lambda1 (horseshoe local scale)",
    }

    @property
    def dose_params(self) -> tuple[str, ...]:  # type: ignore[override]
        """The components' ``log K``."""
        return tuple(f"log_k{c}" for c in self.components)

    # --- model --------------------------------------------------------------------------------

    def sites(self, n: int, priors: TransPriors) -> list[Site]:  # noqa: D102
        return [
            Site("z1", (n,), 0.0, 0.1),
            Site("log_lambda1", (n,), -1.0, 0.1),
            Site("log_k1", (n,), priors.log_k_loc, 0.1),
            Site("log_n1", (n,), LOG_N_PRIOR[0], 0.1),
        ]

    def sample(self, n: int, priors: TransPriors, like: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: D102
        latent = {}
        lhc = log_half_cauchy()
        for c in self.components:
            latent[f"z{c}"] = pyro.sample(f"z{c}", normal_prior(0.0, 1.0, [n], like))
            latent[f"log_lambda{c}"] = pyro.sample(f"log_lambda{c}", lhc.expand([n]).to_event(1))
            latent[f"log_n{c}"] = pyro.sample(
                f"log_n{c}", normal_prior(LOG_N_PRIOR[0], LOG_N_PRIOR[1], [n], like)
            )
        latent["log_k1"] = pyro.sample(
            "log_k1", normal_prior(priors.log_k_loc, priors.log_k_scale, [n], like)
        )
        latent.update(self._extra_sample(n, priors, like))
        return latent

    def _extra_sample(
        self, n: int, priors: TransPriors, like: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Sites sampled after ``log_k1`` (none for one component)."""
        return {}

    def natural_params(  # noqa: D102
        self, latent: Mapping[str, torch.Tensor], scale: torch.Tensor, priors: TransPriors
    ) -> dict[str, torch.Tensor]:
        return {
            "v1": scale * latent["log_lambda1"].exp() * latent["z1"],
            "log_k1": latent["log_k1"],
            "n1": latent["log_n1"].exp(),
        }

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
        out = params["eta_ref"].unsqueeze(-2)
        if lv is not None and mean_link is not None:  # value and slope from one sigmoid
            slope = 0.0
            ref = torch.as_tensor(log_x_ref, dtype=lx.dtype, device=lx.device)
            for c in self.components:
                v, log_k, n = (params[f"{k}{c}"].unsqueeze(-2) for k in ("v", "log_k", "n"))
                nk = n * torch.rsqrt(1.0 + PROBIT_FACTOR * n.square() * lv)
                h = torch.sigmoid(nk * (lx - log_k))
                out = out + v * (h - hill_fraction(ref, log_k, n))
                slope = slope + v * nk * h * (1.0 - h)
            return mean_scale_correction(out, slope.square() * lv, mean_link)
        for c in self.components:
            v, log_k, n = (params[f"{k}{c}"].unsqueeze(-2) for k in ("v", "log_k", "n"))
            out = out + hill_terms(lx, log_x_ref, v, log_k, n, lv)
        return out

    # --- summaries ----------------------------------------------------------------------------

    def parameter_columns(self, params: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:  # noqa: D102
        cols = summary_stats("eta_ref", params["eta_ref"])
        for c in self.components:
            cols.update(summary_stats(f"v{c}", params[f"v{c}"]))
            cols.update(summary_stats(f"K{c}", params[f"log_k{c}"].exp()))
            cols.update(summary_stats(f"n{c}", params[f"n{c}"]))
        return cols

    def _dominant(self, params: Mapping[str, torch.Tensor]) -> np.ndarray:
        """Whether the second component dominates (one component: never)."""
        return np.zeros(params["eta_ref"].shape[-1], bool)

    def ec50_columns(self, params: Mapping[str, torch.Tensor], grid: Grid) -> dict[str, np.ndarray]:
        """EC50 of the dominant component (``ec50_*``), per component, inflection point."""
        n_feat = params["eta_ref"].shape[-1]
        nan = np.full(n_feat, np.nan)
        cols: dict[str, np.ndarray] = {}
        for c in self.components:
            k = params[f"log_k{c}"].exp()
            q = torch.quantile(k, torch.tensor([0.05, 0.95]), dim=0)
            cols[f"ec50_{c}_mean"], cols[f"ec50_{c}_q05"], cols[f"ec50_{c}_q95"] = (
                k.mean(0).numpy(),
                q[0].numpy(),
                q[1].numpy(),
            )
        dominant = self._dominant(params)

        def pick(stat: str) -> np.ndarray:
            return np.where(dominant, cols.get(f"ec50_2_{stat}", nan), cols[f"ec50_1_{stat}"])

        cols["ec50_mean"], cols["ec50_q05"], cols["ec50_q95"] = (
            pick("mean"),
            pick("q05"),
            pick("q95"),
        )
        cols["ec50_in_range"] = (cols["ec50_mean"] >= grid.lo) & (cols["ec50_mean"] <= grid.hi)
        comp = np.where(dominant, 2, 1)
        inflection = np.full(n_feat, np.nan)
        for c in self.components:
            n = params[f"n{c}"]
            k = params[f"log_k{c}"].exp()
            with torch.no_grad():
                ratio = torch.clamp((n - 1) / (n + 1), min=0.0)
                value = (
                    torch.where(n > 1, k * ratio ** (1 / n), torch.zeros_like(k)).mean(0).numpy()
                )
            inflection = np.where(comp == int(c), value, inflection)
        cols["inflection_mean"] = inflection
        if len(self.components) == 1:  # ec50_* is the component's: no per-component columns
            for stat in ("mean", "q05", "q95"):
                cols.pop(f"ec50_1_{stat}")
        return cols

    # --- refinement ---------------------------------------------------------------------------

    def to_coordinates(  # noqa: D102
        self, latent: Mapping[str, torch.Tensor], amplitude_scale: np.ndarray
    ) -> np.ndarray:
        scale = np.asarray(amplitude_scale, dtype=np.float64)
        columns = []
        for name in self.coordinates:
            if name.startswith("v"):
                c = name[1:]
                lam = np.exp(latent[f"log_lambda{c}"].double().numpy())
                columns.append(scale * lam * latent[f"z{c}"].double().numpy())
            else:
                columns.append(latent[name].double().numpy())
        return np.moveaxis(np.stack(columns, axis=-1), 0, 1)

    def coordinate_params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: D102
        at = {name: theta[..., i] for i, name in enumerate(self.coordinates)}
        out = {"eta_ref": at["eta_ref"], "v1": at["v1"], "log_k1": at["log_k1"]}
        out["n1"] = at["log_n1"].exp()
        out.update(self._extra_coordinate_params(at))
        return out

    def _extra_coordinate_params(self, at: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def coordinate_log_prior(  # noqa: D102
        self, theta: torch.Tensor, priors: TransPriors, features: np.ndarray
    ) -> torch.Tensor:
        names = self.coordinates
        at = {name: theta[..., i] for i, name in enumerate(names)}
        loc = torch.as_tensor(priors.eta_ref_loc[features], dtype=theta.dtype)
        lp = normal_log_pdf(at["eta_ref"], loc, ETA_REF_PRIOR_SD)
        scale = np.asarray(priors.amplitude_scale[features], dtype=np.float64)
        for name in names:
            if name.startswith("v"):
                u = at[name].double().numpy() / scale
                dens = horseshoe_log_density(u) - np.log(scale)
                lp = lp + torch.as_tensor(dens, dtype=theta.dtype)
            elif name.startswith("log_n"):
                lp = lp + normal_log_pdf(at[name], LOG_N_PRIOR[0], LOG_N_PRIOR[1])
        lp = lp + normal_log_pdf(at["log_k1"], priors.log_k_loc, priors.log_k_scale)
        return self._extra_log_prior(lp, at, priors)

    def _extra_log_prior(
        self, lp: torch.Tensor, at: Mapping[str, torch.Tensor], priors: TransPriors
    ) -> torch.Tensor:
        return lp

    def add_curve(
        self,
        out: torch.Tensor,
        params: Mapping[str, torch.Tensor],
        log_x: torch.Tensor,
        log_x_var: torch.Tensor | None,
        priors: TransPriors,
        mean_link: str | None,
    ) -> torch.Tensor:
        """``out += evaluate(...)``, in place: no temporaries beyond two blocks per component.

        The same value as :meth:`evaluate` (with ``mean_link``) to float32 rounding, in about
        half the passes over the ``[cells, features]`` block.
        """
        lx = log_x[:, None]
        lv = None if log_x_var is None else log_x_var[:, None]
        x_ref = torch.as_tensor(priors.log_x_ref, dtype=out.dtype, device=out.device)
        corrected = lv is not None and mean_link is not None
        # the logit correction scales the curve, not the offsets: build the curve apart then
        curve = torch.zeros_like(out) if corrected and mean_link == "logit" else out
        slope = None
        shift = params["eta_ref"].clone()
        for c in self.components:
            v, log_k, n = params[f"v{c}"], params[f"log_k{c}"], params[f"n{c}"]
            shift -= v * torch.sigmoid(n * (x_ref - log_k))
            if lv is None:
                h = (lx - log_k).mul_(n).sigmoid_()
                curve.addcmul_(h, v.expand_as(h))
                continue
            nk = (lv * (PROBIT_FACTOR * n * n)).add_(1.0).rsqrt_().mul_(n)
            h = (lx - log_k).mul_(nk).sigmoid_()
            curve.addcmul_(h, v.expand_as(h))
            if not corrected:
                continue
            term = nk.mul_(h).mul_(h.neg_().add_(1.0)).mul_(v)  # v n_k h (1 - h)
            slope = term if slope is None else slope.add_(term)
        curve.add_(shift)
        if slope is None:
            return out
        var_eta = slope.square_().mul_(lv)
        if mean_link == "log":
            return out.add_(var_eta, alpha=0.5)
        return out.add_(curve.mul_(var_eta.mul_(PROBIT_FACTOR).add_(1.0).rsqrt_()))  # logit

    # --- warm start and fused kernel ----------------------------------------------------------

    def warm_start(  # noqa: D102
        self, points: GuidePoints, priors: TransPriors
    ) -> dict[str, np.ndarray] | None:
        from ..warm_start import warm_start_hill  # warm_start.py asks the registry

        return warm_start_hill(points, priors)

    def fused_log_likelihood(self, params: Mapping[str, torch.Tensor], cells: Any) -> torch.Tensor:  # noqa: D102
        from ..fused import hill_negbinom_components  # fused.py asks the registry

        return hill_negbinom_components(self.components, params, cells)

    # --- plots ----------------------------------------------------------------------------------

    def site_prior(self, site: str, priors: Mapping, row: int | None) -> SitePrior:  # noqa: D102
        if site.startswith("log_n"):
            return SitePrior(
                "normal", float(priors["log_n"]["loc"]), float(priors["log_n"]["scale"])
            )
        if site == "log_k1":
            return SitePrior(
                "normal", float(priors["log_k"]["loc"]), float(priors["log_k"]["scale"])
            )
        return super().site_prior(site, priors, row)
