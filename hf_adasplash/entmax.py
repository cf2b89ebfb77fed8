"""Exact row-wise alpha-entmax with closed-form gradients for the input and for alpha.

This is the ground truth every kernel is checked against. With ``z = (alpha - 1) * x``:

    p = [z - tau]_+ ** (1 / (alpha - 1)),   tau per row such that sum(p) = 1.

tau is found by Newton's method started at the certified lower bound ``max(z) - 1``: ``f(tau) = sum(p) - 1``
is convex and decreasing, so Newton steps from the left never overshoot and converge monotonically (and
quadratically once close) to machine precision. ``alpha == 1`` is softmax exactly. Entries equal to ``-inf``
are masked; a row with no finite entry gives p = 0 and zero gradients.
"""

from __future__ import annotations

import torch

__all__ = ["entmax", "entmax_threshold"]

_MAX_NEWTON_ITERS = 200


def entmax_threshold(z: torch.Tensor, alpha_m1: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """tau of ``[z - tau]_+ ** (1/alpha_m1)`` summing to one along ``dim`` (rows must have a finite entry).

    ``alpha_m1`` is ``alpha - 1`` (> 0), broadcastable to ``z`` with size 1 on ``dim``.
    """
    power = 1.0 / alpha_m1
    tau = z.amax(dim=dim, keepdim=True) - 1.0  # f(max - 1) >= 0: a certified lower bound
    eps = torch.finfo(z.dtype).eps
    for _ in range(_MAX_NEWTON_ITERS):
        x = (z - tau).clamp_min(0)
        on = x > 0
        # x ** (power - 1) with 0 ** 0 := 0 off the support (matters for alpha = 2, power = 1)
        xpm1 = torch.where(on, x.pow(power - 1), torch.zeros_like(x))
        f = (xpm1 * x).sum(dim=dim, keepdim=True) - 1.0
        df = (power * xpm1).sum(dim=dim, keepdim=True)
        step = (f / df).clamp_min(0)  # convexity: a true Newton step from the left is >= 0; clamp rounding
        tau = tau + step
        if not bool((step > eps * (1.0 + tau.abs())).any()):
            break
    return tau


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
            raise ValueError(f"alpha must have size 1 along dim={dim} (one alpha per row), got shape {tuple(a.shape)}")
    return a


class _EntmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, dim: int):
        valid = torch.isfinite(x).any(dim=dim, keepdim=True)
        is_soft = alpha == 1
        # Entmax branch (alpha > 1); softmax heads use a dummy alpha there and are selected below.
        alpha_e = torch.where(is_soft, torch.full_like(alpha, 2.0), alpha)
        x_safe = torch.where(valid, x, torch.zeros_like(x))
        z = (alpha_e - 1) * x_safe
        tau = entmax_threshold(z, alpha_e - 1, dim=dim)
        p_ent = (z - tau).clamp_min(0).pow(1.0 / (alpha_e - 1))
        p = p_ent
        if bool(is_soft.any()):
            p_soft = torch.softmax(x_safe, dim=dim)
            p = torch.where(is_soft, p_soft, p_ent)
        p = torch.where(valid, p, torch.zeros_like(p))
        ctx.save_for_backward(p, alpha)
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, dp: torch.Tensor):
        p, alpha = ctx.saved_tensors
        dim = ctx.dim
        is_soft = alpha == 1
        alpha_e = torch.where(is_soft, torch.full_like(alpha, 2.0), alpha)
        on = p > 0
        # u = p ** (2 - alpha) on the support (softmax: u = p)
        u = torch.where(on, p.pow(2 - alpha_e), torch.zeros_like(p))
        u = torch.where(is_soft, p, u)
        su = u.sum(dim=dim, keepdim=True)
        su_safe = torch.where(su > 0, su, torch.ones_like(su))
        delta = (u * dp).sum(dim=dim, keepdim=True) / su_safe
        dx = u * (dp - delta)

        dalpha = None
        if ctx.needs_input_grad[1]:
            am1 = alpha_e - 1
            ytil = u / su_safe
            plogp = torch.where(on, p * torch.log(torch.where(on, p, torch.ones_like(p))), torch.zeros_like(p))
            ent = plogp.sum(dim=dim, keepdim=True)
            g = dp * (p - ytil) / am1**2 - dp * (plogp - ytil * ent) / am1
            g = g.sum(dim=dim, keepdim=True)
            # alpha == 1 is a fixed softmax point: no gradient flows to it (learnable alpha is kept > 1).
            g = torch.where(is_soft, torch.zeros_like(g), g)
            dalpha = g.sum_to_size(alpha.shape) if alpha.dim() > 0 else g.sum()
        return dx, dalpha, None


def entmax(x: torch.Tensor, alpha: float | torch.Tensor = 1.5, dim: int = -1) -> torch.Tensor:
    r"""Row-wise alpha-entmax along ``dim``, differentiable in ``x`` and ``alpha``.

    Args:
        x: scores of any shape and floating dtype; ``-inf`` entries are masked out.
        alpha: a float or a tensor broadcastable to ``x`` with size 1 on ``dim`` (for example ``[H, 1, 1]``
            for one alpha per head of ``[B, H, N, N]`` scores). Each value must be 1 (softmax) or in (1, 2].
        dim: the dimension that sums to one.

    Returns:
        probabilities of the shape of ``x``; rows without a finite entry are all zero.
    """
    from hf_adasplash._validation import check_alpha

    if not torch.is_floating_point(x):
        raise TypeError(f"entmax expects a floating-point tensor, got dtype {x.dtype}")
    dim = dim % x.dim()
    check_alpha(alpha)
    return _EntmaxFunction.apply(x, _prepare_alpha(alpha, x, dim), dim)
