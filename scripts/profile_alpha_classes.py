#!/usr/bin/env python
"""Per-kernel CUDA time of one causal bf16 forward+backward for several (alpha, learnable) settings.

Random inputs of the sweep's shape (B = 8, H = 16, N = 4096); each setting is profiled after three warm-up steps and
averaged over five (``profile_step.cuda_kernel_us``). The v11 integer-power classes were measured with it
(``bench/profile_h100_v11.txt``): wall-clock timings of a whole sweep can drift, the kernels' own time does not.

    python scripts/profile_alpha_classes.py --head-dim 64 --alphas 1.5,1.25,1.3333333
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from profile_step import cuda_kernel_us  # noqa: E402

from hf_adasplash.cli.bench import make_inputs  # noqa: E402
from hf_adasplash.ops.attention import adasplash_attention_triton  # noqa: E402


def profile(D: int, alpha_value: float, learn: bool, N: int = 4096, B: int = 8, H: int = 16) -> dict[str, float]:
    torch.manual_seed(0)
    q, k, v = make_inputs(B, H, H, N, N, D, 0.0, torch.bfloat16, "cuda", requires_grad=True)
    alpha = torch.full((H,), alpha_value, device="cuda", requires_grad=learn)
    wrt = (q, k, v, alpha) if learn else (q, k, v)
    g = torch.randn_like(q)

    def step():
        torch.autograd.grad(adasplash_attention_triton(q, k, v, alpha, is_causal=True), wrt, g)

    for _ in range(3):
        step()
    return cuda_kernel_us(step, 5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--alphas", default="1.5,1.25,1.3333333", help="comma list")
    args = p.parse_args(argv)
    for a in (float(x) for x in args.alphas.split(",")):
        for learn in (False, True):
            us = profile(args.head_dim, a, learn)
            top = sorted(us.items(), key=lambda kv: -kv[1])[:5]
            print(f"D{args.head_dim} a{a:.4f} learn={learn}: total {sum(us.values()) / 1000:.2f} ms | "
                  + "; ".join(f"{n[:38]} {t / 1000:.2f}" for n, t in top), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
