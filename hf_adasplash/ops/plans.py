"""Launch plans: an op's kernel launches built once per input signature, then replayed with each call's tensors.

Everything a launch takes besides its tensors (sizes, strides, flags, launch settings, grids) follows from the
inputs' shapes, strides and dtypes and the op's options. A plan holds that per signature. A call allocates its
buffers and launches. On CUDA each launch after the plan's first is bound to its compiled kernel
(``launch.bind``), which skips rebuilding ~60 keyword arguments and the launch key. A SmolLM2 layer's forward and
backward took 1.4-1.7 ms of host time before, ~0.7 ms with plans, against SDPA's ~0.27 ms (H100 hosts,
bench/NOTES.md v17). Replays launch the same compiled kernels with the same values as
:func:`~hf_adasplash.ops.launch.launch` would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hf_adasplash.ops import launch as _launch

MAX_PLANS = 256  # per op: beyond this (many distinct shapes) the cache starts over


@dataclass
class Step:
    """One kernel launch: ``fn[grid](**static, **{arg: tensors[name] for arg, name in tensors.items()})``."""

    fn: object
    grid: tuple
    static: dict
    tensors: dict[str, str]
    bound: object = None  # a launch.Bound once compiled, False where binding does not apply

    def __post_init__(self):
        stray = [k for k, v in self.static.items() if isinstance(v, torch.Tensor)]
        if stray:
            raise TypeError(f"plan step for {getattr(self.fn, '__name__', self.fn)}: tensors {stray} must be named "
                            "in `tensors`, not fixed in the plan")


@dataclass
class Plan:
    """Buffers to allocate (name, maker of the tensor from the table so far) and the launches, in order."""

    allocs: list[tuple[str, Callable[[dict], torch.Tensor]]]
    steps: list[Step] = field(default_factory=list)
    cuda: bool = False
    copies: bool = False  # some input needs a copy before the launches (the op makes it; a plan only records it)

    def allocate(self, table: dict) -> dict:
        for name, make in self.allocs:
            table[name] = make(table)
        return table

    def run(self, table: dict, launch_fn) -> None:
        """Launches every step with the tensors of ``table``, through ``launch_fn`` or, where it is the real
        :func:`launch` on CUDA, through each step's bound compiled kernel."""
        fast = self.cuda and launch_fn is _launch.launch and _launch.cached_launch_enabled()
        for s in self.steps:
            if fast and s.bound and s.bound(table):
                continue
            kwargs = {**s.static, **{arg: table[name] for arg, name in s.tensors.items()}}
            launch_fn(s.fn, s.grid, **kwargs)
            if fast and s.bound is None:
                s.bound = _launch.bind(s.fn, s.grid, kwargs, s.tensors) or False


class PlanCache:
    """Plans by signature, bounded (``MAX_PLANS``)."""

    def __init__(self):
        self.plans: dict = {}

    def get(self, key, build: Callable[[], Plan]) -> Plan:
        plan = self.plans.get(key)
        if plan is None:
            if len(self.plans) >= MAX_PLANS:
                self.plans.clear()
            plan = self.plans[key] = build()
        return plan


def tensor_sig(t: torch.Tensor | None):
    """What a plan depends on of a tensor: its shape, strides, dtype and device (None when absent)."""
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)
