#!/usr/bin/env python
"""bf16 errors of tau-loop variants against the float64 reference on one GPU (bench/NOTES.md v9, v19).

Causal, one head per alpha; inference and training forward, dq/dk/dv/d(alpha); then the same-dtype PyTorch dense
entmax for scale. Defaults: N = 4096, D = 64, random inputs, alphas (1.25, 1.35, 1.5, 1.75), the fold variants of v9.

    python scripts/fold_accuracy.py
    python scripts/fold_accuracy.py --pos 0.5 --variant start0=tile_max_start=0 --variant start8=tile_max_start=8
    python scripts/fold_accuracy.py --alphas 1.5,1.5,1.5,1.5 --batch 4 --alpha-float \
        --variant start4=tile_max_start=4 --variant start3=tile_max_start=3      # bench/NOTES.md v24
"""

import argparse
import dataclasses

import torch

from hf_adasplash.cli.bench import make_inputs
from hf_adasplash.ops import attention_ops, tiling
from hf_adasplash.ops.attention import adasplash_attention_triton
from hf_adasplash.reference import attention_reference

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("-n", type=int, default=4096)
ap.add_argument("-d", type=int, default=64)
ap.add_argument("--alphas", default="1.25,1.35,1.5,1.75")
ap.add_argument("--pos", type=float, default=0.0, help="input family: 0 random, > 0 local (cli.bench)")
ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
ap.add_argument("--variant", action="append", default=[], metavar="NAME=FIELD=VALUE[,FIELD=VALUE]",
                help="Tiles overrides under a name (repeatable; default: the v9 fold variants)")
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--alpha-float", action="store_true",
                help="also the inference forward with alpha as a Python float, as the bench passes it (the tau "
                     "kernel's settings for 1.5 / 2); needs one alpha for every head")
args = ap.parse_args()
if args.alpha_float and len(set(args.alphas.split(","))) != 1:
    ap.error("--alpha-float needs the same alpha for every head (e.g. --alphas 1.5,1.5,1.5,1.5)")

torch.manual_seed(0)
alphas = [float(x) for x in args.alphas.split(",")]
H, N, D = len(alphas), args.n, args.d
q, k, v = make_inputs(args.batch, H, H, N, N, D, args.pos, getattr(torch, args.dtype), "cuda", requires_grad=True)
a = torch.tensor(alphas, device="cuda", dtype=torch.float64, requires_grad=True)
g = torch.randn_like(q)
ref = attention_reference(q.double(), k.double(), v.double(), a, is_causal=True)
gref = torch.autograd.grad(ref, (q, k, v, a), g.double())
ref = ref.detach()
base = tiling.tiles(D)
if args.variant:
    variants = {}
    for spec in args.variant:
        name, fields = spec.split("=", 1)
        variants[name] = tiling.with_fields(base, fields.split(","))
else:
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
    if args.alpha_float:
        with torch.no_grad():
            of = adasplash_attention_triton(q, k, v, alphas[0], is_causal=True)
        print(f"{name:14s} inference out, alpha as a float, per head {rel(of, ref)}")
    print(f"{name:14s} training  out per head {rel(out, ref)}")
    for gn, x, y in zip(("dq", "dk", "dv"), gr[:3], gref[:3]):
        print(f"{name:14s} {gn} per head {rel(x, y)}")
    print(f"{name:14s} dalpha {gr[3].tolist()} ref {gref[3].tolist()}", flush=True)
    # a frozen alpha (fixed-alpha training: the tau loop's loose tolerance, no entropy terms)
    out = adasplash_attention_triton(q, k, v, a.detach(), is_causal=True)
    gr = torch.autograd.grad(out, (q, k, v), g)
    print(f"{name:14s} frozen    out per head {rel(out, ref)}")
    for gn, x, y in zip(("dq", "dk", "dv"), gr, gref[:3]):
        print(f"{name:14s} frozen {gn} per head {rel(x, y)}", flush=True)

# dense PyTorch entmax in the same dtype: the bar's "no worse than 2x"
qb, kb, vb = (t.detach().clone().requires_grad_() for t in (q, k, v))
ab = a.detach().clone().requires_grad_()
ob = attention_reference(qb, kb, vb, ab, is_causal=True)
gb = torch.autograd.grad(ob, (qb, kb, vb), g)
print(f"{'torch-' + args.dtype:14s} out per head {rel(ob, ref)}")
for gn, x, y in zip(("dq", "dk", "dv"), gb, gref[:3]):
    print(f"{'torch-' + args.dtype:14s} {gn} per head {rel(x, y)}")
