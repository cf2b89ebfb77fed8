#!/usr/bin/env python
"""Sweep the attention kernels' launch settings (tile shapes, warps, stages, tau solver) on one GPU.

Every variant is a ``hf_adasplash.ops.tiling.Tiles`` swapped in for the default one. For each case (D, N, input
family, alpha) the sweep times SDPA (default dispatch) once, then each variant's forward (no grad) and
forward+backward, and checks that the variant's output and gradients match the default variant's (bf16, relative
max difference <= 2e-2). The backward time is fwd+bwd minus fwd. Writes JSON (device, versions, commit, every
variant's times and ratios) and prints one line per variant.

    python scripts/sweep_tiles.py --out sweep.json            # every case
    python scripts/sweep_tiles.py --cases d64-random --out s.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_adasplash.cli.bench import make_inputs
from hf_adasplash.ops import attention_ops
from hf_adasplash.ops.attention import adasplash_attention_triton
from hf_adasplash.ops.tiling import tiles

# (name, D, N, pos, alpha, causal): B = 32k tokens // N, H = 16, bf16
CASES = {
    "d64-random": (64, 4096, 0.0, 1.5, True),
    "d64-random-a1.25": (64, 4096, 0.0, 1.25, True),
    "d64-random-a1.333": (64, 4096, 0.0, 4 / 3, True),  # float32-rounded: the kernels snap it to 4/3
    "d64-random-a1.3": (64, 4096, 0.0, 1.3, True),  # the general power
    "d64-local2-16k": (64, 16384, 2.0, 1.5, True),
    "d64-local2-16k-noncausal": (64, 16384, 2.0, 1.5, False),
    "d128-random": (128, 4096, 0.0, 1.5, True),
    "d128-random-a1.25": (128, 4096, 0.0, 1.25, True),
    "d128-random-a1.333": (128, 4096, 0.0, 4 / 3, True),
    "d128-random-a1.3": (128, 4096, 0.0, 1.3, True),
    "d128-local2-16k": (128, 16384, 2.0, 1.5, True),
}

# cases that time only a few variants (the general power: MUFU-bound, the same kernels as the alpha = 1.5 case)
CASE_VARIANTS = {"d64-random-a1.3": {"default", "fent-w8s3", "dq-m64n64w8", "nospill", "fused-A", "nofold"}}


def variants(D: int) -> dict[str, object]:
    """Named launch settings for head dim D; "default" first (the reference for the consistency check).

    The candidates are the settings that ptxas compiles without (or with few) register spills at sm_90, next to
    the measured defaults (which spill, but keep two programs per SM): "fent" is the forward for a learnable alpha
    (the fwd+bwd timed here), "o3-*" where d(alpha)'s row term is summed, "dq"/"dkv" the backward kernels,
    "nospill" all of them.
    """
    t = tiles(D)
    r = dataclasses.replace
    out = {"default": t}
    w, s = t.fwd_warps, t.fwd_stages
    other = 2 * w if w == 4 else w // 2
    out[f"fwd-w{other}s{s}"] = r(t, fwd_warps=other)
    for fw, fs in [(8, 3), (8, 4), (4, 3)]:
        if (fw, fs) != (w, s):
            out[f"fent-w{fw}s{fs}"] = r(t, fwd_ent_warps=fw, fwd_ent_stages=fs)
    bw, bs = t.bwd_warps, t.bwd_stages
    dkv_w, dkv_s = t.dkv_warps or bw, t.dkv_stages or bs
    for bmq, bns, dw in [(64, t.BN, 8), (32, t.BN, 4), (64, t.BN, 4)]:
        if (bmq, bns, dw) != (t.BMQ, t.BNS, bw):
            out[f"dq-m{bmq}n{bns}w{dw}"] = r(t, BMQ=bmq, BNS=bns, bwd_warps=dw, dkv_warps=dkv_w, dkv_stages=dkv_s)
    for bms, kw in [(64, 8), (32, 4), (64, 4), (128, 8)]:
        if (bms, kw) != (t.BMS, dkv_w):
            out[f"dkv-m{bms}w{kw}"] = r(t, BMS=bms, dkv_warps=kw, dkv_stages=dkv_s)
    out["o3-fwd" if not t.o3_fwd else "o3-dq"] = r(t, o3_fwd=not t.o3_fwd)
    if t.fwd_ent_warps:
        out["fent-off"] = r(t, fwd_ent_warps=0, fwd_ent_stages=0)
    out["fused-A" if t.scan else "scan"] = r(t, scan=not t.scan)
    for sw, ss in [(8, 3), (4, 4), (4, 2)]:
        if (sw, ss) != (t.scan_warps, t.scan_stages):
            out[f"scan-w{sw}s{ss}"] = r(t, scan_warps=sw, scan_stages=ss)
    if t.scan:
        out["fused-B" if t.solve else "tau"] = r(t, solve=not t.solve)
    # tau slices: n<general alpha>s<alpha = 1.5 / 2>w<warps>
    for bn, bsq, tw in [(16, 16, 4), (32, 32, 4), (64, 64, 4), (16, 32, 4), (32, 64, 4), (16, 64, 8)]:
        if (bn, bsq, tw) != (t.solve_bn, t.solve_bn_square, t.solve_warps):
            out[f"tau-n{bn}s{bsq}w{tw}"] = r(t, solve_bn=bn, solve_bn_square=bsq, solve_warps=tw)
    # late: per-thread partial row sums in the tau passes
    for bn, tw in [(16, 4), (16, 8), (32, 4), (32, 8), (64, 8)]:
        if (bn, bn, tw, True) != (t.solve_bn, t.solve_bn_square, t.solve_warps, t.solve_late_sum):
            out[f"tau-late-n{bn}w{tw}"] = r(t, solve_bn=bn, solve_bn_square=bn, solve_warps=tw, solve_late_sum=True)
    out["nofold" if t.fold else "fold"] = r(t, fold=not t.fold)  # tau's last Newton step in the output pass
    for lo in (4.0, 16.0):
        if (lo, 4.0) != t.fold_tol:
            out[f"fold-tol{lo:g}"] = r(t, fold_tol=(lo, 4.0))
    out["nospill"] = r(t, fwd_ent_warps=8, fwd_ent_stages=3, BMQ=64, BNS=t.BN, bwd_warps=8, BMS=64,
                       dkv_warps=8, dkv_stages=dkv_s)
    return out


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


def run_case(name, D, N, pos, alpha_value, causal, bench, only=None, learn_alpha=True):
    B, H = max(1, 32768 // N), 16
    torch.manual_seed(0)
    q, k, v = make_inputs(B, H, H, N, N, D, pos, torch.bfloat16, "cuda", requires_grad=True)
    alpha = torch.full((H,), alpha_value, device="cuda", requires_grad=learn_alpha)
    wrt = (q, k, v, alpha) if learn_alpha else (q, k, v)
    g = torch.randn_like(q)

    def fb(fn):
        def step():
            for t in wrt:
                t.grad = None
            fn().backward(g)
        return step

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def ours():
        return adasplash_attention_triton(q, k, v, alpha, is_causal=causal)

    with torch.no_grad():
        t_sf = bench(sdpa)
    t_sfb = bench(fb(sdpa))
    rows, ref = [], None
    for vname, cfg in variants(D).items():
        keep = only or CASE_VARIANTS.get(name)
        if keep and vname not in keep and vname != "default":
            continue
        attention_ops.tiles = lambda _d, _c=cfg: _c
        try:
            out = ours()
            grads = torch.autograd.grad(out, wrt, g)
            res = [out, *grads]
            if ref is None:
                ref = [t.detach().clone() for t in res]
            diff = max(_rel(a, b) for a, b in zip(res, ref))
            with torch.no_grad():
                t_f = bench(ours)
            t_fb = bench(fb(ours))
            row = {"variant": vname, "fwd_ms": round(t_f, 3), "fwd_bwd_ms": round(t_fb, 3),
                   "bwd_ms": round(t_fb - t_f, 3), "fwd_ratio": round(t_f / t_sf, 3),
                   "fwd_bwd_ratio": round(t_fb / t_sfb, 3), "bwd_ratio": round((t_fb - t_f) / (t_sfb - t_sf), 3),
                   "max_rel_diff_vs_default": float(f"{diff:.3g}"), "consistent": diff <= 2e-2,
                   "tiles": dataclasses.asdict(cfg)}
        except Exception as e:  # a variant that does not compile or run is recorded, not fatal
            row = {"variant": vname, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        finally:
            attention_ops.tiles = tiles
        rows.append(row)
        print(f"{name:18s} {vname:22s} " + ("ERR " + row["error"][:120] if "error" in row else
              f"fwd {row['fwd_ratio']:.2f}x bwd {row['bwd_ratio']:.2f}x fwd+bwd {row['fwd_bwd_ratio']:.2f}x "
              f"diff {row['max_rel_diff_vs_default']:.1e}"), flush=True)
        torch.cuda.empty_cache()
    return {"case": name, "D": D, "N": N, "B": B, "H": H, "pos": pos, "alpha": alpha_value, "causal": causal,
            "learn_alpha": learn_alpha, "sdpa_fwd_ms": round(t_sf, 3), "sdpa_fwd_bwd_ms": round(t_sfb, 3),
            "variants": rows}


def _compile(jobs):
    """Runs each (D, variant) once on a small input so that its kernels land in Triton's on-disk cache.

    The small input has the large ones' specialisations (every stride a multiple of 16; lengths are not
    specialised), so the timed sweep then loads instead of compiling. Run in worker processes, in parallel.
    """
    for D, vname in jobs:
        cfg = variants(D)[vname]
        attention_ops.tiles = lambda _d, _c=cfg: _c
        q, k, v = make_inputs(2, 2, 2, 256, 256, D, 0.0, torch.bfloat16, "cuda", requires_grad=True)
        alpha = torch.full((2,), 1.5, device="cuda", requires_grad=True)
        try:
            with torch.no_grad():
                adasplash_attention_triton(q, k, v, alpha, is_causal=True)
            adasplash_attention_triton(q, k, v, alpha, is_causal=True).sum().backward()
            torch.cuda.synchronize()
        except Exception as e:
            print(f"compile {D} {vname}: {type(e).__name__}: {str(e)[:200]}", flush=True)
    return len(jobs)


def warm_cache(cases, only, workers):
    import multiprocessing as mp

    heads = sorted({CASES[c][0] for c in cases})
    jobs = [(D, v) for D in heads for v in variants(D) if not only or v in only or v == "default"]
    chunks = [jobs[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        done = sum(pool.map(_compile, chunks))
    print(f"compiled {done} variants in {workers} processes", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--variants", default="", help="comma list of variant names (default: all)")
    p.add_argument("--out", default="sweep.json")
    p.add_argument("--commit", default=None, help="commit to record (default: git HEAD of this checkout)")
    p.add_argument("--rep", type=int, default=30, help="do_bench repetitions (ms)")
    p.add_argument("--frozen-alpha", action="store_true",
                   help="alpha without a gradient (a snapped or fixed alpha in training), as a tensor")
    p.add_argument("--compile-workers", type=int, default=8, help="processes that compile the variants first (0: none)")
    args = p.parse_args(argv)
    cases = args.cases.split(",")
    from triton.testing import do_bench

    def bench(fn):
        return do_bench(fn, warmup=5, rep=args.rep, return_mode="median")

    only = {v for v in args.variants.split(",") if v}
    if args.compile_workers:
        warm_cache(cases, only, args.compile_workers)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or None
    import triton

    data = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit, "cases": []}
    for name in cases:
        data["cases"].append(run_case(name, *CASES[name], bench, only, learn_alpha=not args.frozen_alpha))
        Path(args.out).write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
