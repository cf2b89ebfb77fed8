"""Every invalid argument raises a specific, readable error before any computation."""

import pytest
import torch

from hf_adasplash import adasplash_attention, adasplash_varlen_attention


def _qkv(B=2, Hq=4, Hkv=2, Nq=5, Nk=6, D=8, dtype=torch.float32):
    return torch.randn(B, Hq, Nq, D, dtype=dtype), *torch.randn(2, B, Hkv, Nk, D, dtype=dtype).unbind(0)


def _raises(exc, match, **overrides):
    q, k, v = _qkv()
    args = {"q": q, "k": k, "v": v, "alpha": 1.5, **overrides}
    with pytest.raises(exc, match=match):
        adasplash_attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("alpha"), **args)


BAD_TENSORS = {
    "q_3d": ({"q": torch.randn(2, 4, 8)}, ValueError, "q must be 4-D"),
    "k_5d": ({"k": torch.randn(2, 2, 6, 8, 1)}, ValueError, "k must be 4-D"),
    "q_list": ({"q": [[1.0]]}, TypeError, "q must be a torch.Tensor"),
    "int_q": ({"q": torch.ones(2, 4, 5, 8, dtype=torch.long)}, TypeError, "q must be float16/bfloat16/float32/float64"),
    "int_v": ({"v": torch.ones(2, 2, 6, 8, dtype=torch.int32)}, TypeError, "v must be float16"),
    "complex": ({"k": torch.randn(2, 2, 6, 8, dtype=torch.complex64)}, TypeError, "k must be float16"),
    "dtype_mix": ({"k": torch.randn(2, 2, 6, 8, dtype=torch.float64)}, TypeError, "share one dtype"),
    "device_mix": ({"v": torch.randn(2, 2, 6, 8, device="meta")}, ValueError, "one device"),
    "batch": ({"k": torch.randn(3, 2, 6, 8)}, ValueError, "batch size mismatch"),
    "head_dim": ({"v": torch.randn(2, 2, 6, 7)}, ValueError, "k and v must have the same|head_dim mismatch"),
    "head_dim_q": ({"q": torch.randn(2, 4, 5, 16)}, ValueError, "head_dim mismatch"),
    "kv_len": ({"v": torch.randn(2, 2, 5, 8)}, ValueError, r"k and v must have the same \[heads, seq\]"),
    "gqa": ({"k": torch.randn(2, 3, 6, 8), "v": torch.randn(2, 3, 6, 8)}, ValueError, "multiple of key/value heads"),
    "d0": ({"q": torch.randn(2, 4, 5, 0), "k": torch.randn(2, 2, 6, 0), "v": torch.randn(2, 2, 6, 0)}, ValueError,
           "head_dim must be >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS), ids=str)
def test_bad_tensors(case):
    overrides, exc, match = BAD_TENSORS[case]
    _raises(exc, match, **overrides)


BAD_ALPHA = {
    "below_one": (0.99, ValueError, r"alpha must be 1 \(softmax\) or in \(1, 2\]"),
    "above_two": (2.01, ValueError, r"alpha must be 1 \(softmax\) or in \(1, 2\]"),
    "nan": (float("nan"), ValueError, "alpha must be 1"),
    "inf": (float("inf"), ValueError, "alpha must be 1"),
    "zero": (0, ValueError, "alpha must be 1"),
    "tensor_below": (torch.tensor([1.5, 0.9, 1.5, 1.5]), ValueError, "alpha must be 1"),
    "tensor_nan": (torch.tensor([1.5, float("nan"), 1.5, 1.5]), ValueError, "alpha must be 1"),
    "bool": (True, TypeError, "alpha must be a float or a torch.Tensor"),
    "str": ("1.5", TypeError, "alpha must be a float or a torch.Tensor"),
    "int_tensor": (torch.tensor([1, 2, 2, 2]), TypeError, "alpha tensor must be floating point"),
    "shape_kv_heads": (torch.full((2,), 1.5), ValueError, r"shape \[\] or \[4\]"),
    "shape_2d": (torch.full((4, 1), 1.5), ValueError, r"shape \[\] or \[4\]"),
    "device": (torch.full((4,), 1.5, device="meta"), ValueError, "alpha must be on cpu"),
}


@pytest.mark.parametrize("case", list(BAD_ALPHA), ids=str)
def test_bad_alpha(case):
    alpha, exc, match = BAD_ALPHA[case]
    _raises(exc, match, alpha=alpha)


@pytest.mark.parametrize("alpha", [1, 1.0, 1.0000001, 1.5, 2, 2.0], ids=str)
def test_alpha_edges_accepted(alpha):
    q, k, v = _qkv()
    assert torch.isfinite(adasplash_attention(q, k, v, alpha)).all()


BAD_OPTIONS = {
    "window0": ({"window": 0}, ValueError, "window must be None or an int >= 1"),
    "window_float": ({"window": 2.5}, ValueError, "window must be None or an int >= 1"),
    "window_bool": ({"window": True}, ValueError, "window must be None or an int >= 1"),
    "softcap0": ({"softcap": 0.0}, ValueError, "softcap must be None or a finite float > 0"),
    "softcap_neg": ({"softcap": -3.0}, ValueError, "softcap must be None"),
    "softcap_inf": ({"softcap": float("inf")}, ValueError, "softcap must be None"),
    "scale_nan": ({"scale": float("nan")}, ValueError, "scale must be None or a finite float"),
    "scale_str": ({"scale": "0.1"}, ValueError, "scale must be None or a finite float"),
    "backend": ({"backend": "flash"}, ValueError, "backend must be one of"),
    "backend_none": ({"backend": None}, ValueError, "backend must be one of"),
    "triton_cpu": ({"backend": "triton"}, ValueError, 'backend="triton" needs CUDA tensors'),
}


def test_triton_rejects_float64():
    q, k, v = _qkv(dtype=torch.float64)
    with pytest.raises(TypeError, match='backend="triton" supports float16/bfloat16/float32'):
        adasplash_attention(q, k, v, 1.5, backend="triton")
    with pytest.raises(TypeError, match='backend="triton" supports'):
        adasplash_varlen_attention(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                                   torch.tensor([0, 5]), torch.tensor([0, 6]), 5, 6, backend="triton")


@pytest.mark.parametrize("case", list(BAD_OPTIONS), ids=str)
def test_bad_options(case, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # "triton" on CPU tensors without the interpreter is an error
    overrides, exc, match = BAD_OPTIONS[case]
    _raises(exc, match, **overrides)


BAD_MASKS = {
    "kpm_shape": ({"key_padding_mask": torch.ones(2, 5, dtype=torch.bool)}, ValueError, r"\[batch, k_len\] = \[2, 6\]"),
    "kpm_3d": ({"key_padding_mask": torch.ones(2, 1, 6, dtype=torch.bool)}, ValueError, "key_padding_mask must have"),
    "kpm_float": ({"key_padding_mask": torch.ones(2, 6)}, TypeError, "bool or integer"),
    "kpm_list": ({"key_padding_mask": [[1] * 6] * 2}, TypeError, "key_padding_mask must be a torch.Tensor"),
    "kpm_device": ({"key_padding_mask": torch.ones(2, 6, dtype=torch.bool, device="meta")}, ValueError,
                   "key_padding_mask must be on"),
    "q_idx_alone": ({"q_idx": torch.arange(5)}, ValueError, "q_idx and k_idx must be given together"),
    "k_idx_alone": ({"k_idx": torch.arange(6)}, ValueError, "q_idx and k_idx must be given together"),
    "q_idx_float": ({"q_idx": torch.arange(5.0), "k_idx": torch.arange(6)}, TypeError, "q_idx must be an integer"),
    "k_idx_bool": ({"q_idx": torch.arange(5), "k_idx": torch.ones(6, dtype=torch.bool)}, TypeError,
                   "k_idx must be an integer"),
    "q_idx_shape": ({"q_idx": torch.arange(6), "k_idx": torch.arange(6)}, ValueError, r"q_idx must have shape \[5\]"),
    "k_idx_batch": ({"q_idx": torch.arange(5), "k_idx": torch.zeros(3, 6, dtype=torch.long)}, ValueError,
                    r"k_idx must have shape \[6\] or \[2, 6\]"),
}


@pytest.mark.parametrize("case", list(BAD_MASKS), ids=str)
def test_bad_masks(case):
    overrides, exc, match = BAD_MASKS[case]
    _raises(exc, match, **overrides)


def _varlen(**overrides):
    args = {
        "q": torch.randn(7, 4, 8), "k": torch.randn(9, 2, 8), "v": torch.randn(9, 2, 8),
        "cu_seqlens_q": torch.tensor([0, 3, 7], dtype=torch.int32), "cu_seqlens_k": torch.tensor([0, 4, 9]),
        "max_seqlen_q": 4, "max_seqlen_k": 5,
    }
    args.update(overrides)
    names = ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"]
    positional = [args.pop(n) for n in names]
    return adasplash_varlen_attention(*positional, **args)


def test_varlen_valid_call():
    assert _varlen().shape == (7, 4, 8)


BAD_VARLEN = {
    "q_4d": ({"q": torch.randn(1, 7, 4, 8)}, ValueError, "q must be 3-D"),
    "int_k": ({"k": torch.ones(9, 2, 8, dtype=torch.long)}, TypeError, "k must be float16"),
    "kv_tokens": ({"v": torch.randn(8, 2, 8)}, ValueError, r"k and v must have the same \[total_k, heads\]"),
    "gqa": ({"k": torch.randn(9, 3, 8), "v": torch.randn(9, 3, 8)}, ValueError, "multiple of key/value heads"),
    "head_dim": ({"q": torch.randn(7, 4, 16)}, ValueError, "head_dim mismatch"),
    "cu_start": ({"cu_seqlens_q": torch.tensor([1, 3, 7])}, ValueError, "cu_seqlens_q must start at 0"),
    "cu_monotone": ({"cu_seqlens_k": torch.tensor([0, 6, 4, 9])}, ValueError, "cu_seqlens_k must be non-decreasing"),
    "cu_total": ({"cu_seqlens_q": torch.tensor([0, 3, 6])}, ValueError, "does not match the token count 7"),
    "cu_float": ({"cu_seqlens_q": torch.tensor([0.0, 3.0, 7.0])}, TypeError, "cu_seqlens_q must be int32 or int64"),
    "cu_2d": ({"cu_seqlens_q": torch.tensor([[0, 3, 7]])}, ValueError, r"cu_seqlens_q must be 1-D"),
    "cu_short": ({"cu_seqlens_k": torch.tensor([9])}, ValueError, "cu_seqlens_k must be 1-D"),
    "cu_list": ({"cu_seqlens_q": [0, 3, 7]}, TypeError, "cu_seqlens_q must be a torch.Tensor"),
    "cu_device": ({"cu_seqlens_k": torch.tensor([0, 4, 9], device="meta")}, ValueError, "cu_seqlens_k must be on"),
    "num_seqs": ({"cu_seqlens_k": torch.tensor([0, 4, 5, 9])}, ValueError, "same number of sequences"),
    "max_small": ({"max_seqlen_q": 3}, ValueError, r"max_seqlen_q = 3 is smaller than the longest segment \(4\)"),
    "max_neg": ({"max_seqlen_k": -1}, ValueError, "max_seqlen_k must be an int >= 0"),
    "max_float": ({"max_seqlen_k": 5.0}, ValueError, "max_seqlen_k must be an int >= 0"),
    "alpha": ({"alpha": 2.5}, ValueError, "alpha must be 1"),
    "alpha_shape": ({"alpha": torch.full((2,), 1.5)}, ValueError, r"shape \[\] or \[4\]"),
    "window": ({"window": -1}, ValueError, "window must be None"),
    "backend": ({"backend": "cuda"}, ValueError, "backend must be one of"),
}


@pytest.mark.parametrize("case", list(BAD_VARLEN), ids=str)
def test_bad_varlen(case):
    overrides, exc, match = BAD_VARLEN[case]
    with pytest.raises(exc, match=match):
        _varlen(**overrides)


def test_trusted_alpha_skips_only_the_value_check():
    # An AlphaParameter's output is in range by construction: the integration skips the value check (a host sync
    # on GPU) but shape and dtype are still checked.
    from hf_adasplash._validation import check_alpha

    check_alpha(torch.tensor([3.0, 1.5]), 2, values=False)
    with pytest.raises(ValueError, match="alpha must be 1"):
        check_alpha(torch.tensor([3.0, 1.5]), 2)
    with pytest.raises(ValueError, match="shape"):
        check_alpha(torch.tensor([1.5, 1.5, 1.5]), 2, values=False)
    with pytest.raises(TypeError, match="floating point"):
        check_alpha(torch.tensor([1, 2]), 2, values=False)


def test_cu_seqlens_are_read_once_per_tensor(monkeypatch):
    # every layer of a packed model passes the same cu_seqlens: its values (a device sync) are read once, and again
    # only for a tensor changed in place or another token count
    from hf_adasplash import _validation as V

    reads = []
    real = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: reads.append(1) or real(t, *a, **k))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    assert V.check_cu_seqlens("cu_seqlens_q", cu, 7, cu.device) == 4
    assert V.check_cu_seqlens("cu_seqlens_k", cu, 7, cu.device) == 4
    assert len(reads) == 1
    with pytest.raises(ValueError, match="does not match the token count 8"):
        V.check_cu_seqlens("cu_seqlens_q", cu, 8, cu.device)
    cu[1] = 5  # in place: read again
    assert V.check_cu_seqlens("cu_seqlens_q", cu, 7, cu.device) == 5
    cu[1] = 9
    with pytest.raises(ValueError, match="non-decreasing"):
        V.check_cu_seqlens("cu_seqlens_q", cu, 7, cu.device)
    assert len(reads) == 4
