"""Hill curve + negative binomial log-likelihood and its gradient in one sweep (pure torch, CPU).

A trans SVI step evaluates, for every cell ``b`` of the minibatch and every feature ``t``,

``eta = offset[b, t] + eta_ref + sum_c v_c (h_c - h_c_ref) + lv_b S² / 2``,
``h_c = sigmoid(nk_c (lx_b - log K_c))``, ``nk_c = n_c / sqrt(1 + pi n_c² lv_b / 8)``,
``S = sum_c v_c nk_c h_c (1 - h_c)``

(the probit-marginalised Hill curve on the log scale of the expected mean, see
:func:`dream_sc.models.curves.evaluate_curve` with ``mean_link="log"``), then the NB
log-likelihood of the counts. Through autograd this keeps about twenty ``[cells, features]``
tensors alive for the backward pass and walks them twice. Here a feature's log-likelihood
depends only on its own parameters, so its gradient is a per-feature derivative times the
incoming gradient of ``ll[t]``: the forward pass computes that derivative directly, sweeping the
minibatch in blocks of :data:`CELL_BLOCK` cells whose few in-place buffers stay in the CPU
cache, and accumulates log-likelihood and derivatives per feature (float64). Nothing is saved
for the backward pass but ``[parameters, features]`` numbers.

Derivatives (per component ``c``, with ``a = lx - log K``, ``rr = 1 / sqrt(1 + pi n² lv / 8)``,
``q = h (1 - h)``, ``G = d ll / d eta = y - (y + r) sigmoid(eta - log r)`` and ``W = G lv S``;
``dnk/dn = rr³``):

- ``d/d eta_ref = G``;
- ``d/d v_c = G (h - h_ref) + W nk q``;
- ``d/d log K_c = v_c [G (n q_ref - nk q) - W nk² q (1 - 2h)]``;
- ``d/d n_c = v_c [G (q a rr³ - q_ref (lx_ref - log K)) + W rr³ q (1 + nk a (1 - 2h))]``.

Measured on 2 CPU threads (1,024 cells x 2,000 genes, 20% non-zero, single Hill with dosage
variance): 25 ms per forward + backward against 49 ms through autograd, i.e. 1.5x one pass of
the fused NB likelihood alone (17 ms); see ``benchmarks/bench_trans_step.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .curves import PROBIT_FACTOR, get_curve
from .families import Family
from .families._kernels import _lgamma_ratio_value
from .sparse import CSRMatrix

#: Cells per block of the sweep: ~10 ``[block, features]`` float32 buffers stay cached.
CELL_BLOCK = 128


def fused_available(family: Family, function: str, y) -> bool:
    """Whether the fused sweep covers this fit (NB counts ``y``: CSR on the CPU; a fused curve).

    On accelerators the autograd path is kept: the sweep's per-block bookkeeping would
    synchronise host and device at every block.
    """
    return (
        family.fused_hill
        and get_curve(function).fused
        and isinstance(y, CSRMatrix)
        and y.device.type == "cpu"
    )


class FusedCells:
    """The fixed inputs of the fused sweep for one feature chunk (built once per fit).

    Parameters
    ----------
    y
        The chunk's counts (CSR, all cells).
    delta
        Technical effects ``[groups, T]``.
    group
        Technical group of every cell ``[N]``.
    log_sf
        Log size factor of every cell ``[N]`` (``None``: none).
    log_x, log_x_var
        Natural-log dosage mean and variance of every cell ``[N]`` (variance ``None``: exact).
    log_x_ref
        Natural-log reference dosage.
    log_r
        NB log inverse dispersion ``[T]`` (fixed in step 3).
    """

    def __init__(
        self,
        y: CSRMatrix,
        *,
        delta: torch.Tensor,
        group: torch.Tensor,
        log_sf: torch.Tensor | None,
        log_x: torch.Tensor,
        log_x_var: torch.Tensor | None,
        log_x_ref: float,
        log_r: torch.Tensor,
    ) -> None:
        self.y = y
        self.delta = delta.detach().contiguous()
        self.group = group
        self.log_sf = log_sf
        self.log_x, self.log_x_var = log_x, log_x_var
        self.log_x_ref = float(log_x_ref)
        self.log_r = log_r.detach()
        self.r = self.log_r.exp()
        self.constant = _cell_constants(y, self.r)
        self.rows: torch.Tensor | None = None

    def at(self, rows: torch.Tensor) -> FusedCells:
        """The same inputs for the minibatch ``rows`` (a shallow copy)."""
        out = object.__new__(FusedCells)
        out.__dict__.update(self.__dict__)
        out.rows = rows
        return out


def _cell_constants(y: CSRMatrix, r: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """``sum_t lgamma(y_bt + r_t) - lgamma(r_t)`` of every cell ``[N]`` (float64).

    The only NB terms that need the counts entry by entry and do not move with the curve (the
    inverse dispersion is fixed in step 3): summed once per fit, over ``chunk`` entries at a
    time.
    """
    lgamma_r = torch.lgamma(r)
    n_rows = y.shape[0]
    out = torch.zeros(n_rows, dtype=torch.float64, device=r.device)
    counts_per_row = y.crow[1:] - y.crow[:-1]
    first = 0
    while first < n_rows:  # rows whose entries add up to about `chunk`
        last = int(torch.searchsorted(y.crow, y.crow[first] + chunk, right=True)) - 1
        last = min(max(last, first + 1), n_rows)
        lo, hi = int(y.crow[first]), int(y.crow[last])
        col, val = y.col[lo:hi], y.val[lo:hi].to(r.dtype)
        terms = _lgamma_ratio_value(r[col], val, lgamma_r[col]).double()
        row = torch.repeat_interleave(
            torch.arange(first, last, device=r.device), counts_per_row[first:last]
        )
        out.index_add_(0, row, terms)
        first = last
    return out


def hill_negbinom_terms(
    components: tuple[str, ...],
    params: dict[str, torch.Tensor],
    cells: FusedCells,
    *,
    want_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-feature log-likelihood ``[T]`` and its derivatives ``[1 + 3C, T]`` (float64).

    The terms ``lgamma(y + r) - lgamma(r)`` of the batch's counts do not depend on the curve:
    their sum (precomputed per cell) is added to feature 0, so ``ll.sum()`` is the exact total
    while ``ll[t]`` of the other features omits them. Derivative rows: ``eta_ref``, then ``v``,
    ``log K``, ``n`` of each of the ``C`` Hill ``components`` (e.g. ``("1", "2")``; module
    docstring). ``params`` are natural curve parameters ``[T]`` without autograd.
    """
    rows = cells.rows
    n_feat = params["eta_ref"].shape[0]
    comps = components
    counts = cells.y.take_rows(rows)  # entries sorted by (local) row
    bounds = torch.arange(0, len(rows) + CELL_BLOCK, CELL_BLOCK, device=rows.device)
    starts = torch.searchsorted(counts.row, bounds).tolist()
    flat_all = counts.flat_index()
    x_ref = torch.tensor(cells.log_x_ref, dtype=params["eta_ref"].dtype)
    shift = params["eta_ref"].clone()
    reference = []
    for c in comps:
        h_ref = torch.sigmoid(params[f"n{c}"] * (x_ref - params[f"log_k{c}"]))
        shift -= params[f"v{c}"] * h_ref
        reference.append(h_ref)
    r, log_r = cells.r, cells.log_r
    ll = torch.zeros(n_feat, dtype=torch.float64)
    constant = cells.constant[rows].sum()
    acc = torch.zeros(1 + 3 * len(comps), n_feat, dtype=torch.float64) if want_grad else None
    for block, b0 in enumerate(range(0, len(rows), CELL_BLOCK)):
        rb = rows[b0 : b0 + CELL_BLOCK]
        lx = cells.log_x[rb][:, None]
        lv = None if cells.log_x_var is None else cells.log_x_var[rb][:, None]
        eta = cells.delta[cells.group[rb]]
        if cells.log_sf is not None:
            eta.add_(cells.log_sf[rb][:, None])
        eta.add_(shift)
        parts, slope = [], None
        for c in comps:
            v, log_k, n = params[f"v{c}"], params[f"log_k{c}"], params[f"n{c}"]
            a = lx - log_k
            rr = None if lv is None else (lv * (PROBIT_FACTOR * n * n)).add_(1.0).rsqrt_()
            nk = n.expand_as(a) if rr is None else rr * n
            h = (nk * a).sigmoid_()
            eta.addcmul_(h, v.expand_as(h))
            q = torch.addcmul(h, h, h, value=-1.0)
            nkq = nk * q
            if lv is not None:
                slope = nkq * v if slope is None else slope.addcmul_(nkq, v.expand_as(nkq))
            parts.append((a, rr, nk, h, q, nkq))
        if slope is not None:
            eta.addcmul_(slope, slope * lv, value=0.5)
        x = eta.sub_(log_r)
        # the block's counts, dense: y (x - softplus x) - r softplus x, gradient y - (y + r) σ(x)
        lo, hi = starts[block], starts[block + 1]
        y = torch.zeros_like(x)
        y.view(-1)[flat_all[lo:hi] - b0 * n_feat] = counts.val[lo:hi].to(x.dtype)
        ll += (y * x).sum(0, dtype=torch.float64)
        y_plus_r = y + r
        ll -= (F.softplus(x).mul_(y_plus_r)).sum(0, dtype=torch.float64)
        if acc is None:
            continue
        grad = y.sub_(x.sigmoid_().mul_(y_plus_r))
        acc[0] += grad.sum(0, dtype=torch.float64)
        w = None if slope is None else slope.mul_(grad).mul_(lv)
        for i, (a, rr, nk, h, q, nkq) in enumerate(parts):
            weight = q if rr is None else q.mul_(rr.pow_(3))  # rr³ q
            if w is None:  # exact dosages: d/dv = G h, d/dlog K = -G n q, d/dn = G a q
                acc[1 + 3 * i] += (grad * h).sum(0, dtype=torch.float64)
                acc[2 + 3 * i] -= (grad * nkq).sum(0, dtype=torch.float64)
                acc[3 + 3 * i] += a.mul_(grad).mul_(weight).sum(0, dtype=torch.float64)
                continue
            acc[1 + 3 * i] += torch.addcmul(grad * h, w, nkq).sum(0, dtype=torch.float64)
            # with s = G + W nk (1 - 2h): d/dlog K = -nk q s, d/dn = rr³ q (a s + W)
            s = h.mul_(-2.0).add_(1.0).mul_(nk).mul_(w).add_(grad)
            acc[2 + 3 * i] -= nkq.mul_(s).sum(0, dtype=torch.float64)
            acc[3 + 3 * i] += a.mul_(s).add_(w).mul_(weight).sum(0, dtype=torch.float64)
    ll[0] += constant  # the batch's entrywise constants (one number, carried by feature 0)
    if acc is None:
        return ll, None
    total = acc[0]
    grads = [total]
    for i, c in enumerate(comps):
        v, log_k, n = (params[f"{k}{c}"].double() for k in ("v", "log_k", "n"))
        h_ref = reference[i].double()
        q_ref = h_ref * (1.0 - h_ref)
        grads.append(acc[1 + 3 * i] - h_ref * total)
        grads.append(v * (acc[2 + 3 * i] + n * q_ref * total))
        grads.append(v * (acc[3 + 3 * i] - q_ref * (cells.log_x_ref - log_k) * total))
    return ll, torch.stack(grads)


class _HillNegBinom(torch.autograd.Function):
    """Autograd wrapper: the sweep's per-feature derivatives times the incoming gradient."""

    @staticmethod
    def forward(ctx, eta_ref, v, log_k, n, components, cells):  # noqa: D102
        params = {"eta_ref": eta_ref.detach()}
        for i, c in enumerate(components):
            params[f"v{c}"], params[f"log_k{c}"] = v[i].detach(), log_k[i].detach()
            params[f"n{c}"] = n[i].detach()
        want_grad = any(ctx.needs_input_grad[:4])
        ll, grads = hill_negbinom_terms(components, params, cells, want_grad=want_grad)
        total = ll.sum()
        if want_grad:
            grads = grads.to(eta_ref.dtype)
            ctx.save_for_backward(grads)
        # e.g. a count of 1e38 (inf - inf): report a non-finite ELBO at this step, as the
        # autograd path does, rather than NaN parameters one step later
        if not torch.isfinite(total) or (want_grad and not torch.isfinite(grads).all()):
            total = total.new_tensor(-float("inf"))
        return total.to(eta_ref.dtype)

    @staticmethod
    def backward(ctx, upstream):  # noqa: D102
        (grads,) = ctx.saved_tensors
        per = grads[1:].reshape(-1, 3, grads.shape[-1]) * upstream
        return grads[0] * upstream, per[:, 0], per[:, 1], per[:, 2], None, None


def hill_negbinom_components(
    components: tuple[str, ...], params: dict[str, torch.Tensor], cells: FusedCells
) -> torch.Tensor:
    """Total NB log-likelihood (a scalar) of the cells ``cells.rows`` under Hill components.

    ``components`` names the components of ``params`` (``("1",)``, ``("1", "2")``); see
    :func:`hill_negbinom_log_likelihood`.
    """
    stack = lambda key: torch.stack([params[f"{key}{c}"] for c in components])  # noqa: E731
    return _HillNegBinom.apply(
        params["eta_ref"], stack("v"), stack("log_k"), stack("n"), tuple(components), cells
    )


def hill_negbinom_log_likelihood(
    function: str, params: dict[str, torch.Tensor], cells: FusedCells
) -> torch.Tensor:
    """Total NB log-likelihood (a scalar) of the cells ``cells.rows`` under Hill curves.

    Equals ``negbinom_log_prob(evaluate_curve(function, params, log_x, ..., log_x_var,
    mean_link="log") + offset, log_r, y).sum()``, differentiable in the natural curve parameters
    ``params`` (``eta_ref``, ``v1``, ``log_k1``, ``n1``, ...; each ``[T]``). ``function`` is a
    curve with a fused kernel (:attr:`Curve.fused <dream_sc.models.curves.Curve.fused>`).
    """
    return get_curve(function).fused_log_likelihood(params, cells)
