#!/usr/bin/env python
"""Register use and spills of the attention kernels, compiled for a GPU target on any host (no GPU needed).

Each kernel is compiled with ``triton.compile`` for ``--arch`` (default sm_90) under the launch settings of
``hf_adasplash.ops.tiling.tiles``, and ptxas's result is read back with the ``cuobjdump`` bundled with Triton:
registers per thread, local-memory stack per thread (spill space) and the number of spill stores/loads (STL/LDL)
in the SASS. A spill inside a tile loop costs far more than one around it, so read the counts as a hint and time
the candidates on the GPU (``scripts/sweep_tiles.py``). Compiling takes ~5 s per kernel.

    python scripts/kernel_spills.py                       # D = 64 and 128, bf16, causal, default settings
    python scripts/kernel_spills.py --head-dims 128 --fwd-warps 4 --json spills.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from hf_adasplash.kernels.attn_bwd import adasplash_bwd_kernel_dkv, adasplash_bwd_kernel_dq
from hf_adasplash.kernels.attn_bwd_dalpha import adasplash_bwd_kernel_dalpha_per_entry
from hf_adasplash.kernels.attn_fwd import adasplash_fwd_kernel, adasplash_fwd_scan_kernel, adasplash_fwd_tau_kernel
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

from hf_adasplash.ops.tiling import (
    LIST_CHUNK,
    MAX_TAU_ITERS,
    dkv_launch_args,
    dq_launch_args,
    flat_dispatch,
    fwd_launch_args,
    scan_launch_args,
    solve_launch_args,
    solve_settings,
    tau_pass_args,
    tiles,
    with_fields,
)

# pointer arguments that are not the q/k/v-dtype tensors
POINTERS = {"alpha": "*fp64", "tau": "*fp32", "ent": "*fp32", "tile_gap": "*fp32", "tile_thr": "*fp32",
            "tile_idx": "*i32", "tile_cnt": "*i32", "cu_seqlens_q": "*i32", "cu_seqlens_k": "*i32", "q_pos": "*i32",
            "k_pos": "*i32", "kpm": "*u8", "delta": "*fp32", "dalpha_row": "*fp32", "q_list": "*i32"}
SCALARS = {"scale": "fp32", "softcap": "fp32", "fold_lo": "fp32", "fold_hi": "fp32"}
FLAGS = {"IS_CAUSAL": True, "HAS_WINDOW": False, "HAS_POS": False, "HAS_KPM": False, "HAS_SOFTCAP": False,
         "IS_VARLEN": False, "DOT_PREC": "tf32"}


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def spills(kernel, constexprs: dict, options: dict, arch: int, dtype: str) -> dict:
    """Compiles one specialisation and returns registers, stack bytes and spill instructions per thread."""
    names = kernel.arg_names
    sig = {}
    for n in names:
        if n in constexprs:
            sig[n] = "constexpr"
        elif n in POINTERS or n in SCALARS:
            sig[n] = POINTERS.get(n) or SCALARS[n]
        elif n.startswith("stride") or n in ("NQ", "NK", "W", "NMB", "NKB", "HG"):
            sig[n] = "i32"
        else:
            sig[n] = "*" + dtype
    # As a launch specialises them: pointers and strides divisible by 16 (torch allocations, head dims 16k). Without
    # this, loads look unaligned, nothing is software-pipelined and the register picture is not the GPU's.
    target = GPUTarget("cuda", arch, 64)
    aligned = make_backend(target).parse_attr("D")
    attrs = {(names.index(n),): aligned for n in names if sig[n].startswith("*") or n.startswith("stride")}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                    attrs=attrs)
    compiled = triton.compile(src, target=target, options=options)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", usage)
    if m is None:
        raise RuntimeError(f"unexpected cuobjdump output: {usage[:300]}")
    # special-function log2s (half precision's general power: attn_utils.log2_of) and libdevice's log2f
    ptx = compiled.asm["ptx"]
    return {"regs": int(m.group(1)), "stack_bytes": int(m.group(2)), "smem_bytes": compiled.metadata.shared,
            "stl": sass.count(" STL"), "ldl": sass.count(" LDL"), "lg2_approx": ptx.count("lg2.approx"),
            "libdevice_log2": ptx.count("__nv_log2f.exit")}


HOPPER_SMEM = 227 * 1024  # shared memory one program may take on an H100/H200 (``launch.launch_fitting``)


def _opts(warps: int, stages: int) -> dict:
    return {"num_warps": warps, "num_stages": stages}


def cases(D: int, t, fp32: bool = False):
    """(name, kernel, constexprs, compile options) for every specialisation a causal launch uses (bf16/fp16, or
    fp32: exact-precision dots, and the forward's main kernel at most 2 stages, as ``attention_ops`` launches it)."""
    BD = t.BD
    base = dict(H=16, G=1, D=D, BD=BD, BM=t.BM, BN=t.BN, **dict(FLAGS, DOT_PREC="ieee" if fp32 else "tf32"))
    fwd = dict(base, HEAVY_FIRST=t.heavy_first, MAX_ITERS=MAX_TAU_ITERS, CH=LIST_CHUNK, **tau_pass_args(t),
               HALLEY=t.halley, HALLEY_GENERAL=t.halley_general, O3_FWD=t.o3_fwd, FOLD=t.fold,
               FLAT_DISPATCH=flat_dispatch(t))
    # the tile-maxima start: bf16/fp16 with the tau kernel only, as attention_ops launches it
    topk = t.tile_max_start if t.solve and not fp32 else 0
    if t.scan:
        yield ("fwd scan (phase A)", adasplash_fwd_scan_kernel,
               dict(base, HEAVY_FIRST=t.heavy_first, SCAN_SPLIT=t.scan_split, TOPK=topk), scan_launch_args(t))
    solve = t.scan and t.solve
    if solve:
        # the tau kernel as each host-side alpha hint launches it: unknown (a learning alpha), every head on the
        # multiplication grid (snapped), every head 1.5 or 2 (a fixed float)
        for hint, ts in (("", t), (" grid alpha", solve_settings(t, False, True)),
                         (" 1.5/2 alpha", solve_settings(t, True, False))):
            if hint and ts == t:
                continue
            tau_args = dict(base, HEAVY_FIRST=ts.heavy_first, MAX_ITERS=MAX_TAU_ITERS, CH=LIST_CHUNK,
                            **tau_pass_args(ts), HALLEY=ts.halley, HALLEY_GENERAL=ts.halley_general,
                            TILE_MAX_START=topk > 0, ROW_LIVE=ts.row_live)
            yield f"fwd tau (phase B){hint}", adasplash_fwd_tau_kernel, tau_args, solve_launch_args(ts)
            if not hint:  # a learning alpha: d(alpha) needs the fp32 tolerance
                yield ("fwd tau (phase B) alpha learns", adasplash_fwd_tau_kernel, dict(tau_args, STRICT_TOL=True),
                       solve_launch_args(ts))
    fwd["SCANNED"] = t.scan
    fwd["SOLVED"] = solve
    for name, need_bwd, need_ent in (("fwd inference", False, False), ("fwd fixed alpha", True, False),
                                     ("fwd learnable alpha", True, True)):
        yield (name, adasplash_fwd_kernel, dict(fwd, NEED_BWD=need_bwd, NEED_ENT=need_ent),
               fwd_launch_args(t, need_bwd, need_ent, fp32))
    if flat_dispatch(t, chain_faster=True) != fwd["FLAT_DISPATCH"]:  # Triton < 3.8: 1.5/2 heads take the chain
        yield ("fwd inference 1.5/2 alpha", adasplash_fwd_kernel,
               dict(fwd, NEED_BWD=False, NEED_ENT=False, FLAT_DISPATCH=False), fwd_launch_args(t, False, False, fp32))
    dq = dict(base, BNS=t.BNS, BMQ=t.BMQ, O3_FWD=t.o3_fwd, HEAVY_FIRST=t.bwd_heavy_first)
    bwd_opts = _opts(t.bwd_warps, t.bwd_stages)
    yield "dq fixed alpha", adasplash_bwd_kernel_dq, dict(dq, NEED_DALPHA=False), dq_launch_args(t)
    yield "dq learnable alpha", adasplash_bwd_kernel_dq, dict(dq, NEED_DALPHA=True), dq_launch_args(t)
    yield "dalpha per entry", adasplash_bwd_kernel_dalpha_per_entry, dict(base, BNS=t.BNS, BMQ=t.BMQ), bwd_opts
    dkv_cases = [("dk/dv", 1, False)]
    if t.gqa_dkv[0]:
        dkv_cases.append(("dk/dv GQA", 4, False))
    if t.gqa_dkv_short[0]:
        dkv_cases.append(("dk/dv GQA short grid", 4, True))
    for name, group, short_grid in dkv_cases:
        dkv = dkv_launch_args(t, group, short_grid)
        yield (name, adasplash_bwd_kernel_dkv,
               dict(base, G=group, CH=LIST_CHUNK, BMS=dkv["BMS"], HEAVY_FIRST=t.bwd_heavy_first),
               {k: v for k, v in dkv.items() if k != "BMS"})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head-dims", default="64,128", help="comma list (default: 64,128)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (default: 90, Hopper)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a Tiles field, e.g. --set fwd_warps=8 --set o3_fwd=0 (repeatable)")
    p.add_argument("--kernels", default="", help="only the specialisations whose name contains this (e.g. 'dq')")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter's tiles are not the GPU's")
    rows = []
    for D in (int(d) for d in args.head_dims.split(",")):
        t = with_fields(tiles(D), args.set)
        for name, kernel, constexprs, options in cases(D, t, fp32=args.dtype == "fp32"):
            if args.kernels not in name:
                continue
            warps, stages = options["num_warps"], options["num_stages"]
            row = {"D": D, "kernel": name, "warps": warps, "stages": stages,
                   **spills(kernel, constexprs, options, args.arch, args.dtype)}
            rows.append(row)
            print(f"D={D:<4d} {name:22s} warps {warps} stages {stages}: {row['regs']} regs, "
                  f"{row['stack_bytes']} B stack, {row['stl']} STL / {row['ldl']} LDL, "
                  f"{row['smem_bytes'] / 1024:.1f} KiB shared"
                  + (" (over Hopper's 227 KiB: the launch drops stages)" if row["smem_bytes"] > HOPPER_SMEM else ""),
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "triton": triton.__version__, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
