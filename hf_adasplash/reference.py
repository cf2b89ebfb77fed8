"""Dense PyTorch alpha-entmax attention: the float64-capable reference (and the CPU backend).

Scores are materialised ``[B, Hkv, G, Nq, Nk]`` (GQA groups broadcast, K/V never repeated); probabilities come
from :func:`hf_adasplash.entmax.entmax`, whose backward is closed form (dq, dk, dv and dalpha by autograd through
the two matmuls and the entmax Function).
"""

from __future__ import annotations

import torch

from hf_adasplash.entmax import entmax
from hf_adasplash.masks import visibility_mask


def alpha_per_head(alpha, Hq: int, dtype, device) -> torch.Tensor:
    """alpha as a ``[Hq]`` tensor (keeps the autograd graph of a tensor alpha)."""
    if isinstance(alpha, torch.Tensor):
        a = alpha.to(dtype=dtype, device=device)
        return a.expand(Hq) if a.dim() == 0 else a
    return torch.full((Hq,), float(alpha), dtype=dtype, device=device)


def powers_by_multiplication(alpha: torch.Tensor | float) -> bool:
    """Whether every alpha is 1 or 1 + 1/n (n = 1..5: 2, 1.5, 4/3, 5/4, 6/5), the values whose powers the kernels
    take by multiplication alone, within the float32 rounding a sigmoid-stored alpha carries. Reads a tensor on the
    host; a float costs about a microsecond (it is asked on every call with a fixed alpha)."""
    if isinstance(alpha, torch.Tensor):
        return all(map(_on_power_grid, alpha.detach().double().cpu().reshape(-1).tolist()))
    return _on_power_grid(float(alpha))


def _on_power_grid(a: float) -> bool:
    if a == 1.0:
        return True
    n = 1.0 / (a - 1.0)
    r = round(n)
    return 1 <= r <= 5 and abs(n - r) <= 2.0**-16 * n


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha=1.5,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    q_idx: torch.Tensor | None = None,
    k_idx: torch.Tensor | None = None,
    window: int | None = None,
    softcap: float | None = None,
    return_probs: bool = False,
):
    """alpha-entmax attention on ``q [B, Hq, Nq, D]``, ``k/v [B, Hkv, Nk, D]`` → ``[B, Hq, Nq, D]``.

    Half-precision inputs are computed in float32 and cast back; float64 stays float64.
    With ``return_probs`` also returns the probabilities ``[B, Hq, Nq, Nk]``.
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = D**-0.5 if scale is None else float(scale)

    qg = q.to(cdt).reshape(B, Hkv, G, Nq, D)
    s = torch.matmul(qg, k.to(cdt).unsqueeze(2).transpose(-1, -2)) * scale  # [B, Hkv, G, Nq, Nk]
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    mask = visibility_mask(
        B, Nq, Nk, q.device, is_causal=is_causal, key_padding_mask=key_padding_mask, q_idx=q_idx, k_idx=k_idx,
        window=window,
    )
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None], float("-inf"))
    a = alpha_per_head(alpha, Hq, cdt, q.device).reshape(1, Hkv, G, 1, 1)
    p = entmax(s, a, dim=-1)
    out = torch.matmul(p, v.to(cdt).unsqueeze(2)).reshape(B, Hq, Nq, D).to(q.dtype)
    if return_probs:
        return out, p.reshape(B, Hq, Nq, Nk)
    return out


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    alpha=1.5,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Packed ``[total, H, D]`` attention: each segment attends only within itself (a loop of dense calls)."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    pieces = []
    for i in range(len(cq) - 1):
        q0, q1, k0, k1 = cq[i], cq[i + 1], ck[i], ck[i + 1]
        if q1 == q0:
            continue
        o = attention_reference(  # a segment without keys gives zero rows (and zero gradients)
            q[q0:q1].transpose(0, 1)[None], k[k0:k1].transpose(0, 1)[None], v[k0:k1].transpose(0, 1)[None], alpha,
            is_causal=is_causal, scale=scale, window=window, softcap=softcap,
        )
        pieces.append(o[0].transpose(0, 1))
    return torch.cat(pieces) if pieces else q.new_zeros(q.shape)
