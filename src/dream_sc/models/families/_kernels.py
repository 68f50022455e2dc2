"""Shared numerics of the fused, sparse-aware log-likelihoods (pure torch).

Every likelihood returns the log-likelihood **summed over cells, per feature** (``[T]``; the
multinomial families return one value per group, ``[G]``), differentiable with respect to the
parameters. Counts ``y`` may be a dense ``[B, T]`` tensor or a
:class:`~dream_sc.models.sparse.SparseCounts` block; dense counts are converted to their
non-zero entries internally, so both give the same numbers.

Speed comes from four choices:

- the expensive special functions (``lgamma``) are evaluated only at stored (non-zero) entries;
  zero counts contribute a closed form handled in bulk on the dense parameter tensor;
- terms that depend only on the data (``lgamma(y + 1)``, binomial and multinomial coefficients,
  ``log(2π)``) are dropped unless ``include_constant=True``;
- ``lgamma(a + y) - lgamma(a)`` is computed with a Stirling difference for large ``a``, so the
  Poisson / binomial / multinomial limits (huge inverse dispersion or concentration) stay
  accurate in float32 instead of cancelling two numbers of size ``a log a``;
- the negative binomial (the hot path) has a hand-written backward (see
  :mod:`dream_sc.models.families.negbinom`).

With ``include_constant=True`` every likelihood equals the sum of the corresponding
:mod:`scipy.stats` log-probabilities. The kernels themselves live with their family
(:mod:`dream_sc.models.families`); this module holds what they share.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..sparse import SparseCounts

Counts = torch.Tensor | SparseCounts

_STIRLING_MIN = 10.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_HALF_LOG_PI = 0.5 * math.log(math.pi)


# ----------------------------------------------------------------------------- helpers
def _stirling_tail(x: torch.Tensor) -> torch.Tensor:
    """Stirling correction ``lgamma(x) - [(x - 1/2) log x - x + log(2π)/2]`` for ``x >= 10``."""
    u = x.reciprocal()
    u2 = u * u
    return u * (1.0 / 12.0 - u2 * (1.0 / 360.0 - u2 / 1260.0))


def _stirling_tail_grad(x: torch.Tensor) -> torch.Tensor:
    """Derivative of :func:`_stirling_tail`."""
    u2 = x.reciprocal().square()
    return -u2 * (1.0 / 12.0 - u2 * (1.0 / 120.0 - u2 / 252.0))


def _stirling_ratio(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Stirling-series ``lgamma(a + y) - lgamma(a)`` for ``a >= 10``."""
    b = a + y
    return (
        (a - 0.5) * torch.log1p(y / a)
        + y * (torch.log(b) - 1.0)
        + (_stirling_tail(b) - _stirling_tail(a))
    )


def _stirling_ratio_grad(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Stirling-series ``digamma(a + y) - digamma(a)`` for ``a >= 10``."""
    b = a + y
    return (
        torch.log1p(y / a) + 0.5 * y / (a * b) + (_stirling_tail_grad(b) - _stirling_tail_grad(a))
    )


def _patch_large(
    direct: torch.Tensor,
    a: torch.Tensor,
    y: torch.Tensor,
    stirling: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    use_where: bool | None = None,
) -> torch.Tensor:
    """Replace ``direct`` by ``stirling(a, y)`` where ``a >= 10``.

    On CPU only the large entries are evaluated (usually a minority); on accelerators
    (``use_where=None`` resolves to ``True`` there) both forms are computed and selected with
    ``where``, avoiding a device synchronisation.
    """
    big = a >= _STIRLING_MIN
    if use_where is None:
        use_where = a.device.type != "cpu"
    if use_where:
        return torch.where(big, stirling(a.clamp_min(_STIRLING_MIN), y), direct)
    idx = big.reshape(-1).nonzero().squeeze(1)
    if idx.numel() == 0:
        return direct
    patch = stirling(a.reshape(-1).index_select(0, idx), y.reshape(-1).index_select(0, idx))
    return direct.reshape(-1).index_copy(0, idx, patch).reshape(direct.shape)


def _lgamma_ratio_value(
    a: torch.Tensor, y: torch.Tensor, lgamma_a: torch.Tensor | None = None
) -> torch.Tensor:
    """``lgamma(a + y) - lgamma(a)`` for ``a > 0``, ``y >= 0``, accurate for huge ``a``.

    For ``a >= 10`` the difference of Stirling series is used,
    ``(a - 1/2) log1p(y/a) + y (log(a + y) - 1) + c(a + y) - c(a)`` (truncation error below
    1e-10); below it, the direct ``lgamma`` difference (``lgamma_a`` may be passed when it was
    computed once per feature). Exactly 0 when ``y = 0``. Not meant for autograd; see
    :func:`_lgamma_ratio`.
    """
    a, y = torch.broadcast_tensors(a, y)
    direct = torch.lgamma(a + y) - (torch.lgamma(a) if lgamma_a is None else lgamma_a)
    return _patch_large(direct, a, y, _stirling_ratio)


def _lgamma_ratio_grad(
    a: torch.Tensor, y: torch.Tensor, digamma_a: torch.Tensor | None = None
) -> torch.Tensor:
    """``d/da [lgamma(a + y) - lgamma(a)] = digamma(a + y) - digamma(a)``, stable for huge ``a``.

    Stirling branch: ``log1p(y/a) + y / (2 a (a + y)) + c'(a + y) - c'(a)``.
    """
    a, y = torch.broadcast_tensors(a, y)
    direct = torch.digamma(a + y) - (torch.digamma(a) if digamma_a is None else digamma_a)
    return _patch_large(direct, a, y, _stirling_ratio_grad)


class _LgammaRatio(torch.autograd.Function):
    """Autograd wrapper of :func:`_lgamma_ratio_value` (gradient w.r.t. ``a`` only)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(a, y)
        return _lgamma_ratio_value(a, y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # noqa: D102
        a, y = ctx.saved_tensors
        return (grad * _lgamma_ratio_grad(a, y) if ctx.needs_input_grad[0] else None), None


def _lgamma_ratio(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable (in ``a``; ``y`` is data) ``lgamma(a + y) - lgamma(a)``."""
    return _LgammaRatio.apply(a, y)


def _as_param(p: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``p`` as a tensor with ``like``'s dtype and device (keeps autograd)."""
    return torch.as_tensor(p, dtype=like.dtype, device=like.device)


def _at(param: torch.Tensor, y: SparseCounts, flat: torch.Tensor) -> torch.Tensor:
    """Values of a parameter broadcastable to ``[B, T]`` at the stored entries of ``y``."""
    if param.dim() == 0:
        return param.expand(flat.shape)
    if param.dim() == 1 or param.shape[0] == 1:
        if param.shape[-1] == 1:
            return param.reshape(()).expand(flat.shape)
        return param.reshape(-1).index_select(0, y.col)
    if param.shape[-1] == 1:
        return param.reshape(-1).index_select(0, y.row)
    return param.reshape(-1).index_select(0, flat)


def _check_matrix(x: torch.Tensor, name: str, y: Counts, y_name: str = "y") -> None:
    if x.dim() != 2:
        raise ValueError(
            f"`{name}` must be a [cells, features] matrix, got shape {tuple(x.shape)}."
        )
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(
            f"`{name}` has shape {tuple(x.shape)} but `{y_name}` has shape {tuple(y.shape)}."
        )


def _sparse(y: Counts, like: torch.Tensor) -> SparseCounts:
    """Non-zero entries of ``y`` with ``like``'s dtype (dense tensors are converted)."""
    if isinstance(y, SparseCounts):
        return y if y.val.dtype == like.dtype else y.to(dtype=like.dtype)
    return SparseCounts.from_dense(torch.as_tensor(y, dtype=like.dtype, device=like.device))


def _paired(k: Counts, n: Counts, like: torch.Tensor) -> tuple[SparseCounts, SparseCounts]:
    """Successes and trials on the trials' non-zero pattern."""
    if isinstance(k, SparseCounts) and isinstance(n, SparseCounts):
        same = (k.row is n.row and k.col is n.col) or (
            k.nnz == n.nnz and torch.equal(k.row, n.row) and torch.equal(k.col, n.col)
        )
        if not same:
            raise ValueError(
                "Sparse successes `k` and trials `n` must share the same pattern; build them "
                "with `dream_sc.models.sparse.paired_sparse` or `paired_csr`."
            )
        return _sparse(k, like), _sparse(n, like)
    if isinstance(k, SparseCounts) or isinstance(n, SparseCounts):
        raise TypeError("`k` and `n` must both be dense tensors or both be SparseCounts.")
    n_dense = torch.as_tensor(n, dtype=like.dtype, device=like.device)
    k_dense = torch.as_tensor(k, dtype=like.dtype, device=like.device)
    n_sp = SparseCounts.from_dense(n_dense)
    k_sp = SparseCounts(n_sp.row, n_sp.col, k_dense[n_sp.row, n_sp.col], *n_sp.shape)
    return k_sp, n_sp


def _per_feature(values: torch.Tensor, col: torch.Tensor, n: int) -> torch.Tensor:
    """Sum ``values`` into ``n`` bins given by ``col``."""
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, col, values)


def _sum_observed(term: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over cells of a parameter term broadcast to ``mask``, counting observed cells only."""
    if term.dim() == 2 and term.shape[0] != 1:
        return torch.where(mask, term, term.new_zeros(())).sum(0)
    flat = term.reshape(term.shape[-1:]) if term.dim() else term
    return flat * mask.sum(0)


def _standardised(
    mean: torch.Tensor, log_sigma: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Observed mask and ``z = (y - mean) / sigma`` with missing ``y`` replaced by 0 first."""
    if y.dim() != 2:
        raise ValueError(f"`y` must be a [cells, features] matrix, got shape {tuple(y.shape)}.")
    mask = ~torch.isnan(y)
    y0 = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
    z = (y0 - mean) * torch.exp(-log_sigma)
    return mask, z
