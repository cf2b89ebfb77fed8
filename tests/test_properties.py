"""Property-based tests of the public API: any valid input gives rows that are convex combinations of the values
the row may see; any invalid input gives the specific error.

Visibility is recomputed here from the documented rules (not from masks.py), so the two must agree.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_adasplash import adasplash_attention
from hf_adasplash.reference import attention_reference

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

alpha_value = st.one_of(st.just(1.0), st.just(2.0), st.floats(1.0001, 2.0))


@st.composite
def configs(draw):
    B, Hkv, G = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    Nq, Nk, D = draw(st.integers(1, 9)), draw(st.integers(0, 9)), draw(st.integers(1, 9))
    cfg = {
        "shape": (B, Hkv * G, Hkv, Nq, Nk, D),
        "dtype": draw(st.sampled_from([torch.float64, torch.float32])),
        "score_scale": draw(st.sampled_from([0.1, 1.0, 10.0, 1e3])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    if draw(st.booleans()):
        cfg["alpha"] = draw(alpha_value)
    else:
        cfg["alpha"] = draw(st.lists(alpha_value, min_size=Hkv * G, max_size=Hkv * G))
    kw = {"is_causal": draw(st.booleans())}
    if draw(st.booleans()):
        kw["window"] = draw(st.integers(1, 10))
    if draw(st.booleans()):
        kw["softcap"] = draw(st.floats(0.5, 50.0))
    if draw(st.booleans()):
        kw["key_padding_mask"] = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=Nk, max_size=Nk),
                                                            min_size=B, max_size=B)), dtype=torch.bool).view(B, Nk)
    if draw(st.booleans()):
        kw["q_idx"] = torch.tensor(draw(st.lists(st.integers(0, 12), min_size=Nq, max_size=Nq)), dtype=torch.long)
        kw["k_idx"] = torch.tensor(draw(st.lists(st.integers(0, 12), min_size=Nk, max_size=Nk)), dtype=torch.long)
    cfg["kw"] = kw
    return cfg


def _tensors(cfg):
    B, Hq, Hkv, Nq, Nk, D = cfg["shape"]
    g = torch.Generator().manual_seed(cfg["seed"])
    q = torch.randn(B, Hq, Nq, D, generator=g, dtype=torch.float64) * cfg["score_scale"]
    k, v = (torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64) for _ in range(2))
    a = cfg["alpha"]
    alpha = torch.tensor(a, dtype=torch.float64) if isinstance(a, list) else a
    return (*(t.to(cfg["dtype"]) for t in (q, k, v)), alpha)


def _visible(cfg):
    """[B, Nq, Nk] from the documented rules, written independently of masks.py."""
    B, _, _, Nq, Nk, _ = cfg["shape"]
    kw = cfg["kw"]
    vis = torch.ones(B, Nq, Nk, dtype=torch.bool)
    for b in range(B):
        for i in range(Nq):
            for j in range(Nk):
                qp = int(kw["q_idx"][i]) if "q_idx" in kw else i + Nk - Nq
                kp = int(kw["k_idx"][j]) if "k_idx" in kw else j
                causal = kw["is_causal"] or "q_idx" in kw
                ok = kp <= qp if causal else True
                if "window" in kw:
                    ok = ok and (qp - kp < kw["window"] if causal else abs(qp - kp) < kw["window"])
                if "key_padding_mask" in kw:
                    ok = ok and bool(kw["key_padding_mask"][b, j])
                vis[b, i, j] = ok
    return vis


@SETTINGS
@given(cfg=configs())
def test_rows_are_convex_combinations_of_visible_values(cfg):
    q, k, v, alpha = _tensors(cfg)
    B, Hq, Hkv, Nq, Nk, D = cfg["shape"]
    out = adasplash_attention(q, k, v, alpha, backend="reference", **cfg["kw"])
    ref_out, p = attention_reference(q, k, v, alpha, return_probs=True, **cfg["kw"])
    assert out.dtype == q.dtype and out.shape == (B, Hq, Nq, D)
    assert torch.equal(out, ref_out)
    assert torch.isfinite(out).all() and torch.isfinite(p).all()
    vis = _visible(cfg)[:, None].expand(B, Hq, Nq, Nk)
    assert (p >= 0).all()
    assert (p[~vis] == 0).all()
    any_vis = vis.any(-1)
    sums = p.sum(-1)
    tol = 1e-12 if q.dtype == torch.float64 else 1e-5
    assert ((sums - 1).abs()[any_vis] <= tol).all()
    assert (sums[~any_vis] == 0).all() and (out[~any_vis] == 0).all()
    # out = p @ v with query head h reading key/value head h // (Hq / Hkv)
    vv = v.double().repeat_interleave(Hq // Hkv, dim=1)
    vmax = vv.abs().max().item() if vv.numel() else 0.0
    torch.testing.assert_close(out.double(), p.double() @ vv, rtol=0, atol=tol * (1 + vmax))


BAD = {
    "alpha_low": lambda d: ({"alpha": d(st.floats(-10, 1.0, exclude_max=True))}, ValueError, "alpha must be 1"),
    "alpha_high": lambda d: ({"alpha": d(st.floats(2.0, 1e6, exclude_min=True))}, ValueError, "alpha must be 1"),
    "alpha_shape": lambda d: ({"alpha": torch.full((d(st.sampled_from([2, 3, 5])),), 1.5)}, ValueError,
                              r"shape \[\] or \[4\]"),
    "window": lambda d: ({"window": d(st.integers(-5, 0))}, ValueError, "window must be None or an int >= 1"),
    "softcap": lambda d: ({"softcap": d(st.floats(-5, 0.0))}, ValueError, "softcap must be None or a finite float"),
    "gqa": lambda d: ({"kv_heads": d(st.sampled_from([3, 5]))}, ValueError, "multiple of key/value heads"),
    "kpm_len": lambda d: ({"kpm_len": d(st.integers(0, 12).filter(lambda n: n != 6))}, ValueError,
                          "key_padding_mask must have shape"),
    "q_idx_alone": lambda d: ({"q_idx": torch.arange(5)}, ValueError, "given together"),
    "dtype": lambda d: ({"v_dtype": d(st.sampled_from([torch.float16, torch.float64, torch.bfloat16]))}, TypeError,
                        "share one dtype"),
    "int_input": lambda d: ({"k_dtype": d(st.sampled_from([torch.int32, torch.int64, torch.uint8]))}, TypeError,
                            "k must be float16"),
    "ndim": lambda d: ({"q_ndim": d(st.sampled_from([2, 3, 5]))}, ValueError, "q must be 4-D"),
}


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(sorted(BAD)), data=st.data())
def test_invalid_arguments_raise_the_specific_error(case, data):
    over, exc, match = BAD[case](data.draw)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    if "kv_heads" in over:
        k, v = torch.randn(2, over["kv_heads"], 6, 8), torch.randn(2, over["kv_heads"], 6, 8)
    if "v_dtype" in over:
        v = v.to(over["v_dtype"])
    if "k_dtype" in over:
        k = k.to(over["k_dtype"])
    if "q_ndim" in over:
        q = q.reshape(2, 4, 5, 8)[(0,) * (4 - over["q_ndim"])] if over["q_ndim"] < 4 else q[..., None]
    kw = {key: over[key] for key in ("window", "softcap", "q_idx") if key in over}
    if "kpm_len" in over:
        kw["key_padding_mask"] = torch.ones(2, over["kpm_len"], dtype=torch.bool)
    with pytest.raises(exc, match=match):
        adasplash_attention(q, k, v, over.get("alpha", 1.5), **kw)
