#!/usr/bin/env python
"""Host time per attention call, against SDPA: shapes small enough that every call is launch-bound.

At 4k tokens a SmolLM2 layer's attention kernels take ~1.4 ms of GPU time per training step; when the host needs
more than the GPU to issue a layer's work, the GPU idles. This measures the host side of each path (time per call
with the GPU never the bottleneck), and with ``--launches`` how one Triton launch of each of our kernels splits
between the JIT's argument binding and the compiled kernel's own launcher.

    python scripts/host_overhead.py --out host.json [--launches] [--op-dispatch] [--cprofile] [--torch-profiler]
    HF_ADASPLASH_CACHED_LAUNCH=0 python scripts/host_overhead.py --out host_jit.json   # every launch through the JIT
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from functools import partial

import torch
import torch.nn.functional as F


def per_call_us(fn, reps: int) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


def cases(B, Hq, Hkv, N, D):
    from hf_adasplash.functional import adasplash_attention
    from hf_adasplash.modules import AlphaParameter

    dev, G = "cuda", Hq // Hkv
    q = torch.randn(B, Hq, N, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, Hkv, N, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    g = torch.randn_like(q)
    frozen = AlphaParameter(Hq, init=4 / 3).to(dev)
    frozen.logit.requires_grad_(False)  # as snap_alpha leaves it
    learned = AlphaParameter(Hq, init=1.4).to(dev)

    def ours(a):
        return adasplash_attention(q, k, v, a(), is_causal=True, _check_alpha_values=False,
                                   _alpha_grid=a.frozen_on_grid())

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=G > 1)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    return {
        "alpha_parameter": frozen,
        "sdpa_fwd_nograd": no_grad(sdpa),
        "sdpa_fwd_bwd": lambda: sdpa().backward(g),
        "ours_fwd_nograd": no_grad(lambda: ours(frozen)),
        "ours_fwd_grad": lambda: ours(frozen),
        "ours_fwd_bwd_frozen_alpha": lambda: ours(frozen).backward(g),
        "ours_fwd_bwd_learned_alpha": lambda: ours(learned).backward(g),
    }


def profile_rows(fn, reps: int, top: int = 15) -> list[str]:
    """cProfile of ``reps`` calls: the functions with the most own time, one line each. Autograd runs a CUDA
    backward on a thread of its own, which a profiler enabled here does not see: the backward of our Function is
    profiled on that thread, into the same statistics."""
    import cProfile
    import io
    import pstats

    from hf_adasplash.ops.attention import AdaSplashAttentionFunction as Fn

    prof, backward = cProfile.Profile(), Fn.backward

    def profiled_backward(ctx, do):
        if threading.current_thread() is threading.main_thread():
            return backward(ctx, do)
        try:
            side.enable()
        except ValueError:  # Python >= 3.12: one process-wide profiler, which already sees this thread
            return backward(ctx, do)
        try:
            return backward(ctx, do)
        finally:
            side.disable()

    side = cProfile.Profile()
    Fn.backward = staticmethod(profiled_backward)
    try:
        prof.enable()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        prof.disable()
    finally:
        Fn.backward = staticmethod(backward)
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    if side.getstats():
        stats.add(side)
    stats.sort_stats("tottime").print_stats(top)
    return [line for line in buf.getvalue().splitlines() if line.strip()][-top - 1:]


def torch_profiler_rows(fn, reps: int, top: int = 25) -> list[str]:
    """torch.profiler's CPU-side view of ``reps`` calls: every aten op and autograd node, on every thread (autograd's
    device thread included, which cProfile attributes to ``run_backward``), by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=60)
    return table.splitlines()


def launch_split(fn, reps: int) -> list[dict]:
    """Each Triton launch of one ``fn()``: the JIT's launch against the compiled kernel's launcher, same args."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    seen, real = [], JITFunction.run

    def spy(self, *args, grid, warmup, **kw):
        kernel = real(self, *args, grid=grid, warmup=warmup, **kw)
        seen.append((self, args, grid, kw, kernel))
        return kernel

    JITFunction.run = spy
    try:
        fn()
    finally:
        JITFunction.run = real
    rows = []
    for jit, args, grid, kw, kernel in seen:
        grid3 = tuple(grid) + (1,) * (3 - len(grid))
        row = {"kernel": jit.fn.__name__, "args": len(args) + len(kw),
               "jit_launch_us": round(per_call_us(partial(jit[grid], *args, **kw), reps), 1)}
        try:  # the binder is the JIT's per-call argument binding (triton 3.6-3.9: last field of device_caches)
            binder = jit.device_caches[driver.active.get_current_device()][-1]
            bound, _, _ = binder(*args, **{**kw, "debug": False})
            row["compiled_runner_us"] = round(per_call_us(partial(kernel[grid3], *bound.values()), reps), 1)
        except Exception as e:  # noqa: BLE001 (Triton internals differ between versions: report, don't fail)
            row["compiled_runner_us"] = f"n/a ({type(e).__name__}: {e})"
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--launches", action="store_true", help="split each Triton launch's host time (see above)")
    p.add_argument("--op-dispatch", action="store_true", help="route eager calls through the torch.library ops")
    p.add_argument("--cprofile", action="store_true", help="also cProfile each of our cases (own time per function)")
    p.add_argument("--torch-profiler", action="store_true",
                   help="also torch.profiler's CPU view of SDPA's and our frozen-alpha forward+backward")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("host_overhead.py measures CUDA launches: run it on a GPU machine")
    if args.op_dispatch:
        from hf_adasplash.ops import attention

        attention._eager = lambda q: False
    fns = cases(args.batch, args.heads, args.kv_heads, args.seqlen, args.head_dim)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": vars(args),
              "host_us_per_call": {}}
    for name, fn in fns.items():
        result["host_us_per_call"][name] = round(per_call_us(fn, args.reps), 1)
        print(f"{name:28s} {result['host_us_per_call'][name]:8.1f} us per call", flush=True)
    if args.cprofile:
        result["cprofile"] = {name: profile_rows(fn, args.reps) for name, fn in fns.items() if name.startswith("ours")}
        for name, rows in result["cprofile"].items():
            print(f"== {name} ({args.reps} calls)", *rows, sep="\n")
    if args.torch_profiler:
        result["torch_profiler"] = {name: torch_profiler_rows(fns[name], min(args.reps, 100))
                                    for name in ("sdpa_fwd_bwd", "ours_fwd_bwd_frozen_alpha")}
        for name, rows in result["torch_profiler"].items():
            print(f"== torch.profiler: {name}", *rows, sep="\n")
    if args.launches:
        result["launches"] = launch_split(fns["ours_fwd_bwd_frozen_alpha"], args.reps)
        for r in result["launches"]:
            print(f"  {r['kernel']:40s} {r['args']:3d} args: JIT launch {r['jit_launch_us']:6.1f} us, compiled "
                  f"kernel's launcher {r['compiled_runner_us']}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
