"""nn.Modules: the per-head alpha parameter and the standalone AdaptiveSplashAttention layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from hf_adasplash import _validation as _val
from hf_adasplash._validation import check_alpha
from hf_adasplash.entmax import entmax
from hf_adasplash.functional import adasplash_attention
from hf_adasplash.masks import visibility_mask
from hf_adasplash.reference import alpha_per_head, powers_by_multiplication

DEFAULT_MIN_ALPHA = 1.001  # learnable alpha stays away from 1, where d(alpha) is singular
DEFAULT_MAX_ALPHA = 2.0


class AlphaParameter(nn.Module):
    r"""alpha per head (or one shared value), kept in float32 whatever the model dtype.

    ``alpha = min_alpha + (max_alpha - min_alpha) * sigmoid(logit)``, so an optimiser can never push it out of
    ``(min_alpha, max_alpha)``. ``init=1.0`` stores ``logit = -inf`` and gives exactly ``alpha = 1`` (softmax),
    which lets a pretrained softmax model start unchanged; such a head gets no gradient.

    Args:
        num_heads: number of values (``None``: one scalar shared by all heads).
        init: initial alpha, 1.0 or in ``(min_alpha, max_alpha]``.
        learnable: whether ``logit`` requires grad.
        min_alpha, max_alpha: bounds, ``1 < min_alpha < max_alpha <= 2``.
    """

    def __init__(
        self,
        num_heads: int | None = None,
        init: float = 1.5,
        learnable: bool = True,
        min_alpha: float = DEFAULT_MIN_ALPHA,
        max_alpha: float = DEFAULT_MAX_ALPHA,
    ):
        super().__init__()
        if not 1.0 < min_alpha < max_alpha <= 2.0:
            raise ValueError(
                f"alpha bounds must satisfy 1 < min_alpha < max_alpha <= 2, got ({min_alpha}, {max_alpha})"
            )
        if num_heads is not None and (isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1):
            raise ValueError(f"num_heads must be None or an int >= 1, got {num_heads!r}")
        self.min_alpha, self.max_alpha, self.init = float(min_alpha), float(max_alpha), float(init)
        shape = () if num_heads is None else (num_heads,)
        self.logit = nn.Parameter(torch.full(shape, self.logit_for(init), dtype=torch.float32), requires_grad=learnable)

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) / .half() would store the logit in 8 mantissa bits: alpha - 1 near alpha = 1
        # (where the exponent 1/(alpha-1) is largest) would move by ~1-2% and learning steps would be lost.
        before = self.logit.data
        super()._apply(fn, recurse)
        if self.logit.dtype in (torch.float16, torch.bfloat16):  # undo the rounding: the values from before, moved
            self.logit.data = before.to(device=self.logit.device, dtype=torch.float32)
        return self

    def logit_for(self, alpha: float) -> float:
        """The logit giving ``alpha`` (pure math: safe on the meta device)."""
        if alpha == 1.0:
            return -math.inf
        if not self.min_alpha < alpha <= self.max_alpha:
            raise ValueError(f"alpha init must be 1.0 or in ({self.min_alpha}, {self.max_alpha}], got {alpha}")
        frac = (alpha - self.min_alpha) / (self.max_alpha - self.min_alpha)
        frac = min(frac, 1.0 - 1e-7)  # alpha = max_alpha exactly would need logit = +inf
        return math.log(frac) - math.log1p(-frac)

    @torch.no_grad()
    def reset_parameters(self, alpha: float | None = None) -> None:
        self.logit.fill_(self.logit_for(self.init if alpha is None else alpha))

    def forward(self) -> torch.Tensor:
        if self.logit.requires_grad or torch.compiler.is_compiling():
            return self._alpha()
        # frozen (e.g. snapped): reuse the last value until the logit changes (its version counter or storage), which
        # spares a training step ~8 small ops per layer and call (~70-80 us of host time each)
        key = (self.logit._version, self.logit.data_ptr(), self.logit.device)
        if getattr(self, "_frozen_key", None) != key:
            with torch.no_grad():
                alpha = self._alpha()
                # the kernels take alpha in float64: converted once per change here, not on every call (a cast
                # kernel, ~15 us of host time); tagged with the version it was made from
                alpha._kernel_alpha = (alpha._version, alpha.double())
                self._frozen_alpha = alpha
            self._frozen_key = key
        return self._frozen_alpha

    def _alpha(self) -> torch.Tensor:
        logit = self.logit.float()
        alpha = self.min_alpha + (self.max_alpha - self.min_alpha) * torch.sigmoid(logit)
        # float32 rounding of min + (max - min) * 1 can land one ulp above max_alpha (e.g. above 2): clamp.
        alpha = alpha.clamp(self.min_alpha, self.max_alpha)
        return torch.where(torch.isneginf(logit), torch.ones_like(alpha), alpha)

    def frozen_on_grid(self) -> bool:
        """True when alpha does not learn and every head is 1 or 1 + 1/n (n = 1..5), as ``snap_alpha`` leaves it.

        Reads the device once per change of the logit (its version counter), never while alpha learns or under
        ``torch.compile``; the answer only picks the kernels' launch settings.
        """
        if self.logit.requires_grad or torch.compiler.is_compiling():
            return False
        key = (self.logit._version, self.logit.data_ptr(), self.logit.device)
        if getattr(self, "_grid_key", None) != key:
            with torch.no_grad():
                self._grid = powers_by_multiplication(self())
            self._grid_key = key
        return self._grid

    def extra_repr(self) -> str:
        return f"shape={tuple(self.logit.shape)}, bounds=({self.min_alpha}, {self.max_alpha})"


class AdaptiveSplashAttention(nn.Module):
    r"""alpha-entmax attention over given ``Q, K, V`` (no projections), optionally with learnable alpha.

    Args:
        head_dim: D of the inputs (checked at every call).
        alpha: initial alpha (1.0 = softmax, or in (1, 2]).
        k_keep: optional cap on the support size: each query attends only among its ``k_keep`` largest scores.
        adaptive_threshold: True (default) is exact alpha-entmax with tau solved per query, so each query picks its
            own support size. False is the non-adaptive top-k baseline: softmax over the ``k_keep`` largest
            scores (``k_keep`` required).
        sm_scale: score scale, default ``head_dim ** -0.5``.
        learnable_alpha: make alpha a trained parameter (see :class:`AlphaParameter`).
        num_heads: one alpha per head when given, else one shared alpha.

    ``forward(Q, K, V, Q_idx=None, K_idx=None)``: ``Q [B, Hq, Nq, D]``, ``K/V [B, Hkv, Nk, D]``; with position
    indices, key j is visible to query i iff ``K_idx[j] <= Q_idx[i]``.
    """

    def __init__(
        self,
        head_dim: int,
        alpha: float = 1.5,
        k_keep: int | None = None,
        adaptive_threshold: bool = True,
        sm_scale: float | None = None,
        learnable_alpha: bool = False,
        num_heads: int | None = None,
    ):
        super().__init__()
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"head_dim must be an int >= 1, got {head_dim!r}")
        if sm_scale is not None and (isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float))
                                     or not math.isfinite(sm_scale)):
            raise ValueError(f"sm_scale must be None or a finite float, got {sm_scale!r}")
        check_alpha(alpha)
        if k_keep is not None and (isinstance(k_keep, bool) or not isinstance(k_keep, int) or k_keep < 1):
            raise ValueError(f"k_keep must be None or an int >= 1, got {k_keep!r}")
        if not adaptive_threshold and k_keep is None:
            raise ValueError("adaptive_threshold=False is the top-k softmax baseline and needs k_keep")
        self.head_dim, self.k_keep, self.adaptive_threshold = head_dim, k_keep, adaptive_threshold
        self.sm_scale = head_dim**-0.5 if sm_scale is None else float(sm_scale)
        self.alpha = AlphaParameter(num_heads, init=alpha, learnable=learnable_alpha)

    def forward(self, Q, K, V, Q_idx=None, K_idx=None):
        _val.check_qkv(Q, K, V)
        if Q.shape[-1] != self.head_dim:
            raise ValueError(f"expected head_dim {self.head_dim}, got Q with last dim {Q.shape[-1]}")
        alpha = self.alpha() if self.adaptive_threshold else 1.0
        if self.k_keep is None:
            return adasplash_attention(Q, K, V, alpha, scale=self.sm_scale, q_idx=Q_idx, k_idx=K_idx)
        # The support cap runs on the dense path (scores are materialised for top-k).
        _val.check_alpha(alpha, Q.shape[1], Q.device)
        _val.check_masks(Q, K, None, Q_idx, K_idx)
        return _topk_attention(Q, K, V, alpha, self.k_keep, self.sm_scale, Q_idx, K_idx)


def _topk_attention(q, k, v, alpha, k_keep, scale, q_idx, k_idx):
    """Each query keeps only its ``k_keep`` largest visible scores (ties with the k-th are all kept), then entmax."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(cdt).reshape(B, Hkv, G, Nq, D), k.to(cdt).unsqueeze(2).transpose(-1, -2)) * scale
    mask = visibility_mask(B, Nq, Nk, q.device, q_idx=q_idx, k_idx=k_idx)
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None], float("-inf"))
    if k_keep < Nk:
        kth = s.detach().topk(k_keep, dim=-1).values[..., -1:]
        s = s.masked_fill(s < kth, float("-inf"))
    a = alpha_per_head(alpha, Hq, cdt, q.device).reshape(1, Hkv, G, 1, 1)
    p = entmax(s, a, dim=-1)
    return torch.matmul(p, v.to(cdt).unsqueeze(2)).reshape(B, Hq, Nq, D).to(q.dtype)
