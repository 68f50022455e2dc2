"""Step 2: guide effects and per-cell dosage of the cis gene (pure torch/Pyro).

``log2 x_i ~ Normal(log2 x_ntc + sum_g A_ig b_g, sigma_i)``,
``y_i ~ NB(s_i exp(delta_c(i)) x_i, r_within)``.

Guides targeting the cis gene share a heavy-tailed hierarchical prior
(``b_g = m + tau z_g``, ``z_g ~ StudentT(3)``), so a dead or very strong guide is not shrunk
away. Reference guides (non-targeting, and in high-MOI screens guides of other genes) centre on
0 with a tight heavy-tailed prior: a clearly active control guide escapes it and is reported.
Low MOI is the special case where ``A`` has one 1 per row.

Three choices make the guide-level posterior honest:

- **Each cell's dosage is integrated out** of the likelihood by Gauss-Hermite quadrature
  instead of being a variational parameter. A mean-field posterior over thousands of per-cell
  dosages makes every guide's dosage look several times more certain than its cells allow and
  inflates the fitted spread ``sigma``; with the cells integrated out only the few guide-level
  values are fitted (by a full-rank Normal posterior), and each cell's dosage posterior is
  computed exactly afterwards on a grid, one posterior draw of the guide-level values at a time.
- **The spread is not counted twice, and its split from counting noise is left open.** The
  dispersion of the cis gene from step 1 was measured on control cells whose dosage already
  varies from cell to cell, so it contains that spread; here the spread is modelled explicitly
  and the negative binomial keeps a within-cell dispersion ``phi_within`` of its own. How the
  over-dispersion splits between counting noise and real dosage spread is barely identified by
  the cis counts (on a 4,000-cell screen with 0.7 log2 spread the profile likelihood varies by
  less than 1 nat for ``phi_within`` between 4% and 40% of step 1's value), yet it sets how far
  each cell's dosage moves away from its guide's mean, and with it every EC50 placed by the
  cells of a guide. Pinning it by the second-moment identity
  ``(1 + phi_step1) = (1 + phi_within) exp(s_ref^2)`` (earlier versions) handed the split to
  the prior of ``sigma`` and biased the spread low (0.5 for a true 0.7 log2, dosages 6% high,
  EC50 intervals covering the truth half of the time). ``log phi_within`` has a wide prior
  below step 1's value instead (:data:`PHI_WITHIN_PRIOR`, about log-uniform over
  ``[e^-5, 1] phi_step1``), so the split follows the data where they speak and stays
  uncertain, carried on to the per-cell dosages, where they do not.
- **The technical effects of the cis gene are updated** by every cell of the fit (a prior
  centred on the step-1 estimate). An error in ``delta_c`` shifts the dosage of every cell of
  group ``c``; on a few hundred control cells its sampling error is several percent, as large as
  the dosage step between neighbouring guides.

The escaper option (low MOI) makes each targeting guide's cells a mixture: with probability
``pi_g`` a cell sits at the control dosage, else on the guide's log-normal. Its escape logits
are pooled across the target's guides (:data:`ESCAPE_GUIDE_SD`) and its ``phi_within`` prior
is centred by the second-moment identity at the spread prior's centre
(:func:`escaper_phi_loc`); fits without the option are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from .likelihoods import _lgamma_ratio

if TYPE_CHECKING:
    from ..engine.svi import FitResult

LN2 = float(np.log(2.0))
#: Prior sd of log2 x_ntc around the technical baseline of the cis gene.
X_NTC_PRIOR_SD = 0.5
#: Scale of the StudentT(3) prior of reference-guide effects (log2).
REFERENCE_EFFECT_SCALE = 0.1
#: Prior of the per-guide cell-to-cell spread (log of the log2-scale sd).
SIGMA_PRIOR = (np.log(0.3), 0.5)
#: Prior sd of the cis gene's technical effects (natural log) around their step-1 estimates.
TECHNICAL_EFFECT_PRIOR_SD = 0.5
#: Gauss-Hermite nodes integrating each cell's log-dosage out of the likelihood.
N_QUADRATURE = 24
#: Grid of the per-cell dosage posterior: points over +-GRID_HALF_WIDTH prior sds.
GRID_POINTS, GRID_HALF_WIDTH = 121, 6.0
#: Cells per chunk when sampling the per-cell dosage posteriors.
CELL_CHUNK = 65_536
#: Grid values (draws x cells x grid points) evaluated together when sampling them: a few dozen
#: draws of a screen target's ~1,000 cells at once instead of one draw at a time.
GRID_BLOCK = 1 << 19
#: Cells of the full-data objective of the Laplace start (a fixed subsample above this).
LAPLACE_MAX_CELLS = 50_000
#: L-BFGS iterations of the Laplace start, then damped Newton steps to polish the mode.
LAPLACE_ITERATIONS = 200
LAPLACE_NEWTON_STEPS = 10
#: Prior of ``log phi_within``: Normal(log phi_step1 + shift, sd), about log-uniform between
#: ``e^-5`` and 1 times step 1's dispersion (which also holds the dosage spread).
PHI_WITHIN_PRIOR = (-2.5, 1.5)
#: Escaper option: the targeting guides' escape logits share a centre ``escape_pool`` with
#: prior ``Normal(logit 1/3, 1)`` (:data:`ESCAPE_POOL_PRIOR`) and sit ``Normal(escape_pool,
#: ESCAPE_GUIDE_SD)`` around it. Escape is mostly a property of the cell's CRISPRi machinery,
#: not of the guide; pooling stops a moderate guide trading its effect against its own escape
#: fraction (both fit its cells nearly equally), while a guide whose cells clearly say
#: otherwise still moves away (0.5 logit ~ 0.2-0.4 around 0.3).
ESCAPE_POOL_PRIOR = (float(np.log(0.5)), 1.0)
ESCAPE_GUIDE_SD = 0.5
#: Starting escape fraction of the escaper option.
ESCAPE_START = 0.1
#: Escaper option: sd of the ``log phi_within`` prior, centred by :func:`escaper_phi_loc`.
ESCAPER_PHI_PRIOR_SD = 0.5


@dataclass
class CisData:
    """Inputs of the cis model for the cells of one fit (numpy)."""

    y: np.ndarray  # [N] cis counts
    log_sf: np.ndarray  # [N]
    group: np.ndarray  # [N] technical group code of each cell (0 = reference)
    tech_effect_prior: np.ndarray  # [C] step-1 technical effects of the cis gene (log; [0] = 0)
    assignment: np.ndarray  # [N, G] guide assignment (0/1 or counts)
    is_cis_guide: np.ndarray  # [G] bool
    log_r: float  # NB log inverse dispersion of the cis gene from step 1
    log2_x_ntc_prior: float  # technical baseline of the cis gene, log2
    escapers: bool = False  # per-guide escape fraction (low MOI; see CisModel)


@dataclass
class CisPosterior:
    """Posterior draws of the guide-level values, the priors and the run diagnostics.

    ``draws`` maps every site (and the derived ``guide_effect_all`` ``[S, G]`` log2 effects,
    ``tech_effect_all`` ``[S, C]``, ``log_r_within`` ``[S]``) to
    ``[S, ...]`` posterior draws; the same row of every array is one joint draw.
    """

    draws: dict[str, np.ndarray]
    fit: FitResult
    priors: dict
    #: escaper option: each cell's posterior probability of escaping, set by the cell draws
    cell_escape: np.ndarray | None = None


def _initial_effects(data: CisData) -> np.ndarray:
    """Per-guide log2 effects from pooled normalised counts (ridge least squares)."""
    offset = data.tech_effect_prior[data.group]
    norm = np.log2((data.y + 0.5) / np.exp(data.log_sf + offset)) - data.log2_x_ntc_prior
    A = data.assignment
    gram = A.T @ A + 1.0 * np.eye(A.shape[1])
    return np.linalg.solve(gram, A.T @ norm)


def nb_log_pmf(y: torch.Tensor, eta: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """Element-wise NB log-pmf without ``-log y!`` (mean ``exp(eta)``, inverse dispersion ``r``).

    Unlike :func:`dream_sc.models.likelihoods.negbinom_log_prob` it keeps every term that
    depends on ``r`` (which moves with the spread here) and does not sum over cells.
    """
    r = log_r.exp().expand_as(eta)
    x = eta - log_r
    sp = torch.nn.functional.softplus(x)
    return _lgamma_ratio(r, y.expand_as(eta)) - r * sp + y * (x - sp)


_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(N_QUADRATURE)


def cell_log_marginal(
    y: torch.Tensor,
    base_eta: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    log_r: torch.Tensor,
) -> torch.Tensor:
    """``log ∫ NB(y | exp(base_eta + ln2 · l), r) Normal(l; mu, sigma) dl`` per cell.

    ``l`` is the cell's log2 dosage; Gauss-Hermite quadrature with :data:`N_QUADRATURE` nodes.
    All arguments broadcast over cells ``[B]``.

    The ``lgamma`` terms of the NB log-pmf depend on the count and the dispersion but not on
    the dosage: they are added once per cell after the quadrature sum instead of at each of its
    nodes (most of the cost of the fit's likelihood went into them).
    """
    nodes = torch.as_tensor(_NODES, dtype=mu.dtype, device=mu.device)
    log_w = torch.as_tensor(np.log(_WEIGHTS / _WEIGHTS.sum()), dtype=mu.dtype, device=mu.device)
    log2_x = mu[:, None] + sigma[:, None] * nodes  # [B, K]
    x = base_eta[:, None] + LN2 * log2_x - log_r
    kernel = y[:, None] * x - (y[:, None] + log_r.exp()) * torch.nn.functional.softplus(x)
    return torch.logsumexp(kernel + log_w, dim=-1) + _lgamma_ratio(log_r.exp().expand_as(y), y)


def _unchecked(family):
    """``family(...)`` without argument validation (see :meth:`CisModel.sample_guide_level`)."""
    return lambda *args: family(*args, validate_args=False)


class CisModel:
    """The Pyro model of one cis fit, with the tensors it needs."""

    def __init__(
        self, data: CisData, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> None:
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        self.data = data
        self.device, self.dtype = device, dtype
        self.y, self.log_sf = t(data.y), t(data.log_sf)
        self.group = torch.as_tensor(np.asarray(data.group, dtype=np.int64), device=device)
        self.A = t(data.assignment)
        self.n_cells, self.n_guides = data.assignment.shape
        is_cis = np.asarray(data.is_cis_guide, dtype=bool)
        self.cis_idx = torch.as_tensor(np.flatnonzero(is_cis), device=device)
        self.ref_idx = torch.as_tensor(np.flatnonzero(~is_cis), device=device)
        self.n_cis, self.n_ref = int(is_cis.sum()), int((~is_cis).sum())
        self.effect_prior = t(data.tech_effect_prior)
        self.n_effects = len(data.tech_effect_prior) - 1
        self.x0 = float(data.log2_x_ntc_prior)
        self.log_r_step1 = float(data.log_r)
        self.phi_prior_loc = -self.log_r_step1 + PHI_WITHIN_PRIOR[0]
        self.phi_prior_scale = PHI_WITHIN_PRIOR[1]
        self.escapers = bool(data.escapers) and self.n_cis > 0
        if self.escapers:
            self.A_cis = self.A[:, self.cis_idx]  # [N, n_cis]
            self.is_cis_cell = self.A_cis.sum(-1) > 0
            self.phi_prior_loc = escaper_phi_loc(self.log_r_step1)
            self.phi_prior_scale = ESCAPER_PHI_PRIOR_SD

    def site_priors(self, values: dict[str, torch.Tensor]):
        """``(name, prior)`` of every guide-level site, in model order.

        A prior that depends on an earlier site reads it from ``values`` when it is reached
        (the caller fills ``values`` as it goes). The priors' parameters are constants and the
        values come from the guide (real numbers, as every site is unconstrained), so argument
        and support checks are skipped: they changed nothing and cost about a tenth of every
        SVI step.
        """
        Normal, StudentT = _unchecked(dist.Normal), _unchecked(dist.StudentT)  # noqa: N806
        yield "log2_x_ntc", Normal(self._scalar(self.x0), X_NTC_PRIOR_SD)
        yield "target_mean", Normal(self._scalar(0.0), 2.0)
        yield "log_target_scale", Normal(self._scalar(0.0), 0.75)
        if self.n_cis:
            yield "guide_z", StudentT(3.0, self._scalar(0.0), 1.0).expand([self.n_cis]).to_event(1)
        if self.n_ref:
            prior = StudentT(3.0, self._scalar(0.0), REFERENCE_EFFECT_SCALE)
            yield "ref_effect", prior.expand([self.n_ref]).to_event(1)
        yield "log_sigma_loc", Normal(self._scalar(SIGMA_PRIOR[0]), SIGMA_PRIOR[1])
        sigma_prior = Normal(values["log_sigma_loc"], 0.5)
        yield "guide_log_sigma", sigma_prior.expand([self.n_guides]).to_event(1)
        if self.n_effects:
            yield (
                "tech_effect",
                Normal(self.effect_prior[1:], TECHNICAL_EFFECT_PRIOR_SD).to_event(1),
            )
        yield "log_phi_within", Normal(self._scalar(self.phi_prior_loc), self.phi_prior_scale)
        if self.escapers:  # last, so the sites of a fit without the option keep their layout
            yield "escape_pool", Normal(self._scalar(ESCAPE_POOL_PRIOR[0]), ESCAPE_POOL_PRIOR[1])
            prior = Normal(values["escape_pool"], ESCAPE_GUIDE_SD)
            yield "escape_logit", prior.expand([self.n_cis]).to_event(1)

    def sample_guide_level(self) -> dict[str, torch.Tensor]:
        """Sample the guide-level sites from their priors (:meth:`site_priors`)."""
        out: dict[str, torch.Tensor] = {}
        for name, prior in self.site_priors(out):
            out[name] = pyro.sample(name, prior)
        return out

    def log_joint(self, values: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        """The model's log joint at guide-level ``values`` without a Pyro trace.

        Equal, bit for bit and in its gradients, to ``log_prob_sum()`` of the model's trace
        conditioned on ``values``: the same operations run in the same order (priors built,
        likelihood, then each site's log density summed in site order). The Laplace start
        evaluates it hundreds of times per fit, where the tracing cost more than the maths.
        """
        priors = list(self.site_priors(values))
        factor = self.log_likelihood(values, batch)
        total = 0.0
        for name, prior in priors:
            total = total + prior.log_prob(values[name]).sum()
        return total + factor.sum()

    def _scalar(self, value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=self.dtype, device=self.device)

    def derived(self, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Guide effects, technical effects and within-cell NB dispersion from site values.

        Works on single values and on draws with a leading sample axis.
        """
        lead = v["log2_x_ntc"].shape
        b = torch.zeros((*lead, self.n_guides), dtype=self.dtype, device=self.device)
        if self.n_cis:
            # one guide: nothing to pool, and tau * z would only bend the posterior into a
            # funnel (a Normal posterior over it inflated the guide's interval); b = m + z
            # keeps a wide heavy-tailed prior and a linear, well-fitted posterior
            tau = v["log_target_scale"].exp()[..., None] if self.n_cis > 1 else 1.0
            b[..., self.cis_idx] = v["target_mean"][..., None] + tau * v["guide_z"]
        if self.n_ref:
            b[..., self.ref_idx] = v["ref_effect"]
        delta = torch.zeros((*lead, self.n_effects + 1), dtype=self.dtype, device=self.device)
        if self.n_effects:
            delta[..., 1:] = v["tech_effect"]
        sigma2 = (2 * v["guide_log_sigma"]).exp()  # log2 scale, per guide
        out = {"b": b, "delta": delta, "sigma2": sigma2, "log_r": -v["log_phi_within"]}
        if self.escapers:
            out["escape"] = torch.sigmoid(v["escape_logit"])
        return out

    def escaper_prior(self, v, d, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Escaper option: escape probability, log2 mean and sd of cells ``idx`` if escaped.

        An escaped cell sits at the control dosage: ``Normal(log2 x_ntc, sigma_ref)`` with
        ``sigma_ref^2`` the mean spread of the reference guides (of all guides without any).
        The probability is the escape fraction of the cell's cis guide (0 for control cells).
        """
        pool = d["sigma2"][..., self.ref_idx] if self.n_ref else d["sigma2"]
        sigma = pool.mean(-1).sqrt()[..., None].expand(*pool.shape[:-1], len(idx))
        mu = v["log2_x_ntc"][..., None].expand_as(sigma)
        return d["escape"] @ self.A_cis[idx].T, mu, sigma

    def cell_prior(self, v, d, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior mean and sd (log2) of the dosage of cells ``idx``."""
        a = self.A[idx]
        weight = a.sum(-1).clamp(min=1.0)
        mu = v["log2_x_ntc"][..., None] + d["b"] @ a.T
        sigma = ((d["sigma2"] @ a.T) / weight).clamp_min(1e-12).sqrt()
        return mu, sigma

    def __call__(self, batch: dict) -> None:
        """The Pyro model of one batch (cells ``batch["cell_index"]``)."""
        v = self.sample_guide_level()
        pyro.factor("obs", self.log_likelihood(v, batch))

    def log_likelihood(self, v: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        """Marginal log-likelihood of the cis counts at the guide-level values ``v``.

        Cells ``batch["cell_index"]``, scaled to all cells; an overflowing count gives
        ``inf - inf = nan``, reported as ``-inf`` (a non-finite ELBO).
        """
        d = self.derived(v)
        idx = batch["cell_index"]
        mu, sigma = self.cell_prior(v, d, idx)
        base_eta = self.log_sf[idx] + d["delta"][self.group[idx]]
        cell_ll = cell_log_marginal(self.y[idx], base_eta, mu, sigma, d["log_r"])
        if self.escapers:
            pi, mu_e, sigma_e = self.escaper_prior(v, d, idx)
            escaped = cell_log_marginal(self.y[idx], base_eta, mu_e, sigma_e, d["log_r"])
            cell_ll = escape_mixture(cell_ll, escaped, pi, self.is_cis_cell[idx])
        total = cell_ll.sum() * (self.n_cells / len(idx))
        return torch.nan_to_num(total, nan=-torch.inf)


def escape_mixture(
    knocked: torch.Tensor, escaped: torch.Tensor, pi: torch.Tensor, mixed: torch.Tensor
) -> torch.Tensor:
    """``log((1 - pi) e^knocked + pi e^escaped)`` where ``mixed``, else ``knocked``.

    ``pi`` is clamped away from 0 and 1 so that the unused branch never produces an infinite
    gradient (control cells have ``pi = 0``).
    """
    p = pi.clamp(1e-6, 1 - 1e-6)
    both = torch.logaddexp(torch.log1p(-p) + knocked, torch.log(p) + escaped)
    return torch.where(mixed, both, knocked)


def initial_values(data: CisData, model: CisModel) -> dict[str, torch.Tensor]:
    """Starting values of every guide-level site, from moment estimates of the guide effects."""
    b0 = _initial_effects(data)
    is_cis = np.asarray(data.is_cis_guide, dtype=bool)
    m0 = float(np.mean(b0[is_cis])) if model.n_cis else 0.0
    tau0 = float(max(np.std(b0[is_cis]), 0.3)) if model.n_cis > 1 else 1.0
    f = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=model.device)  # noqa: E731
    values = {
        "log2_x_ntc": f(model.x0),
        "target_mean": f(m0),
        "log_target_scale": f(np.log(tau0)),
        "log_sigma_loc": f(SIGMA_PRIOR[0]),
        "guide_log_sigma": f(np.full(model.n_guides, SIGMA_PRIOR[0])),
    }
    if model.n_cis:
        values["guide_z"] = f((b0[is_cis] - m0) / tau0)
    if model.n_ref:
        values["ref_effect"] = f(np.zeros(model.n_ref))
    if model.n_effects:
        values["tech_effect"] = f(data.tech_effect_prior[1:])
    values["log_phi_within"] = f(model.phi_prior_loc)
    if model.escapers:
        start = np.log(ESCAPE_START / (1 - ESCAPE_START))
        values["escape_pool"] = f(start)
        values["escape_logit"] = f(np.full(model.n_cis, start))
    return values


def guide_effect_prior_draws(priors: dict, n_draws: int, seed: int = 0) -> np.ndarray:
    """Draws of the marginal prior of a targeting guide's effect (log2 fold change).

    ``target_mean + exp(log target_scale) * guide_z`` with the hyperpriors of a cis run record
    (``uns[key]["priors"]``): the effect prior has no closed form. A single-guide fit
    (``priors["target_scale"]["used"]`` false) has ``tau = 1``.
    """
    rng = np.random.default_rng(seed)
    m, tau, z = priors["target_mean"], priors["target_scale"], priors["guide_z"]
    scale = np.exp(rng.normal(tau["loc"], tau["scale"], n_draws))
    if not tau.get("used", True):
        scale = np.ones(n_draws)
    return rng.normal(m["loc"], m["scale"], n_draws) + scale * (
        z["loc"] + z["scale"] * rng.standard_t(z["df"], n_draws)
    )


def cis_priors(model: CisModel) -> dict:
    """The priors of a cis fit, as its run record holds them (``uns[key]["priors"]``)."""
    priors = _base_priors(model)
    if model.n_cis == 1:  # b = m + z (see CisModel.derived)
        priors["target_scale"]["used"] = False
    if model.escapers:
        loc, scale = ESCAPE_POOL_PRIOR
        priors["escape_pool"] = {"dist": "normal", "loc": loc, "scale": scale}
        priors["escape_fraction"] = {
            "dist": "logitnormal",
            "loc": "escape_pool",
            "scale": float(ESCAPE_GUIDE_SD),
        }
    return priors


def escaper_phi_loc(log_r_step1: float) -> float:
    """Centre of the escaper option's ``log phi_within`` prior.

    How step 1's over-dispersion splits into dosage spread and counting noise is barely
    identified by the cis counts (the profile likelihood is flat within 1 nat over a 15-fold
    range of ``phi_within``), and the escaper mixture is more sensitive to it than the single
    log-normal: a split that hands the spread too much widens both components and blurs
    which cells escaped. The prior is centred where the second-moment identity
    ``(1 + phi_step1) = (1 + phi_within) exp((ln 2 s)^2)`` puts it for the spread prior's
    centre ``s = exp(SIGMA_PRIOR[0])``, and never below the default prior's centre.
    """
    phi1 = float(np.exp(-log_r_step1))
    spread = (LN2 * np.exp(SIGMA_PRIOR[0])) ** 2
    identity = (1 + phi1) * np.exp(-spread) - 1
    return float(np.log(max(identity, phi1 * np.exp(PHI_WITHIN_PRIOR[0]))))


def _base_priors(model: CisModel) -> dict:
    return {
        "log2_x_ntc": {"dist": "normal", "loc": model.x0, "scale": X_NTC_PRIOR_SD},
        "target_mean": {"dist": "normal", "loc": 0.0, "scale": 2.0},
        "target_scale": {"dist": "lognormal", "loc": 0.0, "scale": 0.75},
        "guide_z": {"dist": "studentt", "df": 3.0, "loc": 0.0, "scale": 1.0},
        "reference_effect": {
            "dist": "studentt",
            "df": 3.0,
            "loc": 0.0,
            "scale": REFERENCE_EFFECT_SCALE,
        },
        "sigma_loc": {
            "dist": "lognormal",
            "loc": float(SIGMA_PRIOR[0]),
            "scale": float(SIGMA_PRIOR[1]),
        },
        "guide_sigma": {"dist": "lognormal", "loc": "sigma_loc", "scale": 0.5},
        "dispersion_within_cell": {
            "dist": "lognormal",
            "loc": model.phi_prior_loc,
            "scale": float(model.phi_prior_scale),
        },
        "technical_effect": {
            "dist": "normal",
            "loc": "step-1 estimate",
            "scale": TECHNICAL_EFFECT_PRIOR_SD,
        },
    }
