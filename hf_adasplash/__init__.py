"""hf_adasplash: adaptive sparse (alpha-entmax) attention for Hugging Face Transformers.

``import hf_adasplash`` registers ``attn_implementation="adasplash"`` with Transformers (idempotent).
"""

from hf_adasplash.entmax import entmax
from hf_adasplash.functional import adasplash_attention, adasplash_varlen_attention
from hf_adasplash.integrations.transformers import register
from hf_adasplash.modules import AdaptiveSplashAttention, AlphaParameter
from hf_adasplash.patching import alpha_parameters, from_pretrained, patch, snap_alpha, unpatch
from hf_adasplash.sparsity import SparsityStats, sparsity_stats
from hf_adasplash.version import __version__

register()

__all__ = [
    "AdaptiveSplashAttention",
    "AlphaParameter",
    "SparsityStats",
    "__version__",
    "adasplash_attention",
    "adasplash_varlen_attention",
    "alpha_parameters",
    "entmax",
    "from_pretrained",
    "patch",
    "register",
    "snap_alpha",
    "sparsity_stats",
    "unpatch",
]
