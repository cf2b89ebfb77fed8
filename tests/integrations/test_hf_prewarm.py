"""compile_ahead: a training step, the snapped step and an evaluation forward meet every kernel variant a fine-tune
launches; the model, its alphas, its gradients and the random state come out as they went in."""

import threading
import types

import hf_models as H
import pytest
import torch

import hf_adasplash
from hf_adasplash import prewarm
from hf_adasplash.integrations import transformers as integ


def test_compile_ahead_does_nothing_where_nothing_compiles():
    model = H.adasplash_model(H.FAMILIES["llama"]).train()
    assert prewarm.compile_ahead(model, H.tokens(2, 40)) is None  # CPU tensors


class _Mode:
    """Stands in for Triton's AsyncCompileMode (which needs CUDA)."""

    def __init__(self, pool):
        self.pool = pool

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_compile_ahead_meets_every_variant_and_changes_nothing(monkeypatch):
    monkeypatch.setenv(integ.BACKEND_ENV, "triton")  # the kernels, under the interpreter on CPU
    model = H.adasplash_model(H.FAMILIES["llama"]).train()
    ids = H.tokens(2, 40)
    alphas = [p.detach().clone() for p in hf_adasplash.alpha_parameters(model)]
    with torch.no_grad():
        before = model(input_ids=ids).logits
    rng = torch.get_rng_state()
    warmed = []
    monkeypatch.setattr(prewarm, "_async_compile_mode", lambda _ids: _Mode)
    monkeypatch.setattr(prewarm, "_warm", lambda jit_fn, grid, **kw: warmed.append((jit_fn.fn.__name__, kw)))

    assert prewarm.compile_ahead(model, ids, snapped=True) >= 0

    fwd = [kw for name, kw in warmed if name == "adasplash_fwd_kernel"]
    dq = [kw for name, kw in warmed if name == "adasplash_bwd_kernel_dq"]
    # learned step (entropy for d(alpha)), snapped step (no d(alpha)), evaluation (no backward)
    assert {(kw["NEED_BWD"], kw["NEED_ENT"]) for kw in fwd} == {(True, True), (True, False), (False, False)}
    assert {kw["NEED_DALPHA"] for kw in dq} == {True, False}
    assert {"adasplash_fwd_scan_kernel", "adasplash_fwd_tau_kernel", "adasplash_bwd_kernel_dkv",
            "adasplash_bwd_kernel_dalpha_per_entry"} <= {name for name, _ in warmed}
    # nothing launched for real, nothing left behind
    for p, a in zip(hf_adasplash.alpha_parameters(model), alphas):
        assert torch.equal(p, a) and p.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_the_compile_pool_times_each_kernel():
    timings = []
    with prewarm._TimedPool(2, timings) as pool:
        assert pool.submit(lambda: types.SimpleNamespace(name="adasplash_fwd_kernel")).result().name == \
            "adasplash_fwd_kernel"
    assert [name for name, _ in timings] == ["adasplash_fwd_kernel"] and timings[0][1] >= 0


def test_the_backward_thread_compiles_in_the_pool_too():
    # autograd runs a CUDA backward on its own thread, which does not see the AsyncCompileMode the main thread
    # entered (a ContextVar): launches from any thread must still compile inside it
    _async_compile = pytest.importorskip("triton.runtime._async_compile")
    from hf_adasplash.ops import attention_ops

    mode, seen = object(), []

    class Jit:
        def warmup(self, grid, **kwargs):
            seen.append(_async_compile.active_mode.get())

    with prewarm._compile_only(mode):
        worker = threading.Thread(target=attention_ops.launch, args=(Jit(), (1,)))
        worker.start()
        worker.join()
        attention_ops.launch(Jit(), (1,))
    assert seen == [mode, mode]
    assert _async_compile.active_mode.get() is None
