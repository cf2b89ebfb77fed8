"""Model loading by name/path/attention implementation, and strided sliding-window perplexity.

The perplexity follows the Transformers guide "Perplexity of fixed-length models": windows of ``max_length``
tokens move by ``stride``; each window scores only the tokens not scored before, with the rest as context.
The per-window NLL sums go through the local ``evaluate`` module in ``hf_adasplash/metrics/perplexity``.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hf_adasplash import assets
from hf_adasplash.assets import UserError

METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "perplexity"
ATTN_CHOICES = ("sdpa", "eager", "adasplash")
DEFAULT_MODEL = "smollm2"


def resolve_model(name_or_path: str) -> str:
    """``smollm2``/``gemma3`` (offline models), a local checkpoint folder, or a Hub id already in the local cache."""
    if assets.offline_model(name_or_path) is not None:
        return str(assets.offline_model_path(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a Transformers checkpoint (no config.json)")
        return str(path)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name_or_path)
    except Exception:
        raise UserError(f"unknown model {name_or_path!r}: not a local checkpoint folder, 'smollm2', 'gemma3', "
                        "or a Hub id in the local cache") from None
    return name_or_path


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(name_or_path: str, attn: str = "sdpa", alpha: float | None = None, dtype=None, device=None):
    """(model, tokenizer, path) in eval mode.

    ``attn="adasplash"`` loads through :func:`hf_adasplash.from_pretrained`: a fine-tuned checkpoint keeps its
    learned alpha; ``alpha`` overrides it (1.0 = exact softmax). ``sdpa``/``eager`` load the same weights as plain
    softmax attention (any learned alpha is ignored), which is the softmax baseline.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_adasplash  # registers attn_implementation="adasplash"

    if attn not in ATTN_CHOICES:
        raise UserError(f"unknown attention implementation {attn!r}; choose from {', '.join(ATTN_CHOICES)}")
    if alpha is not None and attn != "adasplash":
        raise UserError("--alpha only applies to --attn adasplash")
    path = resolve_model(name_or_path)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if attn == "adasplash":
        model = hf_adasplash.from_pretrained(path, alpha=alpha, dtype=dtype, attn_implementation="adasplash")
        if alpha is not None:  # from_pretrained's alpha only initialises heads the checkpoint has no value for
            from hf_adasplash.training import set_alpha

            set_alpha(model, alpha)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), tokenizer, path


def model_context(model, requested: int | None) -> int:
    """The window length: ``requested``, else the model's maximum positions, capped at 4096 on GPU and 1024 on
    CPU (where adasplash runs the dense reference, whose memory grows with the square of the window)."""
    if requested is not None:
        if requested <= 0:
            raise UserError(f"context length must be > 0, got {requested}")
        return requested
    cap = 4096 if next(model.parameters()).is_cuda else 1024
    return min(int(getattr(model.config, "max_position_embeddings", cap) or cap), cap)


@torch.no_grad()
def window_nlls(model, ids: torch.Tensor, max_length: int, stride: int, progress: bool = True):
    """Per-window (summed NLL in nats, scored tokens) over ``ids [1, T]`` with the strided sliding window."""
    if max_length <= 1:
        raise UserError(f"context length must be > 1 to score any token, got {max_length}")
    if not 0 < stride <= max_length:
        raise UserError(f"stride must be in [1, context length = {max_length}], got {stride}")
    device = next(model.parameters()).device
    seq_len = ids.size(1)
    starts = list(range(0, max(seq_len - 1, 1), stride))
    nll_sums, counts, prev_end = [], [], 0
    for begin in tqdm(starts, desc="perplexity windows", disable=not progress, leave=False):
        end = min(begin + max_length, seq_len)
        window = ids[:, begin:end].to(device)
        targets = window.clone()
        targets[:, : -(end - prev_end)] = -100  # score only tokens no earlier window scored
        logits = model(window, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100, reduction="sum")
        nll_sums.append(nll.item())
        counts.append(int((targets[:, 1:] != -100).sum()))
        prev_end = end
        if end == seq_len:
            break
    return nll_sums, counts


def load_perplexity_metric():
    """The shipped ``evaluate`` perplexity module, loaded by path (works offline)."""
    import evaluate

    return evaluate.load(str(METRIC_DIR))


def perplexity(model, ids: torch.Tensor, max_length: int, stride: int | None = None, progress: bool = True) -> dict:
    """Sliding-window perplexity of ``ids``, with timing. ``stride`` defaults to half the window."""
    stride = stride or max(max_length // 2, 1)
    start = time.perf_counter()
    nll_sums, counts = window_nlls(model, ids, max_length, stride, progress)
    seconds = time.perf_counter() - start
    result = load_perplexity_metric().compute(nll_sums=nll_sums, num_tokens=counts)
    return {**result, "max_length": max_length, "stride": stride, "seconds": round(seconds, 3),
            "tokens_per_s": round(ids.size(1) / seconds, 1) if seconds > 0 else None}


def hardware() -> dict:
    import transformers

    import hf_adasplash

    cpu = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    info = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu,
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "hf_adasplash": hf_adasplash.__version__}
    return info
