"""alpha-entmax decode: few queries (Nq <= 16) against a long KV cache, forward only, no host sync.

Three phases (see ``kernels/decode.py``): split-K scores + per-tile maxima (K read once, by the whole GQA group),
a row-wise tau solve over the stored fp32 scores (``kernels/entmax_rows.py``), and an output pass that loads only
the V tiles holding support, then a sum of the partial outputs. The split count and every length are runtime
values, so a growing cache does not recompile.
"""

from __future__ import annotations

import functools
import os

import torch

from hf_adasplash.kernels.decode import decode_output_fwd_kernel, decode_reduce_kernel, decode_scores_fwd_kernel
from hf_adasplash.kernels.entmax_rows import entmax_rows_tau_kernel
from hf_adasplash.ops.dispatch import eager_call
from hf_adasplash.ops.launch import launch

__all__ = ["MAX_DECODE_QUERIES", "adasplash_decode_triton"]

MAX_DECODE_QUERIES = 16
BN = 64  # key tile: the granularity of V skipping (and of the block-sparsity statistics)
TCH = 16  # key tiles per output program: one vector load of their maxima decides which V tiles to read
TB = 1024  # tile maxima per block in the tau solve (one block in registers up to Nk = 64k)
TCL = 16  # listed live tiles per step of the exact Newton passes
MAX_ROWS_PER_PROGRAM = 64
NEWTON_TOL = 1e-6
NEWTON_MAX_ITERS = 40


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # plain ints: triton.cdiv is a constexpr function, slow to call from the host


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


@functools.lru_cache(maxsize=64)
def _alpha_const(value: float, HQ: int, device: torch.device) -> torch.Tensor:
    """A float alpha as a read-only ``[Hq]`` tensor, made once per (value, heads, device): no per-step fill."""
    return torch.full((HQ,), value, device=device, dtype=torch.float32)


def _carve(ws: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Split one fp32 workspace into flat buffers, each starting 128-byte aligned."""
    out, off = [], 0
    for n in sizes:
        out.append(ws[off:off + n])
        off += _cdiv(n, 32) * 32
    return out


def _workspace_numel(sizes: list[int]) -> int:
    return sum(_cdiv(n, 32) * 32 for n in sizes)


def _splits(n_tiles: int, programs_per_split: int, device: torch.device) -> tuple[int, int]:
    """(tiles per split, number of splits): enough programs to fill the GPU a few times over."""
    want = max(1, (4 * _num_sms(device)) // max(1, programs_per_split))
    tiles = max(4, _cdiv(n_tiles, want))
    return tiles, _cdiv(n_tiles, tiles)


def _decode_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    is_causal: bool,
    scale: float,
    key_padding_mask: torch.Tensor | None,
    window: int,
    softcap: float,
) -> torch.Tensor:
    """Kernel launch sequence; ``alpha`` is fp32 ``[Hq]`` on q's device, window/softcap <= 0 mean none."""
    B, HQ, NQ, D = q.shape
    HKV, Nk = k.shape[1], k.shape[2]
    G = HQ // HKV
    R = G * NQ
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)  # contiguous [B, HQ, NQ, D]
    if Nk == 0 or B == 0:
        return o.zero_()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    BR = max(16, min(_next_pow2(R), MAX_ROWS_PER_PROGRAM))
    n_rb = _cdiv(R, BR)
    BD = max(16, _next_pow2(D))
    NT = _cdiv(Nk, BN)
    split_tiles, n_splits = _splits(NT, B * HKV * n_rb, q.device)
    rows = B * HQ * NQ
    dev = q.device
    f32 = torch.float32
    n_chunks = _cdiv(NT, TCH)
    # one allocation for every intermediate (fp32 scores, tile maxima, split stats, live-tile lists, tau, 1/sum,
    # partial outputs): a decode step is short enough for allocator calls to show
    sizes = [rows * NT * BN, rows * NT, rows * 2 * n_splits, rows * NT, rows, rows, n_chunks * rows * BD]
    ws = torch.empty(_workspace_numel(sizes), device=dev, dtype=f32)
    s, tmax, ml, live, tau, inv_norm, o_part = _carve(ws, sizes)
    live = live.view(torch.int32)
    dot_ieee = _interpret() or q.dtype == torch.float32

    kpm = None
    if key_padding_mask is not None:
        kpm = key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask != 0
        kpm = kpm.contiguous().view(torch.uint8)
    grid = (n_splits, B * HKV, n_rb)
    launch(decode_scores_fwd_kernel, grid,
        q=q, k=k, kpm=kpm if kpm is not None else k, s=s, tmax=tmax, ml=ml,
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qn=q.stride(2),
        stride_kb=k.stride(0), stride_kh=k.stride(1), stride_kn=k.stride(2),
        stride_mb=kpm.stride(0) if kpm is not None else 0,
        scale=scale, softcap=softcap if softcap > 0 else 1.0, Nk=Nk, NT=NT, SPLIT_TILES=split_tiles,
        window=max(window, 1), HKV=HKV, G=G, NQ=NQ, D=D, BR=BR, BD=BD, BN=BN,
        IS_CAUSAL=is_causal, HAS_WINDOW=window > 0, HAS_KPM=kpm is not None, HAS_SOFTCAP=softcap > 0,
        DOT_IEEE=dot_ieee, num_warps=4, num_stages=3,
    )
    launch(entmax_rows_tau_kernel, (rows,),
        s=s, tmax=tmax, ml=ml, live=live, alpha=alpha, tau=tau, inv_norm=inv_norm, NT=NT, NS=n_splits, NQ=NQ, HQ=HQ,
        TOL=NEWTON_TOL, MAX_ITERS=NEWTON_MAX_ITERS, TB=TB, TCL=TCL, BN=BN, BS=64, num_warps=4,
    )
    launch(decode_output_fwd_kernel, (n_chunks, B * HKV, n_rb),
        v=v, s=s, tmax=tmax, tau=tau, inv_norm=inv_norm, alpha=alpha, o_part=o_part,
        stride_vb=v.stride(0), stride_vh=v.stride(1), stride_vn=v.stride(2),
        Nk=Nk, NT=NT, HQ=HQ, HKV=HKV, G=G, NQ=NQ, D=D, BR=BR, BD=BD, BN=BN, TCH=TCH,
        DOT_IEEE=dot_ieee, num_warps=4,
    )
    launch(decode_reduce_kernel, (rows,), o_part=o_part, o=o, NS=n_chunks, ROWS=rows, D=D, BD=BD, num_warps=1)
    return o


decode_fwd = torch.library.custom_op("hf_adasplash::decode_fwd", _decode_fwd, mutates_args=())


@decode_fwd.register_fake
def _(q, k, v, alpha, is_causal, scale, key_padding_mask, window, softcap):
    return torch.empty(q.shape, device=q.device, dtype=q.dtype)


def adasplash_decode_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: float | torch.Tensor = 1.5,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """alpha-entmax attention for ``q [B, Hq, Nq <= 16, D]`` against ``k/v [B, Hkv, Nk, D]`` (forward only).

    Same semantics as :func:`hf_adasplash.reference.attention_reference` (bottom-right causal, window, key padding,
    softcap; fully masked rows are zero). Inputs are expected validated by ``functional.py``; only the
    decode-specific limits are checked here.
    """
    B, HQ, NQ, D = q.shape
    if NQ > MAX_DECODE_QUERIES:
        raise ValueError(f"decode path takes at most {MAX_DECODE_QUERIES} queries per row, got Nq={NQ}")
    if not 16 <= D <= 256:
        raise ValueError(f"decode path supports head_dim 16..256, got {D}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"decode path supports float16/bfloat16/float32, got {q.dtype}")
    # eager calls skip the custom-op dispatch; compiled graphs and fake tensors see the op
    eager = eager_call(q)
    if isinstance(alpha, torch.Tensor):
        a = alpha.detach().to(device=q.device, dtype=torch.float32)
        a = a.expand(HQ).contiguous() if a.dim() == 0 else a.contiguous()
    else:
        a = _alpha_const(float(alpha), HQ, q.device) if eager else \
            torch.full((HQ,), float(alpha), device=q.device, dtype=torch.float32)
    op = _decode_fwd if eager else decode_fwd
    return op(
        q, k, v, a, bool(is_causal), float(D**-0.5 if scale is None else scale), key_padding_mask,
        int(window) if window is not None else 0, float(softcap) if softcap is not None else 0.0,
    )
