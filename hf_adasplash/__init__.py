"""hf_adasplash: adaptive sparse (alpha-entmax) attention for Hugging Face Transformers.

``import hf_adasplash`` registers ``attn_implementation="adasplash"`` with Transformers (idempotent).
"""

from hf_adasplash.entmax import entmax
from hf_adasplash.functional import adasplash_attention, adasplash_varlen_attention
from hf_adasplash.modules import AdaptiveSplashAttention, AlphaParameter
from hf_adasplash.version import __version__

__all__ = [
    "AdaptiveSplashAttention",
    "AlphaParameter",
    "__version__",
    "adasplash_attention",
    "adasplash_varlen_attention",
    "entmax",
]
