"""`finetune` under `accelerate launch` on two GPUs (DDP, bf16, learned alpha): the device machine's check.

One GPU with batch 4 and two GPUs with batch 2 each see the same blocks per optimizer step, so their loss curves
must agree within bf16 noise; alpha must be identical on both processes; a run resumed from the two-GPU run's
mid-way checkpoint must end with that run's weights.

    pytest -m gpu tests/cli/test_multigpu.py -s        # needs 2 CUDA devices
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]
REPO = Path(__file__).resolve().parents[2]
STEPS, SAVE_AT = 12, 6


def _launch(out: Path, model, corpus, procs: int, batch: int, *extra: str, launcher: list[str] | None = None) -> dict:
    accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate CLI missing"
    if launcher is None:
        launcher = ["--multi_gpu"] if procs > 1 else []
    cmd = [accelerate, "launch", *launcher, "--num_processes", str(procs), "--num_machines", "1",
           "--mixed_precision", "bf16", "--dynamo_backend", "no", str(REPO / "scripts" / "finetune.py"),
           "--model", str(model), "--dataset", str(corpus), "--context-length", "64", "--batch-size", str(batch),
           "--max-steps", str(STEPS), "--log-every", "1", "--save-every", str(SAVE_AT), "--eval-blocks", "8",
           "--alpha-schedule", "learned", "--alpha-init", "1.5", "--alpha-lr", "1e-2", "--report-to", "none",
           "--no-progress", "-o", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "finetune.json").read_text())


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_two_gpus_match_one_gpu_and_resume(tmp_path, tiny_model, corpus):
    one = _launch(tmp_path / "one", tiny_model, corpus, 1, 4)
    two = _launch(tmp_path / "two", tiny_model, corpus, 2, 2)
    assert two["num_processes"] == 2 and two["mixed_precision"] == "bf16"
    assert two["tokens"] == one["tokens"] == STEPS * 4 * 64
    assert two["alpha_rank_spread"] == 0.0
    curve1 = [h["loss"] for h in one["history"] if "loss" in h]
    curve2 = [h["loss"] for h in two["history"] if "loss" in h]
    assert len(curve1) == len(curve2) == STEPS
    gap = max(abs(a - b) for a, b in zip(curve1, curve2))
    print(f"\nloss curves, 1 GPU: {curve1}\n2 GPUs: {curve2}\nmax gap {gap:.4f}")
    assert gap <= 0.05 * max(curve1), "the same global batches must give the same loss curve within bf16 noise"
    flat1 = [a for row in one["alpha"] for a in row]
    flat2 = [a for row in two["alpha"] for a in row]
    assert max(abs(a - b) for a, b in zip(flat1, flat2)) <= 1e-2
    assert flat1 != [1.5] * len(flat1), "alpha must have been learned"

    # resume from the two-GPU run's mid-way checkpoint in a fresh folder
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "two" / "checkpoints" / f"step-{SAVE_AT}", resumed / "checkpoints" / f"step-{SAVE_AT}")
    again = _launch(resumed, tiny_model, corpus, 2, 2, "--resume")
    assert again["steps"] == STEPS and again["alpha_rank_spread"] == 0.0
    w2, w3 = _weights(tmp_path / "two"), _weights(resumed)
    diff = max((w2[n].float() - w3[n].float()).abs().max().item() for n in w2)
    print(f"resumed vs uninterrupted: max weight difference {diff:.3e}")
    assert diff <= 1e-3


def test_fsdp_two_gpus(tmp_path, tiny_model, corpus):
    fsdp = ["--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_auto_wrap_policy", "NO_WRAP",
            "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_use_orig_params", "true"]
    run = _launch(tmp_path / "fsdp", tiny_model, corpus, 2, 2, launcher=fsdp)
    assert run["num_processes"] == 2 and run["steps"] == STEPS
    assert run["alpha_rank_spread"] == 0.0
    assert (tmp_path / "fsdp" / "model.safetensors").exists()
