"""Argument checks shared by every entry point: each error names what was expected and what came in."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from hf_adasplash._tensor_reads import TensorReads

BACKENDS = ("auto", "reference", "triton")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_tracing() -> bool:
    return torch.compiler.is_compiling()


def _is_int(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def check_alpha(alpha, num_heads: int | None = None, device: torch.device | None = None, values: bool = True) -> None:
    """alpha must be 1 (softmax) or in (1, 2]: a float, a 0-d tensor, or a tensor with one value per head.

    Tensor values are checked eagerly (one host sync; skipped under ``torch.compile``): an out-of-range alpha would
    otherwise give a silently wrong (alpha < 1) or NaN (alpha > 2 far out) result. ``values=False`` skips that sync
    for alphas that are in range by construction (an ``AlphaParameter``'s output).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (Real, torch.Tensor)):
        raise TypeError(f"alpha must be a float or a torch.Tensor, got {type(alpha).__name__}")
    if isinstance(alpha, torch.Tensor):
        if not torch.is_floating_point(alpha):
            raise TypeError(f"alpha tensor must be floating point, got dtype {alpha.dtype}")
        if num_heads is not None and alpha.dim() > 0 and tuple(alpha.shape) != (num_heads,):
            raise ValueError(f"alpha tensor must have shape [] or [{num_heads}] (one per query head), "
                             f"got {list(alpha.shape)}")
        if device is not None and alpha.device != device and alpha.device.type != "cpu":
            raise ValueError(f"alpha must be on {device} (or the CPU), got {alpha.device}")
        if not values or _is_tracing() or alpha.device.type == "meta":
            return
        a = alpha.detach()
        bad = ~torch.isfinite(a) | ((a != 1) & ((a <= 1) | (a > 2)))
        if bool(bad.any()):
            raise ValueError(f"alpha must be 1 (softmax) or in (1, 2], got {a.flatten()[bad.flatten()][:4].tolist()}")
        return
    a = float(alpha)
    if not math.isfinite(a) or (a != 1.0 and not 1.0 < a <= 2.0):
        raise ValueError(f"alpha must be 1 (softmax) or in (1, 2], got {a}")


def _check_tensor(name: str, t, ndim: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {list(t.shape)}")
    if t.dtype not in DTYPES:
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")


def _check_same(q, k, v) -> None:
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        raise ValueError(f"head_dim mismatch: q {q.shape[-1]}, k {k.shape[-1]}, v {v.shape[-1]} (must be equal)")
    if q.shape[-1] < 1:
        raise ValueError("head_dim must be >= 1, got 0")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """``q [B, Hq, Nq, D]``, ``k/v [B, Hkv, Nk, D]`` with ``Hq % Hkv == 0``; one dtype and device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, 4, "[batch, heads, seq, head_dim]")
    _check_same(q, k, v)
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch size mismatch: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1:3] != v.shape[1:3]:
        raise ValueError(f"k and v must have the same [heads, seq]: k {list(k.shape)}, v {list(v.shape)}")
    _check_heads(q.shape[1], k.shape[1])


def check_qkv_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """``q [total_q, Hq, D]``, ``k/v [total_k, Hkv, D]`` (flash_attn_varlen_func's layout)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, 3, "[total_tokens, heads, head_dim] for varlen attention")
    _check_same(q, k, v)
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k and v must have the same [total_k, heads]: k {list(k.shape)}, v {list(v.shape)}")
    _check_heads(q.shape[1], k.shape[1])


def _check_heads(hq: int, hkv: int) -> None:
    if hkv < 1 or hq % hkv != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv}) for GQA/MQA")


def check_options(*, scale, window, softcap, backend) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale)):
        raise ValueError(f"scale must be None or a finite float, got {scale!r}")
    if window is not None and (not _is_int(window) or window < 1):
        raise ValueError(f"window must be None or an int >= 1 (keys within `window` positions), got {window!r}")
    if softcap is not None and (
        isinstance(softcap, bool) or not isinstance(softcap, Real) or not math.isfinite(softcap) or softcap <= 0
    ):
        raise ValueError(f"softcap must be None or a finite float > 0, got {softcap!r}")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _check_int_tensor(name: str, t, shapes: list[tuple[int, ...]], device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    if tuple(t.shape) not in shapes:
        raise ValueError(f"{name} must have shape {' or '.join(str(list(s)) for s in shapes)}, got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def check_masks(q: torch.Tensor, k: torch.Tensor, key_padding_mask, q_idx, k_idx) -> None:
    B, _, Nq, _ = q.shape
    Nk = k.shape[2]
    if key_padding_mask is not None:
        m = key_padding_mask
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"key_padding_mask must be a torch.Tensor, got {type(m).__name__}")
        if m.dtype.is_floating_point or m.dtype.is_complex:
            raise TypeError(f"key_padding_mask must be bool or integer (True/1 = real key), got dtype {m.dtype}")
        if tuple(m.shape) != (B, Nk):
            raise ValueError(f"key_padding_mask must have shape [batch, k_len] = [{B}, {Nk}], got {list(m.shape)}")
        if m.device != q.device:
            raise ValueError(f"key_padding_mask must be on {q.device}, got {m.device}")
    if (q_idx is None) != (k_idx is None):
        raise ValueError("q_idx and k_idx must be given together (position-index causal masking)")
    if q_idx is not None:
        _check_int_tensor("q_idx", q_idx, [(Nq,), (B, Nq)], q.device)
        _check_int_tensor("k_idx", k_idx, [(Nk,), (B, Nk)], q.device)


def check_cu_seqlens(name: str, cu: torch.Tensor, total: int, device) -> int:
    """Validates ``cu`` and returns its longest segment (0 under tracing, where values are not read)."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D [num_seqs + 1] with num_seqs >= 1, got shape {list(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} must be on {device}, got {cu.device}")
    if _is_tracing():
        return 0
    # the values are read once per tensor (a device sync): a model's layers share one cu_seqlens
    return _cu_reads.get(cu, total, lambda c: _longest_segment(name, c, total))


def _longest_segment(name: str, cu: torch.Tensor, total: int) -> int:
    c = cu.detach().cpu()
    if int(c[0]) != 0:
        raise ValueError(f"{name} must start at 0, got {int(c[0])}")
    if bool((c[1:] < c[:-1]).any()):
        raise ValueError(f"{name} must be non-decreasing, got {c.tolist()[:16]}")
    if int(c[-1]) != total:
        raise ValueError(f"{name}[-1] = {int(c[-1])} does not match the token count {total}")
    return int((c[1:] - c[:-1]).max())


_cu_reads = TensorReads()


def check_max_seqlen(name: str, val, longest: int) -> None:
    """``max_seqlen`` sizes kernel grids: one smaller than the longest segment would silently drop rows."""
    if not _is_int(val) or val < 0:
        raise ValueError(f"{name} must be an int >= 0, got {val!r}")
    if val < longest:
        raise ValueError(f"{name} = {val} is smaller than the longest segment ({longest})")
