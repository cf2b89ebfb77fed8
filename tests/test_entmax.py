"""alpha-entmax itself: against the entmax library's bisection in float64, invariants, extremes, gradients."""

import entmax as entmax_lib
import pytest
import torch

from hf_adasplash.entmax import entmax, entmax_threshold

ALPHAS = [1.0001, 1.25, 1.5, 1.999, 2.0]
SCALES = [1.0, 10.0, 1e2, 1e4]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"x{s:g}")
@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"a{a}")
def test_matches_bisection_float64(alpha, scale):
    x = torch.randn(16, 257, dtype=torch.float64) * scale
    p = entmax(x, alpha)
    ref = entmax_lib.entmax_bisect(x, alpha, n_iter=100)
    assert _rel(p, ref) < 1e-10
    torch.testing.assert_close(p.sum(-1), torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"a{a}")
def test_support_is_exactly_above_threshold(alpha):
    x = torch.randn(8, 100, dtype=torch.float64) * 3
    p = entmax(x, alpha)
    z = (alpha - 1) * x
    tau = entmax_threshold(z, torch.tensor(alpha - 1, dtype=torch.float64))
    # Exclude keys within rounding of the threshold: there p is (correctly) ~0 either way.
    clear = (z - tau).abs() > 1e-9
    assert torch.equal((p > 0)[clear], (z > tau)[clear])
    assert (p >= 0).all()
    # sum([z - tau]_+^(1/(alpha-1))) = 1 at the returned tau
    s = (z - tau).clamp_min(0).pow(1 / (alpha - 1)).sum(-1)
    torch.testing.assert_close(s, torch.ones_like(s), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_alpha_one_is_softmax_exactly(dtype):
    x = torch.randn(4, 33, dtype=dtype) * 5
    assert torch.equal(entmax(x, 1.0), torch.softmax(x, -1))


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"a{a}")
def test_float32_extremes_no_nan(alpha):
    # 1e4-scaled scores: fp16 would overflow; float32 and half inputs must stay finite and normalised.
    x = torch.randn(8, 300) * 1e4
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        p = entmax(x.clamp(-6e4, 6e4).to(dt), alpha)
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.float().sum(-1), torch.ones(8), rtol=0, atol=1e-2 if dt != torch.float32 else 1e-6)


@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"a{a}")
def test_float32_close_to_float64(alpha):
    # Computed around the row max with log1p: float32 error stays softmax-like even as alpha -> 1.
    x = torch.randn(16, 1000, dtype=torch.float64) * 3
    err = (entmax(x.float(), alpha).double() - entmax(x, alpha)).abs().max().item()
    assert err < 2e-6


def test_per_row_alpha_tensor():
    x = torch.randn(2, 3, 5, 17, dtype=torch.float64)
    a = torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64).view(3, 1, 1)
    p = entmax(x, a)
    for h, ah in enumerate([1.0, 1.5, 2.0]):
        torch.testing.assert_close(p[:, h], entmax(x[:, h], ah), rtol=0, atol=1e-15)


def test_masked_entries_and_rows():
    x = torch.randn(3, 6, dtype=torch.float64)
    x[0, :2] = float("-inf")
    x[1] = float("-inf")
    x.requires_grad_()
    a = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    p = entmax(x, a)
    assert (p[0, :2] == 0).all() and (p[1] == 0).all()
    assert torch.isfinite(p).all()
    (p * torch.randn_like(p)).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[1] == 0).all() and (x.grad[0, :2] == 0).all()
    assert torch.isfinite(a.grad)


def test_empty_dim_is_zero():
    assert entmax(torch.randn(3, 0), 1.5).shape == (3, 0)


@pytest.mark.parametrize("alpha", [1.01, 1.25, 1.5, 1.95], ids=lambda a: f"a{a}")
def test_gradcheck_x_and_alpha(alpha):
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    a = torch.full((4, 1), alpha, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: entmax(x, a), (x, a))


@pytest.mark.parametrize("alpha", [1.001, 1.01, 1.3, 1.9, 2.0], ids=lambda a: f"a{a}")
def test_dalpha_matches_entmax_library(alpha):
    x = torch.randn(8, 50, dtype=torch.float64) * 2
    g = torch.randn(8, 50, dtype=torch.float64)
    grads = []
    for fn in (entmax, lambda x, a: entmax_lib.entmax_bisect(x, a, n_iter=100)):
        xx = x.clone().requires_grad_()
        a = torch.full((8, 1), alpha, dtype=torch.float64, requires_grad=True)
        (fn(xx, a) * g).sum().backward()
        grads.append((xx.grad, a.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("alpha", [1.001, 1.01, 1.5], ids=lambda a: f"a{a}")
def test_dalpha_float32_has_no_cancellation(alpha):
    # The textbook form divides an O(alpha-1) difference by (alpha-1)^2: in float32 at alpha=1.001 it was off by
    # ~10x. The expm1 form keeps the relative error ~eps/(alpha-1).
    x = torch.randn(8, 50, dtype=torch.float64) * 2
    g = torch.randn(8, 50, dtype=torch.float64)
    out = []
    for dt in (torch.float64, torch.float32):
        a = torch.full((8, 1), alpha, dtype=dt, requires_grad=True)
        (entmax(x.to(dt), a) * g.to(dt)).sum().backward()
        out.append(a.grad.double())
    assert _rel(out[1], out[0]) < 1e-3


@pytest.mark.parametrize("bad", [0.5, 1.0 - 1e-9, 2.0001, float("nan"), float("inf")], ids=str)
def test_bad_alpha(bad):
    with pytest.raises(ValueError, match="alpha must be 1"):
        entmax(torch.randn(3, 4), bad)


def test_bad_inputs():
    with pytest.raises(TypeError, match="floating-point"):
        entmax(torch.ones(3, 4, dtype=torch.long), 1.5)
    with pytest.raises(ValueError, match="0-d"):
        entmax(torch.tensor(1.0), 1.5)
    with pytest.raises(ValueError, match="out of range"):
        entmax(torch.randn(3, 4), 1.5, dim=2)
    with pytest.raises(ValueError, match="size 1 along dim"):
        entmax(torch.randn(2, 3, 4), torch.full((3,), 1.5))
