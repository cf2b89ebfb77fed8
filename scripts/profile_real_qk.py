#!/usr/bin/env python
"""Our kernels on a real model's q/k/v against random inputs of the same shape, per kernel (bench/NOTES.md).

Captures q, k, v of five SmolLM2-135M layers on 4 x 4096 held-out shakespeare tokens (bf16, as HF passes them:
strided views), then times with torch.profiler, for alpha 1.3 and 1.5 as learnable tensors, inference and
forward+backward: the real inputs, the same made contiguous, random inputs of that shape (GQA 9/3), and SDPA on each;
per tau-kernel slice variant. Needs a GPU and the offline assets.

    python scripts/profile_real_qk.py default,bn32-late,bn64,row-live real_qk.json
"""
import dataclasses
import json
import sys
from collections import defaultdict

import torch
from profile_step import cuda_kernel_us  # scripts/ is on sys.path when run as a script
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hf_adasplash.assets import smollm2_path
from hf_adasplash.cli.bench import make_inputs
from hf_adasplash.data import load_text, pack
from hf_adasplash.ops import attention_ops, tiling
from hf_adasplash.ops.attention import adasplash_attention_triton

LAYERS = (0, 8, 16, 24, 29)
cap = {}


def capture(module, q, k, v, mask, **kw):
    if module.layer_idx in LAYERS:
        cap[module.layer_idx] = (q.detach(), k.detach(), v.detach())
    return sdpa_attention_forward(module, q, k, v, mask, **kw)


AttentionInterface.register("capture", capture)
p = str(smollm2_path())
tok = AutoTokenizer.from_pretrained(p)
model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.bfloat16, attn_implementation="capture").cuda().eval()
blocks = pack(load_text("shakespeare", "test"), tok, 4096, max_blocks=4)
ids = torch.stack([blocks[i]["input_ids"] for i in range(4)]).cuda()
with torch.no_grad():
    model(input_ids=ids, use_cache=False)
del model
real = [cap[i] for i in LAYERS]
print("real q", real[0][0].shape, real[0][0].stride(), "k", real[0][1].shape, real[0][1].stride(), flush=True)
inputs = {
    "real": real,
    "real-contig": [tuple(t.contiguous() for t in x) for x in real],
    "random": [tuple(make_inputs(4, 9, 3, 4096, 4096, 64, 0.0, torch.bfloat16, "cuda")) for _ in LAYERS],
}
base = tiling.tiles(64)
variants = {"default": base,
            "bn32-late": dataclasses.replace(base, solve_bn=32, solve_bn_square=32, solve_late_sum=True),
            "bn64": dataclasses.replace(base, solve_bn=64, solve_bn_square=64),
            "row-live": dataclasses.replace(base, row_live=True)}
only = sys.argv[1].split(",") if len(sys.argv) > 1 else None


def run(xs, alpha, train):
    for q, k, v in xs:
        a = torch.full((9,), alpha, device="cuda", dtype=torch.float32, requires_grad=train)
        if train:
            qq, kk, vv = (t.requires_grad_(True) for t in (q, k, v))
            out = adasplash_attention_triton(qq, kk, vv, a, is_causal=True)
            out.backward(torch.ones_like(out))
            for t in (q, k, v):
                t.grad = None
                t.requires_grad_(False)
        else:
            with torch.no_grad():
                adasplash_attention_triton(q, k, v, a, is_causal=True)


def sdpa(xs, train):
    for q, k, v in xs:
        qq, kk, vv = (t.detach().requires_grad_(train) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
        if train:
            out.backward(torch.ones_like(out))


def kernels(fn, reps=3):
    fn()  # compiles, warms the allocator
    torch.cuda.synchronize()
    out = defaultdict(float)
    for name, us in cuda_kernel_us(fn, reps).items():
        if not name.startswith("adasplash"):
            name = "sdpa" if any(k in name for k in ("sdpa", "flash", "fmha")) else "other"
        out[name] += us
    return {k: round(v) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


res = {}
for iname, xs in inputs.items():
    for train in (False, True):
        res[f"{iname} sdpa {'train' if train else 'infer'}"] = kernels(lambda xs=xs, train=train: sdpa(xs, train))
    for vname, t in variants.items():
        if only and vname not in only:
            continue
        attention_ops.tiles = lambda d, _t=t: _t
        for alpha in (1.3, 1.5):
            for train in (False, True):
                key = f"{iname} {vname} a{alpha} {'train' if train else 'infer'}"
                res[key] = kernels(lambda xs=xs, alpha=alpha, train=train: run(xs, alpha, train))
                tot = sum(res[key].values())
                print(f"{key:40s} total {tot:7d} us  {res[key]}", flush=True)
    for train in ("infer", "train"):
        print(f"{iname} sdpa {train}: {res[f'{iname} sdpa {train}']}", flush=True)
with open(sys.argv[2] if len(sys.argv) > 2 else "real_qk.json", "w") as f:
    json.dump(res, f, indent=1)
