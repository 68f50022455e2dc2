"""Fused, sparse-aware log-likelihoods for the dream_sc observation models (pure torch).

Every function returns the log-likelihood **summed over cells, per feature** (``[T]``; the
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
- the negative binomial (the hot path) has a hand-written backward: two dense ``[B, T]``
  buffers in total, and ``lgamma``/``digamma`` of ``r`` evaluated once per feature.

With ``include_constant=True`` every function equals the sum of the corresponding
:mod:`scipy.stats` log-probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .sparse import SparseCounts, paired_sparse

__all__ = [
    "LIKELIHOODS",
    "betabinomial_log_prob",
    "binomial_log_prob",
    "dirichletmultinomial_log_prob",
    "multinomial_log_prob",
    "negbinom_log_prob",
    "normal_log_prob",
    "paired_sparse",
    "studentt_log_prob",
]

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


# ----------------------------------------------------------------------------- counts
def negbinom_log_prob(
    eta: torch.Tensor,
    log_r: torch.Tensor | float,
    y: Counts,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Negative binomial log-likelihood (mean / inverse-dispersion form), per feature.

    With ``mu = exp(eta)``, ``r = exp(log_r)`` (variance ``mu + mu² / r``) and
    ``x = eta - log_r``:

    .. math::

        \log p(y) = \log\Gamma(y + r) - \log\Gamma(r) - r\,\mathrm{softplus}(x)
                    + y\,(x - \mathrm{softplus}(x)) \;[- \log\Gamma(y + 1)]

    The first term ``-r·softplus(x) = r log r - r log(r + mu)`` is the whole contribution of a
    zero count and is computed in bulk; the rest only at non-zero entries. ``softplus`` keeps
    tiny means (``eta`` ≈ -30) and the Poisson limit (``r`` up to 1e8 and beyond) exact.

    Parameters
    ----------
    eta
        ``[B, T]`` log mean per cell and feature.
    log_r
        Log inverse dispersion: scalar, ``[T]`` or ``[B, T]``.
    y
        Counts, dense ``[B, T]`` or :class:`~dream_sc.models.sparse.SparseCounts`.
    include_constant
        Add ``-lgamma(y + 1)`` so the result equals ``scipy.stats.nbinom.logpmf`` summed.

    Returns
    -------
    ``[T]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> eta = torch.zeros(2, 1, dtype=torch.float64)
    >>> y = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    >>> negbinom_log_prob(eta, torch.zeros(1), y, include_constant=True)
    tensor([-2.7726], dtype=torch.float64)
    """
    _check_matrix(eta, "eta", y)
    ys = _sparse(y, eta)
    log_r = _negbinom_log_r(_as_param(log_r, eta), eta.shape)
    return _NegBinom.apply(eta, log_r, ys.col, ys.flat_index(), ys.val, include_constant)


def _negbinom_log_r(log_r: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Bring ``log_r`` to ``[T]`` (per feature) or ``[B, T]`` (autograd handles the expand)."""
    n_cells, n_features = shape
    if log_r.dim() <= 1 or (log_r.dim() == 2 and log_r.shape[0] == 1):
        if log_r.numel() in (1, n_features):
            return log_r.reshape(-1).expand(n_features)
    elif log_r.dim() == 2 and log_r.shape[0] == n_cells and log_r.shape[1] in (1, n_features):
        return log_r.expand(n_cells, n_features)
    raise ValueError(
        f"`log_r` must be a scalar, [T], [1, T], [B, 1] or [B, T] with B, T = {n_cells}, "
        f"{n_features}; got shape {tuple(log_r.shape)}."
    )


class _NegBinom(torch.autograd.Function):
    """Fused NB log-likelihood with a hand-written backward.

    Per entry ``ll = -r sp(x)`` plus, at non-zeros, ``y (x - sp(x)) + R(r, y)`` with
    ``x = eta - log r``, ``sp = softplus``, ``R(r, y) = lgamma(r + y) - lgamma(r)``.
    Gradients: ``d/deta = -r σ(x) + y σ(-x)`` and
    ``d/dlog r = r (σ(x) - sp(x)) + r R'(r, y) - y σ(-x)`` (non-zero terms only where y > 0).
    Only two dense ``[B, T]`` buffers are alive at any time; ``lgamma``/``digamma`` of ``r``
    are evaluated once per feature when ``log_r`` is ``[T]``.
    """

    @staticmethod
    def _nonzero_terms(eta, log_r, col, flat):
        if log_r.dim() == 1:
            lr_nz = log_r.index_select(0, col)
        else:
            lr_nz = log_r.reshape(-1).index_select(0, flat)
        x_nz = eta.reshape(-1).index_select(0, flat) - lr_nz
        return x_nz, lr_nz.exp()

    @staticmethod
    def forward(ctx, eta, log_r, col, flat, val, include_constant):  # noqa: D102
        per_feature = log_r.dim() == 1
        r = log_r.exp()
        x = eta - log_r  # kept for the backward pass (saves recomputing it there)
        sp = F.softplus(x)
        sp_sum = sp.sum(0) if per_feature else None
        ll = -(r * sp_sum) if per_feature else -(r * sp).sum(0)
        del sp
        x_nz, r_nz = _NegBinom._nonzero_terms(eta, log_r, col, flat)
        lgamma_r = torch.lgamma(r).index_select(0, col) if per_feature else None
        # y * log(mu / (r + mu)) = y * logsigmoid(x), plus lgamma(y + r) - lgamma(r)
        extra = torch.addcmul(_lgamma_ratio_value(r_nz, val, lgamma_r), val, F.logsigmoid(x_nz))
        if include_constant:
            extra = extra - torch.lgamma(val + 1.0)
        ctx.save_for_backward(eta, log_r, col, flat, val, sp_sum)
        ctx.x = x
        return ll.index_add(0, col, extra)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        eta, log_r, col, flat, val, sp_sum = ctx.saved_tensors
        need_eta, need_log_r = ctx.needs_input_grad[:2]
        per_feature = log_r.dim() == 1
        r = log_r.exp()
        x, ctx.x = ctx.x, None  # an internal buffer: turned into sigmoid(x) in place, once
        sig = x.sigmoid_() if x is not None else torch.sigmoid(eta - log_r)
        x_nz, r_nz = _NegBinom._nonzero_terms(eta, log_r, col, flat)
        grad_nz = grad.index_select(0, col)
        y_sig_neg = val * torch.sigmoid(-x_nz)
        grad_eta = grad_log_r = None
        if need_log_r:
            digamma_r = torch.digamma(r).index_select(0, col) if per_feature else None
            nz_term = grad_nz * (r_nz * _lgamma_ratio_grad(r_nz, val, digamma_r) - y_sig_neg)
            if per_feature:
                grad_log_r = (grad * r * (sig.sum(0) - sp_sum)).index_add(0, col, nz_term)
            else:
                grad_log_r = (sig - F.softplus(eta - log_r)).mul_(r * grad)
                grad_log_r.view(-1).index_add_(0, flat, nz_term)
        if need_eta:
            grad_eta = sig.mul_(-(r * grad))  # sig is no longer needed: reuse its buffer
            grad_eta.view(-1).index_add_(0, flat, grad_nz * y_sig_neg)
        return grad_eta, grad_log_r, None, None, None, None


def binomial_log_prob(
    logits: torch.Tensor,
    k: Counts,
    n: Counts,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Binomial log-likelihood on the logit scale, per feature.

    .. math::

        \log p(k \mid n) = k\,\ell - n\,\mathrm{softplus}(\ell)
                           \;[+ \log\Gamma(n+1) - \log\Gamma(k+1) - \log\Gamma(n-k+1)]

    Entries with ``n = 0`` contribute nothing and are skipped; with sparse input only the
    stored entries (the pattern of ``n``) are visited.

    Parameters
    ----------
    logits
        ``[B, T]`` logit of the success probability.
    k
        Successes, dense ``[B, T]`` or :class:`~dream_sc.models.sparse.SparseCounts` on the
        same pattern as ``n`` (see :func:`~dream_sc.models.sparse.paired_sparse`).
    n
        Trials, same type and shape as ``k``.
    include_constant
        Add the log binomial coefficient (``scipy.stats.binom.logpmf`` summed).

    Returns
    -------
    ``[T]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(1, 2, dtype=torch.float64)
    >>> k = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    >>> n = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    >>> binomial_log_prob(logits, k, n, include_constant=True)
    tensor([-0.6931,  0.0000], dtype=torch.float64)
    """
    _check_matrix(logits, "logits", n, "n")
    ks, ns = _paired(k, n, logits)
    l_nz = logits.reshape(-1).index_select(0, ns.flat_index())
    ll = ks.val * l_nz - ns.val * F.softplus(l_nz)
    if include_constant:
        ll = ll + _log_binom_coef(ks.val, ns.val)
    return _per_feature(ll, ns.col, logits.shape[1])


def _log_binom_coef(k: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1.0) - torch.lgamma(k + 1.0) - torch.lgamma(n - k + 1.0)


def betabinomial_log_prob(
    logits: torch.Tensor,
    log_conc: torch.Tensor | float,
    k: Counts,
    n: Counts,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Beta-binomial log-likelihood (over-dispersed binomial), per feature.

    With mean ``p = sigmoid(logits)``, concentration ``c = exp(log_conc)``, ``α = c p``,
    ``β = c (1 - p)`` and ``R(a, m) = lgamma(a + m) - lgamma(a)``:

    .. math::

        \log p(k \mid n) = R(α, k) + R(β, n - k) - R(c, n) \;[+ \log\binom{n}{k}]

    Large ``c`` recovers the binomial; ``R`` stays accurate there. Entries with ``n = 0``
    contribute nothing and are skipped.

    Parameters
    ----------
    logits
        ``[B, T]`` logit of the mean success probability.
    log_conc
        Log concentration ``α + β``: scalar, ``[T]`` or ``[B, T]``.
    k, n
        Successes and trials, as in :func:`binomial_log_prob`.
    include_constant
        Add the log binomial coefficient (``scipy.stats.betabinom.logpmf`` summed).

    Returns
    -------
    ``[T]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(1, 1, dtype=torch.float64)
    >>> k, n = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    >>> betabinomial_log_prob(logits, 0.0, k, n, include_constant=True)  # Beta(1/2, 1/2)
    tensor([-1.3863], dtype=torch.float64)
    """
    _check_matrix(logits, "logits", n, "n")
    log_conc = _as_param(log_conc, logits)
    ks, ns = _paired(k, n, logits)
    flat = ns.flat_index()
    l_nz = logits.reshape(-1).index_select(0, flat)
    lc_nz = _at(log_conc, ns, flat)
    alpha = (lc_nz + F.logsigmoid(l_nz)).exp()
    beta = (lc_nz + F.logsigmoid(-l_nz)).exp()
    ll = (
        _lgamma_ratio(alpha, ks.val)
        + _lgamma_ratio(beta, ns.val - ks.val)
        - _lgamma_ratio(lc_nz.exp(), ns.val)
    )
    if include_constant:
        ll = ll + _log_binom_coef(ks.val, ns.val)
    return _per_feature(ll, ns.col, logits.shape[1])


class _GroupLogSumExp(torch.autograd.Function):
    """Segmented logsumexp over the columns of each group, with a two-buffer backward.

    Forward: ``lse[c, g] = m + log Σ_{j∈g} exp(η_cj - m)`` with ``m`` the segment maximum
    (``scatter_reduce('amax')``); empty groups get 0. Backward:
    ``∂/∂η_cj = softmax_g(η_c)_j · grad[c, g(j)]``.
    """

    @staticmethod
    def forward(ctx, eta, group, n_groups):  # noqa: D102
        n_cells = eta.shape[0]
        shift = torch.full((n_cells, n_groups), -math.inf, dtype=eta.dtype, device=eta.device)
        shift = shift.scatter_reduce(
            1, group.expand(n_cells, -1), eta, reduce="amax", include_self=True
        )
        empty = torch.isinf(shift)
        shift = shift.masked_fill_(empty, 0.0)
        terms = torch.sub(eta, shift.index_select(1, group)).exp_()
        total = torch.zeros_like(shift).index_add_(1, group, terms)
        del terms
        lse = total.add_(empty.to(eta.dtype)).log_().add_(shift)
        ctx.save_for_backward(eta, group, lse)
        return lse

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        eta, group, lse = ctx.saved_tensors
        out = torch.sub(eta, lse.index_select(1, group)).exp_()
        return out.mul_(grad.index_select(1, group)), None, None


def _group_logsumexp(eta: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``[B, G]`` logsumexp of ``eta``'s columns within each group (0 for empty groups)."""
    return _GroupLogSumExp.apply(eta, group, n_groups)


def _check_groups(eta: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    group = torch.as_tensor(group_index, dtype=torch.long, device=eta.device)
    if group.shape != eta.shape[1:]:
        raise ValueError(
            f"`group_index` must have one entry per feature ({eta.shape[1]}), "
            f"got shape {tuple(group.shape)}."
        )
    return group


def multinomial_log_prob(
    eta: torch.Tensor,
    y: Counts,
    group_index: torch.Tensor,
    n_groups: int,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Multinomial log-likelihood of category counts grouped into variable-size groups.

    Feature ``j`` is a category of group ``g(j)``; for cell ``c`` with group total
    ``N_cg = Σ_{j∈g} y_cj``:

    .. math::

        \log p = Σ_{j∈g} y_{cj}\,η_{cj} - N_{cg}\,\mathrm{logsumexp}_{j∈g}(η_{cj})
                 \;[+ \log\Gamma(N_{cg}+1) - Σ_{j∈g}\log\Gamma(y_{cj}+1)]

    Groups are handled without padding (segmented ``amax`` + ``index_add``); cells with
    ``N_cg = 0`` contribute 0; ``y·η`` is only evaluated at non-zero counts.

    Parameters
    ----------
    eta
        ``[B, T]`` unnormalised log-probabilities (logits) of each category feature.
    y
        Counts, dense ``[B, T]`` or :class:`~dream_sc.models.sparse.SparseCounts`.
    group_index
        ``[T]`` int64 group of each feature, values in ``[0, n_groups)``.
    n_groups
        Number of groups ``G``.
    include_constant
        Add the multinomial coefficient (``scipy.stats.multinomial.logpmf`` summed).

    Returns
    -------
    ``[G]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> eta = torch.zeros(1, 3, dtype=torch.float64)
    >>> y = torch.tensor([[1.0, 1.0, 4.0]], dtype=torch.float64)
    >>> multinomial_log_prob(eta, y, torch.tensor([0, 0, 1]), 2)  # 2 draws from 2 categories
    tensor([-1.3863,  0.0000], dtype=torch.float64)
    """
    _check_matrix(eta, "eta", y)
    group = _check_groups(eta, group_index)
    ys = _sparse(y, eta)
    n_cells = eta.shape[0]
    g_nz = group.index_select(0, ys.col)
    totals = torch.zeros(n_cells * n_groups, dtype=eta.dtype, device=eta.device)
    totals = totals.index_add(0, ys.row * n_groups + g_nz, ys.val).reshape(n_cells, n_groups)
    lse = _group_logsumexp(eta, group, n_groups)
    y_eta = ys.val * eta.reshape(-1).index_select(0, ys.flat_index())
    ll = _per_feature(y_eta, g_nz, n_groups) - (totals * lse).sum(0)
    if include_constant:
        ll = ll + torch.lgamma(totals + 1.0).sum(0)
        ll = ll - _per_feature(torch.lgamma(ys.val + 1.0), g_nz, n_groups)
    return ll


def dirichletmultinomial_log_prob(
    eta: torch.Tensor,
    log_conc: torch.Tensor | float,
    y: Counts,
    group_index: torch.Tensor,
    n_groups: int,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Dirichlet-multinomial log-likelihood (over-dispersed multinomial), per group.

    With ``π = softmax_g(η)``, group concentration ``α0 = exp(log_conc[g])``,
    ``α_j = α0 π_j`` and ``R(a, m) = lgamma(a + m) - lgamma(a)``:

    .. math::

        \log p = Σ_{j∈g} R(α_j, y_{cj}) - R(α_0, N_{cg})
                 \;[+ \log\Gamma(N_{cg}+1) - Σ_{j∈g}\log\Gamma(y_{cj}+1)]

    ``R(α_j, 0) = 0``, so the category terms are only evaluated at non-zero counts.

    Parameters
    ----------
    eta
        ``[B, T]`` category logits.
    log_conc
        Log total concentration per group: scalar, ``[G]`` or ``[B, G]``.
    y
        Counts, dense ``[B, T]`` or :class:`~dream_sc.models.sparse.SparseCounts`.
    group_index
        ``[T]`` int64 group of each feature, values in ``[0, n_groups)``.
    n_groups
        Number of groups ``G``.
    include_constant
        Add the multinomial coefficient (``scipy.stats.dirichlet_multinomial.logpmf`` summed).

    Returns
    -------
    ``[G]`` log-likelihood summed over cells.

    Examples
    --------
    >>> import torch
    >>> eta = torch.zeros(1, 2, dtype=torch.float64)
    >>> y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    >>> dirichletmultinomial_log_prob(eta, 0.0, y, torch.tensor([0, 0]), 1)
    tensor([-0.6931], dtype=torch.float64)
    """
    _check_matrix(eta, "eta", y)
    group = _check_groups(eta, group_index)
    log_conc = _as_param(log_conc, eta)
    ys = _sparse(y, eta)
    n_cells = eta.shape[0]
    g_nz = group.index_select(0, ys.col)
    cell_group = ys.row * n_groups + g_nz
    totals = torch.zeros(n_cells * n_groups, dtype=eta.dtype, device=eta.device)
    totals = totals.index_add(0, cell_group, ys.val).reshape(n_cells, n_groups)
    lse = _group_logsumexp(eta, group, n_groups)
    lc_full = torch.broadcast_to(log_conc, (n_cells, n_groups))
    log_alpha = (
        lc_full.reshape(-1).index_select(0, cell_group)
        + eta.reshape(-1).index_select(0, ys.flat_index())
        - lse.reshape(-1).index_select(0, cell_group)
    )
    ll = _per_feature(_lgamma_ratio(log_alpha.exp(), ys.val), g_nz, n_groups)
    ll = ll - _lgamma_ratio(lc_full.exp(), totals).sum(0)
    if include_constant:
        ll = ll + torch.lgamma(totals + 1.0).sum(0)
        ll = ll - _per_feature(torch.lgamma(ys.val + 1.0), g_nz, n_groups)
    return ll


# ----------------------------------------------------------------------------- continuous
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


def normal_log_prob(
    mean: torch.Tensor,
    log_sigma: torch.Tensor | float,
    y: torch.Tensor,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Gaussian log-likelihood with missing values (NaN) masked out, per feature.

    .. math::

        \log p(y) = -\tfrac12 z^2 - \log σ \;[- \tfrac12\log 2π],
        \qquad z = (y - \mathrm{mean}) / σ

    NaN entries of ``y`` are replaced by 0 before any arithmetic, so neither the value nor the
    gradient ever sees a NaN.

    Parameters
    ----------
    mean
        Mean, broadcastable to ``y`` (typically ``[B, T]``).
    log_sigma
        Log standard deviation: scalar, ``[T]`` or ``[B, T]``.
    y
        Dense ``[B, T]`` observations, NaN = missing.
    include_constant
        Add ``-log(2π)/2`` per observed entry (``scipy.stats.norm.logpdf`` summed).

    Returns
    -------
    ``[T]`` log-likelihood summed over observed cells.

    Examples
    --------
    >>> import torch
    >>> y = torch.tensor([[0.0], [float("nan")]], dtype=torch.float64)
    >>> normal_log_prob(torch.zeros(2, 1, dtype=torch.float64), 0.0, y, include_constant=True)
    tensor([-0.9189], dtype=torch.float64)
    """
    y = torch.as_tensor(y)
    log_sigma = _as_param(log_sigma, y)
    mask, z = _standardised(mean, log_sigma, y)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    ll = torch.where(mask, -0.5 * z * z, zero).sum(0) - _sum_observed(log_sigma, mask)
    if include_constant:
        ll = ll - _HALF_LOG_2PI * mask.sum(0).to(ll.dtype)
    return ll


def studentt_log_prob(
    mean: torch.Tensor,
    log_sigma: torch.Tensor | float,
    log_nu: torch.Tensor | float,
    y: torch.Tensor,
    *,
    include_constant: bool = False,
) -> torch.Tensor:
    r"""Student-t log-likelihood with missing values (NaN) masked out, per feature.

    With ``ν = exp(log_nu)`` degrees of freedom and ``z = (y - mean) / σ``:

    .. math::

        \log p(y) = \log\Gamma(\tfrac{ν+1}{2}) - \log\Gamma(\tfrac{ν}{2}) - \tfrac12\log ν
                    - \log σ - \tfrac{ν+1}{2}\log(1 + z^2/ν) \;[- \tfrac12\log π]

    The ``lgamma`` terms depend only on ``ν`` and are evaluated once per parameter entry, then
    multiplied by the number of observed cells.

    Parameters
    ----------
    mean
        Location, broadcastable to ``y``.
    log_sigma
        Log scale: scalar, ``[T]`` or ``[B, T]``.
    log_nu
        Log degrees of freedom: scalar, ``[T]`` or ``[B, T]``.
    y
        Dense ``[B, T]`` observations, NaN = missing.
    include_constant
        Add ``-log(π)/2`` per observed entry (``scipy.stats.t.logpdf`` summed).

    Returns
    -------
    ``[T]`` log-likelihood summed over observed cells.

    Examples
    --------
    >>> import math, torch
    >>> y = torch.zeros(1, 1, dtype=torch.float64)
    >>> studentt_log_prob(y, 0.0, 0.0, y, include_constant=True)  # Cauchy density at 0
    tensor([-1.1447], dtype=torch.float64)
    """
    y = torch.as_tensor(y)
    log_sigma = _as_param(log_sigma, y)
    log_nu = _as_param(log_nu, y)
    mask, z = _standardised(mean, log_sigma, y)
    nu = log_nu.exp()
    kernel = -0.5 * (nu + 1.0) * torch.log1p(z * z / nu)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    norm = torch.lgamma(0.5 * (nu + 1.0)) - torch.lgamma(0.5 * nu) - 0.5 * log_nu
    ll = (
        torch.where(mask, kernel, zero).sum(0)
        + _sum_observed(norm, mask)
        - _sum_observed(log_sigma, mask)
    )
    if include_constant:
        ll = ll - _HALF_LOG_PI * mask.sum(0).to(ll.dtype)
    return ll


LIKELIHOODS: dict[str, Callable[..., torch.Tensor]] = {
    "negbinom": negbinom_log_prob,
    "binomial": binomial_log_prob,
    "betabinomial": betabinomial_log_prob,
    "multinomial": multinomial_log_prob,
    "dirichletmultinomial": dirichletmultinomial_log_prob,
    "normal": normal_log_prob,
    "studentt": studentt_log_prob,
}
"""Distribution name (as registered with ``pp.register_modality``) → log-likelihood function."""
