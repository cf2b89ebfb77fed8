"""The scan pass's loop alone (row max and a gap store per 128 x 64 tile, causal, the mask on diagonal tiles only):
K by pointer loads (cp.async) against a TMA descriptor, with and without warp specialisation; against SDPA's whole
forward in the same run. Writes ``$OUT/tma_scan_microbench.json`` (bench/NOTES.md v24).

    python bench/ab_h200_v24/tma_scan_microbench.py
"""

import json
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.testing import do_bench

triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


@triton.jit
def scan_ptr(Q, K, M, TM, N, stride_h, stride_n, n_kb, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    i_bh = tl.program_id(0)
    i_m = tl.num_programs(1) - 1 - tl.program_id(1)  # longest first
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, D)
    q = tl.load(Q + i_bh * stride_h + o_m[:, None] * stride_n + o_d[None, :])
    m = tl.full((BM,), -float("inf"), tl.float32)
    o_kt = tl.arange(0, BN)[None, :] * stride_n + o_d[:, None]
    p_tm = TM + (i_bh * tl.cdiv(N, BM) + i_m) * n_kb
    for start in range(0, i_m * BM, BN):
        t = tl.max(tl.dot(q, tl.load(K + i_bh * stride_h + start * stride_n + o_kt)), 1)
        mn = tl.maximum(m, t)
        tl.store(p_tm + start // BN, tl.max(t - mn, 0))
        m = mn
    for start in range(i_m * BM, (i_m + 1) * BM, BN):
        o_n = start + tl.arange(0, BN)
        s = tl.dot(q, tl.load(K + i_bh * stride_h + start * stride_n + o_kt))
        t = tl.max(tl.where(o_n[None, :] <= o_m[:, None], s, -float("inf")), 1)
        mn = tl.maximum(m, t)
        tl.store(p_tm + start // BN, tl.max(t - mn, 0))
        m = mn
    tl.store(M + i_bh * N + o_m, m)


@triton.jit
def scan_tma(Q, K, M, TM, N, stride_h, stride_n, n_kb, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
             WS: tl.constexpr, STAGES: tl.constexpr):
    i_bh = tl.program_id(0)
    i_m = tl.num_programs(1) - 1 - tl.program_id(1)
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, D)
    q = tl.load(Q + i_bh * stride_h + o_m[:, None] * stride_n + o_d[None, :])
    kd = tl.make_tensor_descriptor(K + i_bh * stride_h, shape=[N, D], strides=[stride_n, 1], block_shape=[BN, D])
    m = tl.full((BM,), -float("inf"), tl.float32)
    p_tm = TM + (i_bh * tl.cdiv(N, BM) + i_m) * n_kb
    for start in tl.range(0, i_m * BM, BN, num_stages=STAGES, warp_specialize=WS):
        t = tl.max(tl.dot(q, tl.trans(kd.load([start, 0]))), 1)
        mn = tl.maximum(m, t)
        tl.store(p_tm + start // BN, tl.max(t - mn, 0))
        m = mn
    for start in range(i_m * BM, (i_m + 1) * BM, BN):
        o_n = start + tl.arange(0, BN)
        s = tl.dot(q, tl.trans(kd.load([start, 0])))
        t = tl.max(tl.where(o_n[None, :] <= o_m[:, None], s, -float("inf")), 1)
        mn = tl.maximum(m, t)
        tl.store(p_tm + start // BN, tl.max(t - mn, 0))
        m = mn
    tl.store(M + i_bh * N + o_m, m)


def run(kind, q, k, bm, bn, warps, stages, ws=False):
    B, H, N, D = q.shape
    m = torch.empty(B * H, N, device=q.device, dtype=torch.float32)
    n_kb = triton.cdiv(N, bn)
    tm = torch.empty(B * H * triton.cdiv(N, bm) * n_kb, device=q.device, dtype=torch.float32)
    grid = (B * H, triton.cdiv(N, bm))
    if kind == "ptr":
        scan_ptr[grid](q, k, m, tm, N, N * D, D, n_kb, D=D, BM=bm, BN=bn, num_warps=warps, num_stages=stages)
    else:
        scan_tma[grid](q, k, m, tm, N, N * D, D, n_kb, D=D, BM=bm, BN=bn, WS=ws, STAGES=stages, num_warps=warps,
                       num_stages=stages)
    return m


CONFIGS = (("ptr", 128, 64, 4, 3, False), ("tma", 128, 64, 4, 3, False), ("tma", 128, 64, 4, 4, False),
           ("tma", 128, 128, 8, 3, False), ("tma", 128, 64, 4, 3, True), ("tma", 128, 64, 8, 3, True),
           ("tma", 128, 128, 8, 3, True), ("ptr", 128, 64, 4, 3, False))


def main():
    rows = []
    torch.manual_seed(0)
    for D in (64, 128):
        for N in (16384, 4096):
            B, H = 65536 // N // 2, 16
            q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            q = (q * D**-0.5).to(q.dtype)
            sd = do_bench(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                          warmup=25, rep=100)
            ref = None
            for kind, bm, bn, warps, stages, ws in CONFIGS:
                r = {"D": D, "N": N, "kind": kind, "cfg": [bm, bn, warps, stages], "ws": ws}
                try:
                    m = run(kind, q, k, bm, bn, warps, stages, ws)
                    torch.cuda.synchronize()
                    ref = m.clone() if ref is None else ref
                    r["diff"] = (m - ref).abs().max().item()
                    t = do_bench(lambda a=(kind, q, k, bm, bn, warps, stages, ws): run(*a), warmup=25, rep=100)
                    r |= {"ms": round(t, 4), "sdpa_ms": round(sd, 4), "ratio": round(t / sd, 3)}
                except Exception as e:  # noqa: BLE001 (a configuration Triton refuses is a result too)
                    r["err"] = f"{type(e).__name__}: {str(e)[:300]}"
                rows.append(r)
                print(json.dumps(r), flush=True)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "rows": rows}
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "tma_scan_microbench.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
