"""Which keys each query may see: the one masking convention shared by the reference and the kernels.

- Positions: by default ``q_pos = arange(Nq) + (Nk - Nq)`` (bottom-right aligned, as in KV-cache decode) and
  ``k_pos = arange(Nk)``; ``q_idx`` / ``k_idx`` replace them (per sequence ``[N]`` or per batch row ``[B, N]``).
- Causal (``is_causal=True`` or position indices given): key j is visible to query i iff ``k_pos[j] <= q_pos[i]``.
- Sliding window ``W``: causal ``q_pos - k_pos < W`` (W keys including itself); non-causal ``|q_pos - k_pos| < W``.
- ``key_padding_mask`` ``[B, Nk]``: True / 1 marks a real key.
"""

from __future__ import annotations

import torch


def positions(Nq: int, Nk: int, device, q_idx=None, k_idx=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[.., Nq, 1]`` query and ``[.., 1, Nk]`` key positions (leading batch dim when indices are per row)."""
    if q_idx is None:
        q_pos = torch.arange(Nq, device=device) + (Nk - Nq)
        k_pos = torch.arange(Nk, device=device)
    else:
        q_pos, k_pos = q_idx.long(), k_idx.long()
    return q_pos.unsqueeze(-1), k_pos.unsqueeze(-2)


def visibility_mask(
    B: int,
    Nq: int,
    Nk: int,
    device,
    *,
    is_causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    q_idx: torch.Tensor | None = None,
    k_idx: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor | None:
    """Boolean ``[B or 1, Nq, Nk]`` mask (True = visible), or None when every key is visible."""
    causal = is_causal or q_idx is not None
    mask = None
    if causal or window is not None:
        q_pos, k_pos = positions(Nq, Nk, device, q_idx, k_idx)
        diff = q_pos - k_pos
        if causal:
            mask = diff >= 0
            if window is not None:
                mask = mask & (diff < window)
        else:
            mask = diff.abs() < window
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
    if key_padding_mask is not None:
        kpm = key_padding_mask.bool()[:, None, :]
        mask = kpm if mask is None else mask & kpm
    if mask is not None and mask.shape[0] == 1 and B > 1:
        mask = mask.expand(B, Nq, Nk)
    return mask
