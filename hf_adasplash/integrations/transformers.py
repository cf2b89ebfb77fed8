"""``attn_implementation="adasplash"``: the Transformers AttentionInterface + AttentionMaskInterface entries.

Mask form (flash-style, never an O(Q*K) mask): the registered mask function hands the attention function either
``None`` or a 2-D bool ``[B, K]`` *key validity* mask (True = a real key in this layer's K/V). It covers padding
(left or right), the unused slots of a static cache, and the right-sliced keys of sliding-window cache layers.
Packed batches arrive with ``attention_mask=None`` and are read from ``cu_seq_lens_q/k`` + ``max_length_q/k`` or
from non-monotone ``position_ids`` (batch 1), as for FlashAttention, and run through the varlen API.

Positions: queries are the newest tokens. With ``Q == K`` positions are ``arange``; with ``Q < K`` (decode,
chunked prefill, static cache) query ``i`` of row ``b`` sits at ``last_valid_key[b] - Q + 1 + i`` (bottom-right
aligned on the valid keys; for dynamic caches this is plain bottom-right alignment). So a query chunk that is
itself right-padded *and* follows cached tokens is misaligned (generation never produces one).

alpha, in order: ``module.adasplash_alpha()`` (an :class:`~hf_adasplash.modules.AlphaParameter` attached by
:func:`hf_adasplash.patch`), else ``config.adasplash["alpha"]`` (a fixed float for every head), else 1.5.
Backend: env ``HF_ADASPLASH_BACKEND``, else ``config.adasplash["backend"]``, else ``"auto"`` (Triton on CUDA,
reference elsewhere).
"""

from __future__ import annotations

import os

import torch

from hf_adasplash._tensor_reads import TensorReads
from hf_adasplash.functional import adasplash_attention, adasplash_varlen_attention

NAME = "adasplash"
DEFAULT_ALPHA = 1.5
BACKEND_ENV = "HF_ADASPLASH_BACKEND"

# Extra score terms some models pass: alpha-entmax over the bare scores would silently drop them.
_UNSUPPORTED_KWARGS = {
    "s_aux": "attention sinks (s_aux)",
    "sinks": "attention sinks (sinks)",
    "position_bias": "an additive relative position bias (position_bias)",
    "alibi": "an ALiBi bias (alibi)",
    "head_mask": "a head mask (head_mask)",
}

# Set by hf_adasplash.sparsity.sparsity_stats while it runs (one at a time): called with the dense path's inputs.
_RECORDER = None


def _where(module) -> str:
    cfg = getattr(module, "config", None)
    model_type = getattr(cfg, "model_type", None) or "unknown"
    return f"{type(module).__name__} (model_type={model_type!r})"


def _unsupported(module, option: str, hint: str) -> NotImplementedError:
    return NotImplementedError(f"attn_implementation='adasplash' cannot honour {option} in {_where(module)}: {hint}")


# Mask patterns the key-validity mask + (causal, window, packing) already express. Anything else (or-ed
# overlays such as bidirectional image tokens, chunked attention, custom functions) is refused, not dropped.
_KNOWN_MASK_PARTS = ("causal_mask_function", "bidirectional_mask_function", "sliding_window_overlay",
                     "sliding_window_bidirectional_overlay", "and_masks", "packed_sequence_mask_function",
                     "remap_positions_for_packed_sequence")


def _mask_parts(fn, depth: int = 0) -> set[str]:
    """Qualified names of a Transformers mask function and the functions it closes over."""
    names = {getattr(fn, "__qualname__", type(fn).__name__)}
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            val = cell.cell_contents
        except ValueError:
            continue
        for f in val if isinstance(val, tuple) else (val,):
            if callable(f) and depth < 8:
                names |= _mask_parts(f, depth + 1)
    return names


def _check_mask_function(mask_function, config) -> None:
    unknown = sorted(n for n in _mask_parts(mask_function) if not n.startswith(_KNOWN_MASK_PARTS))
    if unknown:
        model_type = getattr(config, "model_type", "unknown")
        raise NotImplementedError(
            f"attn_implementation='adasplash' cannot honour the attention pattern {unknown} of model_type="
            f"{model_type!r}: only causal/bidirectional, sliding-window, padding and packed masks are supported"
        )


def adasplash_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset=0,
    kv_offset=0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    device=None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask function for ``AttentionMaskInterface``: ``None`` or a bool ``[B, kv_length]`` key validity mask.

    Built without device syncs (no ``.all()``), so it is safe under ``torch.compile`` and CUDA graphs.
    """
    if mask_function is not None:
        _check_mask_function(mask_function, kwargs.get("config"))
    if attention_mask is None and kv_length == q_length:
        return None  # no padding, no cache slots: causal (or full) attention over K == Q
    if device is None:
        device = attention_mask.device if attention_mask is not None else "cpu"
    # Static caches return all slots: keys at offsets >= q_offset + q_length are not written yet.
    slots = torch.arange(kv_length, device=device) + kv_offset
    valid = (slots < q_offset + q_length)[None].expand(batch_size, kv_length)
    if attention_mask is None:
        return valid
    m = attention_mask.to(device=device, dtype=torch.bool)
    if m.shape[-1] >= kv_length:
        return m[:, -kv_length:]  # sliding layers keep the last kv_length tokens; full layers: a no-op
    pad = m.new_zeros(m.shape[0], kv_length - m.shape[-1])
    return torch.cat([m, pad], dim=-1) & valid


def _resolve_alpha(module) -> float | torch.Tensor:
    alpha_module = getattr(module, "adasplash_alpha", None)
    if alpha_module is not None:
        return alpha_module()
    settings = getattr(getattr(module, "config", None), "adasplash", None) or {}
    if settings.get("attached"):
        raise RuntimeError(
            f"{_where(module)} was saved with learned per-head alpha (config.adasplash) but this module has no "
            "`adasplash_alpha`: load the checkpoint with hf_adasplash.from_pretrained(...) (or call "
            "hf_adasplash.patch(model)) so the learned alpha values are restored"
        )
    return float(settings.get("alpha", DEFAULT_ALPHA))


def _resolve_backend(module) -> str:
    env = os.environ.get(BACKEND_ENV)
    if env:
        return env
    settings = getattr(getattr(module, "config", None), "adasplash", None) or {}
    return settings.get("backend", "auto")


# every layer of a forward gets the same position_ids: read once per forward, not once per layer
_packing_reads = TensorReads(size=1)


def _packed_from_position_ids(position_ids: torch.Tensor | None, batch: int, q_len: int) -> tuple | None:
    """(cu_seqlens, longest) when ``position_ids`` ``[1, T]`` restart (packed sequences), else None
    (FlashAttention's rule). Reads the device: a sync, once per position_ids tensor."""
    if position_ids is None or batch != 1 or q_len == 1 or position_ids.shape[-1] != q_len:
        return None
    if torch.compiler.is_compiling():
        return _read_packing(position_ids, q_len)
    return _packing_reads.get(position_ids, q_len, lambda p: _read_packing(p, q_len))


def _read_packing(position_ids: torch.Tensor, q_len: int) -> tuple | None:
    pos = position_ids.reshape(-1)
    if not bool((pos != torch.arange(q_len, device=pos.device) + pos.min()).any()):  # reads values: a sync
        return None
    # A new sequence starts wherever the position does not increase.
    starts = torch.nonzero(torch.cat([pos.new_ones(1, dtype=torch.bool), pos.diff() <= 0]), as_tuple=False).flatten()
    total = torch.tensor([pos.numel()], device=pos.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _same_dtype(q, k, v):
    """Under autocast RoPE leaves q/k in fp32 while v is bf16: compute in the autocast dtype (as FlashAttention)."""
    if q.dtype == k.dtype == v.dtype:
        return q, k, v
    dev = q.device.type
    dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else v.dtype
    return q.to(dt), k.to(dt), v.to(dt)


def _varlen(q, k, v, cu_q, cu_k, max_q, max_k, alpha, **kw) -> torch.Tensor:
    B = q.shape[0]
    # [B, H, T, D] -> [B*T, H, D] (B is 1 for position_ids packing; cu_seq_lens index the flattened tokens)
    qf, kf, vf = (t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[-1]) for t in (q, k, v))
    out = adasplash_varlen_attention(qf, kf, vf, cu_q, cu_k, int(max_q), int(max_k), alpha, **kw)
    return out.reshape(B, -1, q.shape[1], q.shape[-1])  # [B, T, H, D]


def adasplash_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """AttentionInterface entry: ``query [B, Hq, Q, D]``, ``key/value [B, Hkv, K, D]`` -> (``[B, Q, Hq, D]``, None)."""
    if dropout and dropout > 0:
        raise _unsupported(module, f"attention dropout ({dropout})",
                           "set the config's attention dropout to 0 or call model.eval()")
    for name, what in _UNSUPPORTED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise _unsupported(module, what, "alpha-entmax attention takes no extra score terms")
    cfg = getattr(module, "config", None)
    if kwargs.get("output_attentions") or getattr(cfg, "output_attentions", False):
        raise _unsupported(module, "output_attentions=True",
                           "probabilities are never materialised; use hf_adasplash.sparsity_stats(model, batch)")
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.dtype != torch.bool):
        raise _unsupported(module, f"a {attention_mask.dim()}-D {attention_mask.dtype} attention mask",
                           "pass a 2-D padding mask [batch, seq] (custom 4-D masks are not supported)")

    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    window = kwargs.get("sliding_window")
    softcap = kwargs.get("softcap")
    opts = {"scale": scaling, "window": int(window) if window else None, "softcap": softcap or None,
            "backend": _resolve_backend(module)}
    alpha = _resolve_alpha(module)
    # An AlphaParameter's output is in range by construction: skip the per-layer host sync of the value check. A
    # frozen one on the multiplication grid (snapped) lets the kernels take that grid's launch settings.
    alpha_module = getattr(module, "adasplash_alpha", None)
    trusted = {"_check_alpha_values": not isinstance(alpha, torch.Tensor),
               "_alpha_grid": alpha_module is not None and alpha_module.frozen_on_grid()}
    query, key, value = _same_dtype(query, key, value)
    B, _, Q, _ = query.shape
    K = key.shape[2]

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    varlen = None
    if attention_mask is None and all(x is not None for x in (cu_q, cu_k, max_q, max_k)):
        varlen = (cu_q, cu_k, max_q, max_k)
    elif attention_mask is None and Q == K:
        packed = _packed_from_position_ids(kwargs.get("position_ids"), B, Q)
        if packed is not None:
            cu, longest = packed
            varlen = (cu, cu, longest, longest)
    if varlen is not None:
        if _RECORDER is not None:
            raise _unsupported(module, "packed sequences in sparsity_stats", "pass a padded batch instead")
        return _varlen(query, key, value, *varlen, alpha, is_causal=is_causal, **opts, **trusted).contiguous(), None

    q_idx = k_idx = None
    if attention_mask is not None:
        L = attention_mask.shape[-1]
        if L > K:
            attention_mask = attention_mask[:, -K:]
        elif L < K:  # keys past the mask are unused cache slots
            attention_mask = torch.cat([attention_mask, attention_mask.new_zeros(B, K - L)], dim=-1)
        if is_causal and Q < K:
            # Queries are the newest tokens: bottom-right aligned on each row's last valid key.
            ar = torch.arange(K, device=query.device)
            last = torch.where(attention_mask, ar, -1).amax(-1, keepdim=True)  # [B, 1]
            q_idx = last - (Q - 1) + torch.arange(Q, device=query.device)
            k_idx = ar.expand(B, K)
    dense = dict(is_causal=is_causal, key_padding_mask=attention_mask, q_idx=q_idx, k_idx=k_idx, **opts)
    if _RECORDER is not None:
        _RECORDER(module, query, key, value, alpha, dense)
    out = adasplash_attention(query, key, value, alpha, **dense, **trusted)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``"adasplash"`` with Transformers (idempotent; runs on ``import hf_adasplash``)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, adasplash_attention_forward)
    AttentionMaskInterface.register(NAME, adasplash_mask)


def ensure_registered() -> None:
    """Register unless some function already holds the name in both interfaces (keeps user overrides)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping or NAME not in AttentionMaskInterface._global_mapping:
        register()


def is_registered() -> bool:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return (AttentionInterface._global_mapping.get(NAME) is adasplash_attention_forward
            and AttentionMaskInterface._global_mapping.get(NAME) is adasplash_mask)
