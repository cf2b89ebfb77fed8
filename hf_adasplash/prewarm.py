"""Compile a fine-tune's attention kernels before its first step, all at once, instead of one by one as it meets them.

A SmolLM2 fine-tune met ~10 kernel specialisations one at a time: ~20 s of compiles in its first 10 steps and ~10 s
more when the snapped alpha switched to the frozen variants (H100, a cold Triton cache; bench/NOTES.md v15), a
quarter of its run. Here one training step, the same step after ``snap_alpha`` and one evaluation forward run with
every Triton launch replaced by ``warmup`` (compile, don't launch) inside Triton's ``AsyncCompileMode``: the
compiles go to a thread pool and overlap, and the kernels land in the JIT's cache, so the real launches find them.
Nothing of the model changes: alpha is restored and the gradients of the (garbage) warm-up pass are dropped.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from hf_adasplash.modules import AlphaParameter


def _async_compile_mode(input_ids: torch.Tensor):
    """Triton's ``AsyncCompileMode`` where kernels compile for these tensors (CUDA, triton >= 3.4), else None."""
    if input_ids.device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        return None
    return AsyncCompileMode


def _warm(jit_fn, grid, **kwargs) -> None:
    jit_fn.warmup(grid=grid, **kwargs)


@contextlib.contextmanager
def _async_mode_here(mode) -> Iterator[None]:
    """``mode`` active on this thread too. Autograd runs a CUDA backward on its own worker thread, which does not see
    the mode the main thread entered (a ContextVar): without this the backward's kernels compiled one at a time,
    outside the pool."""
    try:
        from triton.runtime import _async_compile
    except ImportError:
        _async_compile = None
    if mode is None or _async_compile is None or _async_compile.active_mode.get() is not None:
        yield
        return
    token = _async_compile.active_mode.set(mode)
    try:
        yield
    finally:
        _async_compile.active_mode.reset(token)


@contextlib.contextmanager
def _compile_only(mode=None) -> Iterator[None]:
    """Attention kernel launches compile without running (their outputs stay uninitialised), inside ``mode`` (an
    ``AsyncCompileMode``) on whichever thread launches them."""
    from hf_adasplash.ops import attention_ops

    def warm(jit_fn, grid, **kwargs):
        with _async_mode_here(mode):
            _warm(jit_fn, grid, **kwargs)

    real = attention_ops.launch
    attention_ops.launch = warm
    try:
        yield
    finally:
        attention_ops.launch = real


@contextlib.contextmanager
def _alpha_kept(model: nn.Module) -> Iterator[None]:
    """Every alpha logit and its requires_grad flag as they were on entry."""
    kept = [(m, m.logit.detach().clone(), m.logit.requires_grad) for m in model.modules()
            if isinstance(m, AlphaParameter)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, logit, requires_grad in kept:
                m.logit.copy_(logit)
                m.logit.requires_grad_(requires_grad)


class _TimedPool:
    """A thread pool that records each compile's kernel name and seconds (what bounds the whole)."""

    def __init__(self, workers: int, timings: list):
        from concurrent.futures import ThreadPoolExecutor

        self.pool, self.timings = ThreadPoolExecutor(max_workers=workers), timings

    def submit(self, fn, /, *args, **kwargs):
        def timed():
            t0 = time.perf_counter()
            kernel = fn(*args, **kwargs)
            self.timings.append((getattr(kernel, "name", "?"), round(time.perf_counter() - t0, 2)))
            return kernel

        return self.pool.submit(timed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown()
        return False


def compile_ahead(model: nn.Module, input_ids: torch.Tensor, *, snapped: bool = False, evaluation: bool = True,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  workers: int | None = None, timings: list | None = None) -> float | None:
    """Compiles, in parallel, the attention kernels that training ``model`` on batches like ``input_ids`` launches:
    one forward+backward as alpha is now, one after ``snap_alpha`` (``snapped``), one no-grad evaluation forward
    (``evaluation``, snapped if ``snapped``). Returns the seconds it took, or None where nothing compiles ahead
    (tensors off CUDA, the Triton interpreter, a Triton without async compiles). ``timings`` receives
    ``(kernel name, seconds)`` per compile.
    """
    mode = _async_compile_mode(input_ids)
    if mode is None:
        return None
    from hf_adasplash.patching import snap_alpha

    def step():
        with autocast():
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()

    def evaluate():
        was_training = model.training
        model.eval()
        with torch.no_grad(), autocast():
            model(input_ids=input_ids, labels=input_ids)
        model.train(was_training)

    t0 = time.perf_counter()
    # fork_rng: the warm-up passes leave the random state as they found it (exact --resume)
    rng_devices = [input_ids.device] if input_ids.is_cuda else []
    with _TimedPool(workers or os.cpu_count(), [] if timings is None else timings) as pool, mode(pool) as active, \
            _compile_only(active), _alpha_kept(model), torch.random.fork_rng(devices=rng_devices):
        step()
        if snapped:
            snap_alpha(model)
            step()
        if evaluation:
            evaluate()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0
