"""AlphaParameter (bounds, exact softmax init, state_dict) and AdaptiveSplashAttention (k_keep, top-k, learning)."""

import io

import pytest
import torch

from hf_adasplash import AdaptiveSplashAttention, AlphaParameter, adasplash_attention
from hf_adasplash.reference import attention_reference


def test_init_one_is_exactly_softmax_and_gets_no_grad():
    ap = AlphaParameter(4, init=1.0)
    a = ap()
    assert a.dtype == torch.float32 and torch.equal(a, torch.ones(4))
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8)
    out = adasplash_attention(q, k, v, a)
    assert torch.equal(out, attention_reference(q, k, v, 1.0))
    out.sum().backward()
    assert torch.equal(ap.logit.grad, torch.zeros(4))


@pytest.mark.parametrize("init", [1.001 + 1e-6, 1.3, 1.5, 1.999, 2.0], ids=str)
def test_init_round_trips(init):
    a = AlphaParameter(3, init=init)()
    torch.testing.assert_close(a, torch.full((3,), init), rtol=0, atol=2e-6)
    assert (a > 1).all() and (a <= 2).all()


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_bounds_hold_under_huge_steps(opt):
    ap = AlphaParameter(8, init=1.5, min_alpha=1.01, max_alpha=2.0)
    optim = torch.optim.SGD(ap.parameters(), lr=1e12) if opt == "sgd" else torch.optim.AdamW(ap.parameters(), lr=1e6)
    for sign in (1, -1, 1):
        for _ in range(3):
            optim.zero_grad()
            (sign * ap() * torch.linspace(-1, 1, 8)).sum().backward()
            optim.step()
            a = ap()
            assert torch.isfinite(a).all() and (a >= 1.01).all() and (a <= 2.0).all()
    assert ((a == 1.01) | (a == 2.0)).any()  # the steps really did saturate


def test_saturated_logit_stays_in_bounds():
    ap = AlphaParameter(4)
    with torch.no_grad():
        ap.logit.copy_(torch.tensor([1e30, -1e30, 80.0, float("inf")]))
    a = ap()
    assert (a <= 2.0).all() and (a >= ap.min_alpha).all()


def test_state_dict_round_trip_bit_exact():
    ap = AlphaParameter(5, init=1.37)
    with torch.no_grad():
        ap.logit.add_(torch.randn(5))
        ap.logit[0] = float("-inf")  # a softmax head
    buf = io.BytesIO()
    torch.save(ap.state_dict(), buf)
    buf.seek(0)
    other = AlphaParameter(5, init=1.9)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other.logit, ap.logit) and torch.equal(other(), ap())
    assert list(ap.state_dict()) == ["logit"]


def test_alpha_stays_float32_under_model_dtype():
    ref = AlphaParameter(2, init=1.01)
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.bfloat16()):
        ap = AlphaParameter(2, init=1.01)
        ap = cast(ap)
        # the stored logit too, not only the returned alpha: bf16 would move alpha = 1.01 to 1.0101
        assert ap.logit.dtype == torch.float32 and ap().dtype == torch.float32
        assert torch.equal(ap(), ref())
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), AlphaParameter(2, init=1.01)).to(torch.bfloat16)
    assert block[0].weight.dtype == torch.bfloat16 and block[1].logit.dtype == torch.float32
    assert AlphaParameter(2).double().logit.dtype == torch.float64  # explicit float64 is kept


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"init": 0.9}, "alpha init must be 1.0 or in"),
        ({"init": 1.0005}, "alpha init must be 1.0 or in"),
        ({"init": float("nan")}, "alpha init must be"),
        ({"min_alpha": 1.0}, "1 < min_alpha < max_alpha <= 2"),
        ({"max_alpha": 2.5}, "1 < min_alpha < max_alpha <= 2"),
        ({"num_heads": 0}, "num_heads must be None or an int >= 1"),
    ],
    ids=["init_low", "init_below_min", "init_nan", "min1", "max2.5", "heads0"],
)
def test_alpha_parameter_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlphaParameter(**kwargs)


def _qkv(Hq=4, Hkv=2, N=12, D=16):
    return torch.randn(2, Hq, N, D, dtype=torch.float64), *torch.randn(2, 2, Hkv, N, D, dtype=torch.float64).unbind(0)


def test_no_cap_equals_functional():
    q, k, v = _qkv()
    m = AdaptiveSplashAttention(16, alpha=1.5)
    torch.testing.assert_close(m(q, k, v), adasplash_attention(q, k, v, 1.5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0], ids=lambda a: f"a{a}")
def test_k_keep_caps_support(alpha):
    q, k, v = _qkv()
    m = AdaptiveSplashAttention(16, alpha=alpha, k_keep=3).double()
    out = m(q, k, v)
    # the same attention through the reference with an explicit per-row top-3 key mask
    s = (q.view(2, 2, 2, 12, 16) @ k.unsqueeze(2).transpose(-1, -2)).view(2, 4, 12, 12) / 4
    keep = s >= s.topk(3, dim=-1).values[..., -1:]
    from hf_adasplash.entmax import entmax

    p = entmax(s.masked_fill(~keep, float("-inf")), alpha)
    assert ((p > 0).sum(-1) <= 3).all()
    ref = (p.view(2, 2, 2, 12, 12) @ v.unsqueeze(2)).view(2, 4, 12, 16)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_k_keep_at_least_n_is_uncapped():
    q, k, v = _qkv()
    a = AdaptiveSplashAttention(16, alpha=1.5, k_keep=12)(q, k, v)
    torch.testing.assert_close(a, adasplash_attention(q, k, v, 1.5), rtol=0, atol=1e-6)


def test_topk_softmax_baseline():
    q, k, v = _qkv()
    m = AdaptiveSplashAttention(16, alpha=1.5, k_keep=4, adaptive_threshold=False)
    ref = AdaptiveSplashAttention(16, alpha=1.0, k_keep=4)
    out = m(q, k, v)
    torch.testing.assert_close(out, ref(q, k, v), rtol=0, atol=0)
    # softmax on the kept keys: every row uses exactly its 4 keys (no ties in random data)
    assert not torch.allclose(out, adasplash_attention(q, k, v, 1.0))


def test_positions_and_causal_in_module():
    q, k, v = _qkv()
    m = AdaptiveSplashAttention(16, alpha=1.5, k_keep=5)
    idx = torch.arange(12)
    out = m(q, k, v, idx, idx)
    assert torch.equal(out[:, :, 0], v[:, :, :1].repeat_interleave(2, 1).squeeze(2))  # row 0 sees only key 0


@pytest.mark.parametrize("k_keep", [None, 4], ids=["adaptive", "capped"])
def test_learnable_alpha_gets_gradient(k_keep):
    q, k, v = (t.float() for t in _qkv())
    m = AdaptiveSplashAttention(16, alpha=1.5, k_keep=k_keep, learnable_alpha=True, num_heads=4)
    m(q, k, v).pow(2).sum().backward()
    g = m.alpha.logit.grad
    assert g is not None and g.shape == (4,) and torch.isfinite(g).all() and (g != 0).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"head_dim": 0}, "head_dim must be an int >= 1"),
        ({"head_dim": 16, "alpha": 2.5}, "alpha must be 1"),
        ({"head_dim": 16, "k_keep": 0}, "k_keep must be None or an int >= 1"),
        ({"head_dim": 16, "adaptive_threshold": False}, "needs k_keep"),
        ({"head_dim": 16, "sm_scale": float("nan")}, "sm_scale must be None or a finite float"),
    ],
    ids=["head_dim", "alpha", "k_keep", "topk_without_k", "sm_scale"],
)
def test_module_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveSplashAttention(**kwargs)


def test_module_bad_inputs():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="expected head_dim 8"):
        AdaptiveSplashAttention(8)(q, k, v)
    with pytest.raises(ValueError, match=r"shape \[\] or \[4\]"):
        AdaptiveSplashAttention(16, k_keep=2, num_heads=3)(q, k, v)
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        AdaptiveSplashAttention(16, k_keep=2)(q, k, None)


def _stability_main():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "stability_run.py"
    spec = importlib.util.spec_from_file_location("stability_run", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


TINY = ["--device", "cpu", "--dim", "16", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--seq", "8",
        "--batch", "2", "--vocab", "8", "--log-every", "10"]


def test_stability_run_smoke(tmp_path):
    import json

    out = tmp_path / "s.json"
    summary = _stability_main()(["--steps", "50", "--out", str(out), *TINY])
    assert summary["passed"] and summary["steps_completed"] == 50 and summary["first_failure"] is None
    saved = json.loads(out.read_text())
    assert saved["nan_free_steps"] == 50 and len(saved["log"]) == 5
    assert all(1.001 <= a <= 2.0 for layer in saved["final_alpha"] for a in layer)
    assert saved["final_alpha"] != [[1.5, 1.5]]  # alpha was trained


def test_stability_run_detects_divergence(tmp_path):
    # A learning rate of 1e30 must blow up within a few steps: the per-step checks catch it and stop.
    summary = _stability_main()(["--steps", "50", "--lr", "1e30", "--out", str(tmp_path / "s.json"), *TINY])
    assert not summary["passed"] and summary["first_failure"]["step"] < 50
    assert summary["nan_free_steps"] == summary["first_failure"]["step"] - 1


def test_powers_by_multiplication_and_the_frozen_grid_hint(monkeypatch):
    import math

    from hf_adasplash import modules, snap_alpha
    from hf_adasplash.reference import powers_by_multiplication

    assert powers_by_multiplication(torch.tensor([1.0, 2.0, 1.5, 4 / 3, 1.25, 1.2]))
    assert powers_by_multiplication(4 / 3) and powers_by_multiplication(1.0)
    for off in (1.3, 1.1, 1.0001, 1.7, 1.2 + 1e-3):
        assert not powers_by_multiplication(torch.tensor([1.5, off])), off
    par = AlphaParameter(4, init=1.45, min_alpha=1.1, max_alpha=2.0)
    model = torch.nn.ModuleDict({"a": par})
    assert not par.frozen_on_grid()  # learning: never read, never on the grid
    calls = []
    real = modules.powers_by_multiplication
    monkeypatch.setattr(modules, "powers_by_multiplication", lambda a: calls.append(1) or real(a))
    snap_alpha(model)  # stored through the sigmoid: a few float32 ulps off 1.5
    assert par.frozen_on_grid() and par.frozen_on_grid() and len(calls) == 1  # read once per change
    with torch.no_grad():
        par.logit.copy_(torch.full((4,), par.logit_for(1.3)))
    assert not par.frozen_on_grid() and len(calls) == 2
    with torch.no_grad():
        par.logit.copy_(torch.tensor([-math.inf, par.logit_for(1.2), par.logit_for(2.0), par.logit_for(1.25)]))
    assert par.frozen_on_grid() and len(calls) == 3


def test_frozen_alpha_is_computed_once_per_change_of_the_logit():
    # a snapped model asks every layer for alpha on every call: a frozen logit reuses its value until it changes
    par = AlphaParameter(3, init=1.45, min_alpha=1.1, max_alpha=2.0)
    learning = par()
    assert learning.requires_grad and par() is not learning  # learning: a fresh graph each call
    par.logit.requires_grad_(False)
    first = par()
    assert par() is first and not first.requires_grad and torch.equal(first, learning.detach())
    with torch.no_grad():
        par.logit.copy_(torch.tensor([par.logit_for(a) for a in (1.2, 1.5, 2.0)]))
    assert torch.allclose(par(), torch.tensor([1.2, 1.5, 2.0]))
    par.load_state_dict({"logit": torch.full((3,), par.logit_for(4 / 3))})
    assert torch.allclose(par(), torch.full((3,), 4 / 3))
    par.to(torch.float64)  # new storage: recomputed, same values
    assert torch.allclose(par(), torch.full((3,), 4 / 3))


def test_snap_alpha_moves_learned_heads_to_the_multiplication_grid():
    import math

    from hf_adasplash import snap_alpha

    model = torch.nn.ModuleDict({"a": AlphaParameter(6, min_alpha=1.1, max_alpha=2.0)})
    par = model["a"]
    with torch.no_grad():
        par.logit.copy_(torch.tensor([-math.inf] + [par.logit_for(a) for a in (1.27, 1.31, 1.44, 1.8, 1.19)]))
    assert snap_alpha(model) == 5  # the softmax head stays
    want = torch.tensor([1.0, 1.25, 4 / 3, 1.5, 2.0, 1.2])
    torch.testing.assert_close(par().detach(), want, rtol=0, atol=3e-7)
    assert not par.logit.requires_grad
    before = par.logit.detach().clone()
    assert snap_alpha(model) == 5 and torch.equal(par.logit.detach(), before)  # idempotent
    # bounds that hold no grid alpha are an error, not a silent no-op
    with pytest.raises(ValueError, match=r"no snap alpha .* lies in \(1.55, 1.9\]"):
        snap_alpha(torch.nn.ModuleDict({"a": AlphaParameter(2, init=1.7, min_alpha=1.55, max_alpha=1.9)}))


def test_a_frozen_alpha_carries_its_float64_copy_for_the_kernels():
    # the kernels take alpha in float64; a frozen AlphaParameter converts once per change instead of every call
    from hf_adasplash.ops.attention import _kernel_alpha

    m = AlphaParameter(4, init=4 / 3)
    m.logit.requires_grad_(False)
    a = m()
    k64 = _kernel_alpha(a, 4, a.device)
    assert k64.dtype == torch.float64 and torch.equal(k64, a.double())
    assert _kernel_alpha(m(), 4, a.device) is k64  # reused while the logit is unchanged
    with torch.no_grad():
        a.add_(0.25)  # an in-place change of the value itself: the copy no longer matches
    assert torch.equal(_kernel_alpha(a, 4, a.device), a.double())
    with torch.no_grad():
        m.logit.add_(1.0)  # a new logit: a new value and a new copy
    fresh = m()
    assert torch.equal(_kernel_alpha(fresh, 4, a.device), fresh.double()) and not torch.equal(fresh, a)
    learned = AlphaParameter(4, init=1.5)()
    assert not hasattr(learned, "_kernel_alpha")  # a learning alpha converts in the graph, every call
