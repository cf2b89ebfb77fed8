"""Decode kernels on the GPU: half precision at real sizes, against the float64 reference (`pytest -m gpu`)."""

import math

import pytest
import torch

from hf_adasplash.entmax import entmax
from hf_adasplash.ops.decode import adasplash_decode_triton
from hf_adasplash.reference import attention_reference

pytestmark = pytest.mark.gpu


def _inputs(B, HQ, HKV, NQ, NK, D, dtype, pos=0.0):
    q = torch.randn(B, HQ, NQ, D, device="cuda")
    k = torch.randn(B, HKV, NK, D, device="cuda")
    v = torch.randn(B, HKV, NK, D, device="cuda")
    if pos:
        # the benchmark's `local` family: a shared sinusoidal position code peaks attention on recent keys
        i = torch.arange(NK, device="cuda", dtype=torch.float32)[:, None]
        f = 64.0 ** (-torch.arange(D // 2, device="cuda", dtype=torch.float32) / (D // 2))
        c = torch.cat([(i * f).sin(), (i * f).cos()], -1) * math.sqrt(D / (D // 2))
        k = k + pos * c
        q = q + pos * c[NK - NQ:]
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _lowp_baseline(q, k, v, alpha, **kw):
    """The same math in the input dtype (scores and p rounded to it): the error budget a kernel may spend."""
    G = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = (q @ kk.transpose(-1, -2)).float() * kw.get("scale", q.shape[-1] ** -0.5)
    from hf_adasplash.masks import visibility_mask

    m = visibility_mask(q.shape[0], q.shape[2], k.shape[2], q.device, is_causal=kw.get("is_causal", False),
                        key_padding_mask=kw.get("key_padding_mask"), window=kw.get("window"))
    if m is not None:
        s = s.masked_fill(~m[:, None], float("-inf"))
    a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha))
    p = entmax(s, a.to(s).expand(q.shape[1]).reshape(1, -1, 1, 1), dim=-1)
    return (p.to(q.dtype) @ vv).to(q.dtype)


@pytest.mark.parametrize(
    "dtype,D,NK,NQ,G",
    [
        pytest.param(torch.bfloat16, 128, 1, 1, 4, id="bf16-d128-nk1"),
        pytest.param(torch.bfloat16, 32, 63, 4, 1, id="bf16-d32-nk63-nq4"),
        pytest.param(torch.bfloat16, 80, 4097, 1, 4, id="bf16-d80-nk4097-gqa4"),
        pytest.param(torch.bfloat16, 96, 1000, 16, 8, id="bf16-d96-nk1000-nq16-gqa8"),
        pytest.param(torch.bfloat16, 256, 3001, 2, 2, id="bf16-d256-nk3001"),
        pytest.param(torch.float16, 64, 2050, 1, 4, id="fp16-d64-nk2050"),
        pytest.param(torch.float16, 128, 777, 3, 4, id="fp16-d128-nk777-nq3"),
    ],
)
def test_decode_gpu_matches_reference(dtype, D, NK, NQ, G):
    HKV = 2
    q, k, v = _inputs(2, HKV * G, HKV, NQ, NK, D, dtype)
    alpha = torch.linspace(1.0, 2.0, HKV * G, device="cuda")
    alpha[1::3] = 1.5
    kw = {"is_causal": True}
    out = adasplash_decode_triton(q, k, v, alpha, **kw)
    ref = attention_reference(q.double(), k.double(), v.double(), alpha.double(), **kw)
    base = _lowp_baseline(q, k, v, alpha, **kw)
    err = (out.double() - ref).abs().max().item()
    err_base = (base.double() - ref).abs().max().item()
    assert torch.isfinite(out).all()
    assert err <= 2 * err_base + 1e-4, f"kernel err {err:.3g} vs same-dtype PyTorch err {err_base:.3g}"


@pytest.mark.parametrize("pos", [0.0, 2.0], ids=["random", "local2"])
def test_decode_gpu_long_cache(pos):
    q, k, v = _inputs(2, 8, 2, 1, 32768, 128, torch.bfloat16, pos=pos)
    kpm = torch.ones(2, 32768, dtype=torch.bool, device="cuda")
    kpm[1, :1000] = False  # left padding
    kw = {"is_causal": True, "key_padding_mask": kpm}
    out = adasplash_decode_triton(q, k, v, 1.5, **kw)
    ref = attention_reference(q.double(), k.double(), v.double(), 1.5, **kw)
    base = _lowp_baseline(q, k, v, 1.5, **kw)
    err, err_base = (out.double() - ref).abs().max().item(), (base.double() - ref).abs().max().item()
    assert err <= 2 * err_base + 1e-4, f"kernel err {err:.3g} vs same-dtype PyTorch err {err_base:.3g}"


def test_decode_gpu_window_softcap_fp32():
    q, k, v = _inputs(1, 4, 1, 3, 5000, 64, torch.float32)
    kw = {"is_causal": True, "window": 700, "softcap": 30.0}
    out = adasplash_decode_triton(q, k, v, torch.tensor([1.0, 1.2, 1.5, 2.0]), **kw)
    ref = attention_reference(q.double(), k.double(), v.double(), torch.tensor([1.0, 1.2, 1.5, 2.0]).double(), **kw)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)


def test_decode_gpu_no_recompile_per_length():
    from hf_adasplash.kernels.decode import decode_output_fwd_kernel, decode_scores_fwd_kernel
    from hf_adasplash.kernels.entmax_rows import entmax_rows_tau_kernel

    kernels = (decode_scores_fwd_kernel, entmax_rows_tau_kernel, decode_output_fwd_kernel)

    def n_compiled():
        return sum(len(c[0]) for kern in kernels for c in kern.device_caches.values())

    q, k, v = _inputs(1, 4, 1, 1, 3000, 64, torch.bfloat16)
    adasplash_decode_triton(q, k, v, 1.5, is_causal=True)
    before = n_compiled()
    for nk in (1001, 1234, 2047, 2999):
        out = adasplash_decode_triton(q, k[:, :, :nk].contiguous(), v[:, :, :nk].contiguous(), 1.5, is_causal=True)
        assert torch.isfinite(out).all()
    assert n_compiled() == before


def test_decode_gpu_cuda_graph_replay():
    # no host synchronisation anywhere in the step: it can be captured once and replayed on new cache contents
    q, k, v = _inputs(2, 8, 2, 1, 2048, 128, torch.bfloat16, pos=1.0)
    alpha = torch.tensor([1.0, 1.5, 1.2, 2.0] * 2, device="cuda")
    out = adasplash_decode_triton(q, k, v, alpha, is_causal=True)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = adasplash_decode_triton(q, k, v, alpha, is_causal=True)
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        k.copy_(torch.randn_like(k))
        g.replay()
        torch.cuda.synchronize()
        ref = adasplash_decode_triton(q, k, v, alpha, is_causal=True)
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
