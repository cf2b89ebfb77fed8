#!/usr/bin/env python
"""bf16 errors of the tau-fold variants against the float64 reference on one GPU (bench/NOTES.md v9).

N = 4096, D = 64, random inputs, causal; one head per alpha in (1.25, 1.35, 1.5, 1.75); inference and training
forward, dq/dk/dv/d(alpha); then the same-dtype PyTorch dense entmax for scale. ``python scripts/fold_accuracy.py``
"""

import dataclasses

import torch

from hf_adasplash.cli.bench import make_inputs
from hf_adasplash.ops import attention_ops, tiling
from hf_adasplash.ops.attention import adasplash_attention_triton
from hf_adasplash.reference import attention_reference

torch.manual_seed(0)
H, N, D = 4, 4096, 64
q, k, v = make_inputs(1, H, H, N, N, D, 0.0, torch.bfloat16, "cuda", requires_grad=True)
a = torch.tensor([1.25, 1.35, 1.5, 1.75], device="cuda", dtype=torch.float64, requires_grad=True)
g = torch.randn_like(q)
ref = attention_reference(q.double(), k.double(), v.double(), a, is_causal=True)
gref = torch.autograd.grad(ref, (q, k, v, a), g.double())
ref = ref.detach()
base = tiling.tiles(D)
variants = {"nofold": dataclasses.replace(base, fold=False), "default": base,
            "fold-tol4": dataclasses.replace(base, fold_tol=(4.0, 4.0))}


def rel(x, y, dims=(0, 2, 3)):
    return [f"{e:.1e}" for e in ((x.double() - y).abs().amax(dim=dims) / y.abs().amax()).tolist()]


for name, t in variants.items():
    attention_ops.tiles = lambda d, _t=t: _t
    with torch.no_grad():
        oi = adasplash_attention_triton(q, k, v, a, is_causal=True)
    out = adasplash_attention_triton(q, k, v, a, is_causal=True)
    gr = torch.autograd.grad(out, (q, k, v, a), g)
    print(f"{name:14s} inference out per head {rel(oi, ref)}")
    print(f"{name:14s} training  out per head {rel(out, ref)}")
    for gn, x, y in zip(("dq", "dk", "dv"), gr[:3], gref[:3]):
        print(f"{name:14s} {gn} per head {rel(x, y)}")
    print(f"{name:14s} dalpha {gr[3].tolist()} ref {gref[3].tolist()}", flush=True)

# bf16 dense PyTorch entmax baseline (same dtype): the bar's "no worse than 2x"
qb, kb, vb = (t.detach().clone().requires_grad_() for t in (q, k, v))
ab = a.detach().clone().requires_grad_()
ob = attention_reference(qb, kb, vb, ab, is_causal=True)
gb = torch.autograd.grad(ob, (qb, kb, vb), g)
print(f"{'torch-bf16':14s} out per head {rel(ob, ref)}")
for gn, x, y in zip(("dq", "dk", "dv"), gb, gref[:3]):
    print(f"{'torch-bf16':14s} {gn} per head {rel(x, y)}")
