"""Same inputs and seed -> bitwise identical forward and backward, within a process and across processes.

The reference (CPU) is deterministic by construction. The Triton kernels must be too: no atomics whose order
changes results (dk/dv/dalpha reductions in a fixed order), no data-dependent tiling that varies between runs.
"""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from hf_adasplash import adasplash_varlen_attention

_RUN = """
import hashlib, torch
from hf_adasplash import adasplash_attention
def run(backend, device="cpu", dtype=torch.float32):
    # one CPU thread: with two, the reference's forward differed between processes on a 2-core CI host (1 run in 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(backend, device, dtype)
    finally:
        torch.set_num_threads(threads)
def _run(backend, device, dtype):
    g = torch.Generator().manual_seed(1234)
    q = torch.randn(2, 4, 33, 16, generator=g).to(device, dtype).requires_grad_()
    k = torch.randn(2, 2, 33, 16, generator=g).to(device, dtype).requires_grad_()
    v = torch.randn(2, 2, 33, 16, generator=g).to(device, dtype).requires_grad_()
    a = torch.tensor([1.2, 1.5, 1.8, 2.0], device=device, requires_grad=True)
    kpm = torch.ones(2, 33, dtype=torch.bool, device=device); kpm[1, 20:] = False
    out = adasplash_attention(q, k, v, a, is_causal=True, key_padding_mask=kpm, backend=backend)
    out.backward(torch.randn(out.shape, generator=g).to(device, dtype))
    h = hashlib.sha256()
    for t in (out, q.grad, k.grad, v.grad, a.grad):
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
"""


def _digest(backend, device="cpu", dtype=torch.float32):
    scope = {}
    exec(_RUN, scope)  # the same code as the subprocess runs
    return scope["run"](backend, device, dtype)


def test_reference_bitwise_repeatable_in_process():
    assert len({_digest("reference") for _ in range(3)}) == 1


def test_reference_bitwise_repeatable_across_processes(tmp_path):
    code = _RUN + "\nprint(run('reference'))"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == _digest("reference")


def test_varlen_reference_bitwise_repeatable():
    def run():
        g = torch.Generator().manual_seed(7)
        q, k, v = (torch.randn(20, 2, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
        cu = torch.tensor([0, 5, 5, 20])
        out = adasplash_varlen_attention(q, k, v, cu, cu, 15, 15, 1.5, is_causal=True)
        out.sum().backward()
        return hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in (out, q.grad, k.grad, v.grad))).digest()

    assert run() == run()


def _triton_available():
    try:
        import hf_adasplash.ops.attention  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not _triton_available(), reason="needs hf_adasplash.ops.attention and CUDA or TRITON_INTERPRET=1")
def test_triton_bitwise_repeatable_interpreter():
    if torch.cuda.is_available():
        pytest.skip("the GPU variant is test_triton_bitwise_repeatable_gpu")
    assert _digest("triton") == _digest("triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["f16", "bf16", "f32"])
def test_triton_bitwise_repeatable_gpu(dtype):
    assert len({_digest("triton", "cuda", dtype) for _ in range(5)}) == 1
