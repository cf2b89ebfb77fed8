"""The tau loop's start from each row's largest tile maxima (``Tiles.tile_max_start``, kernels/attn_fwd.py).

The scan keeps each row's largest tile maxima and solves a certified lower bound on tau from them; the tau kernel
starts there (alpha <= 1.5, bf16/fp16 inputs) instead of at m - 1. Checked: the bound itself against the float64
threshold (ties and rows without keys included), and outputs and gradients with the start on and off against the
float64 reference.
"""

import dataclasses

import pytest
import torch

from hf_adasplash.entmax import entmax_threshold
from hf_adasplash.ops import attention_ops, tiling
from hf_adasplash.ops.attention import adasplash_attention_triton
from hf_adasplash.reference import attention_reference


class _Skip:
    """A kernel that launches nothing: the scan's rows are then read as it left them."""

    def __getitem__(self, grid):
        return lambda **kwargs: None


def _scan_rows(monkeypatch, q, k, alpha, causal, topk):
    """(row max, start offset) per row in z units, as the scan kernel stores them for the tau kernel."""
    monkeypatch.setattr(attention_ops, "tiles", lambda d: dataclasses.replace(tiling.tiles(d), tile_max_start=topk))
    monkeypatch.setattr(attention_ops, "adasplash_fwd_tau_kernel", _Skip())
    monkeypatch.setattr(attention_ops, "adasplash_fwd_kernel", _Skip())
    Nq, Nk, D = q.shape[2], k.shape[2], q.shape[3]
    # need_ent: the start runs while alpha learns (and at inference), and the rows come back as ``tau``
    out = torch.ops.hf_adasplash.attn_fwd(q, k, k, alpha, None, None, None, None, None, Nq, Nk, causal, D**-0.5, -1,
                                          0.0, True, True)
    return out[2][0], out[2][1]


@pytest.mark.parametrize("topk", [1, 2, 4])
@pytest.mark.parametrize("causal", [True, False])
def test_start_is_a_certified_bound_on_tau(monkeypatch, causal, topk):
    torch.manual_seed(0)
    B, H, Nq, Nk, D = 1, 4, 70, 90, 32  # Nq != Nk: ragged tiles; causal rows see 21..90 keys
    q = (torch.randn(B, H, Nq, D) * 2.0).half()
    k = torch.randn(B, H, Nk, D).half()
    k[:, :, 40:60] = k[:, :, 5:6]  # the same key in several tiles: equal tile maxima are separate entries
    alpha = torch.tensor([1.5, 4 / 3, 1.25, 1.1], dtype=torch.float64)
    m, start = _scan_rows(monkeypatch, q, k, alpha, causal, topk)
    am1 = (alpha - 1.0).view(1, H, 1, 1)
    z = am1 * (q.double() @ k.double().transpose(-1, -2)) * D**-0.5
    if causal:
        z = z.masked_fill(torch.ones(Nq, Nk, dtype=torch.bool).tril(Nk - Nq).logical_not(), float("-inf"))
    tau = entmax_threshold(z, am1, dim=-1).squeeze(-1)
    zmax = z.amax(-1)
    assert torch.allclose(m.double(), zmax, rtol=1e-5, atol=1e-5)
    off = tau - zmax  # in [-1, 0)
    assert (start.double() >= -1.0).all()
    assert (start.double() <= off + 1e-6).all(), (start.double() - off).max()
    if topk > 1:  # more maxima, a tighter start: on average well above m - 1
        assert (start.double() - (-1.0)).mean() > 0.1 * (off + 1.0).mean()


def test_rows_without_keys_start_at_m_minus_1(monkeypatch):
    # causal with Nq > Nk: the first Nq - Nk rows see no key (row max -inf); their start must stay finite
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 50, 32).half(), torch.randn(1, 2, 20, 32).half()
    alpha = torch.tensor([1.5, 1.25], dtype=torch.float64)
    m, start = _scan_rows(monkeypatch, q, k, alpha, True, 4)
    assert torch.isneginf(m[..., :30]).all()
    assert (start[..., :30] == -1.0).all()
    assert torch.isfinite(start).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_outputs_and_gradients_with_and_without_the_start(monkeypatch, dtype):
    # inference (the first pass may stop at the fold's tolerance) and a learning alpha, start on and off, against
    # float64; alpha 1.75 takes no start (above 1.5), alpha 1 is softmax, fp32 inputs none at all
    torch.manual_seed(2)
    alphas = [1.5, 4 / 3, 1.25, 1.4, 1.75, 1.0]
    B, H, N, D = 1, len(alphas), 100, 32
    q, k, v, g = (torch.randn(B, H, N, D, dtype=dtype) for _ in range(4))
    k[:, :, 64:80] = k[:, :, 3:4]
    ad = torch.tensor(alphas, dtype=torch.float64, requires_grad=True)
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    ref = attention_reference(qd, kd, vd, ad, is_causal=True)
    gref = torch.autograd.grad(ref, (qd, kd, vd, ad), g.double())
    tol = 2e-5 if dtype == torch.float32 else 2e-3
    results = {}
    for topk in (0, 4):
        monkeypatch.setattr(attention_ops, "tiles",
                            lambda d, _k=topk: dataclasses.replace(tiling.tiles(d), tile_max_start=_k))
        a = torch.tensor(alphas, requires_grad=True)
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        with torch.no_grad():
            out_inf = adasplash_attention_triton(q, k, v, a, is_causal=True)
        out = adasplash_attention_triton(qg, kg, vg, a, is_causal=True)
        grads = torch.autograd.grad(out, (qg, kg, vg, a), g)
        scale = ref.abs().max().item()
        assert (out_inf.double() - ref).abs().max().item() <= tol * scale
        assert (out.double() - ref).abs().max().item() <= tol * scale
        for x, y in zip(grads[:3], gref[:3]):
            assert (x.double() - y).abs().max().item() <= 5 * tol * y.abs().max().item()
        rel = ((grads[3].double() - gref[3]).abs() / gref[3].abs().clamp_min(1.0)).max().item()
        assert rel <= (1e-4 if dtype == torch.float32 else 2e-2), rel
        results[topk] = out_inf
    # alpha 1.75 and softmax heads take no start, nor fp32 inputs: bit-identical at inference
    if dtype == torch.float32:
        assert torch.equal(results[0], results[4])
    else:
        assert torch.equal(results[0][:, 4:], results[4][:, 4:])
        assert not torch.equal(results[0][:, :4], results[4][:, :4])  # the start ran


def test_tile_max_start_field_is_checked():
    with pytest.raises(ValueError, match="tile_max_start"):
        dataclasses.replace(tiling.tiles(64), tile_max_start=8)
