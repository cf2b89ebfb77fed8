"""Shared test setup: offline, Triton interpreter on CPU, NaN-poisoned allocations, fixed seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Must be set before triton is imported: kernels then run on the CPU through the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

ON_GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_empty, _empty_like = torch.empty, torch.empty_like


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    # no_grad: torch.empty(..., requires_grad=True) (e.g. inside torch.utils.checkpoint) is a leaf
    with torch.no_grad():
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype != torch.bool:
            t.fill_(-(2**30) if t.dtype in (torch.int32, torch.int64) else 0)
    return t


@pytest.fixture(autouse=True)
def _poison_empty(monkeypatch):
    """Uninitialised memory is NaN (floats) so an output element a kernel forgets to write fails loudly."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poisoned(_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poisoned(_empty_like(*a, **k)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu` on the device machine")
    for item in items:
        if "gpu" in item.keywords and not ON_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps a process-wide singleton: reset it so each test can pick its own mixed precision."""
    yield
    import sys

    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
