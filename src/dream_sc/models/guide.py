"""A Normal guide whose noise can be made per-feature reproducible.

Every latent site of dream_sc's models lives on the real line (scales are modelled on the log
scale), so the variational family is ``Normal(loc, exp(log_scale))`` per element - or, with
``correlated=True``, a multivariate Normal per feature over all of that feature's latent values
(block-diagonal across features: features stay independent, so chunking stays exact and the
cost is ``O(T D^2)`` for ``D`` values per feature, never ``O(T^2)``). Curve parameters of one
feature are strongly correlated (EC50, Hill coefficient and amplitude trade off against each
other when only a few guide dosages are observed); a mean-field guide ignores that and gives
intervals that are far too narrow.

The correlated block is parametrised as ``value = loc + scale * (R @ eps)`` with ``R`` the
Cholesky factor of a correlation matrix (rows of a unit lower-triangular matrix normalised to
length one), so ``loc`` and ``scale`` stay the posterior mean and marginal sd of every value.

Why not :class:`pyro.infer.autoguide.AutoNormal`? Two reasons. (1) Features are conditionally
independent given the dosage, so fitting them in chunks must give the same answer as fitting
them together (the model page of the documentation). With one global random stream the noise a feature sees would depend
on which chunk it sits in. Here feature-level noise comes from a stream seeded by the feature's
global index (:class:`FeatureNoise`), while cell-level randomness comes from a stream seeded
only by the run's seed. (2) Summaries need the unconstrained ``loc``/``scale`` per site, which
this class exposes directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from .streams import keyed_rng

#: Learning-rate multiplier of the correlation factors. A correlation of 0.95 between, say, the
#: EC50 and the Hill coefficient needs a raw factor of about 3 (``rho = w / sqrt(1 + w^2)``),
#: while each Adam step moves a parameter by at most ``lr``; the correlations were the part of
#: the posterior furthest from converged (EC50 intervals kept widening up to 2,000 steps).
#: Measured on a 3,000-cell screen (two seeds, EC50 90% coverage of clear single-Hill genes /
#: seed-to-seed sd of the log interval width): 1x 600 steps 0.64 / 0.145, 2x 0.69 / 0.166,
#: 4x 0.71 / 0.184; 1x 1,000 steps 0.71 / 0.134, 2x 1,000 steps 0.77 / 0.148. Faster still
#: makes the correlations noisy (on a 500-cell screen single intervals halved at 8x).
CORRELATION_LR_SCALE = 2.0


@dataclass(frozen=True)
class Site:
    """A latent site of the guide.

    Attributes
    ----------
    name
        Pyro sample site name (must match the model).
    shape
        Full shape of the site's value (e.g. ``(T,)`` or ``(T, C)``).
    feature_dim
        ``0`` when the first axis indexes features (per-feature noise streams), ``None`` for
        global sites, ``"cells"`` handled via ``cell_dim``.
    cell_dim
        ``True`` for per-cell local sites indexed by a subsampled cell plate.
    init_loc
        Initial location (broadcast to ``shape``).
    init_scale
        Initial posterior scale.
    """

    name: str
    shape: tuple[int, ...]
    init_loc: np.ndarray | float = 0.0
    init_scale: float = 0.05
    per_feature: bool = True
    cell_local: bool = False


class FeatureNoise:
    """Standard-normal noise for feature-level sites, reproducible per feature.

    A pool ``[features, steps, width]``: row ``t`` holds the noise of feature ``t`` at every
    optimisation step. Drawn by :meth:`draw` from each feature's own stream, a feature receives
    the same noise whichever chunk it is fitted in; the whole pool lives on the fit's device
    (:meth:`to`), so the optimisation loop never copies noise between host and device.

    Parameters
    ----------
    pool
        The noise, ``[features, steps, width]``.
    """

    def __init__(self, pool: torch.Tensor) -> None:
        self.pool = pool
        self.step = 0

    @classmethod
    def draw(
        cls, root: np.random.SeedSequence, feature_ids: Sequence[int], shape: tuple[int, int]
    ) -> FeatureNoise:
        """The pool of the features ``feature_ids`` (host, float32).

        Parameters
        ----------
        root
            The run's root sequence; feature ``f`` draws from its stream ``(f,)``
            (:func:`~dream_sc.models.streams.keyed_rng`).
        feature_ids
            Stable keys of the features of this chunk.
        shape
            ``(steps, width)``: one noise vector of ``width`` latent values per optimisation
            step.

        Examples
        --------
        >>> FeatureNoise.draw(np.random.SeedSequence(0), [3, 7], (5, 2)).pool.shape
        torch.Size([2, 5, 2])
        """
        pool = np.empty((len(feature_ids), *shape), dtype=np.float32)
        for row, fid in enumerate(feature_ids):
            pool[row] = keyed_rng(root, fid).standard_normal(shape, dtype=np.float32)
        return cls(torch.from_numpy(pool))

    def to(self, *args, **kwargs) -> FeatureNoise:
        """The pool moved like :meth:`torch.Tensor.to` (a fresh step counter)."""
        return FeatureNoise(self.pool.to(*args, **kwargs))

    def next(self) -> torch.Tensor:
        """Noise of the current step, shape ``[T, width]``; advances the step counter."""
        eps = self.pool[:, self.step % self.pool.shape[1]]
        self.step += 1
        return eps


class _FixedNoiseNormal(dist.Normal):
    """Normal distribution whose reparameterised sample uses externally supplied noise."""

    def __init__(self, loc, scale, eps, validate_args=None):
        super().__init__(loc, scale, validate_args=validate_args)
        self._eps = eps

    def rsample(self, sample_shape=torch.Size()):  # noqa: B008 - torch idiom
        return self.loc + self.scale * self._eps


def correlation_cholesky(raw: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of a correlation matrix from unconstrained ``raw`` ``[..., D, D]``.

    Only the strictly lower triangle of ``raw`` is used; ``raw = 0`` gives the identity.
    """
    d = raw.shape[-1]
    strict = torch.tril(torch.ones(d, d, dtype=torch.bool, device=raw.device), diagonal=-1)
    eye = torch.eye(d, dtype=raw.dtype, device=raw.device)
    w = torch.where(strict, raw, torch.zeros_like(raw)) + eye
    return w / w.norm(dim=-1, keepdim=True)


def cholesky_from_lower(lower: np.ndarray) -> np.ndarray:
    """Rebuild a correlation Cholesky factor ``[..., D, D]`` from its strictly lower entries.

    The diagonal follows from unit row norms: ``R_ii = sqrt(1 - sum_j<i R_ij^2)``.
    """
    r = np.tril(np.asarray(lower, dtype=np.float64), k=-1)
    diag = np.sqrt(np.clip(1.0 - np.sum(r**2, axis=-1), 0.0, None))
    idx = np.arange(r.shape[-1])
    r[..., idx, idx] = diag
    return r.astype(np.float32)


class _FixedNoiseMVN(dist.MultivariateNormal):
    """Multivariate Normal whose reparameterised sample uses externally supplied noise."""

    def __init__(self, loc, scale_tril, eps, validate_args=None):
        super().__init__(loc, scale_tril=scale_tril, validate_args=validate_args)
        self._eps = eps

    def rsample(self, sample_shape=torch.Size()):  # noqa: B008 - torch idiom
        return self.loc + (self.scale_tril @ self._eps.unsqueeze(-1)).squeeze(-1)


class MeanFieldGuide:
    """Callable Pyro guide over real-valued sites.

    Parameters
    ----------
    sites
        The latent sites.
    prefix
        Prefix of the Pyro param names (keeps several guides apart in the param store).
    like
        The parameters take the device of this tensor (``None``: the host). Float32.
    noise
        Per-feature noise for sites with ``per_feature=True``; ``None`` uses Pyro's RNG.
    correlated
        Fit a full correlation between the per-feature values of each feature (all sites must
        then be per-feature and not cell-local). The block is ordered by site name.
    """

    def __init__(
        self,
        sites: Sequence[Site],
        *,
        prefix: str,
        like: torch.Tensor | None = None,
        noise: FeatureNoise | None = None,
        correlated: bool = False,
    ) -> None:
        if correlated and any(s.cell_local or not s.per_feature for s in sites):
            raise ValueError("correlated=True needs per-feature, non-cell-local sites only.")
        self.correlated = correlated
        self.sites = sorted(sites, key=lambda site: site.name) if correlated else list(sites)
        self.prefix = prefix
        device = torch.device("cpu") if like is None else like.device
        self.device = device
        self.noise = noise
        self._width = {s.name: int(np.prod(s.shape[1:])) if s.per_feature else 0 for s in sites}
        self.locs: dict[str, torch.nn.Parameter] = {}
        self.log_scales: dict[str, torch.nn.Parameter] = {}
        for site in self.sites:
            loc = torch.as_tensor(
                np.broadcast_to(site.init_loc, site.shape).copy(), dtype=torch.float32
            )
            loc = pyro.param(f"{prefix}.{site.name}.loc", loc.to(device))
            log_scale = torch.full(site.shape, float(np.log(site.init_scale)), device=device)
            log_scale = pyro.param(f"{prefix}.{site.name}.log_scale", log_scale)
            self.locs[site.name] = loc
            self.log_scales[site.name] = log_scale
        if correlated:
            n_feat = self.sites[0].shape[0]
            width = self.noise_width
            raw = torch.zeros((n_feat, width, width), device=device)
            pyro.param(f"{prefix}.corr_raw", raw)

    def _param_names(self) -> list[str]:
        names = [f"{self.prefix}.{s.name}.{k}" for s in self.sites for k in ("loc", "log_scale")]
        return names + ([f"{self.prefix}.corr_raw"] if self.correlated else [])

    @property
    def noise_width(self) -> int:
        """Scalar latent values per feature (for sizing :class:`FeatureNoise`)."""
        return sum(self._width.values())

    def parameters(self) -> list[torch.Tensor]:
        """All variational parameters (leaf tensors to optimise)."""
        return [pyro.param(name).unconstrained() for name in self._param_names()]

    def lr_scales(self) -> list[float]:
        """Learning-rate multiplier of every parameter (order of :meth:`parameters`).

        The correlation factors learn :data:`CORRELATION_LR_SCALE` times faster than locations
        and scales (see there).
        """
        return [
            CORRELATION_LR_SCALE if name.endswith(".corr_raw") else 1.0
            for name in self._param_names()
        ]

    def _correlated_sample(self, eps: torch.Tensor | None) -> dict:
        locs, scales = [], []
        for site in self.sites:
            n = site.shape[0]
            locs.append(pyro.param(f"{self.prefix}.{site.name}.loc").reshape(n, -1))
            scales.append(pyro.param(f"{self.prefix}.{site.name}.log_scale").exp().reshape(n, -1))
        loc, scale = torch.cat(locs, dim=1), torch.cat(scales, dim=1)
        chol = correlation_cholesky(pyro.param(f"{self.prefix}.corr_raw"))
        scale_tril = scale.unsqueeze(-1) * chol
        if eps is None:
            eps = torch.randn_like(loc)
        block = pyro.sample(
            f"{self.prefix}._block",
            _FixedNoiseMVN(loc, scale_tril, eps).to_event(1),
            infer={"is_auxiliary": True},
        )
        values, offset = {}, 0
        for site in self.sites:
            width = self._width[site.name]
            value = block[:, offset : offset + width].reshape(site.shape)
            offset += width
            values[site.name] = pyro.sample(site.name, dist.Delta(value, event_dim=len(site.shape)))
        return values

    def __call__(self, batch: dict) -> dict:
        """Sample every site; ``batch`` is the model's argument (``cell_index``, ``n_cells``)."""
        eps_all = self.noise.next() if self.noise is not None else None
        if self.correlated:
            return self._correlated_sample(eps_all)
        offset = 0
        values = {}
        for site in self.sites:
            loc = pyro.param(f"{self.prefix}.{site.name}.loc")
            scale = pyro.param(f"{self.prefix}.{site.name}.log_scale").exp()
            if site.cell_local:
                index = batch.get("cell_index")
                with pyro.plate("cells", batch["n_cells"], subsample=index, dim=-1) as idx:
                    values[site.name] = pyro.sample(site.name, dist.Normal(loc[idx], scale[idx]))
                continue
            if site.per_feature and eps_all is not None:
                width = self._width[site.name]
                eps = eps_all[:, offset : offset + width].reshape(site.shape)
                offset += width
                d = _FixedNoiseNormal(loc, scale, eps)
            else:
                d = dist.Normal(loc, scale)
            values[site.name] = pyro.sample(site.name, d.to_event(len(site.shape)))
        return values

    def summary(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Posterior ``(loc, scale)`` of every site as numpy arrays."""
        out = {}
        for site in self.sites:
            loc = pyro.param(f"{self.prefix}.{site.name}.loc").detach().cpu().numpy()
            scale = pyro.param(f"{self.prefix}.{site.name}.log_scale").detach().exp().cpu().numpy()
            out[site.name] = (loc, scale)
        return out

    def correlation(self) -> np.ndarray | None:
        """Correlation Cholesky factor ``[T, D, D]`` of the per-feature block (or ``None``)."""
        if not self.correlated:
            return None
        raw = pyro.param(f"{self.prefix}.corr_raw").detach()
        return correlation_cholesky(raw).cpu().numpy()
