"""The small jit helpers the attention kernels share, checked element by element against float64 (interpreter on
CPU, the real compiler on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from hf_adasplash.kernels.attn_utils import alpha_terms, entmax_log2, entmax_u, entmax_u_u2_of, is_int_power

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _helpers_kernel(x_ptr, l_ptr, u_ptr, u2_ptr, pm1, N: tl.constexpr, KIND: tl.constexpr):
    o = tl.arange(0, N)
    b_x = tl.load(x_ptr + o)
    tl.store(l_ptr + o, entmax_log2(b_x, pm1))
    b_u, b_u2 = entmax_u_u2_of(b_x, pm1, KIND, True)
    tl.store(u_ptr + o, b_u)
    tl.store(u2_ptr + o, b_u2)


def _run(x: np.ndarray, pm1: float):
    xt = torch.tensor(x, dtype=torch.float32, device=DEV)
    outs = [torch.full_like(xt, float("nan")) for _ in range(3)]  # poisoned
    # the alpha class the kernels branch on (attn_utils.POW_*): 1.5, 2, 4/3 to 6/5, near 1, general
    kind = 1 if pm1 == 1.0 else 2 if pm1 == 0.0 else 6 if pm1 in (2.0, 3.0, 4.0) else 3 if pm1 > 32.0 else 0
    _helpers_kernel[(1,)](xt, *outs, pm1, N=xt.numel(), KIND=kind)
    return [t.cpu().double().numpy() for t in outs]


@pytest.mark.parametrize("alpha", [1.0001, 1.001, 1.02, 1.2, 1.25, 4 / 3, 1.3, 1.5, 1.75, 2.0])
def test_entmax_log2_and_powers_match_float64(alpha):
    pm1 = 1.0 / (alpha - 1.0) - 1.0
    pm1 = round(pm1) if abs(pm1 - round(pm1)) < 1e-9 else pm1  # 4/3 and 1.2: the integer classes' exponents
    # x in (0, 1] as the kernels see it: dense near 1, where alpha ~ 1 amplifies every error by 1/(alpha-1)
    x = np.concatenate([1.0 - np.geomspace(1e-7, 0.5, 100), np.linspace(0.01, 1.0, 27), [1.0]]).astype(np.float32)
    l, u, u2 = _run(x, pm1)
    x64 = x.astype(np.float64)
    assert l[-1] == 0.0 if pm1 > 32 else abs(l[-1]) < 1e-6  # exact at x = 1 where alpha ~ 1 needs it
    near = x64 >= 0.5
    err = np.abs(l - np.log2(x64))
    # absolute error of log2 x: the series (alpha < 1.03) is ~1e-7 relative to log2 x itself near 1 (2.3e-7 on an
    # H100, whose fp32 division is approximate)
    bound = np.where(near & (pm1 > 32), 3e-7 * np.abs(np.log2(x64)) + 1e-12, 3e-7 + 1e-6 * np.abs(np.log2(x64)))
    assert (err <= bound).all(), float((err / bound).max())
    # u = x^(p-1), u2 = x^(p-2): relative error within pm1 times the log2 error (what the power amplifies);
    # alpha = 2 has no curvature term (its factor p - 1 is 0), so u2 is 0 there by design
    if pm1 == 0.0:
        assert (u2 == 0).all()
    for got, expo in ((u, pm1), (u2, pm1 - 1.0)) if pm1 != 0.0 else ((u, pm1),):
        want = x64**expo
        ok = want > 1e-30
        rel = np.abs(got[ok] - want[ok]) / want[ok]
        assert (rel <= 1e-5 + 2.0 * abs(expo) * bound[ok]).all(), float(rel.max())


@triton.jit
def _alpha_terms_kernel(alpha_ptr, a_ptr, pm1_ptr, int_ptr, u_ptr, x, H: tl.constexpr):
    for i_h in tl.static_range(H):
        a_m1, is_soft, zs, pm1 = alpha_terms(alpha_ptr, i_h)
        tl.store(a_ptr + i_h, a_m1)
        tl.store(pm1_ptr + i_h, pm1)
        tl.store(int_ptr + i_h, is_int_power(pm1).to(tl.int32))
        tl.store(u_ptr + i_h, tl.sum(entmax_u(tl.full([16], x, tl.float32), pm1), 0) / 16)


def test_alpha_terms_snap_alphas_on_the_integer_power_grid():
    # alpha = 1 + 1/n as a learned (sigmoid) parameter stores it, a few float32 ulps off, still takes the exact
    # exponent (and so the multiplication-only class); alphas 1e-4 away do not
    from hf_adasplash.modules import AlphaParameter

    grid = [2.0, 1.5, 4 / 3, 1.25, 1.2]
    par = AlphaParameter(len(grid), min_alpha=1.1, max_alpha=2.0)
    with torch.no_grad():
        par.logit.copy_(torch.tensor([par.logit_for(a) for a in grid]))
    stored = par().detach().double()
    assert (stored != torch.tensor(grid, dtype=torch.float64)).any()  # the sigmoid does not hit them exactly
    alphas = torch.cat([stored, torch.tensor([1.3334, 1.2499, 1.3, 1.0])]).to(DEV)
    H = alphas.numel()
    a_m1, pm1, u = (torch.full((H,), float("nan"), device=DEV) for _ in range(3))
    is_int = torch.full((H,), -1, dtype=torch.int32, device=DEV)
    x = 0.75
    _alpha_terms_kernel[(1,)](alphas, a_m1, pm1, is_int, u, x, H=H)
    want_pm1 = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert pm1[:5].tolist() == want_pm1
    assert a_m1[:5].tolist() == [float(torch.tensor(1.0 / (p + 1.0), dtype=torch.float32)) for p in want_pm1]
    assert is_int.tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert pm1[5:8].sub(torch.tensor([1 / 0.3334 - 1, 1 / 0.2499 - 1, 1 / 0.3 - 1], device=DEV)).abs().max() < 1e-5
    want_u = torch.tensor([x ** p for p in pm1.double().cpu().tolist()], dtype=torch.float64)
    torch.testing.assert_close(u.double().cpu(), want_u, rtol=2e-6, atol=0)
