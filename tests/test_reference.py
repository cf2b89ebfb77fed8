"""Dense reference attention: gradcheck in float64 for every option, and the equivalences the API promises."""

import pytest
import torch
import torch.nn.functional as F

from hf_adasplash import adasplash_attention, adasplash_varlen_attention
from hf_adasplash.reference import attention_reference

f64 = torch.float64


def _qkv(B=2, Hq=4, Hkv=2, Nq=5, Nk=6, D=4, dtype=f64, grad=False):
    q = torch.randn(B, Hq, Nq, D, dtype=dtype)
    k = torch.randn(B, Hkv, Nk, D, dtype=dtype)
    v = torch.randn(B, Hkv, Nk, D, dtype=dtype)
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


GRAD_CASES = {
    "plain": {},
    "causal": {"is_causal": True},
    "padding": {"key_padding_mask": torch.tensor([[1, 1, 1, 0, 1, 0], [1, 0, 1, 1, 1, 1]], dtype=torch.bool)},
    "window": {"window": 2},
    "causal_window": {"is_causal": True, "window": 3},
    "softcap": {"softcap": 1.5},
    "scale": {"scale": 0.9},
    "idx": {"q_idx": torch.tensor([[1, 3, 3, 5, 6], [0, 0, 2, 4, 9]]), "k_idx": torch.arange(6)},
}


@pytest.mark.parametrize("alpha_kind", ["scalar", "per_head"])
@pytest.mark.parametrize("case", list(GRAD_CASES), ids=str)
def test_gradcheck(case, alpha_kind):
    q, k, v = _qkv(D=3, grad=True)
    # alpha = 1 is a fixed point (no gradient), and 2 + h is invalid: keep finite differences inside (1, 2).
    alpha = torch.tensor(1.5, dtype=f64) if alpha_kind == "scalar" else torch.tensor([1.1, 1.3, 1.6, 1.95], dtype=f64)
    alpha.requires_grad_()
    kw = GRAD_CASES[case]
    fn = lambda q, k, v, a: adasplash_attention(q, k, v, a, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, alpha), fast_mode=True)


def test_gradcheck_with_softmax_head():
    # A head at alpha = 1 (softmax) next to entmax heads: inputs q, k, v only (alpha = 1 gets no gradient).
    q, k, v = _qkv(D=3, grad=True)
    alpha = torch.tensor([1.0, 1.3, 1.0, 2.0], dtype=f64)
    assert torch.autograd.gradcheck(lambda q, k, v: adasplash_attention(q, k, v, alpha, is_causal=True), (q, k, v),
                                    fast_mode=True)


def test_gradcheck_varlen():
    q, k, v = (torch.randn(7, 2, 4, dtype=f64, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 3, 3, 7])
    alpha = torch.tensor([1.3, 1.8], dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, a: adasplash_varlen_attention(q, k, v, cu, cu, 4, 4, a, is_causal=True), (q, k, v, alpha),
        fast_mode=True,
    )


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0], ids=lambda a: f"a{a}")
def test_fully_masked_rows_zero_output_and_grads(alpha):
    q, k, v = _qkv(grad=True)
    a = torch.tensor(alpha, dtype=f64, requires_grad=True)
    kpm = torch.ones(2, 6, dtype=torch.bool)
    kpm[1] = False  # batch 1 sees nothing
    out = adasplash_attention(q, k, v, a, key_padding_mask=kpm, is_causal=True, window=2)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and (t.grad[1] == 0).all()
    assert torch.isfinite(a.grad)
    # Nq > Nk causal: the first Nq - Nk query rows see no key (bottom-right alignment).
    q2 = torch.randn(1, 2, 6, 4, dtype=f64, requires_grad=True)
    k2, v2 = torch.randn(2, 1, 2, 3, 4, dtype=f64).unbind(0)
    out2 = adasplash_attention(q2, k2, v2, alpha, is_causal=True)
    assert (out2[:, :, :3] == 0).all() and (out2[:, :, 3:] != 0).any()
    out2.sum().backward()
    assert (q2.grad[:, :, :3] == 0).all()


@pytest.mark.parametrize("alpha", [1.0001, 1.5, 2.0], ids=lambda a: f"a{a}")
def test_padded_batch_equals_each_sequence(alpha):
    lens = [7, 3, 1]
    q, k, v = _qkv(B=3, Nq=7, Nk=7)
    kpm = torch.arange(7)[None] < torch.tensor(lens)[:, None]
    out = adasplash_attention(q, k, v, alpha, key_padding_mask=kpm, is_causal=True)
    for b, n in enumerate(lens):
        ob = adasplash_attention(q[b : b + 1, :, :n], k[b : b + 1, :, :n], v[b : b + 1, :, :n], alpha, is_causal=True)
        torch.testing.assert_close(out[b : b + 1, :, :n], ob, rtol=0, atol=1e-13)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_equals_separate_calls(causal):
    lq, lk = [3, 0, 5, 1], [4, 0, 5, 2]  # an empty segment in the middle
    cq, ck = torch.tensor([0, *torch.tensor(lq).cumsum(0)]), torch.tensor([0, *torch.tensor(lk).cumsum(0)])
    q = torch.randn(sum(lq), 4, 8, dtype=f64)
    k, v = (torch.randn(sum(lk), 2, 8, dtype=f64) for _ in range(2))
    alpha = torch.tensor([1.0, 1.3, 1.5, 2.0], dtype=f64)
    out = adasplash_varlen_attention(q, k, v, cq, ck, 5, 5, alpha, is_causal=causal, window=3)
    for i in range(len(lq)):
        if lq[i] == 0:
            continue
        sl_q, sl_k = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        ref = adasplash_attention(*(t[s].transpose(0, 1)[None] for t, s in ((q, sl_q), (k, sl_k), (v, sl_k))), alpha,
                                  is_causal=causal, window=3)
        torch.testing.assert_close(out[sl_q], ref[0].transpose(0, 1), rtol=0, atol=1e-14)
    # a segment with queries but no keys gives zero rows
    cq2, ck2 = torch.tensor([0, 2, 9]), torch.tensor([0, 0, 11])
    out2 = adasplash_varlen_attention(q, k, v, cq2, ck2, 7, 11, 1.5)
    assert (out2[:2] == 0).all() and torch.isfinite(out2).all()


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0], ids=lambda a: f"a{a}")
def test_decode_equals_last_row(alpha):
    q, k, v = _qkv(Nq=9, Nk=9)
    full = adasplash_attention(q, k, v, alpha, is_causal=True)
    for t in (0, 4, 8):  # decode step t sees the cache k[:t+1]
        step = adasplash_attention(q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1], alpha, is_causal=True)
        torch.testing.assert_close(step, full[:, :, t : t + 1], rtol=0, atol=1e-14)


def test_chunked_prefill_bottom_right():
    q, k, v = _qkv(Nq=10, Nk=10)
    full = adasplash_attention(q, k, v, 1.5, is_causal=True)
    tail = adasplash_attention(q[:, :, 6:], k, v, 1.5, is_causal=True)  # Nq=4 < Nk=10
    torch.testing.assert_close(tail, full[:, :, 6:], rtol=0, atol=1e-14)


def test_default_positions_equal_is_causal():
    q, k, v = _qkv(Nq=4, Nk=7)
    a = adasplash_attention(q, k, v, 1.5, is_causal=True)
    b = adasplash_attention(q, k, v, 1.5, q_idx=torch.arange(4) + 3, k_idx=torch.arange(7))
    c = adasplash_attention(q, k, v, 1.5, q_idx=(torch.arange(4) + 3).expand(2, 4), k_idx=torch.arange(7).expand(2, 7))
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_window_semantics(causal):
    q, k, v = _qkv(Nq=6, Nk=8)
    W = 3
    _, p = attention_reference(q, k, v, 1.5, is_causal=causal, window=W, return_probs=True)
    qp, kp = torch.arange(6)[:, None] + 2, torch.arange(8)[None]
    allowed = (qp - kp >= 0) & (qp - kp < W) if causal else (qp - kp).abs() < W
    assert (p[..., ~allowed] == 0).all()
    # with alpha=1 every allowed key gets positive mass: the mask is exactly `allowed`
    _, p1 = attention_reference(q, k, v, 1.0, is_causal=causal, window=W, return_probs=True)
    assert torch.equal(p1 > 0, allowed.expand_as(p1))


@pytest.mark.parametrize("alpha", [1.0, 1.5, torch.tensor([1.2, 1.4, 1.7, 2.0], dtype=f64)], ids=["a1", "a1.5", "mix"])
def test_gqa_equals_repeated_kv(alpha):
    q, k, v = _qkv(Hq=4, Hkv=2, grad=True)
    out = adasplash_attention(q, k, v, alpha, is_causal=True)
    k2, v2 = (t.detach().repeat_interleave(2, dim=1).requires_grad_() for t in (k, v))
    ref = adasplash_attention(q.detach(), k2, v2, alpha, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(k.grad, k2.grad.view(2, 2, 2, 6, 4).sum(2), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [f64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_alpha_one_equals_sdpa(dtype, causal):
    q, k, v = _qkv(Hq=2, Hkv=2, Nq=9, Nk=9, D=16, dtype=dtype)
    out = adasplash_attention(q, k, v, 1.0, is_causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    tol = 1e-13 if dtype == f64 else 2e-6
    torch.testing.assert_close(out, ref, rtol=0, atol=tol)


def test_alpha_two_is_sparsemax():
    q, k, v = _qkv()
    _, p = attention_reference(q, k, v, 2.0, return_probs=True)
    s = (q.view(2, 2, 2, 5, 4) @ k.unsqueeze(2).transpose(-1, -2)).view(2, 4, 5, 6) * 0.5
    # sparsemax = Euclidean projection onto the simplex: p = [s - tau]_+, tau = (sum of s on the support - 1) / |S|
    on = p > 0
    tau = ((s * on).sum(-1, keepdim=True) - 1) / on.sum(-1, keepdim=True)
    torch.testing.assert_close(p, (s - tau).clamp_min(0), rtol=0, atol=1e-14)


def test_gradcheck_full_jacobian():
    # fast_mode checks random projections; one case checks the whole Jacobian (causal + padding + GQA + per head).
    q, k, v = _qkv(B=2, Nq=3, Nk=4, D=2, grad=True)
    alpha = torch.tensor([1.1, 1.3, 1.6, 1.95], dtype=f64, requires_grad=True)
    kpm = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    fn = lambda q, k, v, a: adasplash_attention(q, k, v, a, is_causal=True, key_padding_mask=kpm)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, alpha))
