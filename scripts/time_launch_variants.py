#!/usr/bin/env python
"""Time launch-setting variants of the attention kernels on one shape (any head dim, GQA), against SDPA.

``sweep_tiles.py`` covers the sweep's fixed cases (D = 64 and 128, one KV head per query head); this times any
shape, e.g. Gemma-3's (4 query heads on one KV head of dim 256). Each ``--variant`` is a comma list of Tiles field
overrides (``fwd_warps=8,fwd_stages=1``; ``default`` for none). Prints the forward (no grad) and forward+backward
time per variant, its ratio to SDPA's, and its largest relative difference from the first variant's results.

    python scripts/time_launch_variants.py --shape 4,4,1,4096,256 --alpha 1.3333333 \
        --variant default --variant fwd_warps=8
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F

from hf_adasplash.cli.bench import make_inputs
from hf_adasplash.ops import attention_ops
from hf_adasplash.ops.attention import adasplash_attention_triton
from hf_adasplash.ops.tiling import tiles, with_fields


def per_kernel_ms(fn, bench) -> dict[str, float]:
    """GPU time of each kernel launch that ``fn()`` makes, replayed alone with the same arguments."""
    seen, real = [], attention_ops.launch

    def spy(jit_fn, grid, **kwargs):
        seen.append((jit_fn, grid, kwargs))
        real(jit_fn, grid, **kwargs)

    attention_ops.launch = spy
    try:
        fn()
    finally:
        attention_ops.launch = real
    times: dict[str, float] = {}
    prev, prev_name = None, ""
    for jit_fn, grid, kwargs in seen:
        name = jit_fn.fn.__name__
        run = functools.partial(real, jit_fn, grid, **kwargs)
        if name == "adasplash_fwd_tau_kernel" and prev is not None:
            # the tau kernel overwrites the start the scan left in its row: replayed alone it would start at the
            # converged tau, so it is timed after the scan, less the scan's own time
            ms = bench(lambda run=run, prev=prev: (prev(), run())) - times.get(prev_name, 0.0)
        else:
            ms = bench(run)
        times[name] = times.get(name, 0.0) + ms
        prev, prev_name = run, name
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="4,4,1,4096,256", help="B,Hq,Hkv,N,D (default: Gemma-3-270M at 4k)")
    p.add_argument("--alpha", type=float, default=4 / 3)
    p.add_argument("--learn-alpha", action="store_true", help="alpha with a gradient (default: frozen)")
    p.add_argument("--alpha-grid", action="store_true", help="tell the kernels alpha is on the grid (a snapped alpha)")
    p.add_argument("--alpha-float", action="store_true",
                   help="alpha as a Python float, as the bench passes it (1.5 and 2: the tau kernel's square_solve)")
    p.add_argument("--variant", action="append", default=[], help="Tiles overrides, repeatable (default: default)")
    p.add_argument("--rep", type=int, default=20, help="do_bench repetitions (ms)")
    p.add_argument("--pos", type=float, default=0.0, help="input family: 0 random, > 0 local (cli.bench)")
    p.add_argument("--per-kernel", action="store_true", help="also time each kernel launch on its own")
    args = p.parse_args(argv)
    from triton.testing import do_bench

    B, H, Hkv, N, D = (int(x) for x in args.shape.split(","))
    torch.manual_seed(0)
    q, k, v = make_inputs(B, H, Hkv, N, N, D, args.pos, torch.bfloat16, "cuda", requires_grad=True)
    alpha = torch.full((H,), args.alpha, device="cuda", dtype=torch.float64, requires_grad=args.learn_alpha)
    wrt = (q, k, v, alpha) if args.learn_alpha else (q, k, v)
    g = torch.randn_like(q)
    kk, vv = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)

    def bench(fn):
        return do_bench(fn, warmup=3, rep=args.rep, return_mode="median")

    def sdpa():
        return F.scaled_dot_product_attention(q, kk, vv, is_causal=True)

    a = args.alpha if args.alpha_float and not args.learn_alpha else alpha

    def ours():
        return adasplash_attention_triton(q, k, v, a, is_causal=True, alpha_grid=args.alpha_grid)

    with torch.no_grad():
        sf = bench(sdpa)
    sfb = bench(lambda: torch.autograd.grad(sdpa(), (q,), g))
    print(f"{torch.cuda.get_device_name()}; sdpa fwd {sf:.3f} ms, fwd+bwd {sfb:.3f} ms", flush=True)
    ref, base = None, tiles(D)
    for spec in args.variant or ["default"]:
        t = base if spec == "default" else with_fields(base, spec.split(","))
        attention_ops.tiles = lambda _d, _t=t: _t
        t0 = time.time()
        with torch.no_grad():
            out = ours()
        res = [out, *torch.autograd.grad(ours(), wrt, g)]
        torch.cuda.synchronize()
        ref = ref or [x.clone() for x in res]
        diff = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(res, ref))
        with torch.no_grad():
            f = bench(ours)
        fb = bench(lambda: torch.autograd.grad(ours(), wrt, g))
        print(f"{spec}: compile+first {time.time() - t0:.0f}s fwd {f:.3f} ms ({f / sf:.2f}x) fwd+bwd {fb:.3f} ms "
              f"({fb / sfb:.2f}x) diff {diff:.1e}", flush=True)
        if args.per_kernel:
            for name, ms in per_kernel_ms(lambda: torch.autograd.grad(ours(), wrt, g), bench).items():
                print(f"    {name:40s} {ms:.3f} ms", flush=True)
            with torch.no_grad():
                infer = per_kernel_ms(ours, bench)
            print("    inference: " + ", ".join(f"{n.removeprefix('adasplash_')} {ms:.3f}" for n, ms in infer.items()),
                  flush=True)
    attention_ops.tiles = tiles
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
