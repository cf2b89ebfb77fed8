#!/usr/bin/env python
"""Where a fine-tuning step's GPU time goes: per-kernel CUDA time of training steps, sdpa against adasplash.

Loads the model as ``finetune`` does (fp32 master weights, bf16 autocast, AdamW), takes one batch of packed
held-out blocks of real text, runs warm-up steps, times ``--steps`` steps, then profiles as many with
torch.profiler. Kernels are grouped: adasplash (each of ours by name), dense attention (SDPA's flash / cuDNN /
memory-efficient kernels), GEMMs, and the rest. One JSON per attention implementation.

    python scripts/profile_step.py --model smollm2 --attn adasplash --alpha 1.3 --out prof-ada.json
    python scripts/profile_step.py --model smollm2 --attn sdpa --out prof-sdpa.json

The alpha is one value for every head (learnable, as in training); a fine-tuned model's heads spread around it,
and its sparsity differs from the pretrained weights' used here.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

GROUPS = [  # first match wins
    ("adasplash", ("adasplash",)),
    ("dense attention", ("flash", "fmha", "cudnn", "attention", "efficient")),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "sm90", "sm80")),
]


def group_of(name: str) -> str:
    low = name.lower()
    return next((g for g, keys in GROUPS if any(k in low for k in keys)), "other")


def cuda_kernel_us(fn, reps: int) -> dict[str, float]:
    """CUDA time per kernel name (us), averaged over ``reps`` calls of ``fn`` under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    kernels = defaultdict(float)
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", 0)  # torch < 2.4 named it self_cuda_time_total
        if us > 0:
            kernels[evt.key] += us / reps
    return kernels


def build(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_adasplash
    from hf_adasplash.data import load_text, pack
    from hf_adasplash.evaluation import resolve_model

    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="sdpa" if args.attn == "sdpa" else None)
    if args.attn == "adasplash":
        hf_adasplash.patch(model, alpha=args.alpha, learnable=True)
        if args.snap:  # as finetune --alpha-snap-step leaves it: on the multiplication grid, frozen
            hf_adasplash.snap_alpha(model)
    model.config.use_cache = False
    model = model.cuda().train()
    blocks = pack(load_text(args.dataset, "test"), tok, args.context_length, max_blocks=args.batch_size)
    ids = torch.stack([blocks[i]["input_ids"] for i in range(len(blocks))]).cuda()
    if ids.shape[0] < args.batch_size:
        raise SystemExit(f"only {ids.shape[0]} blocks of {args.context_length} tokens in the held-out split")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    return model, ids, opt


def step(model, ids, opt):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dataset", default="shakespeare")
    p.add_argument("--attn", choices=["sdpa", "adasplash"], default="adasplash")
    p.add_argument("--alpha", type=float, default=1.3)
    p.add_argument("--snap", action="store_true", help="snap alpha to the grid and freeze it (hf_adasplash.snap_alpha)")
    p.add_argument("--context-length", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=15, help="kernels listed by name")
    p.add_argument("--op-dispatch", action="store_true",
                   help="route eager calls through the torch.library ops, as before 2026-11 (their host cost)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.op_dispatch:
        from hf_adasplash.ops import attention

        attention._eager = lambda q: False

    model, ids, opt = build(args)
    for _ in range(args.warmup):  # compiles the kernels, fills the caching allocator
        step(model, ids, opt)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(model, ids, opt)
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / args.steps

    kernels = cuda_kernel_us(lambda: step(model, ids, opt), args.steps)
    total = sum(kernels.values())
    groups = defaultdict(float)
    for name, us in kernels.items():
        groups[group_of(name)] += us
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[: args.top]
    result = {
        "model": args.model, "attn": args.attn, "alpha": args.alpha if args.attn == "adasplash" else None,
        "alpha_snapped": args.snap, "op_dispatch": args.op_dispatch,
        "dataset": args.dataset, "context_length": args.context_length, "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "step_ms": step_s * 1e3, "tokens_per_s": ids.numel() / step_s, "kernel_ms_per_step": total / 1e3,
        "groups_ms": {g: round(us / 1e3, 3) for g, us in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": {name[:160]: round(us / 1e3, 3) for name, us in top},
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{args.attn}: {result['step_ms']:.1f} ms/step, {result['tokens_per_s']:.0f} tokens/s, kernels "
          f"{result['kernel_ms_per_step']:.1f} ms")
    for g, ms in result["groups_ms"].items():
        print(f"  {g:16s} {ms:8.2f} ms  ({ms / result['kernel_ms_per_step']:.1%})")
    for name, ms in result["top_kernels_ms"].items():
        print(f"  {ms:8.2f} ms  {name[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
