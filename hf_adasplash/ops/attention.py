"""Triton AdaSplash attention: the autograd Function over the custom ops, and the two entry points.

Inputs are already validated by :mod:`hf_adasplash.functional`. alpha becomes a float64 ``[Hq]`` tensor (a runtime
kernel argument, so a learned alpha never recompiles); its gradient flows back through that conversion.
Without grad, short queries (``Nq <= 16``) go to the decode kernel when it is available.

Plain eager tensors call the op implementations directly (``dispatch.eager_call``): through the ``torch.library``
dispatch, 30 layers' forward and backward starved the GPU of ~20 ms in each 211 ms SmolLM2 training step.
"""

from __future__ import annotations

import torch

from hf_adasplash.ops import attention_ops  # registers torch.ops.hf_adasplash.*
from hf_adasplash.ops.dispatch import eager_call
from hf_adasplash.reference import alpha_per_head, powers_by_multiplication

try:
    from hf_adasplash.ops.decode import adasplash_decode_triton
except ImportError:
    adasplash_decode_triton = None

DECODE_MAX_Q = 16


_eager = eager_call  # module attribute: scripts/profile_step.py --op-dispatch replaces it


def _attn_fwd(q, *args):
    return (attention_ops.attn_fwd_impl if _eager(q) else torch.ops.hf_adasplash.attn_fwd)(q, *args)


def _attn_bwd(do, *args):
    return (attention_ops.attn_bwd_impl if _eager(do) else torch.ops.hf_adasplash.attn_bwd)(do, *args)


class AdaSplashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, alpha, cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, kpm, max_seqlen_q, max_seqlen_k,
                is_causal, scale, window, softcap, alpha_square, alpha_grid):
        need_ent = alpha.requires_grad
        o, o2, tau, ent, o3, tile_gap, tile_thr, tile_idx, tile_cnt = _attn_fwd(
            q, k, v, alpha, cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, kpm, max_seqlen_q, max_seqlen_k,
            is_causal, scale, window, softcap, True, need_ent, alpha_square, alpha_grid,
        )
        ctx.save_for_backward(q, k, v, o, o2, alpha, tau, ent, o3, tile_gap, tile_thr, tile_idx, tile_cnt,
                              cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, kpm)
        ctx.args = (max_seqlen_q, max_seqlen_k, is_causal, scale, window, softcap)
        return o

    @staticmethod
    def backward(ctx, do):
        (q, k, v, o, o2, alpha, tau, ent, o3, tile_gap, tile_thr, tile_idx, tile_cnt, cu_seqlens_q, cu_seqlens_k,
         q_pos, k_pos, kpm) = ctx.saved_tensors
        need_dalpha = ctx.needs_input_grad[3]
        need_dkv = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        dq, dk, dv, dalpha = _attn_bwd(
            do, q, k, v, o, o2, alpha, tau, ent, o3, tile_gap, tile_thr, tile_idx, tile_cnt, cu_seqlens_q,
            cu_seqlens_k, q_pos, k_pos, kpm, *ctx.args, need_dalpha, need_dkv,
        )
        return ((dq if ctx.needs_input_grad[0] else None), (dk if need_dkv else None), (dv if need_dkv else None),
                (dalpha if need_dalpha else None), *([None] * 13))


def _run(q, k, v, alpha, cu_q, cu_k, q_pos, k_pos, kpm, max_q, max_k, is_causal, scale, window, softcap,
         alpha_grid=False):
    a = _kernel_alpha(alpha, q.shape[-3] if cu_q is None else q.shape[1], q.device)
    window = -1 if window is None else int(window)
    softcap = 0.0 if softcap is None else float(softcap)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, a))
    # a fixed alpha is known here without reading the device: at 1.5 or 2, or on the multiplication grid, the tau
    # passes may take settings of their own (a tensor alpha: only when the caller says it is on the grid)
    fixed = not isinstance(alpha, torch.Tensor)
    square = fixed and float(alpha) in (1.5, 2.0)
    grid = bool(alpha_grid) or (fixed and powers_by_multiplication(float(alpha)))
    if not need_grad:
        return _attn_fwd(
            q, k, v, a, cu_q, cu_k, q_pos, k_pos, kpm, max_q, max_k, is_causal, scale, window, softcap, False, False,
            square, grid,
        )[0]
    return AdaSplashAttentionFunction.apply(q, k, v, a, cu_q, cu_k, q_pos, k_pos, kpm, max_q, max_k, is_causal,
                                            scale, window, softcap, square, grid)


def _kernel_alpha(alpha, Hq: int, device) -> torch.Tensor:
    """alpha as the kernels take it: float64 ``[Hq]`` (they take alpha - 1 from it, which fp32 would round: 1.0001 - 1
    off by 2e-3). A frozen ``AlphaParameter``'s output carries it, made once per change of the logit."""
    kept = getattr(alpha, "_kernel_alpha", None)
    if kept is not None and kept[0] == alpha._version and kept[1].shape == (Hq,) and kept[1].device == device:
        return kept[1]
    return alpha_per_head(alpha, Hq, torch.float64, device).contiguous()


def _positions(idx):
    return None if idx is None else idx.to(torch.int32).contiguous()


def adasplash_attention_triton(q, k, v, alpha, *, is_causal=False, scale=None, key_padding_mask=None, q_idx=None,
                               k_idx=None, window=None, softcap=None, alpha_grid=False):
    """alpha-entmax attention, q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]`` (``functional.adasplash_attention``).

    ``alpha_grid``: the caller knows every head's alpha is 1 or 1 + 1/n (n = 1..5), e.g. a snapped, frozen alpha;
    a launch-settings hint only (a wrong hint costs speed, never correctness).
    """
    Nq, Nk, D = q.shape[2], k.shape[2], q.shape[3]
    scale = D**-0.5 if scale is None else float(scale)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                        or (isinstance(alpha, torch.Tensor) and alpha.requires_grad))
    if not grad and Nq <= DECODE_MAX_Q and q_idx is None and adasplash_decode_triton is not None:
        return adasplash_decode_triton(q, k, v, alpha, is_causal=is_causal, scale=scale,
                                       key_padding_mask=key_padding_mask, window=window, softcap=softcap)
    kpm = None if key_padding_mask is None else key_padding_mask.to(torch.uint8).contiguous()
    return _run(q, k, v, alpha, None, None, _positions(q_idx), _positions(k_idx), kpm, Nq, Nk,
                bool(is_causal or q_idx is not None), scale, window, softcap, alpha_grid)


def adasplash_varlen_attention_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alpha, *,
                                      is_causal=False, scale=None, window=None, softcap=None, alpha_grid=False):
    """Packed varlen attention, q ``[T, Hq, D]``, k/v ``[T, Hkv, D]``, one segment per ``cu_seqlens`` entry."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _run(q, k, v, alpha, cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), None, None, None,
                int(max_seqlen_q), int(max_seqlen_k), bool(is_causal), scale, window, softcap, alpha_grid)
