"""Public functional API: validate, then dispatch to the Triton kernels or the dense reference."""

from __future__ import annotations

import os

import torch

from hf_adasplash import _validation as V
from hf_adasplash.reference import attention_reference, varlen_attention_reference


def triton_available(device: torch.device) -> bool:
    """The fused kernels run on CUDA (and on CPU under ``TRITON_INTERPRET=1``)."""
    try:
        from hf_adasplash.ops import attention  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda"


def _resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    if backend == "auto":
        # float64 is the truth path: the kernels accumulate in float32, so auto keeps float64 on the reference.
        return "triton" if dtype != torch.float64 and triton_available(device) else "reference"
    if backend == "triton":
        if dtype == torch.float64:
            raise TypeError('backend="triton" supports float16/bfloat16/float32 (it accumulates in float32); '
                            'float64 runs on backend="reference" (or "auto")')
        # Fail here, not deep inside a launcher: Triton needs CUDA, or the interpreter for CPU tensors.
        interpret = os.environ.get("TRITON_INTERPRET") == "1" and device.type == "cpu"
        if device.type != "cuda" and not interpret:
            raise ValueError(f'backend="triton" needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), '
                             f'got tensors on {device}; use backend="reference" or "auto"')
        try:
            from hf_adasplash.ops import attention  # noqa: F401
        except ImportError as e:
            raise ValueError(f'backend="triton" is unavailable: importing the kernels failed ({e})') from e
    return backend


def adasplash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: float | torch.Tensor = 1.5,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    q_idx: torch.Tensor | None = None,
    k_idx: torch.Tensor | None = None,
    window: int | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    _check_alpha_values: bool = True,
    _alpha_grid: bool = False,
) -> torch.Tensor:
    r"""alpha-entmax attention ("AdaSplash").

    ``s = scale * q @ k^T`` (optionally ``softcap * tanh(s / softcap)``), ``p = [(alpha-1) s - tau]_+^{1/(alpha-1)}``
    with tau per query row so that each row sums to one; ``out = p @ v``.

    Args:
        q: ``[B, Hq, Nq, D]``.
        k, v: ``[B, Hkv, Nk, D]``; ``Hq`` must be a multiple of ``Hkv`` (GQA/MQA, never repeated in memory).
        alpha: float or tensor ``[Hq]`` (may require grad); each value 1 (exact softmax) or in (1, 2]
            (2 = sparsemax).
        is_causal: causal masking, bottom-right aligned when ``Nq < Nk`` (query i sees keys ``j <= i + Nk - Nq``).
        scale: score scale, default ``D ** -0.5``.
        key_padding_mask: ``[B, Nk]`` bool/int, True (1) = real key.
        q_idx, k_idx: position indices ``[Nq]``/``[Nk]`` or ``[B, Nq]``/``[B, Nk]``; key j is visible to query i
            iff ``k_idx[j] <= q_idx[i]`` (implies causal masking by position).
        window: sliding window: causal ``0 <= q_pos - k_pos < window``, non-causal ``|q_pos - k_pos| < window``.
        softcap: logit soft-cap (Gemma-2 style).
        backend: ``"auto"`` (Triton on CUDA for 16/32-bit floats, the reference elsewhere and for float64),
            ``"reference"`` or ``"triton"`` (float16/bfloat16/float32 only).

    Returns:
        ``[B, Hq, Nq, D]`` in the dtype of ``q``. Rows with no visible key are zero (never NaN).

    ``_check_alpha_values=False`` (internal) skips the value check of a tensor alpha, a host sync, for alphas that
    are in range by construction. ``_alpha_grid=True`` (internal) says every head's alpha is 1 or 1 + 1/n
    (n = 1..5), e.g. snapped and frozen: the Triton kernels then take launch settings that suit those heads.
    """
    V.check_qkv(q, k, v)
    V.check_alpha(alpha, q.shape[1], q.device, values=_check_alpha_values)
    V.check_options(scale=scale, window=window, softcap=softcap, backend=backend)
    V.check_masks(q, k, key_padding_mask, q_idx, k_idx)
    kw = {
        "is_causal": is_causal, "scale": scale, "key_padding_mask": key_padding_mask, "q_idx": q_idx, "k_idx": k_idx,
        "window": window, "softcap": softcap,
    }
    if _resolve_backend(backend, q.device, q.dtype) == "triton":
        from hf_adasplash.ops.attention import adasplash_attention_triton

        return adasplash_attention_triton(q, k, v, alpha, alpha_grid=_alpha_grid, **kw)
    return attention_reference(q, k, v, alpha, **kw)


def adasplash_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    alpha: float | torch.Tensor = 1.5,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    _check_alpha_values: bool = True,
    _alpha_grid: bool = False,
) -> torch.Tensor:
    r"""alpha-entmax attention over packed sequences, in ``flash_attn_varlen_func``'s layout.

    Args:
        q: ``[total_q, Hq, D]``; k, v: ``[total_k, Hkv, D]``.
        cu_seqlens_q, cu_seqlens_k: int32/int64 ``[num_seqs + 1]`` cumulative lengths starting at 0.
        max_seqlen_q, max_seqlen_k: upper bounds on the segment lengths (they size kernel grids; a value below the
            longest segment raises ``ValueError``).
        Other arguments as in :func:`adasplash_attention` (causal is bottom-right aligned per segment).

    Returns:
        ``[total_q, Hq, D]``; each segment attends only within itself.
    """
    V.check_qkv_varlen(q, k, v)
    V.check_alpha(alpha, q.shape[1], q.device, values=_check_alpha_values)
    V.check_options(scale=scale, window=window, softcap=softcap, backend=backend)
    longest_q = V.check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    longest_k = V.check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
                         f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}")
    V.check_max_seqlen("max_seqlen_q", max_seqlen_q, longest_q)
    V.check_max_seqlen("max_seqlen_k", max_seqlen_k, longest_k)
    kw = {"is_causal": is_causal, "scale": scale, "window": window, "softcap": softcap}
    if _resolve_backend(backend, q.device, q.dtype) == "triton":
        from hf_adasplash.ops.attention import adasplash_varlen_attention_triton

        return adasplash_varlen_attention_triton(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alpha, alpha_grid=_alpha_grid, **kw
        )
    return varlen_attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, alpha, **kw)
