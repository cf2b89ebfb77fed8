"""Split-K decode kernels vs the float64 reference (Triton interpreter on CPU: tiny shapes)."""

import pytest
import torch

from hf_adasplash.ops.decode import adasplash_decode_triton
from hf_adasplash.reference import attention_reference

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _inputs(B, HQ, HKV, NQ, NK, D, dtype, scale_up=1.0):
    q = (torch.randn(B, HQ, NQ, D) * scale_up).to(dtype)
    k = (torch.randn(B, HKV, NK, D) * scale_up).to(dtype)
    v = torch.randn(B, HKV, NK, D).to(dtype)
    return q, k, v


def _check(q, k, v, alpha, **kw):
    out = adasplash_decode_triton(q, k, v, alpha, **kw)
    a64 = alpha.double() if isinstance(alpha, torch.Tensor) else alpha
    ref = attention_reference(q.double(), k.double(), v.double(), a64, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    err = (out.double() - ref).abs().max().item()
    assert err <= TOL[q.dtype], f"max abs error {err:.3g}"
    return out, ref


@pytest.mark.parametrize(
    "B,HQ,HKV,NQ,NK,D,causal",
    [
        pytest.param(2, 4, 2, 1, 77, 32, True, id="gqa2-nq1-nk77-d32-causal"),
        pytest.param(1, 4, 1, 3, 130, 64, True, id="mqa-nq3-nk130-d64-causal"),
        pytest.param(1, 2, 2, 2, 65, 80, False, id="mha-nq2-nk65-d80"),
        pytest.param(1, 3, 1, 16, 300, 32, True, id="nq16-nk300-multisplit"),
    ],
)
def test_decode_matches_reference(B, HQ, HKV, NQ, NK, D, causal):
    q, k, v = _inputs(B, HQ, HKV, NQ, NK, D, torch.float32)
    # one head of each kind: softmax, entmax-1.5 (closed-form power), near-softmax, sparsemax
    alpha = torch.tensor([1.0, 1.5, 1.1, 2.0, 1.3, 1.7])[:HQ]
    _check(q, k, v, alpha, is_causal=causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_decode_half_precision(dtype):
    q, k, v = _inputs(1, 4, 2, 2, 100, 96, dtype)
    _check(q, k, v, 1.5, is_causal=True)


def test_decode_key_padding_fully_padded_row_is_zero():
    q, k, v = _inputs(3, 2, 1, 2, 90, 32, torch.float32, scale_up=2.0)
    kpm = torch.rand(3, 90) > 0.3
    kpm[1] = False  # batch row 1 sees no key at all
    kpm[2, :64] = False  # whole first tile padded
    out, _ = _check(q, k, v, torch.tensor([1.25, 1.0]), key_padding_mask=kpm)
    assert (out[1] == 0).all()
    # integer masks mean the same
    out_int = adasplash_decode_triton(q, k, v, torch.tensor([1.25, 1.0]), key_padding_mask=kpm.long())
    torch.testing.assert_close(out_int, out, rtol=0, atol=0)


def test_decode_more_queries_than_keys_causal():
    # bottom-right causal with Nq > Nk: the first rows have no visible key and must be zero
    q, k, v = _inputs(1, 2, 1, 5, 3, 32, torch.float32)
    out, _ = _check(q, k, v, 1.5, is_causal=True)
    assert (out[:, :, :2] == 0).all()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_decode_window_softcap_scale(causal):
    q, k, v = _inputs(1, 2, 1, 4, 200, 32, torch.float32, scale_up=3.0)
    _check(q, k, v, torch.tensor([1.5, 1.0]), is_causal=causal, window=70, softcap=5.0, scale=0.3)


def test_decode_many_rows_per_kv_head():
    # G * Nq = 128 rows for one KV head: two row blocks share the K/V of the head
    q, k, v = _inputs(1, 8, 1, 16, 40, 32, torch.float32)
    _check(q, k, v, 1.75, is_causal=True)


def test_decode_peaked_scores_sparse_tiles():
    # large scores make the support a few keys: most V tiles are skipped, the result must not change
    q, k, v = _inputs(1, 2, 1, 1, 256, 32, torch.float32, scale_up=3.0)
    out, ref = _check(q, k, v, 1.5)
    assert out.abs().sum() > 0


@pytest.mark.parametrize("window", [None, 150], ids=["full", "window150"])
def test_decode_small_blocks_exercise_every_loop(monkeypatch, window):
    # tiny block constants make a short row span several tile-max blocks, live-list steps and output chunks
    # (dense chunks for the softmax head, sparse ones for the others, skipped ones before the window)
    from hf_adasplash.ops import decode

    monkeypatch.setattr(decode, "TB", 2)
    monkeypatch.setattr(decode, "TCL", 2)
    monkeypatch.setattr(decode, "TCH", 2)
    q, k, v = _inputs(1, 4, 2, 2, 330, 32, torch.float32, scale_up=1.5)
    _check(q, k, v, torch.tensor([1.0, 1.5, 1.15, 2.0]), is_causal=True, window=window)


def test_decode_alpha_near_one_keeps_softmax_precision():
    # p = exp(log1p((alpha - 1)(s - tau)) / (alpha - 1)): no eps / (alpha - 1) error growth as alpha -> 1
    q, k, v = _inputs(1, 4, 1, 2, 150, 32, torch.float32, scale_up=2.0)
    _check(q, k, v, torch.tensor([1.0001, 1.001, 1.01, 1.0]), is_causal=True)


@pytest.mark.parametrize("alpha", [torch.tensor([1.0001, 1.001, 1.01, 1.0], dtype=torch.float64), 1.0001],
                         ids=["float64-tensor", "python-float"])
def test_decode_alpha_minus_one_is_exact(alpha):
    # the truth uses alpha = 1.0001 exactly while the kernels take alpha in fp32 (alpha - 1 off by 1.7e-4 relative):
    # harmless here, as p = exp(log1p((alpha - 1)(s - tau)) / (alpha - 1)) depends on alpha - 1 only at second order
    q, k, v = _inputs(1, 4, 1, 2, 150, 32, torch.float32, scale_up=2.0)
    _check(q, k, v, alpha, is_causal=True)


def test_decode_rejects_bad_input():
    q, k, v = _inputs(1, 2, 1, 17, 20, 32, torch.float32)
    with pytest.raises(ValueError, match="at most 16 queries"):
        adasplash_decode_triton(q, k, v, 1.5)
    q, k, v = _inputs(1, 2, 1, 1, 20, 8, torch.float32)
    with pytest.raises(ValueError, match="head_dim"):
        adasplash_decode_triton(q, k, v, 1.5)
    q, k, v = _inputs(1, 2, 1, 1, 20, 32, torch.float64)
    with pytest.raises(TypeError, match="float16/bfloat16/float32"):
        adasplash_decode_triton(q, k, v, 1.5)


def test_decode_custom_op_schema_and_fake():
    from hf_adasplash.ops.decode import decode_fwd

    q, k, v = _inputs(1, 2, 1, 1, 40, 32, torch.float32)
    args = (q, k, v, torch.tensor([1.5, 1.0]), True, 32**-0.5, None, 0, 0.0)
    torch.library.opcheck(decode_fwd, args, test_utils=("test_schema", "test_faketensor"))
