"""Posterior summaries of trans fits, computed in feature chunks from posterior samples.

Never materialises samples x cells x features: curves are evaluated on a dosage grid
(``[samples, grid, features]`` per chunk). Samples of feature ``t`` come from a stream seeded by
``(seed, t)``, so summaries do not depend on chunking either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .curves import evaluate_curve, get_curve, summary_stats
from .ec50 import response_ec50_columns
from .families import get_family
from .streams import keyed_rng
from .trans import TransPriors, natural_params

LN2 = float(np.log(2.0))
#: Standard normal 95th percentile: half-width of a 90% interval in sds.
Z90 = 1.6448536269514722


@dataclass
class Grid:
    """Dosage grid and the part of it inside the observed dosage range."""

    dose: np.ndarray  # [G]
    in_range: np.ndarray  # [G] bool
    lo: float
    hi: float


@dataclass
class DoseAxis:
    """Posterior uncertainty of the dosage axis itself, from the guide-level draws of step 2.

    A trans fit places its curves on the posterior-mean dosage of every cell. The guides'
    dosages are themselves uncertain, and that uncertainty is shared by all cells of a guide,
    so a per-cell variance cannot carry it: if the guides around a feature's EC50 truly sit 5%
    higher, the EC50 sits 5% higher too. Each posterior world ``w`` of step 2 (one joint draw of
    all guide dosages) moves the axis by ``shift[w](log x)``, a kernel average (Gaussian in log
    dosage with half the median gap between guides as bandwidth, weighted by cells) of the
    guides' deviations from their posterior mean; draw ``s`` of
    a curve's dose parameters (EC50s) is moved by world ``s mod W``. This is a first-order
    errors-in-variables correction: it widens dose intervals by the dosage uncertainty of the
    guides that locate them, without refitting the curves once per world.
    """

    grid: np.ndarray  # [P] natural-log dosage
    shift: np.ndarray  # [W, P] deviation of the axis in each world (natural log)

    @classmethod
    def from_guides(
        cls, log2_dose_draws: np.ndarray, n_cells: np.ndarray, n_grid: int = 200
    ) -> DoseAxis:
        """Build from guide dosage draws ``[G, W]`` (log2) and cells per guide ``[G]``."""
        # C order: numpy sums a strided axis in another order (1-ulp differences after an
        # h5mu round trip, which returns C-ordered draws of an F-ordered array)
        log_draws = LN2 * np.ascontiguousarray(log2_dose_draws, dtype=np.float64)
        centre = log_draws.mean(1)
        deviation = log_draws - centre[:, None]  # [G, W]
        distinct = np.unique(np.round(centre, 3))
        gaps = np.diff(distinct)
        # half the typical gap: between two guides both count, at a guide mostly itself
        bandwidth = max(0.5 * float(np.median(gaps)) if len(gaps) else 0.1, 0.03)
        pad = 3 * bandwidth
        grid = np.linspace(centre.min() - pad, centre.max() + pad, n_grid)
        logw = -0.5 * ((grid[:, None] - centre[None, :]) / bandwidth) ** 2  # [P, G]
        logw += np.log(np.maximum(np.asarray(n_cells, dtype=np.float64), 1.0))[None, :]
        w = np.exp(logw - logw.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        return cls(grid, (w @ deviation).T)

    @classmethod
    def from_record(cls, record) -> DoseAxis | None:
        """Read from a trans run record (``None`` for fits stored without one)."""
        if "dose_axis_grid" not in record:
            return None
        return cls(np.asarray(record["dose_axis_grid"]), np.asarray(record["dose_axis_shift"]))

    def to_record(self) -> dict:
        """Arrays to store in a run record."""
        return {"dose_axis_grid": self.grid, "dose_axis_shift": self.shift}

    def apply(self, log_dose: torch.Tensor) -> torch.Tensor:
        """Move draws ``[S, ...]`` of a natural-log dosage by their world's axis shift."""
        values = log_dose.detach().cpu().numpy()
        out = np.empty_like(values)
        for s in range(values.shape[0]):
            world = self.shift[s % len(self.shift)]
            out[s] = values[s] + np.interp(values[s], self.grid, world)
        return torch.as_tensor(out, dtype=log_dose.dtype)

    def response_ec50_move(self, function: str):
        """How to move response-scale EC50 draws of ``function`` (``None``: already moved).

        Curves with dose parameters (Hill EC50s) have their response-scale EC50s moved with
        those parameters (:meth:`apply_to_params`); a curve without any (``polynomial``) has
        its response-scale EC50 draws moved directly, so they carry the guides' dosage
        uncertainty too.
        """
        return None if get_curve(function).dose_params else self.apply

    def apply_to_params(self, function: str, params: dict) -> dict:
        """Curve parameters with every EC50 moved along the axis (``Curve.dose_params``)."""
        names = get_curve(function).dose_params
        if not names:
            return params
        out = dict(params)
        for name in names:
            out[name] = self.apply(out[name])
        return out


def make_grid(lo: float, hi: float, n: int = 60, extend: float = 1.5) -> Grid:
    """Log-spaced grid over the observed range ``[lo, hi]`` extended by a factor each side."""
    inner = np.geomspace(lo, hi, n - 10)
    outer_lo = np.geomspace(lo / extend, lo, 6)[:-1]
    outer_hi = np.geomspace(hi, hi * extend, 6)[1:]
    dose = np.concatenate([outer_lo, inner, outer_hi])
    return Grid(dose, (dose >= lo * (1 - 1e-9)) & (dose <= hi * (1 + 1e-9)), lo, hi)


def draw_latent(
    loc: dict,
    scale: dict,
    features: np.ndarray,
    n: int,
    root: np.random.SeedSequence,
    keys: np.ndarray | None = None,
    corr: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """``n`` posterior draws ``[n, T, ...]`` of every site, each feature from its own stream.

    Feature ``f`` (its key in ``keys`` if given, else its index) draws from the stream
    ``(f, 99)`` of the run's root sequence ``root`` (:func:`~dream_sc.models.streams.keyed_rng`).
    ``corr`` (``[T, D, D]``, sites sorted by name) correlates the values of each feature:
    ``value = loc + scale * (R @ eps)``.
    """
    names = sorted(loc)
    widths = [int(np.prod(loc[n].shape[1:])) for n in names]
    total = sum(widths)
    eps = np.empty((len(features), n, total), dtype=np.float32)
    ids = features if keys is None else keys[features]
    for row, fid in enumerate(ids):
        eps[row] = keyed_rng(root, fid, 99).standard_normal((n, total), dtype=np.float32)
    if corr is not None:
        eps = np.einsum("tij,tsj->tsi", corr[features], eps).astype(np.float32)
    out, offset = {}, 0
    for name, width in zip(names, widths, strict=True):
        shape = loc[name].shape[1:]
        e = eps[:, :, offset : offset + width].reshape(len(features), n, *shape)
        value = loc[name][features][:, None] + scale[name][features][:, None] * e  # [T, S, ...]
        out[name] = torch.from_numpy(np.moveaxis(value, 0, 1).astype(np.float32))  # [S, T, ...]
        offset += width
    return out


def natural_scale(
    distribution: str, eta: torch.Tensor, group: torch.Tensor | None, n_groups: int
) -> torch.Tensor:
    """Curve on the natural scale (reference group, unit size factor): the family's inverse link."""
    return get_family(distribution).natural_scale(eta, group, n_groups)


def response_scale(distribution: str, eta: torch.Tensor, natural: torch.Tensor) -> torch.Tensor:
    """Scale on which responses are reported: log2 for counts, natural otherwise."""
    return get_family(distribution).response_scale(eta, natural)


def signed_range(values: torch.Tensor, dose_axis: int = -2) -> torch.Tensor:
    """``max - min`` over doses, positive when the maximum lies at the higher dose."""
    vmax, imax = values.max(dim=dose_axis)
    vmin, imin = values.min(dim=dose_axis)
    sign = torch.where(imax >= imin, 1.0, -1.0)
    return sign * (vmax - vmin)


def non_monotonic_amplitude(values: torch.Tensor) -> torch.Tensor:
    """``min(largest rise, largest fall)`` along increasing dose (0 for monotone curves)."""
    run_min = torch.cummin(values, dim=-2).values
    run_max = torch.cummax(values, dim=-2).values
    rise = (values - run_min).max(dim=-2).values
    fall = (run_max - values).max(dim=-2).values
    return torch.minimum(rise, fall)


def summarise_chunk(
    distribution: str,
    function: str,
    latent: dict[str, torch.Tensor],
    amplitude_scale: np.ndarray,
    priors: TransPriors,
    grid: Grid,
    *,
    min_effect: np.ndarray,
    group_index: np.ndarray | None = None,
    dose_axis: DoseAxis | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-feature summaries and grid curves of one chunk.

    With ``dose_axis`` the EC50s carry the dosage uncertainty of the guides (see
    :class:`DoseAxis`). ``ec50_*`` is the link-scale EC50 (``K``), ``ec50_response_*`` the dose
    where the expected value itself is half-way (:mod:`dream_sc.models.ec50`).

    Returns
    -------
    ``(columns, curves)``: columns are arrays ``[T]``; curves hold ``mean``, ``q05``, ``q95``
    arrays ``[T, G]`` on the natural scale.
    """
    scale = torch.as_tensor(amplitude_scale, dtype=torch.float32)
    params = natural_params(function, latent, scale, priors)
    if dose_axis is not None:
        params = dose_axis.apply_to_params(function, params)
    log_x = torch.as_tensor(np.log(grid.dose), dtype=torch.float32)
    eta = evaluate_curve(function, params, log_x, priors.log_x_ref, priors.half_range)  # [S,G,T]
    group = n_groups = None
    if group_index is not None:
        codes, inverse = np.unique(group_index, return_inverse=True)
        group, n_groups = torch.as_tensor(inverse), len(codes)
    natural = natural_scale(distribution, eta, group, n_groups or 0)
    q = torch.quantile(natural, torch.tensor([0.05, 0.95]), dim=0)
    curves = {"mean": natural.mean(0).T.numpy(), "q05": q[0].T.numpy(), "q95": q[1].T.numpy()}
    inside = torch.as_tensor(grid.in_range)
    values = response_scale(distribution, eta, natural)[:, inside]  # [S, G_in, T]
    response = signed_range(values)
    nm = non_monotonic_amplitude(values)
    min_eff = torch.as_tensor(min_effect, dtype=torch.float32)
    cols: dict[str, np.ndarray] = {}
    cols.update(summary_stats("response", response))
    cols["response_sd"] = response.std(0).numpy()
    cols["prob_dose_dependent"] = (response.abs() > min_eff).float().mean(0).numpy()
    cols["lfsr"] = torch.minimum(
        (response >= 0).float().mean(0), (response <= 0).float().mean(0)
    ).numpy()
    cols["score"] = (response.mean(0).abs() / (response.std(0) + 1e-8)).numpy()
    cols["non_monotonic_mean"] = nm.mean(0).numpy()
    cols["prob_non_monotonic"] = (nm > min_eff).float().mean(0).numpy()
    cols["non_monotonic_score"] = (nm.mean(0) / (nm.std(0) + 1e-8)).numpy()
    cols.update(parameter_summaries(function, params, grid))
    cols.update(
        response_ec50_columns(
            distribution,
            function,
            params,
            grid.lo,
            grid.hi,
            priors.log_x_ref,
            priors.half_range,
            group,
            n_groups or 0,
            move=None if dose_axis is None else dose_axis.response_ec50_move(function),
        )
    )
    return cols, curves


def parameter_summaries(function: str, params: dict[str, torch.Tensor], grid: Grid) -> dict:
    """Posterior mean and 90% interval of every curve parameter, EC50 and inflection point.

    ``params`` are draws ``[S, T]`` of the natural parameters (EC50s already moved along the
    dosage axis where wanted).
    """
    curve = get_curve(function)
    return {**curve.parameter_columns(params), **curve.ec50_columns(params, grid)}
