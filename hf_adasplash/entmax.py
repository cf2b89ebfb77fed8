"""Exact row-wise alpha-entmax with closed-form gradients for the input and for alpha.

This is the ground truth every kernel is checked against. With ``z = (alpha - 1) * x``:

    p = [z - tau]_+ ** (1 / (alpha - 1)),   tau per row such that sum(p) = 1.

Numerics. The row max ``m`` is subtracted first and tau is written as ``tau = (alpha - 1) * (m + c) - 1``, so

    p_j = exp(log1p((alpha - 1) * (x_j - m - c)) / (alpha - 1)),   c in [0, (1 - n ** (1 - alpha)) / (alpha - 1)].

``x_j - m`` is exact near the max and ``log1p`` keeps full precision as alpha -> 1, so the rounding error of p is
that of softmax (``exp(x - m - lse)``) for every alpha, instead of growing like ``eps / (alpha - 1)``. c is found by
Newton's method from the certified lower bound c = 0: ``f(c) = sum(p) - 1`` is convex and decreasing, so Newton
steps from the left never overshoot and converge monotonically (quadratically once close), and ``f'(c) =
-sum_j p_j / (1 + (alpha - 1) * (x_j - m - c))`` needs no extra power. ``alpha == 1`` is softmax exactly.
Entries equal to ``-inf`` are masked; a row with no finite entry gives p = 0 and zero gradients. Half-precision
inputs are computed in float32.
"""

from __future__ import annotations

import torch

__all__ = ["entmax", "entmax_threshold"]

_MAX_NEWTON_ITERS = 200


def _solve_shift(d: torch.Tensor, am1: torch.Tensor, dim: int) -> torch.Tensor:
    """c >= 0 with ``sum_j [1 + am1 (d_j - c)]_+ ** (1/am1) = 1``, for ``d = x - max(x) <= 0`` (-inf = masked)."""
    c = torch.zeros_like(d.narrow(dim, 0, 1))
    eps = torch.finfo(d.dtype).eps
    for _ in range(_MAX_NEWTON_ITERS):
        base = am1 * (d - c)  # > -1 exactly on the support
        on = base > -1
        # 1 + base = 0 exactly off the support: log1p(-1) = -inf, exp(-inf) = 0 (clamp keeps NaN out of -inf * 0)
        logx = torch.log1p(base.clamp_min(-1))
        p = torch.exp(logx / am1)
        f = p.sum(dim=dim, keepdim=True) - 1.0
        # f'(c) = -sum p_j / x_j on the support
        df = torch.where(on, p * torch.exp(-logx.clamp_min(-1e30)), torch.zeros_like(p)).sum(dim=dim, keepdim=True)
        step = (f / df).clamp_min(0)  # a true Newton step from the left is >= 0; the clamp only removes rounding
        c = c + step
        if not bool((step > 4 * eps * (1.0 + c)).any()):
            break
    return c


def entmax_threshold(z: torch.Tensor, alpha_m1: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """tau of ``[z - tau]_+ ** (1/alpha_m1)`` summing to one along ``dim`` (rows must have a finite entry).

    ``alpha_m1`` is ``alpha - 1`` (> 0), broadcastable to ``z`` with size 1 on ``dim``.
    """
    alpha_m1 = torch.as_tensor(alpha_m1, dtype=z.dtype, device=z.device)
    m = z.amax(dim=dim, keepdim=True)
    # In units of x = z / alpha_m1: d = x - max(x), and tau = alpha_m1 * (max(x) + c) - 1 = max(z) + alpha_m1 c - 1.
    c = _solve_shift((z - m) / alpha_m1, alpha_m1, dim)
    return m + alpha_m1 * c - 1.0


def _prepare_alpha(alpha, x: torch.Tensor, dim: int) -> torch.Tensor:
    if isinstance(alpha, torch.Tensor):
        a = alpha.to(dtype=x.dtype, device=x.device)  # differentiable cast: alpha may require grad
    else:
        a = torch.tensor(float(alpha), dtype=x.dtype, device=x.device)
    if a.dim() > 0:
        if a.dim() > x.dim():
            raise ValueError(f"alpha has {a.dim()} dims but x has {x.dim()}: alpha must broadcast to x")
        a = a.reshape((1,) * (x.dim() - a.dim()) + tuple(a.shape))
        if a.shape[dim] != 1:
            raise ValueError(
                f"alpha must have size 1 along dim={dim} (one alpha per row, e.g. [H, 1, 1] for [B, H, N, N] scores), "
                f"got shape {tuple(alpha.shape)}"
            )
        try:
            torch.broadcast_shapes(a.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"alpha of shape {tuple(alpha.shape)} does not broadcast to x {tuple(x.shape)}") from None
    return a


def _entmax_forward(x: torch.Tensor, alpha: torch.Tensor, dim: int) -> torch.Tensor:
    valid = torch.isfinite(x).any(dim=dim, keepdim=True)
    is_soft = alpha == 1
    # Entmax branch (alpha > 1); softmax rows use a dummy alpha there and are selected below.
    am1 = torch.where(is_soft, torch.ones_like(alpha), alpha - 1)
    x_safe = torch.where(valid, x, torch.zeros_like(x))
    d = x_safe - x_safe.amax(dim=dim, keepdim=True)
    c = _solve_shift(d, am1, dim)
    p = torch.exp(torch.log1p((am1 * (d - c)).clamp_min(-1)) / am1)
    if bool(is_soft.any()):
        p = torch.where(is_soft, torch.softmax(x_safe, dim=dim), p)
    return torch.where(valid, p, torch.zeros_like(p))


def _entmax_backward(p: torch.Tensor, alpha: torch.Tensor, dp: torch.Tensor, dim: int, need_dalpha: bool):
    """dx = u (dp - delta) with u = p ** (2 - alpha); and per-row d(alpha) (None unless ``need_dalpha``)."""
    is_soft = alpha == 1
    am1 = torch.where(is_soft, torch.ones_like(alpha), alpha - 1)
    on = p > 0
    logp = torch.log(torch.where(on, p, torch.ones_like(p)))  # 0 off the support
    # u = p * p ** (1 - alpha) = p (1 + w), w = expm1((1 - alpha) log p): w and W = sum p w stay exact as alpha -> 1
    w = torch.where(is_soft, torch.zeros_like(p), torch.expm1(-am1 * logp))
    u = p * (1 + w)
    su = u.sum(dim=dim, keepdim=True)
    su_safe = torch.where(su > 0, su, torch.ones_like(su))
    delta = (u * dp).sum(dim=dim, keepdim=True) / su_safe
    dx = u * (dp - delta)
    if not need_dalpha:
        return dx, None
    # dalpha = sum_j dp_j [(p_j - y_j) / am1^2 - (p_j log p_j - y_j H) / am1],  y = u / sum(u),  H = sum p log p.
    # With sum(p) = 1: p_j - y_j = p_j (W - w_j) / (1 + W), which has no cancellation; r_j = (p_j - y_j) / (p_j am1).
    W = (p * w).sum(dim=dim, keepdim=True)
    H = (p * logp).sum(dim=dim, keepdim=True)
    r = (W - w) / (am1 * (1 + W))
    g = (dp * p * (r * (1 - am1 * H) - (logp - H))).sum(dim=dim, keepdim=True) / am1
    # alpha == 1 is a fixed softmax point: no gradient flows to it (learnable alpha is kept > 1).
    return dx, torch.where(is_soft, torch.zeros_like(g), g)


class _EntmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, dim: int):
        p = _entmax_forward(x, alpha, dim)
        ctx.save_for_backward(p, alpha)
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, dp: torch.Tensor):
        p, alpha = ctx.saved_tensors
        dx, g = _entmax_backward(p, alpha, dp, ctx.dim, ctx.needs_input_grad[1])
        dalpha = None
        if g is not None:
            dalpha = g.sum_to_size(alpha.shape) if alpha.dim() > 0 else g.sum()
        return dx, dalpha, None


def entmax(x: torch.Tensor, alpha: float | torch.Tensor = 1.5, dim: int = -1) -> torch.Tensor:
    r"""Row-wise alpha-entmax along ``dim``, differentiable in ``x`` and ``alpha``.

    Args:
        x: scores of any shape and floating dtype; ``-inf`` entries are masked out. float16/bfloat16 are computed
            in float32 and the result cast back.
        alpha: a float or a tensor broadcastable to ``x`` with size 1 on ``dim`` (for example ``[H, 1, 1]``
            for one alpha per head of ``[B, H, N, N]`` scores). Each value must be 1 (softmax) or in (1, 2].
        dim: the dimension that sums to one.

    Returns:
        probabilities of the shape of ``x``; rows without a finite entry are all zero.
    """
    from hf_adasplash._validation import check_alpha

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"entmax expects a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"entmax expects a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("entmax expects at least one dimension, got a 0-d tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for a {x.dim()}-D tensor")
    dim = dim % x.dim()
    check_alpha(alpha)
    if x.shape[dim] == 0 or x.numel() == 0:
        return x.new_zeros(x.shape) + 0 * x.sum()  # nothing to normalise; keeps the graph for x
    cdt = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    a = _prepare_alpha(alpha, x.to(cdt), dim)
    return _EntmaxFunction.apply(x.to(cdt), a, dim).to(x.dtype)
