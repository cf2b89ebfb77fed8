"""`finetune` under `accelerate launch` on two GPUs (DDP, bf16, learned alpha): the device machine's check.

One GPU with batch 4 and two GPUs with batch 2 each see the same blocks per optimizer step, so their loss curves
must agree within bf16 noise; alpha must be identical on both processes; a run resumed from the two-GPU run's
mid-way checkpoint must end with that run's weights; FSDP must run. The checks live in `scripts/multigpu_check.py`,
which also runs them on a real model (its results: `bench/multigpu_h100/`).

    pytest -m gpu tests/cli/test_multigpu.py -s        # needs 2 CUDA devices
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import multigpu_check  # noqa: E402

STEPS, SAVE_AT = 12, 6


def test_two_gpus_match_one_gpu_and_resume(tmp_path, tiny_model, corpus):
    summary = multigpu_check.check(argparse.Namespace(
        model=str(tiny_model), dataset=str(corpus), context_length=64, batch=4, steps=STEPS, save_at=SAVE_AT,
        fsdp=True, mixed_precision="bf16", loss_tol=0.05, eval_tol=0.01, alpha_tol=1e-2, resume_tol=1e-3,
        timeout=900, out=str(tmp_path),
        extra=["--eval-blocks", "8", "--alpha-lr", "1e-2"]))
    print(f"\n{json.dumps(summary, indent=1)}")
    assert summary["failures"] == []
    assert len(summary["loss_one_gpu"]) == len(summary["loss_two_gpus"]) == STEPS
    assert summary["mean_alpha"]["two_gpus_ddp"] != 1.5, "alpha must have been learned"
    assert summary["hardware"]
    assert (tmp_path / "fsdp" / "model.safetensors").exists()
