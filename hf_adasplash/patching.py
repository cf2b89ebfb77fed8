"""Turn a Transformers model into an AdaSplash model and back: ``patch``, ``unpatch``, ``from_pretrained``.

The attention itself is *registered* (``attn_implementation="adasplash"``, see ``integrations/transformers.py``);
patching only attaches one :class:`~hf_adasplash.modules.AlphaParameter` per attention module (as
``module.adasplash_alpha``, parameter ``adasplash_alpha.logit``, fp32) and records the settings in the config:

``config.adasplash = {"alpha": 1.5, "learnable": True, "per_head": True, "min_alpha": 1.001, "max_alpha": 2.0,
"attached": True}`` (plus ``"backend"`` when forced). ``alpha`` is the *initial* value; learned values live in the
weights. ``save_pretrained`` writes both, and :func:`from_pretrained` restores them bit-exactly.
"""

from __future__ import annotations

import glob
import inspect
import json
import logging
import math
import os
from contextlib import contextmanager

import torch
from torch import nn

from hf_adasplash.integrations.transformers import NAME, ensure_registered
from hf_adasplash.modules import DEFAULT_MAX_ALPHA, DEFAULT_MIN_ALPHA, AlphaParameter

ALPHA_ATTR = "adasplash_alpha"
ALPHA_KEY_SUFFIX = f"{ALPHA_ATTR}.logit"
SETTINGS = ("alpha", "learnable", "per_head", "min_alpha", "max_alpha", "backend")  # patch() arguments

# What registration cannot express: model types whose attention has parts alpha-entmax has no counterpart for.
UNSUPPORTED_MODEL_TYPES = {
    "gpt_oss": "learned attention sinks (s_aux)",
}

_calls_interface: dict[type, bool] = {}


def _is_attention_module(module: nn.Module) -> bool:
    """True for modules whose own ``forward`` dispatches through Transformers' AttentionInterface."""
    cls = type(module)
    if cls not in _calls_interface:
        try:
            src = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            src = ""
        _calls_interface[cls] = "ALL_ATTENTION_FUNCTIONS" in src
    return _calls_interface[cls]


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every attention module the ``"adasplash"`` function will be called with."""
    return [(n, m) for n, m in model.named_modules() if _is_attention_module(m)]


def _num_heads(module: nn.Module, model: nn.Module) -> int:
    for attr in ("num_heads", "num_attention_heads"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    cfg = getattr(module, "config", None) or model.config.get_text_config()
    return int(cfg.num_attention_heads)


def _configs(model: nn.Module) -> list:
    """model.config plus any distinct sub-config an attention module reads (multimodal models)."""
    out = [model.config]
    for _, m in attention_modules(model):
        cfg = getattr(m, "config", None)
        if cfg is not None and all(cfg is not c for c in out):
            out.append(cfg)
    return out


def alpha_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable alpha logits, e.g. for their own optimiser param group (``{"params": ..., "lr": 1e-2}``).

    Under PEFT (``modules_to_save=["adasplash_alpha"]``) these are the adapter's copies, not the frozen originals.
    """
    return [p for n, p in model.named_parameters() if ALPHA_ATTR in n and p.requires_grad]


# alpha = 1 + 1/n: p = n, so x^p (and the tau passes' x^(p-1), x^(p-2)) needs no special-function op in the kernels
SNAP_GRID = (2.0, 1.5, 4 / 3, 1.25, 1.2)


def snap_grid(min_alpha: float, max_alpha: float) -> list[float]:
    """The ``SNAP_GRID`` alphas a learned alpha in ``(min_alpha, max_alpha]`` can take; ValueError if none."""
    grid = [a for a in SNAP_GRID if min_alpha < a <= max_alpha]
    if not grid:
        raise ValueError(f"no snap alpha ({', '.join(f'{a:.4g}' for a in SNAP_GRID)}) lies in "
                         f"({min_alpha}, {max_alpha}]")
    return grid


@torch.no_grad()
def snap_alpha(model: nn.Module) -> int:
    """Moves every learned alpha to the nearest ``SNAP_GRID`` value inside its bounds and stops it learning.

    The kernels then take each head's powers by multiplication alone (about twice as fast as at a general alpha).
    Heads at exactly 1 (softmax) stay. Idempotent; returns how many heads were snapped.
    """
    n = 0
    for m in model.modules():
        if not isinstance(m, AlphaParameter):
            continue
        grid = snap_grid(m.min_alpha, m.max_alpha)
        alpha = m().detach().double().cpu().reshape(-1)
        soft = torch.isneginf(m.logit.detach().cpu().reshape(-1))
        g = torch.tensor(grid, dtype=torch.float64)
        near = g[(alpha[:, None] - g).abs().argmin(dim=1)]
        logits = [-math.inf if s else m.logit_for(float(a)) for a, s in zip(near, soft)]
        m.logit.copy_(torch.tensor(logits, dtype=m.logit.dtype).reshape(m.logit.shape))
        m.logit.requires_grad_(False)
        n += int((~soft).sum())
    return n


def patch(
    model: nn.Module,
    alpha: float = 1.5,
    learnable: bool = True,
    per_head: bool = True,
    min_alpha: float = DEFAULT_MIN_ALPHA,
    max_alpha: float = DEFAULT_MAX_ALPHA,
    backend: str | None = None,
) -> nn.Module:
    """Attach per-head alpha to every attention module and switch the model to ``"adasplash"`` (in place).

    Args:
        alpha: initial alpha, 1.0 (exact softmax: the model starts unchanged; such a head stays at 1, see
            :class:`~hf_adasplash.modules.AlphaParameter`) or in ``(min_alpha, max_alpha]``.
        learnable: alpha requires grad (train it with :func:`alpha_parameters` as its own param group).
        per_head: one alpha per query head (else one per layer).
        backend: force ``"triton"`` or ``"reference"`` (default: env ``HF_ADASPLASH_BACKEND``, else ``"auto"``).

    Returns the same model. Raises if it is already patched (call :func:`unpatch` first).
    """
    ensure_registered()
    model_type = getattr(model.config, "model_type", None)
    if model_type in UNSUPPORTED_MODEL_TYPES:
        raise NotImplementedError(f"hf_adasplash.patch: {type(model).__name__} (model_type={model_type!r}) uses "
                                  f"{UNSUPPORTED_MODEL_TYPES[model_type]}, which alpha-entmax attention cannot honour")
    modules = attention_modules(model)
    if not modules:
        raise NotImplementedError(f"hf_adasplash.patch: {type(model).__name__} (model_type={model_type!r}) has no "
                                  "attention module that dispatches through Transformers' AttentionInterface")
    if any(hasattr(m, ALPHA_ATTR) for _, m in modules):
        raise ValueError(f"{type(model).__name__} is already patched with adasplash; call hf_adasplash.unpatch first")
    settings = {"alpha": float(alpha), "learnable": bool(learnable), "per_head": bool(per_head),
                "min_alpha": float(min_alpha), "max_alpha": float(max_alpha), "attached": True}
    if backend is not None:
        settings["backend"] = backend
    for name, m in modules:
        param = next(m.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if device.type == "meta":
            raise ValueError(f"hf_adasplash.patch: {name} is on the meta device; load or materialise the weights "
                             "first (alpha must hold real values)")
        # Built on the CPU then moved: the init value is exact and alpha stays fp32 in a bf16 model.
        a = AlphaParameter(_num_heads(m, model) if per_head else None, init=alpha, learnable=learnable,
                           min_alpha=min_alpha, max_alpha=max_alpha)
        m.add_module(ALPHA_ATTR, a.to(device))
    prev = model.config._attn_implementation
    if prev == NAME or prev is None:
        prev = "sdpa" if getattr(model, "_supports_sdpa", False) else "eager"
    model._adasplash_previous_attn_implementation = prev
    for cfg in _configs(model):
        cfg.adasplash = dict(settings)
    model.set_attn_implementation(NAME)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove alpha and restore the previous attention implementation (in place); logits equal the original."""
    for _, m in attention_modules(model):
        if ALPHA_ATTR in m._modules:
            del m._modules[ALPHA_ATTR]
    for cfg in _configs(model):
        if hasattr(cfg, "adasplash"):
            delattr(cfg, "adasplash")
    prev = getattr(model, "_adasplash_previous_attn_implementation", None)
    if prev is None:
        prev = "sdpa" if getattr(model, "_supports_sdpa", False) else "eager"
    model.set_attn_implementation(prev)
    if hasattr(model, "_adasplash_previous_attn_implementation"):
        del model._adasplash_previous_attn_implementation
    return model


def _checkpoint_files(path_or_id: str, hub_kw: dict) -> list[str]:
    if os.path.isdir(path_or_id):
        sub = os.path.join(path_or_id, hub_kw.get("subfolder") or "")
        return sorted(glob.glob(os.path.join(sub, "*.safetensors")))
    from transformers.utils import cached_file

    kw = {k: hub_kw[k] for k in ("revision", "subfolder", "cache_dir", "token", "local_files_only") if k in hub_kw}
    index = cached_file(path_or_id, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **kw)
    if index is not None:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [cached_file(path_or_id, s, **kw) for s in shards]
    single = cached_file(path_or_id, "model.safetensors", _raise_exceptions_for_missing_entries=False, **kw)
    return [single] if single is not None else []


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name


@torch.no_grad()
def load_alpha(model: nn.Module, files: list[str]) -> int:
    """Copy every ``*.adasplash_alpha.logit`` tensor found in ``files`` into ``model``; returns how many."""
    from safetensors import safe_open

    prefix = getattr(model, "base_model_prefix", "")
    params = {_strip(n, prefix): p for n, p in model.named_parameters() if n.endswith(ALPHA_KEY_SUFFIX)}
    loaded = 0
    for f in files:
        with safe_open(f, framework="pt") as sf:
            for key in sf.keys():  # noqa: SIM118 (safe_open is not iterable)
                if key.endswith(ALPHA_KEY_SUFFIX) and _strip(key, prefix) in params:
                    t = sf.get_tensor(key)
                    p = params[_strip(key, prefix)]
                    if t.shape != p.shape:
                        raise ValueError(f"checkpoint alpha {key} has shape {tuple(t.shape)}, model expects "
                                         f"{tuple(p.shape)} (per_head setting changed?)")
                    p.copy_(t.to(p.dtype))
                    loaded += 1
    return loaded


class _AlphaOnlyLoadReport(logging.Filter):
    """Drops Transformers' load report when its only rows are our alpha keys (which we load ourselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "LOAD REPORT" not in msg:
            return True
        rows = [ln for ln in msg.splitlines()[1:] if "|" in ln and set(ln) - set("-+| ") and "Status" not in ln]
        return not rows or not all(ALPHA_KEY_SUFFIX in ln and "UNEXPECTED" in ln for ln in rows)


@contextmanager
def _quiet_alpha_load_report():
    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.utils.loading_report")]
    f = _AlphaOnlyLoadReport()
    for lg in loggers:
        lg.addFilter(f)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(f)


def from_pretrained(path_or_id: str, alpha: float | None = None, model_cls=None, *, learnable: bool | None = None,
                    per_head: bool | None = None, min_alpha: float | None = None, max_alpha: float | None = None,
                    backend: str | None = None, **kwargs) -> nn.Module:
    """Load a model with ``attn_implementation="adasplash"`` and per-head alpha restored from the checkpoint.

    Settings come from the checkpoint's ``config.adasplash`` when present (overridden by explicit arguments), else
    the :func:`patch` defaults. Learned alpha values saved in the checkpoint are restored bit-exactly; heads
    missing from it (e.g. a plain pretrained model) start at ``alpha``. ``kwargs`` go to
    ``model_cls.from_pretrained`` (default ``AutoModelForCausalLM``).
    """
    ensure_registered()
    if model_cls is None:
        from transformers import AutoModelForCausalLM as model_cls
    impl = kwargs.pop("attn_implementation", NAME)
    if impl != NAME:
        raise ValueError(f"hf_adasplash.from_pretrained loads attn_implementation='adasplash', got {impl!r}")
    with _quiet_alpha_load_report():
        model = model_cls.from_pretrained(path_or_id, attn_implementation=NAME, **kwargs)
    saved = dict(getattr(model.config, "adasplash", None) or {})
    had_alpha = saved.get("attached", False)
    saved = {k: v for k, v in saved.items() if k in SETTINGS}
    for cfg in _configs(model):  # patch() rewrites the settings
        if hasattr(cfg, "adasplash"):
            delattr(cfg, "adasplash")
    given = {"alpha": alpha, "learnable": learnable, "per_head": per_head, "min_alpha": min_alpha,
             "max_alpha": max_alpha, "backend": backend}
    settings = {**saved, **{k: v for k, v in given.items() if v is not None}}
    patch(model, **settings)
    if had_alpha:
        load_alpha(model, _checkpoint_files(path_or_id, kwargs))
    return model
