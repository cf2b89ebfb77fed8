"""When an eager call may skip its ``torch.library`` op and call the implementation directly.

The dispatch cost about 1 ms of host time per call on an H100 host (torch 2.11), more than a 4k-token SmolLM2
layer's forward kernels take on the GPU. torch.compile traces, fake tensors and dispatch modes (FakeTensorMode,
FlopCounterMode, ...) still need the registered ops and their fake implementations.
"""

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def eager_call(t: torch.Tensor) -> bool:
    """A plain tensor, outside a torch.compile trace and any dispatch mode."""
    # is_compiling first: under torch.compile the rest is never traced
    return not torch.compiler.is_compiling() and type(t) is torch.Tensor and _get_current_dispatch_mode() is None
