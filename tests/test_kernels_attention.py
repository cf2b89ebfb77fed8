"""The Triton attention kernels (forward, dq/dk/dv and d(alpha)) against the float64 reference.

On CPU the kernels run under the Triton interpreter with small tiles (BM=BN=32, backward slices of 16), so tiny
shapes still span several query blocks and key tiles: boundary tiles, skipped tiles, GQA loops and varlen segments
are all exercised.
Every case draws fresh inputs; outputs come from NaN-poisoned buffers (conftest), so an element a kernel forgets to
write fails the comparison.
"""

import dataclasses
import math

import pytest
import torch

from hf_adasplash.ops import attention_ops  # noqa: F401
from hf_adasplash.ops.attention import adasplash_attention_triton, adasplash_varlen_attention_triton
from hf_adasplash.reference import attention_reference, varlen_attention_reference

TOL = {torch.float32: 2e-5, torch.float16: 2e-2}


def _grad_inputs(B, H, Hkv, Nq, Nk, D, dtype, qscale=1.0):
    q = (torch.randn(B, H, Nq, D) * qscale).to(dtype).requires_grad_()
    k = torch.randn(B, Hkv, Nk, D).to(dtype).requires_grad_()
    v = torch.randn(B, Hkv, Nk, D).to(dtype).requires_grad_()
    return q, k, v


def _alpha(alpha, H, learn=True):
    if isinstance(alpha, (list, tuple)):
        a = torch.tensor(alpha, dtype=torch.float32)
    else:
        a = torch.tensor(float(alpha))
    return a.requires_grad_(learn)


def _compare(tri_fn, ref_fn, tensors, alpha, dtype, grad=True):
    """Runs both functions on the same inputs and upstream gradient; returns nothing, asserts everything."""
    out = tri_fn(*tensors, alpha)
    assert not torch.isnan(out).any()
    ins64 = [t.detach().double().requires_grad_() for t in tensors]
    a64 = alpha.detach().double().requires_grad_(alpha.requires_grad)
    ref = ref_fn(*ins64, a64)
    tol = TOL[dtype]
    scale = max(1.0, ref.abs().max().item())
    err = (out.double() - ref).abs().max().item()
    if dtype != torch.float32:
        # FlashAttention's rule: within twice the error of the same-dtype PyTorch computation (+ a small floor).
        pt = ref_fn(*[t.detach() for t in tensors], alpha.detach()).double()
        tol = min(tol, 2 * (pt - ref).abs().max().item() + 2e-3)
    assert err <= tol * scale, f"forward error {err:.3e} > {tol * scale:.3e}"
    if not grad:
        return out, None
    do = torch.randn_like(out)
    wrt = list(tensors) + ([alpha] if alpha.requires_grad else [])
    grads = torch.autograd.grad(out, wrt, do)
    wrt64 = ins64 + ([a64] if alpha.requires_grad else [])
    grads64 = torch.autograd.grad(ref, wrt64, do.double())
    names = ["dq", "dk", "dv", "dalpha"]
    for name, g, g64 in zip(names, grads, grads64):
        assert not torch.isnan(g).any(), f"{name} has NaN"
        gs = max(1.0, g64.abs().max().item())
        gerr = (g.double() - g64).abs().max().item()
        gtol = 5 * TOL[dtype] if dtype == torch.float32 else 5e-2
        if name == "dalpha":
            # a sum over every query row (and batch): fp32 row errors add up like a random walk
            gtol *= math.sqrt(out.numel() / out.shape[-1] / g.numel())
        assert gerr <= gtol * gs, f"{name} error {gerr:.3e} > {gtol * gs:.3e}"
    return out, grads


def _dense(**kw):
    return (lambda q, k, v, a: adasplash_attention_triton(q, k, v, a, **kw),
            lambda q, k, v, a: attention_reference(q, k, v, a, **kw))


def _full_kw(**kw):
    base = {"is_causal": False, "scale": None, "key_padding_mask": None, "q_idx": None, "k_idx": None,
            "window": None, "softcap": None}
    base.update(kw)
    return base


CASES = [
    # id, (B, H, Hkv, Nq, Nk, D), alpha, causal
    pytest.param((1, 2, 1, 63, 63, 32), 1.5, True, id="a1.5-causal-N63-gqa"),
    pytest.param((1, 2, 2, 63, 63, 32), 1.5, False, id="a1.5-noncausal-N63"),
    pytest.param((1, 2, 1, 50, 50, 32), 1.0, True, id="softmax-causal"),
    pytest.param((1, 1, 1, 40, 40, 32), 2.0, False, id="sparsemax-noncausal"),
    pytest.param((1, 1, 1, 40, 40, 32), 1.25, True, id="a1.25-causal"),
    pytest.param((1, 4, 2, 48, 48, 32), (1.0, 1.25, 1.5, 2.0), True, id="per-head-mix-gqa"),
    # 4/3 and 1.2 are float32-rounded (the multiplication-only powers take them), 1.3 is general
    pytest.param((1, 4, 2, 48, 48, 32), (4 / 3, 1.25, 1.2, 1.3), True, id="per-head-int-powers-gqa"),
    pytest.param((1, 2, 1, 20, 70, 32), 1.5, True, id="causal-bottom-right-Nq<Nk"),
    pytest.param((1, 2, 1, 70, 20, 32), 1.5, True, id="causal-Nq>Nk-empty-rows"),
    pytest.param((1, 2, 2, 33, 57, 32), 1.75, False, id="noncausal-Nq!=Nk"),
    pytest.param((1, 2, 1, 40, 40, 80), 1.5, True, id="D80"),
    pytest.param((1, 3, 1, 1, 1, 32), 1.5, True, id="N1"),
    pytest.param((2, 4, 1, 1, 37, 32), 1.5, True, id="Nq1-mqa"),
]


@pytest.mark.parametrize("shape, alpha, causal", CASES)
def test_dense_fp32(shape, alpha, causal):
    B, H, Hkv, Nq, Nk, D = shape
    tri, ref = _dense(**_full_kw(is_causal=causal))
    _compare(tri, ref, _grad_inputs(B, H, Hkv, Nq, Nk, D, torch.float32), _alpha(alpha, H), torch.float32)


@pytest.mark.parametrize("alpha", [1.5, 1.0, (4 / 3, 1.25)])
def test_dense_fp16(alpha):
    tri, ref = _dense(**_full_kw(is_causal=True))
    _compare(tri, ref, _grad_inputs(1, 2, 1, 64, 64, 32, torch.float16), _alpha(alpha, 2), torch.float16)


def test_scalar_alpha_not_learned_and_float_alpha():
    q, k, v = _grad_inputs(1, 2, 1, 40, 40, 32, torch.float32)
    tri, ref = _dense(**_full_kw(is_causal=True))
    _compare(tri, ref, (q, k, v), _alpha(1.5, 2, learn=False), torch.float32)
    with torch.no_grad():
        out = adasplash_attention_triton(q, k, v, 1.3, is_causal=True)
        r = attention_reference(q.double(), k.double(), v.double(), 1.3, is_causal=True)
    assert (out.double() - r).abs().max().item() <= 2e-5


def test_key_padding_fully_masked_rows():
    B, H, N, D = 2, 2, 40, 32
    kpm = torch.rand(B, N) > 0.4
    kpm[1] = False  # batch row 1 sees no key: zero output, zero grads
    tri, ref = _dense(**_full_kw(key_padding_mask=kpm))
    q, k, v = _grad_inputs(B, H, 1, N, N, D, torch.float32)
    out, (dq, dk, dv, _) = _compare(tri, ref, (q, k, v), _alpha((1.5, 1.0), H), torch.float32)
    assert out[1].abs().max().item() == 0.0
    assert dq[1].abs().max().item() == 0.0 and dk[1].abs().max().item() == 0.0 and dv[1].abs().max().item() == 0.0


@pytest.mark.parametrize("causal, window", [(True, 7), (False, 9)], ids=["causal-w7", "noncausal-w9"])
def test_window(causal, window):
    tri, ref = _dense(**_full_kw(is_causal=causal, window=window))
    _compare(tri, ref, _grad_inputs(1, 2, 1, 64, 64, 32, torch.float32), _alpha((1.5, 1.2), 2), torch.float32)


def test_softcap_and_scale():
    tri, ref = _dense(**_full_kw(is_causal=True, softcap=3.0, scale=0.4))
    _compare(tri, ref, _grad_inputs(1, 2, 1, 48, 48, 32, torch.float32), _alpha((1.5, 1.0), 2), torch.float32)


def test_position_indices_and_window():
    B, N = 2, 48
    # two packed documents per row: positions restart, so keys of the first document stay visible by position
    idx = torch.cat([torch.arange(20), torch.arange(N - 20)])
    q_idx = torch.stack([idx, torch.arange(N)])
    tri, ref = _dense(**_full_kw(q_idx=q_idx, k_idx=q_idx, window=12))
    _compare(tri, ref, _grad_inputs(B, 2, 1, N, N, 32, torch.float32), _alpha(1.5, 2), torch.float32)


@pytest.mark.parametrize("causal", [True, False])
def test_varlen(causal):
    lens_q = [17, 0, 40, 5]
    lens_k = [17, 3, 40, 0] if not causal else [23, 0, 40, 9]
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    H, Hkv, D = 4, 2, 32
    q = torch.randn(sum(lens_q), H, D).requires_grad_()
    k = torch.randn(sum(lens_k), Hkv, D).requires_grad_()
    v = torch.randn(sum(lens_k), Hkv, D).requires_grad_()
    a = _alpha((1.5, 1.0, 2.0, 1.3), H)
    kw = {"is_causal": causal, "window": None, "softcap": None, "scale": None}
    tri = lambda q, k, v, a: adasplash_varlen_attention_triton(  # noqa: E731
        q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), a, **kw)
    ref = lambda q, k, v, a: varlen_attention_reference(q, k, v, cu_q, cu_k, a, **kw)  # noqa: E731
    _compare(tri, ref, (q, k, v), a, torch.float32)


def _local_inputs(N, D, pos=4.0):
    """q and k share a sinusoidal position code: attention concentrates near the diagonal, far tiles are empty."""
    i = torch.arange(N, dtype=torch.float32)[:, None]
    f = 1.0 / (64.0 ** (torch.arange(D // 2, dtype=torch.float32) / (D // 2)))
    c = torch.cat([(i * f).sin(), (i * f).cos()], -1) * math.sqrt(2.0)
    q = torch.randn(1, 2, N, D) * 0.3 + pos * c
    k = torch.randn(1, 2, N, D) * 0.3 + pos * c
    return q, k, torch.randn(1, 2, N, D)


def test_tiles_are_skipped_and_result_is_exact():
    # pos 2: scores up to ~10, where fp32 d(alpha) is within its usual bound (at pos 4, |z| ~ 45, the kernel's
    # fp32 d(alpha) error reaches ~1.5e-3, ~5x the dense fp32 computation's: noted in RELIABILITY.md)
    q, k, v = _local_inputs(128, 32, pos=2.0)
    a = torch.full((2,), 1.5)
    out, o2, tau, ent, o3, gap, thr, idx, cnt = torch.ops.hf_adasplash.attn_fwd(
        q, k, v, a, None, None, None, None, None, 128, 128, True, 32**-0.5, -1, 0.0, True, False)
    visited = ~torch.isnan(gap)  # tiles the forward never visits keep their NaN poison
    listed = gap > thr[..., None]
    assert listed.sum() < 0.7 * visited.sum(), "local inputs should leave many causal tiles empty"
    qr, kr, vr = (t.requires_grad_() for t in (q, k, v))
    tri, ref = _dense(**_full_kw(is_causal=True))
    _compare(tri, ref, (qr, kr, vr), a.requires_grad_(), torch.float32)


def test_inference_matches_training_path():
    q, k, v = _grad_inputs(1, 2, 1, 40, 40, 32, torch.float32)
    a = _alpha(1.5, 2)
    out = adasplash_attention_triton(q, k, v, a, is_causal=True)
    with torch.no_grad():
        out_inf = adasplash_attention_triton(q, k, v, a, is_causal=True)
    assert torch.equal(out.detach(), out_inf)


def test_custom_op_fake_and_compile():
    q, k, v = (torch.randn(1, 2, 24, 32) for _ in range(3))
    a = torch.full((2,), 1.5)
    args = (q, k, v, a, None, None, None, None, None, 24, 24, True, 32**-0.5, -1, 0.0, True, True)
    torch.library.opcheck(torch.ops.hf_adasplash.attn_fwd, args, test_utils=("test_schema", "test_faketensor"))

    def f(q, k, v, a):
        return adasplash_attention_triton(q, k, v, a, is_causal=True) * 2

    qg, kg, vg, ag = (t.clone().requires_grad_() for t in (q, k, v, a))
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(qg, kg, vg, ag)
    ref = attention_reference(q.double(), k.double(), v.double(), a.double(), is_causal=True) * 2
    assert (out.double() - ref).abs().max().item() <= 4e-5
    out.sum().backward()
    assert ag.grad is not None and torch.isfinite(ag.grad).all()


def test_eager_calls_skip_the_op_dispatch_and_traces_keep_it(monkeypatch):
    # the torch.library dispatch cost ~1 ms of host time per call on the GPU machine: plain tensors call the
    # implementations directly; fake tensors (torch.compile, export) must still meet the registered ops and fakes
    from torch._subclasses.fake_tensor import FakeTensorMode

    from hf_adasplash.ops import attention_ops

    direct = []
    for name in ("attn_fwd_impl", "attn_bwd_impl"):
        real = getattr(attention_ops, name)
        monkeypatch.setattr(attention_ops, name, lambda *a, _r=real, _n=name: direct.append(_n) or _r(*a))
    q, k, v = (torch.randn(1, 2, 20, 32, requires_grad=True) for _ in range(3))
    a = torch.tensor([1.5, 1.25], requires_grad=True)
    out = adasplash_attention_triton(q, k, v, a, is_causal=True)
    out.sum().backward()
    assert direct == ["attn_fwd_impl", "attn_bwd_impl"]
    ref = attention_reference(q.double(), k.double(), v.double(), a.double(), is_causal=True)
    assert (out.double() - ref).abs().max().item() <= 2e-6
    plain = [t.detach() for t in (q, k, v)]
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in plain)
        fake = adasplash_attention_triton(fq, fk, fv, 1.5, is_causal=True)
    assert fake.shape == q.shape and direct == ["attn_fwd_impl", "attn_bwd_impl"]


def test_short_queries_without_grad_route_to_decode():
    from hf_adasplash.ops import attention as A

    if A.adasplash_decode_triton is None:
        pytest.skip("decode kernel module not importable")
    q, k, v = (torch.randn(2, 4, n, 32) for n in (3, 50, 50))
    kpm = torch.rand(2, 50) > 0.2
    calls = []
    real = A.adasplash_decode_triton

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    A.adasplash_decode_triton = spy
    try:
        with torch.no_grad():
            out = adasplash_attention_triton(q, k, v, torch.tensor([1.5, 1.0, 2.0, 1.25]), is_causal=True,
                                             key_padding_mask=kpm)
    finally:
        A.adasplash_decode_triton = real
    ref = attention_reference(q.double(), k.double(), v.double(), torch.tensor([1.5, 1.0, 2.0, 1.25]).double(),
                              is_causal=True, key_padding_mask=kpm)
    assert calls, "Nq <= 16 without grad should use the decode kernel"
    assert (out.double() - ref).abs().max().item() <= 2e-5


def test_alpha_only_training_and_transposed_layout():
    """HF hands q/k/v as [B, N, H, D].transpose(1, 2) views; alpha alone may be trained on a frozen model."""
    B, N, H, Hkv, D = 2, 40, 4, 2, 32
    q = torch.randn(B, N, H, D).transpose(1, 2)
    k = torch.randn(B, N, Hkv, D).transpose(1, 2)
    v = torch.randn(B, N, Hkv, D).transpose(1, 2)
    a = torch.tensor([1.5, 1.2, 1.8, 1.0], requires_grad=True)
    out = adasplash_attention_triton(q, k, v, a, is_causal=True)
    do = torch.randn_like(out)
    (da,) = torch.autograd.grad(out, a, do)
    a64 = a.detach().double().requires_grad_()
    ref = attention_reference(q.double(), k.double(), v.double(), a64, is_causal=True)
    (da64,) = torch.autograd.grad(ref, a64, do.double())
    assert (out.double() - ref).abs().max().item() <= 2e-5
    assert (da.double() - da64).abs().max().item() <= 1e-4 * max(1.0, da64.abs().max().item())
    assert da[3].item() == 0.0  # alpha == 1 is softmax: no gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dalpha_paths_agree(monkeypatch, dtype):
    # d(alpha)'s sum dP p log p: from the forward's O3 (D <= 64 on the GPU) or summed in the dq loop (D >= 80);
    # both on the same inputs, each against the float64 truth and against each other
    from hf_adasplash.ops import tiling

    q, k, v = _grad_inputs(2, 4, 2, 40, 40, 32, dtype)
    a = _alpha(1.3, 4)
    base = tiling.tiles(32)
    grads = {}
    for o3 in (True, False):
        variant = dataclasses.replace(base, o3_fwd=o3)
        monkeypatch.setattr(attention_ops, "tiles", lambda d, _t=variant: _t)
        _compare(lambda q, k, v, a: adasplash_attention_triton(q, k, v, a, is_causal=True),
                 lambda q, k, v, a: attention_reference(q, k, v, a, is_causal=True), (q, k, v), a, dtype)
        out = adasplash_attention_triton(q, k, v, a, is_causal=True)
        grads[o3] = torch.autograd.grad(out, (q, a), torch.ones_like(out))
    assert torch.equal(grads[True][0], grads[False][0])  # dq itself does not depend on the path
    rel = ((grads[True][1] - grads[False][1]).abs().max() / grads[False][1].abs().max()).item()
    assert rel <= (1e-4 if dtype == torch.float32 else 2e-2), rel  # the fp32 d(alpha) bound of the GPU accuracy test


@pytest.mark.parametrize("late_sum", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_scan_and_tau_kernels_match_fused_phases(monkeypatch, causal, late_sum):
    # phase A (row max, tile gaps) and phase B (tau, tile list) as their own kernels or inside the main one: the same
    # arithmetic, so bit-identical outputs, tau rows, tile lists and gradients; softmax, entmax and sparsemax heads,
    # padded keys
    from hf_adasplash.ops import tiling

    q, k, v = _grad_inputs(2, 4, 2, 70, 70, 32, torch.float32)
    kpm = torch.rand(2, 70) > 0.2
    a = _alpha((1.0, 1.3, 1.5, 2.0), 4)
    # (the tile-maxima start needs the tau kernel: off here, tested in test_tile_max_start.py)
    base = dataclasses.replace(tiling.tiles(32), solve_late_sum=late_sum, tile_max_start=0)
    runs = {}
    for scan, solve in ((True, True), (True, False), (False, False)):
        variant = dataclasses.replace(base, scan=scan, solve=solve)
        monkeypatch.setattr(attention_ops, "tiles", lambda d, _t=variant: _t)
        fwd = torch.ops.hf_adasplash.attn_fwd(q.detach(), k.detach(), v.detach(), a.detach(), None, None, None, None,
                                              kpm, 70, 70, causal, 32**-0.5, -1, 0.0, True, True)
        out = adasplash_attention_triton(q, k, v, a, is_causal=causal, key_padding_mask=kpm)
        runs[scan, solve] = (fwd, torch.autograd.grad(out, (q, k, v, a), torch.ones_like(out)))
    fwd_s, g_s = runs[True, True]
    for fwd_f, g_f in (runs[True, False], runs[False, False]):
        for name, x, y in zip(["o", "o2", "tau", "ent", "o3", "gap", "thr"], fwd_s, fwd_f):
            # tiles no forward visits keep the NaN poison in all
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=name)
        cnt = fwd_s[8]
        assert torch.equal(cnt, fwd_f[8])
        for i in range(cnt.numel()):  # entries past each list's length are scratch
            n = int(cnt.flatten()[i])
            assert torch.equal(fwd_s[7].flatten(0, 1)[i, :n], fwd_f[7].flatten(0, 1)[i, :n])
        for x, y in zip(g_s, g_f):
            assert torch.equal(x, y)
    ref = attention_reference(q.double(), k.double(), v.double(), a.double(), is_causal=causal, key_padding_mask=kpm)
    assert (fwd_s[0].double() - ref).abs().max().item() <= 2e-5


@pytest.mark.parametrize("nq,nk", [(75, 100), (100, 75)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
def test_scan_loop_split_and_launch_order_change_no_bit(monkeypatch, causal, dtype, nq, nk):
    # the scan's unmasked loops (tiles inside every boundary; the row max taken before the scale) and the causal
    # longest-first launch order (forward and backward, in groups of heads) against the single masked loop in grid
    # order: identical gaps, tau rows, tile lists, outputs and gradients. Nq != Nk and ragged key tiles put the
    # diagonal and the last tile mid-block; with Nq > Nk the first causal rows see no key at all
    from hf_adasplash.cli.bench import make_inputs
    from hf_adasplash.ops import tiling

    # local inputs (tiles get skipped); with Nq > Nk the keys are the first Nk positions
    q, k, v = make_inputs(1, 4, 2, nq, max(nq, nk), 32, 3.0, dtype, "cpu")
    q, k, v = (t[:, :, :n].clone().requires_grad_() for t, n in ((q, nq), (k, nk), (v, nk)))
    a = _alpha((1.0, 1.25, 1.5, 2.0), 4)
    runs = {}
    real_group = attention_ops.heavy_group
    # longest-first in groups of heads: one group (HG = B x H), two KV heads' query heads (a 1 KiB budget holds one
    # KV head: HG = 2), and 3 of the 4 heads (a ragged last group)
    for split, heavy, group in ((0, False, None), (1, True, None), (2, False, None), (2, True, None),
                                (2, True, 1), (1, True, "ragged")):
        variant = dataclasses.replace(tiling.tiles(32), scan_split=split, heavy_first=heavy, bwd_heavy_first=heavy,
                                      heavy_group_kib=0 if group is None else 1)
        monkeypatch.setattr(attention_ops, "tiles", lambda d, _t=variant: _t)
        monkeypatch.setattr(attention_ops, "heavy_group",
                            (lambda *a: 3) if group == "ragged" else real_group)
        fwd = torch.ops.hf_adasplash.attn_fwd(q.detach(), k.detach(), v.detach(), a.detach(), None, None, None, None,
                                              None, nq, nk, causal, 32**-0.5, -1, 0.0, True, True)
        out = adasplash_attention_triton(q, k, v, a, is_causal=causal)
        runs[split, heavy, group] = (fwd, torch.autograd.grad(out, (q, k, v, a), torch.ones_like(out)))
    assert real_group(tiling.tiles(32), 4, 2, nk, 32, q.element_size()) == 4  # the default: one group here
    assert real_group(dataclasses.replace(tiling.tiles(32), heavy_group_kib=1), 4, 2, nk, 32, 4) == 2
    fwd_0, g_0 = runs.pop((0, False, None))
    assert fwd_0[6].numel() > 1 and (fwd_0[8] < fwd_0[5].shape[-1]).any()  # several blocks; some tiles skipped
    for fwd, g in runs.values():
        for name, x, y in zip(["o", "o2", "tau", "ent", "o3", "gap", "thr", "idx", "cnt"], fwd, fwd_0):
            if name != "idx":  # list entries past each length are scratch
                torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=name)
        for x, y in zip(g, g_0):
            assert torch.equal(x, y)


@pytest.mark.parametrize("need_bwd", [False, True])
def test_per_class_loops_as_sibling_ifs_change_no_bit(monkeypatch, need_bwd):
    # Tiles.flat_dispatch: the forward's per-alpha-class output loops as sibling ifs (the default; always on Triton
    # >= 3.8, for its shared memory) or as an if/elif chain (Triton 3.6-3.7's inference main kernel when every head
    # is 1.5 or 2); one head per class, fp16 (fp32 has one loop)
    from hf_adasplash.cli.bench import make_inputs
    from hf_adasplash.ops import tiling

    q, k, v = make_inputs(1, 6, 3, 70, 70, 32, 1.0, torch.float16, "cpu")
    a = _alpha((1.0, 1.5, 2.0, 4 / 3, 1.02, 1.4), 6)  # softmax, square, linear, integer, near 1, general
    assert tiling.flat_dispatch(tiling.tiles(32))
    assert tiling.flat_dispatch(tiling.tiles(32), chain_faster=True) == (tiling.TRITON_VERSION >= (3, 8))
    runs = []
    for flat in (0, 1):
        variant = dataclasses.replace(tiling.tiles(32), flat_dispatch=flat)
        monkeypatch.setattr(attention_ops, "tiles", lambda d, _t=variant: _t)
        runs.append(torch.ops.hf_adasplash.attn_fwd(q, k, v, a.detach(), None, None, None, None, None, 70, 70, True,
                                                    32**-0.5, -1, 0.0, need_bwd, need_bwd))
    for name, x, y in zip(["o", "o2", "tau", "ent", "o3", "gap", "thr", "idx", "cnt"], *runs):
        if name != "idx":  # list entries past each length are scratch
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=name)
    ref = attention_reference(q.double(), k.double(), v.double(), a.double(), is_causal=True)
    assert (runs[0][0].double() - ref).abs().max().item() <= 2e-2


def test_heavy_groups_hold_the_kv_heads_that_fit_the_l2_budget():
    # longest-first groups (query_block's HG): the query heads of as many KV heads as the budget holds K and V for
    from hf_adasplash.ops import tiling

    t = tiling.tiles(64)
    assert tiling.heavy_group(t, 128, 1, 4096, 64, 2) == 32  # 1 MiB of K/V per head, 32 MiB
    assert tiling.heavy_group(t, 36, 3, 4096, 64, 2) == 36  # 32 KV heads x 3 query heads each: every head
    assert tiling.heavy_group(t, 64, 4, 1 << 20, 128, 2) == 4  # one KV head does not fit: its query heads alone
    assert tiling.heavy_group(dataclasses.replace(t, heavy_group_kib=0), 128, 1, 4096, 64, 2) == 128  # one group


def test_inference_forward_takes_its_own_register_cap_and_stages():
    # two main-forward programs per SM at inference (bench/NOTES.md v21); training and fp32 keep their settings
    from hf_adasplash.ops import tiling

    t = dataclasses.replace(tiling.tiles(64), fwd_warps=8, fwd_stages=4, fwd_ent_warps=8, fwd_ent_stages=3,
                            fwd_infer_maxnreg=128, fwd_infer_stages=2)
    assert tiling.fwd_launch_args(t, False, False, False) == {"num_warps": 8, "num_stages": 2, "maxnreg": 128}
    assert tiling.fwd_launch_args(t, True, False, False) == {"num_warps": 8, "num_stages": 4}
    assert tiling.fwd_launch_args(t, True, True, False) == {"num_warps": 8, "num_stages": 3}
    assert tiling.fwd_launch_args(t, False, False, True) == {"num_warps": 8, "num_stages": 2}  # fp32: no cap
    t0 = dataclasses.replace(t, fwd_infer_maxnreg=0, fwd_infer_stages=0)
    assert tiling.fwd_launch_args(t0, False, False, False) == {"num_warps": 8, "num_stages": 4}


def test_fp32_heads_near_alpha_1_keep_x_minus_1_exact():
    # at alpha = 1.0001, p = x^(1/(alpha-1)) multiplies x's rounding near 1 (6e-8 in fp32) by 1e4: such heads carry
    # tau from m - 1, so r = x - 1 is exact and the power takes log1p(r). Output and dq/dk/dv then match float64
    # like the dense fp32 reference does (the plain offset gave 7e-5 / 2e-4 at 1.0001 and 8e-6 / 2e-5 at 1.001)
    torch.manual_seed(0)
    alphas = [1.0001, 1.001, 1.01, 1.03, 1.5]
    q, k, v = _grad_inputs(1, len(alphas), len(alphas), 70, 70, 32, torch.float32)
    a = torch.tensor(alphas, dtype=torch.float64)
    out = adasplash_attention_triton(q, k, v, a, is_causal=True)
    g = torch.randn_like(out)
    got = (out, *torch.autograd.grad(out, (q, k, v), g))
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_reference(qd, kd, vd, a, is_causal=True)
    want = (ref, *torch.autograd.grad(ref, (qd, kd, vd), g.double()))
    for name, x, y in zip(("out", "dq", "dk", "dv"), got, want):
        err = (x.double() - y).abs().amax(dim=(0, 2, 3)) / y.abs().amax()
        assert (err <= 2e-6).all(), (name, err.tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dalpha_below_1_2_is_summed_per_entry(dtype):
    # d(alpha) from row sums is O(1/(alpha-1)) - O(1/(alpha-1)): 64% off at alpha = 1.001 in fp32, 150% at 1.05 in
    # fp16 (whose O and O2 are rounded). Heads below 1.2 take the per-entry form, as accurate as the dense fp32
    # reference here; heads at 1.2 and above keep the row sums (checked against their looser bound)
    torch.manual_seed(0)
    alphas = [1.0001, 1.001, 1.01, 1.05, 1.15, 1.5]
    q, k, v = _grad_inputs(1, len(alphas), len(alphas), 70, 70, 32, dtype)
    a = torch.tensor(alphas, dtype=torch.float64, requires_grad=True)
    out = adasplash_attention_triton(q, k, v, a, is_causal=True)
    g = torch.randn_like(out)
    (da,) = torch.autograd.grad(out, (a,), g)
    qd, kd, vd = (t.detach().double() for t in (q, k, v))
    ad = a.detach().clone().requires_grad_()
    ref = attention_reference(qd, kd, vd, ad, is_causal=True)
    (rda,) = torch.autograd.grad(ref, (ad,), g.double())
    err = ((da - rda).abs() / rda.abs()).tolist()
    low = 1e-5 if dtype == torch.float32 else 1e-3
    assert max(err[:5]) <= low and err[5] <= 2e-2, err


def test_half_precision_tau_tolerance_near_alpha_1_and_2():
    # half-precision inputs take a looser tau tolerance at alpha = 1.5; near alpha = 2 (x^(p-2) ~ 1/x) and alpha = 1
    # it must tighten again: a 2^-6 step tolerance at alpha = 1.999 gave 1e-2 output error in fp16 (GPU matrix)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, h, 64, 96).half() for h in (4, 2, 2))
    a = torch.tensor([1.0001, 1.999, 1.99, 1.5], dtype=torch.float64)
    out = adasplash_attention_triton(q, k, v, a, is_causal=True).double()
    ref = attention_reference(q.double(), k.double(), v.double(), a, is_causal=True)
    err = (out - ref).abs().amax(dim=(0, 2, 3)) / ref.abs().amax()
    assert (err <= 2e-3).all(), err  # fp16 rounding of p and the output: ~5e-4


def _spy_tau_launches(monkeypatch, *keys):
    """The tau kernel's launch arguments ``keys`` of every launch, in order (the kernel still runs)."""
    seen = []
    real = attention_ops.adasplash_fwd_tau_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(**kw):
                seen.append(tuple(kw[key] for key in keys))
                return real[grid](**kw)
            return launch

    monkeypatch.setattr(attention_ops, "adasplash_fwd_tau_kernel", Spy())
    return seen


def test_half_precision_takes_the_fp32_tau_tolerance_when_alpha_learns(monkeypatch):
    # d(alpha) reads O2, O3 and the entropy at the tau loop's last point: with the half-precision tolerance the
    # alpha = 1.75 head's fp16 d(alpha) erred 1.3e-1 on these inputs (4e-3 with the fp32 tolerance). Inference and a
    # frozen alpha keep the loose tolerance.
    seen = _spy_tau_launches(monkeypatch, "STRICT_TOL")
    torch.manual_seed(1)
    alphas = [1.5, 4 / 3, 1.25, 1.75]
    q, k, v, g = (torch.randn(1, len(alphas), 128, 64, dtype=torch.float16) for _ in range(4))
    a = torch.tensor(alphas, requires_grad=True)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    (da,) = torch.autograd.grad(adasplash_attention_triton(qg, kg, vg, a, is_causal=True), (a,), g)
    ad = torch.tensor(alphas, dtype=torch.float64, requires_grad=True)
    ref = attention_reference(q.double(), k.double(), v.double(), ad, is_causal=True)
    (rda,) = torch.autograd.grad(ref, (ad,), g.double())
    err = ((da.double() - rda).abs() / rda.abs()).tolist()
    assert max(err) <= 2e-2, err
    with torch.no_grad():
        adasplash_attention_triton(q, k, v, a, is_causal=True)
    assert seen == [(True,), (False,)]


def test_fixed_square_alpha_takes_its_own_tau_settings(monkeypatch):
    # a float alpha of 1.5 (known on the host) runs the tau kernel with Tiles.square_solve; the same alpha as a
    # tensor runs the general settings: both match the reference, and each other to fp32 rounding
    from hf_adasplash.ops import tiling

    seen = _spy_tau_launches(monkeypatch, "BNT", "LATE_SUM")
    q, k, v = _grad_inputs(1, 2, 2, 70, 70, 32, torch.float32)
    outs = {}
    for name, a in (("float", 1.5), ("tensor", torch.tensor(1.5, dtype=torch.float64))):
        out = adasplash_attention_triton(q, k, v, a, is_causal=True)
        outs[name] = (out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))
    square = tiling.tiles(32).square_solve
    assert seen == [(square[0], square[2]), (16, False)]
    ref = attention_reference(q.double(), k.double(), v.double(), 1.5, is_causal=True)
    assert (outs["float"][0].double() - ref).abs().max().item() <= 2e-5
    for x, y in zip(outs["float"], outs["tensor"]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_alpha_on_the_grid_takes_the_grid_tau_settings_and_a_wrong_hint_stays_exact(monkeypatch):
    # alphas on the multiplication grid (a float like 4/3, or a tensor the caller marks, e.g. snapped) run the tau
    # kernel with Tiles.grid_solve_bn; a tensor without the hint keeps solve_bn_square. The hint picks launch
    # settings only: a general alpha marked as on the grid must still match the reference
    from hf_adasplash.ops import tiling

    seen = _spy_tau_launches(monkeypatch, "BNT_SQ")
    t = tiling.tiles(32)
    assert t.grid_solve_bn != t.solve_bn_square  # else this test checks nothing
    torch.manual_seed(0)
    q, k, v = _grad_inputs(1, 3, 1, 70, 70, 32, torch.float32)
    grid_alpha = torch.tensor([4 / 3, 1.5, 2.0], dtype=torch.float64)
    general = torch.tensor([1.3, 1.7, 1.5], dtype=torch.float64)
    cases = [(4 / 3, False, t.grid_solve_bn), (grid_alpha, False, t.solve_bn_square),
             (grid_alpha, True, t.grid_solve_bn), (general, True, t.grid_solve_bn)]
    for alpha, hint, bnt in cases:
        seen.clear()
        out = adasplash_attention_triton(q, k, v, alpha, is_causal=True, alpha_grid=hint)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        assert seen == [(min(bnt, t.BN),)], (alpha, hint)
        ref = attention_reference(q.double(), k.double(), v.double(), alpha, is_causal=True)
        rdq, rdk, rdv = torch.autograd.grad(ref, (q, k, v), torch.ones_like(ref))
        for x, y in ((out, ref), (dq, rdq), (dk, rdk), (dv, rdv)):
            assert ((x.double() - y).abs().max() / y.abs().max()).item() <= 1e-4, (alpha, hint)


def test_output_pass_folds_in_the_last_tau_step(monkeypatch):
    # the output pass makes one more Newton step from sums it has anyway (sum p, sum u, U V): with the tau loop
    # stopped early (step tolerance 2^-3 instead of 2^-12) the folded output still matches the reference to fp32
    # rounding, while the same early tau without the fold shows its error
    from hf_adasplash.ops import tiling

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, h, 96, 32) for h in (4, 2, 2))
    a = torch.tensor([1.25, 1.35, 1.5, 1.75], dtype=torch.float64)
    ref = attention_reference(q.double(), k.double(), v.double(), a, is_causal=True)
    monkeypatch.setattr(attention_ops, "fold_args", lambda t: {"fold_lo": 512.0, "fold_hi": 512.0})
    errs = {}
    for fold in (True, False):
        variant = dataclasses.replace(tiling.tiles(32), fold=fold)
        monkeypatch.setattr(attention_ops, "tiles", lambda d, _t=variant: _t)
        out = adasplash_attention_triton(q, k, v, a, is_causal=True).double()
        errs[fold] = (out - ref).abs().amax(dim=(0, 2, 3)) / ref.abs().amax()
    assert (errs[True] <= 2e-6).all(), errs[True]
    assert errs[False].max() >= 1e-4, errs[False]  # the early stop did leave tau short


@pytest.mark.parametrize("pos", [0.0, 1.5])
def test_folded_step_tightens_the_backward_tile_list(monkeypatch, pos):
    # in training the folded step is also a certified bound (Newton on the convex sum p - 1 lands left of tau), so
    # the list the backward walks is compacted again: after an early stop its threshold is tighter than the tau
    # kernel's (random inputs; local ones have one-hot rows, whose bound m - 1 is exact), the list never longer,
    # and it still holds every tile where exact (float64) entmax has support (local inputs: some tiles empty)
    from hf_adasplash.cli.bench import make_inputs
    from hf_adasplash.entmax import entmax
    from hf_adasplash.ops import tiling

    torch.manual_seed(0)
    q, k, v = make_inputs(1, 4, 2, 128, 128, 32, pos, torch.float32, "cpu")
    a = torch.tensor([1.25, 1.35, 1.5, 1.75], dtype=torch.float64)
    monkeypatch.setattr(attention_ops, "fold_args", lambda t: {"fold_lo": 512.0, "fold_hi": 512.0})
    lists = {}
    for fold in (True, False):
        variant = dataclasses.replace(tiling.tiles(32), fold=fold)
        monkeypatch.setattr(attention_ops, "tiles", lambda d, _t=variant: _t)
        fwd = torch.ops.hf_adasplash.attn_fwd(q, k, v, a, None, None, None, None, None, 128, 128, True, 32**-0.5, -1,
                                              0.0, True, True)
        lists[fold] = (fwd[6], fwd[7], fwd[8])
    thr, idx, cnt = lists[True]
    assert (thr >= lists[False][0]).all() and (cnt <= lists[False][2]).all()
    if pos == 0.0:
        assert (thr > lists[False][0]).any()
    else:
        assert cnt.sum() < 40  # of 40 visible tiles
    s = q.double() @ k.double().repeat_interleave(2, dim=1).transpose(-1, -2) * 32**-0.5
    s = s.masked_fill(~torch.ones(128, 128, dtype=torch.bool).tril(), float("-inf"))
    p = entmax(s, a[:, None, None], dim=-1)
    support = (p > 0).unflatten(2, (4, 32)).unflatten(-1, (4, 32)).any(-1).any(-2)[0]  # [H, query block, key tile]
    for h in range(4):
        for i in range(4):
            listed = set(idx[h, i, : cnt[h, i]].tolist())
            assert set(support[h, i].nonzero().flatten().tolist()) <= listed, (h, i)


def test_launch_plans_follow_the_settings_and_hooks_in_force(monkeypatch):
    # each op caches its launches per input signature (ops/plans.py): settings that scripts and tests swap in (the
    # tiles, fold_args) must give new plans, never a replay of a stale one; the same inputs again reuse theirs
    from hf_adasplash.ops import tiling

    seen, real = [], attention_ops.launch

    def spy(fn, grid, **kw):
        if fn is attention_ops.adasplash_fwd_kernel:
            seen.append((kw["O3_FWD"], kw["fold_lo"]))
        real(fn, grid, **kw)

    monkeypatch.setattr(attention_ops, "launch", spy)
    q, k, v = (torch.randn(1, 2, 40, 32) for _ in range(3))
    a = torch.tensor([1.5, 1.25], dtype=torch.float64)
    base = tiling.tiles(32)
    flipped = dataclasses.replace(base, o3_fwd=not base.o3_fwd)

    def fwd():
        return attention_ops.attn_fwd_impl(q, k, v, a, None, None, None, None, None, 40, 40, True, 32**-0.5, -1,
                                           0.0, True, True)[0]

    outs = []
    for variant in (base, flipped, base):
        monkeypatch.setattr(attention_ops, "tiles", lambda d, _t=variant: _t)
        outs.append(fwd())
    monkeypatch.setattr(attention_ops, "fold_args", lambda t: {"fold_lo": 1.0, "fold_hi": 1.0})
    outs.append(fwd())
    lo = tiling.fold_args(base)["fold_lo"]
    assert seen == [(base.o3_fwd, lo), (not base.o3_fwd, lo), (base.o3_fwd, lo), (base.o3_fwd, 1.0)]
    assert torch.equal(outs[0], outs[2])  # the same plan replayed: the same launches


def test_row_live_drops_a_listed_tile_no_row_needs(monkeypatch):
    # Tiles.row_live: built so that the block's one threshold keeps a tile no row needs. alpha = 1.5, z = (alpha - 1)
    # scale q.k: rows 0-15 score 4 on key 0 alone (tau = m - 1); rows 16-31 score 4 on keys 1 and 2 (tau = m - 1/sqrt2)
    # and 3.2 on key 40, in the second key tile. Its gap (-0.8) beats the block's lowest offset (-1): listed, though
    # no row gives it weight. With row_live the tau kernel's second pass drops it; the results stay the reference's.
    from hf_adasplash.ops import tiling

    D, z_top = 32, 4.0
    c = z_top / (0.5 * D**-0.5)
    q = torch.zeros(1, 1, 32, D)
    q[0, 0, :16, 0] = 1.0
    q[0, 0, 16:, 1] = 1.0
    k = torch.zeros(1, 1, 64, D)
    k[0, 0, 0, 0] = c
    k[0, 0, 1:3, 1] = c
    k[0, 0, 40, 1] = c * 0.8
    v = torch.randn(1, 1, 64, D)
    a = torch.tensor([1.5])
    seen, real = {}, attention_ops.launch

    def spy(fn, grid, **kw):
        real(fn, grid, **kw)
        if fn is attention_ops.adasplash_fwd_tau_kernel:
            seen[key] = kw["tile_cnt"].flatten().tolist()

    monkeypatch.setattr(attention_ops, "launch", spy)
    base = tiling.tiles(D)
    assert base.BM == 32 and base.BN == 32  # the interpreter's tiles: one row block, two key tiles
    qd, kd, vd = (x.double().requires_grad_() for x in (q, k, v))
    ref = attention_reference(qd, kd, vd, a.double(), is_causal=False)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), g)
    for key in (False, True):
        t = tiling.with_fields(base, [f"row_live={int(key)}"])
        monkeypatch.setattr(attention_ops, "tiles", lambda d, t=t: t)
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        out = adasplash_attention_triton(qq, kk, vv, a, is_causal=False)
        assert (out.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
        for x, y in zip(torch.autograd.grad(out, (qq, kk, vv), g.float()), ref_grads):
            assert (x.double() - y).abs().max().item() <= 1e-4 * max(y.abs().max().item(), 1.0)
    assert seen == {False: [2], True: [1]}


def test_gqa_dkv_short_grid_takes_its_own_slices(monkeypatch):
    # a GQA dk/dv grid of at most DKV_SHORT_GRID_PROGRAMS_PER_SM programs per SM takes Tiles.gqa_dkv_short, a longer
    # one Tiles.gqa_dkv (the interpreter counts one SM); without GQA neither. Gradients match the reference either way
    from hf_adasplash.ops import tiling

    cpu = torch.device("cpu")
    per_sm = tiling.DKV_SHORT_GRID_PROGRAMS_PER_SM
    assert tiling.dkv_short_grid(per_sm, cpu) and not tiling.dkv_short_grid(per_sm + 1, cpu)
    monkeypatch.setattr(tiling, "_sm_count", lambda index: 132)
    assert tiling.dkv_short_grid(per_sm * 132, torch.device("cuda", 0))
    assert not tiling.dkv_short_grid(per_sm * 132 + 1, torch.device("cuda", 0))
    t = tiling.with_fields(tiling.tiles(32), ["gqa_dkv=32:1:168", "gqa_dkv_short=16:1:0"])
    assert tiling.dkv_launch_args(t, 2, short_grid=True) == {"BMS": 16, "num_warps": t.dkv_warps or t.bwd_warps,
                                                             "num_stages": 1}
    assert tiling.dkv_launch_args(t, 2, short_grid=False)["BMS"] == 32
    assert tiling.dkv_launch_args(t, 1, short_grid=True)["BMS"] == t.BMS

    seen, real = [], attention_ops.launch

    def spy(fn, grid, **kw):
        if fn is attention_ops.adasplash_bwd_kernel_dkv:
            seen.append((grid[0] * grid[1], kw["BMS"]))
            kw.pop("maxnreg", None)  # a register cap means nothing to the interpreter
        real(fn, grid, **kw)

    monkeypatch.setattr(attention_ops, "launch", spy)
    monkeypatch.setattr(attention_ops, "tiles", lambda d: t)
    a = torch.tensor([1.5, 4 / 3, 1.25, 2.0], dtype=torch.float64)
    for hkv in (1, 2):  # 3 key blocks: 3 programs (short) and 6 (long)
        q, k, v = _grad_inputs(1, 4, hkv, 70, 70, 32, torch.float32)
        out = adasplash_attention_triton(q, k, v, a, is_causal=True)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), g)
        qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
        ref = attention_reference(qd, kd, vd, a, is_causal=True)
        for x, y in zip(grads, torch.autograd.grad(ref, (qd, kd, vd), g.double())):
            assert (x.double() - y).abs().max().item() <= 1e-4 * y.abs().max().item()
    assert seen == [(3, 16), (6, 32)]


def test_gqa_dkv_settings_take_their_slices_and_cap(monkeypatch):
    # under GQA the dk/dv kernel takes Tiles.gqa_dkv's (rows per slice, stages, register cap); without GQA the
    # plain settings. The slice height changes only the order of the sums: gradients match the reference either way
    from hf_adasplash.ops import tiling

    base = tiling.tiles(32)
    t = tiling.with_fields(base, ["gqa_dkv=32:1:168"])
    assert tiling.dkv_launch_args(t, 2) == {"BMS": 32, "num_warps": t.dkv_warps or t.bwd_warps, "num_stages": 1,
                                            "maxnreg": 168}
    assert "maxnreg" not in tiling.dkv_launch_args(t, 1) and tiling.dkv_launch_args(t, 1)["BMS"] == base.BMS
    assert tiling.with_fields(t, ["gqa_dkv=16"]).gqa_dkv == (16, 1, 168)  # values left out keep theirs
    with pytest.raises(ValueError, match="at most 3"):
        tiling.with_fields(t, ["gqa_dkv=16:1:0:5"])

    seen, real = [], attention_ops.launch

    def spy(fn, grid, **kw):
        if fn is attention_ops.adasplash_bwd_kernel_dkv:
            seen.append(kw["BMS"])
            kw.pop("maxnreg", None)  # a register cap means nothing to the interpreter
        real(fn, grid, **kw)

    monkeypatch.setattr(attention_ops, "launch", spy)
    monkeypatch.setattr(attention_ops, "tiles", lambda d: tiling.with_fields(tiling.tiles(d), ["gqa_dkv=32:1:168"]))
    q, k, v = _grad_inputs(1, 4, 2, 70, 70, 32, torch.float32)
    a = torch.tensor([1.5, 4 / 3, 1.25, 2.0], dtype=torch.float64)
    out = adasplash_attention_triton(q, k, v, a, is_causal=True)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    assert seen == [32]
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = attention_reference(qd, kd, vd, a, is_causal=True)
    for x, y in zip(grads, torch.autograd.grad(ref, (qd, kd, vd), g.double())):
        assert (x.double() - y).abs().max().item() <= 1e-4 * y.abs().max().item()
