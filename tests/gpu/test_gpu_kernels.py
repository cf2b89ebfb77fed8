"""GPU checks of the Triton attention kernels: accuracy on larger shapes, timing and memory against SDPA.

Run on a CUDA machine: ``pytest -m gpu tests/gpu/test_gpu_kernels.py -s`` (or ``python tests/gpu/test_gpu_kernels.py``).
Accuracy: fp32 within 1e-5 (relative to the largest reference value) of the float64 reference; bf16/fp16 within
2e-2 and within 2x the error of the same computation done by PyTorch in that dtype (FlashAttention's rule).
Timing: bf16, causal, ``random`` and ``local`` inputs (see ``local_inputs``), ratios to SDPA's default dispatch
measured in the same process; written to ``$OUT/gpu_kernels.json`` when ``OUT`` is set.
"""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from hf_adasplash.entmax import entmax
from hf_adasplash.masks import visibility_mask
from hf_adasplash.ops.attention import adasplash_attention_triton
from hf_adasplash.reference import attention_reference

pytestmark = pytest.mark.gpu
DEV = "cuda"


def local_inputs(B, H, N, D, pos, dtype, requires_grad=False):
    """q, k, v ~ N(0, 1); q and k also get ``pos * c(i)``, a sinusoidal position code of norm sqrt(D)."""
    q, k, v = (torch.randn(B, H, N, D, device=DEV) for _ in range(3))
    if pos:
        i = torch.arange(N, device=DEV, dtype=torch.float32)[:, None]
        f = 1.0 / (64.0 ** (torch.arange(D // 2, device=DEV, dtype=torch.float32) / (D // 2)))
        c = torch.cat([(i * f).sin(), (i * f).cos()], -1) / math.sqrt(D // 2) * math.sqrt(D)
        q, k = q + pos * c, k + pos * c
    return [t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v)]


def lowp_attention(q, k, v, alpha, is_causal):
    """The same attention computed by PyTorch in the input dtype (matmuls in that dtype, entmax in fp32)."""
    B, Hq, Nq, D = q.shape
    G = Hq // k.shape[1]
    kk, vv = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = torch.matmul(q, kk.transpose(-1, -2)) * D**-0.5
    mask = visibility_mask(B, Nq, k.shape[2], q.device, is_causal=is_causal)
    s = s.float()
    if mask is not None:
        s = s.masked_fill(~mask[:, None], float("-inf"))
    p = entmax(s, alpha.float().reshape(1, Hq, 1, 1), dim=-1).to(q.dtype)
    return torch.matmul(p, vv)


def _rel(a, b):
    return (a.double() - b.double()).abs().max().item() / max(1e-6, b.double().abs().max().item())


ACC_CASES = [
    # (B, H, Hkv, Nq, Nk, D, causal, dtype)
    (2, 4, 2, 1000, 1000, 64, True, torch.float32),
    (1, 4, 1, 777, 1500, 80, False, torch.float16),
    (2, 8, 2, 2048, 2048, 128, True, torch.bfloat16),
    (1, 4, 2, 1000, 1000, 256, True, torch.bfloat16),
]


@pytest.mark.parametrize("case", ACC_CASES, ids=lambda c: f"B{c[0]}H{c[1]}K{c[2]}-{c[3]}x{c[4]}-D{c[5]}-"
                         f"{'causal' if c[6] else 'full'}-{str(c[7])[6:]}")
def test_accuracy(case):
    B, H, Hkv, Nq, Nk, D, causal, dtype = case
    torch.manual_seed(Nq + D)
    q = torch.randn(B, H, Nq, D, device=DEV, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, Nk, D, device=DEV, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, Nk, D, device=DEV, dtype=dtype, requires_grad=True)
    alpha = torch.tensor([1.0, 1.25, 1.5, 2.0, 4 / 3, 1.1, 1.75, 1.5][:H], device=DEV, requires_grad=True)
    out = adasplash_attention_triton(q, k, v, alpha, is_causal=causal)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, alpha), do)
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v, alpha)]
    ref = attention_reference(*x64[:3], x64[3], is_causal=causal)
    grads64 = torch.autograd.grad(ref, x64, do.double())
    names = ("out", "dq", "dk", "dv", "dalpha")
    errs = {n: _rel(a, b) for n, a, b in zip(names, (out, *grads), (ref, *grads64))}
    if dtype == torch.float32:
        bounds = {n: (1e-5 if n == "out" else 1e-4) for n in names}
    else:
        xl = [t.detach().requires_grad_() for t in (q, k, v)]
        al = alpha.detach().requires_grad_()
        pt = lowp_attention(*xl, al, causal)
        gpt = torch.autograd.grad(pt, (*xl, al), do)
        # within twice the same-dtype PyTorch error (+ a small floor), and the output within 2e-2
        bounds = {n: 2 * _rel(a, b) + 1e-3 for n, a, b in zip(names, (pt, *gpt), (ref, *grads64))}
        bounds["out"] = min(bounds["out"], 2e-2)
    print(f"\naccuracy {case}: " + " ".join(f"{n}={errs[n]:.2e}(<= {bounds[n]:.1e})" for n in names))
    for n in names:
        assert errs[n] <= bounds[n], f"{n}: {errs[n]:.3e} > {bounds[n]:.3e}"


NEAR_1 = [1.0001, 1.001, 1.01, 1.05, 1.15, 1.5]


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["f16", "f32"])
def test_near_alpha_1(D, dtype):
    # fp32 heads below 1.03 carry tau from m - 1 (exact x - 1) and heads below 1.2 sum d(alpha) per entry
    # (attn_bwd_dalpha): per head, out/dq/dk/dv within the fp32 bar (1e-5 / 1e-4) and d(alpha) within 1e-4
    # (fp32) or 2e-2 (fp16: the row-sum form was 150% off at 1.05). fp16 first: the fp32 backward kernels spill
    # heavily and ptxas took over 100 s for them at D = 128 on the H100 machine
    H = len(NEAR_1)
    torch.manual_seed(D)
    q, k, v = (torch.randn(2, H, 1000, D, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3))
    alpha = torch.tensor(NEAR_1, device=DEV, requires_grad=True)
    out = adasplash_attention_triton(q, k, v, alpha, is_causal=True)
    do = torch.randn_like(out)
    got = (out, *torch.autograd.grad(out, (q, k, v, alpha), do))
    x64 = [t.detach().double().requires_grad_() for t in (q, k, v, alpha)]
    ref = attention_reference(*x64[:3], x64[3], is_causal=True)
    want = (ref, *torch.autograd.grad(ref, x64, do.double()))
    errs = {}
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        errs[name] = ((a.double() - b).abs().amax(dim=(0, 2, 3)) / b.abs().amax()).tolist()
    errs["dalpha"] = ((got[4].double() - want[4]).abs() / want[4].abs()).tolist()
    print(f"\nnear 1, D={D} {dtype}: " + " ".join(f"{n}={max(e):.1e}" for n, e in errs.items()))
    if dtype == torch.float32:
        bounds = {"out": 1e-5, "dq": 1e-4, "dk": 1e-4, "dv": 1e-4, "dalpha": 1e-4}
        for n, e in errs.items():
            assert max(e) <= bounds[n], (n, dict(zip(NEAR_1, e)))
        return
    # fp16: 2e-2, or per head within twice what PyTorch's own fp16 computation errs (+1e-3) where that is larger
    # (the bar; d(alpha) of one head sums 2000 rows with cancellation: 2.7e-2 at alpha = 1.5, D = 128)
    xl = [t.detach().requires_grad_() for t in (q, k, v, alpha)]
    pt = lowp_attention(*xl, is_causal=True)
    gpt = (pt, *torch.autograd.grad(pt, xl, do))
    base = {n: ((a.double() - b).abs().amax(dim=(0, 2, 3)) / b.abs().amax()).tolist()
            for n, a, b in zip(("out", "dq", "dk", "dv"), gpt, want)}
    base["dalpha"] = ((gpt[4].double() - want[4]).abs() / want[4].abs()).tolist()
    print("fp16 PyTorch: " + " ".join(f"{n}={max(e):.1e}" for n, e in base.items()))
    for n, e in errs.items():
        bound = [max(2e-2, 2 * b + 1e-3) for b in base[n]]
        assert all(x <= y for x, y in zip(e, bound)), (n, dict(zip(NEAR_1, e)), dict(zip(NEAR_1, base[n])))


def test_cached_launch_matches_the_jit(monkeypatch):
    # the cached launch (ops/launch.py, the default) calls each compiled kernel's launcher itself, and the ops'
    # launch plans (ops/plans.py) replay bound kernels: results must be bit-identical to the JIT's launches, for two
    # layouts (contiguous and HF's transposed q/k/v) and the decode path
    from hf_adasplash.ops import attention_ops, launch

    torch.manual_seed(0)
    B, H, Hkv, N, D = 2, 6, 2, 1000, 64
    base = [torch.randn(B, N, h, D, device=DEV, dtype=torch.bfloat16) for h in (H, Hkv, Hkv)]
    alpha = torch.tensor([1.1, 1.25, 4 / 3, 1.5, 1.7, 2.0], device=DEV)

    def run():
        outs = []
        for layout in (lambda t: t.transpose(1, 2).contiguous(), lambda t: t.transpose(1, 2)):
            q, k, v = (layout(t).detach().requires_grad_() for t in base)
            a = alpha.clone().requires_grad_()
            out = adasplash_attention_triton(q, k, v, a, is_causal=True)
            outs += [out, *torch.autograd.grad(out, (q, k, v, a), torch.ones_like(out))]
        with torch.no_grad():
            q, k, v = (t.transpose(1, 2) for t in base)
            outs.append(adasplash_attention_triton(q[:, :, -3:], k, v, alpha, is_causal=True))  # decode
        return outs

    monkeypatch.setenv(launch.ENV, "0")
    want = run()
    monkeypatch.delenv(launch.ENV, raising=False)
    first, second = run(), run()  # the first call per key takes the JIT, the second the plans' bound kernels
    assert any(len(c.compiled) for c in launch._launchers.values())
    for cache in (attention_ops._FWD_PLANS, attention_ops._BWD_PLANS):
        assert any(s.bound for p in cache.plans.values() for s in p.steps)
    for got in (first, second):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def _bench(fn, warmup=10, rep=40):
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def _peak(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _block_sparsity(q, k, v, alpha):
    o, o2, tau, ent, o3, gap, thr, idx, cnt = torch.ops.hf_adasplash.attn_fwd(
        q, k, v, alpha, None, None, None, None, None, q.shape[2], k.shape[2], True, q.shape[-1] ** -0.5, -1, 0.0,
        True, False)
    # causal tiles: those with at least one visible entry
    from hf_adasplash.ops.tiling import tiles

    t = tiles(q.shape[-1])
    i_m = torch.arange(gap.shape[1], device=DEV)[:, None]
    i_n = torch.arange(gap.shape[2], device=DEV)[None, :]
    causal = (i_n * t.BN <= i_m * t.BM + t.BM - 1).expand_as(gap[0])
    listed = (gap > thr[..., None]) & causal
    return 1.0 - listed.sum().item() / (causal.sum().item() * gap.shape[0])


# (D, N, pos, alpha): alpha = 1.5 is the official kernels' case; 1.25 takes the multiplication-only powers (v11),
# 1.3 the general power (two transcendental ops per element and pass), as every learned alpha off that grid does;
# 1.15 adds the per-entry d(alpha) kernel
TIMING = [(64, 4096, 0.0, 1.5), (64, 4096, 2.0, 1.5), (128, 4096, 0.0, 1.5), (64, 16384, 2.0, 1.5),
          (128, 16384, 2.0, 1.5), (64, 4096, 0.0, 1.25), (64, 16384, 2.0, 1.25), (64, 4096, 0.0, 1.3),
          (64, 4096, 0.0, 1.15)]  # below 1.2: d(alpha) per entry (attn_bwd_dalpha), two more passes


def _time_case(D, N, pos, alpha_value=1.5):
    B, H = max(1, 32768 // N), 16
    torch.manual_seed(0)
    q, k, v = local_inputs(B, H, N, D, pos, torch.bfloat16, requires_grad=True)
    alpha = torch.full((H,), alpha_value, device=DEV, requires_grad=True)
    g = torch.randn_like(q)

    def ours():
        return adasplash_attention_triton(q, k, v, alpha, is_causal=True)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fb(fn):
        def run():
            for t in (q, k, v, alpha):
                t.grad = None
            fn().backward(g)
        return run

    with torch.no_grad():
        t_f, t_fs = _bench(ours), _bench(sdpa)
    t_fb, t_fbs = _bench(fb(ours)), _bench(fb(sdpa))
    m_o, m_s = _peak(fb(ours)), _peak(fb(sdpa))
    with torch.no_grad():
        bs = _block_sparsity(q, k, v, alpha.detach())
    return {"D": D, "N": N, "B": B, "H": H, "alpha": alpha_value, "data": "random" if not pos else f"local {pos}",
            "block_sparsity": round(bs, 3), "fwd_ms": round(t_f, 3), "sdpa_fwd_ms": round(t_fs, 3),
            "fwd_ratio": round(t_f / t_fs, 2), "fwdbwd_ms": round(t_fb, 3), "sdpa_fwdbwd_ms": round(t_fbs, 3),
            "fwdbwd_ratio": round(t_fb / t_fbs, 2), "peak_mem_ratio": round(m_o / max(m_s, 1), 2)}


def test_timing_vs_sdpa():
    rows = []
    for D, N, pos, alpha in TIMING:
        rows.append(_time_case(D, N, pos, alpha))
        print("\ntiming " + json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_kernels.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    assert all(r["fwd_ms"] > 0 and r["sdpa_fwd_ms"] > 0 for r in rows)


if __name__ == "__main__":
    for c in ACC_CASES:
        test_accuracy(c)
    test_timing_vs_sdpa()
