"""`hf-adasplash finetune`: schedules, the saved model, exact --resume after SIGKILL, corrupted checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hf_adasplash.cli.main import main


def _args(model, corpus, out, *extra):
    return ["finetune", "--model", str(model), "--dataset", str(corpus), "--eval-split", "test", "--eval-blocks", "2",
            "--context-length", "32", "--batch-size", "2", "--grad-accum", "2", "--lr", "3e-3", "--alpha-lr", "0.1",
            "--log-every", "1", "--report-to", "none", "--no-progress", "-o", str(out), *extra]


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def test_learned_alpha_trains_saves_and_reloads(tmp_path, tiny_model, corpus):
    import hf_adasplash

    out = tmp_path / "run"
    assert main(_args(tiny_model, corpus, out, "--max-steps", "4", "--report-to", "tensorboard")) == 0
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 2 * 2 * 32
    assert summary["tokens_per_s"] > 0 and summary["eval"]["ppl"] > 1
    # how many passes over the training split the run made (a small split overfits a large model: README)
    assert summary["train_blocks"] > 0
    assert summary["epochs"] == pytest.approx(4 * 2 * 2 / summary["train_blocks"], abs=1e-3)
    logs = [h for h in summary["history"] if "loss" in h]  # logged every step: steps 2..4 are the second half
    expected = (logs[-1]["tokens"] - logs[1]["tokens"]) / (logs[-1]["seconds"] - logs[1]["seconds"])
    assert summary["tokens_per_s_second_half"] == pytest.approx(expected, rel=1e-3)
    alpha = torch.tensor(summary["alpha"])
    assert alpha.shape == (2, 4)  # layers x heads
    assert not torch.allclose(alpha, torch.full_like(alpha, 1.01), atol=1e-4)  # alpha was learned
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    # the saved folder restores the learned alpha exactly
    model = hf_adasplash.from_pretrained(str(out))
    from hf_adasplash.training import alpha_table

    assert torch.allclose(torch.tensor(alpha_table(model)), alpha, atol=1e-5)
    assert model.config._attn_implementation == "adasplash"


def test_anneal_and_fixed_schedules_do_not_learn_alpha(tmp_path, tiny_model, corpus):
    from hf_adasplash.training import FinetuneConfig, anneal_alpha

    cfg = FinetuneConfig(alpha_init=1.01, alpha=1.5, max_steps=10, anneal_steps=4)
    assert anneal_alpha(cfg, 0) == pytest.approx(1.01)
    assert anneal_alpha(cfg, 2) == pytest.approx(1.255)
    assert anneal_alpha(cfg, 9) == pytest.approx(1.5)
    out = tmp_path / "anneal"
    assert main(_args(tiny_model, corpus, out, "--max-steps", "3", "--alpha-schedule", "anneal", "--alpha", "1.6",
                      "--anneal-steps", "2")) == 0
    alpha = torch.tensor(json.loads((out / "finetune.json").read_text())["alpha"])
    assert torch.allclose(alpha, torch.full_like(alpha, 1.6), atol=1e-5)  # reached the target, identical heads
    out = tmp_path / "fixed"
    assert main(_args(tiny_model, corpus, out, "--max-steps", "2", "--alpha-schedule", "fixed", "--alpha", "1.3")) == 0
    alpha = torch.tensor(json.loads((out / "finetune.json").read_text())["alpha"])
    assert torch.allclose(alpha, torch.full_like(alpha, 1.3), atol=1e-5)


def _cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-c", "import sys; from hf_adasplash.cli.main import main; sys.exit(main(sys.argv[1:]))",
            *args], env


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_model, corpus):
    steps = ["--max-steps", "12", "--save-every", "3", "--keep-checkpoints", "2"]
    ref = tmp_path / "ref"
    assert main(_args(tiny_model, corpus, ref, *steps)) == 0

    out = tmp_path / "killed"
    cmd, env = _cli(*_args(tiny_model, corpus, out, *steps)[0:], )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the step-6 checkpoint is complete once step 7 is logged
        if line.startswith("step 7:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()
    assert [p.name for p in sorted((out / "checkpoints").glob("step-*"))] == ["step-3", "step-6"]

    assert main(_args(tiny_model, corpus, out, *steps, "--resume")) == 0
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    report = os.environ.get("HF_ADASPLASH_RESUME_REPORT")  # scripts/reliability.py collects the figure
    if report:
        diff = max(float((b[k].double() - a[k].double()).abs().max()) for k in a)
        with open(report, "a") as f:
            f.write(json.dumps({"max_weight_diff": diff}) + "\n")
    ref_sum = json.loads((ref / "finetune.json").read_text())
    out_sum = json.loads((out / "finetune.json").read_text())
    assert out_sum["tokens"] == ref_sum["tokens"] and out_sum["steps"] == 12
    assert out_sum["final_train_loss"] == pytest.approx(ref_sum["final_train_loss"], rel=1e-5)
    assert out_sum["eval"]["loss"] == pytest.approx(ref_sum["eval"]["loss"], rel=1e-5)


def test_corrupted_checkpoint_is_a_clear_error_and_the_previous_one_works(tmp_path, tiny_model, corpus, capsys):
    out = tmp_path / "run"
    steps = ["--max-steps", "4", "--save-every", "1", "--keep-checkpoints", "2"]
    assert main(_args(tiny_model, corpus, out, *steps)) == 0
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert [p.name for p in ckpts] == ["step-2", "step-3"]
    latest = ckpts[-1] / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated, as by a full disk
    capsys.readouterr()
    assert main(_args(tiny_model, corpus, out, *steps, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "step-3 is unusable: model.safetensors is truncated" in err and "step-2 is intact" in err
    # a bit flip is caught too
    shutil.copy(ckpts[0] / "model.safetensors", latest)
    assert main(_args(tiny_model, corpus, out, *steps, "--resume")) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    # the previous checkpoint resumes fine
    assert main(_args(tiny_model, corpus, out, *steps, "--resume", str(ckpts[0]))) == 0
    assert json.loads((out / "finetune.json").read_text())["steps"] == 4


def test_alpha_snap_freezes_grid_alphas_and_resumes_exactly(tmp_path, tiny_model, corpus):
    from hf_adasplash.patching import SNAP_GRID

    snap = ["--alpha-init", "1.45", "--min-alpha", "1.1", "--max-steps", "4", "--alpha-snap-step", "2",
            "--save-every", "2"]
    ref = tmp_path / "ref"
    assert main(_args(tiny_model, corpus, ref, *snap)) == 0
    summary = json.loads((ref / "finetune.json").read_text())
    alpha = torch.tensor(summary["alpha"], dtype=torch.float64)
    grid = torch.tensor(SNAP_GRID, dtype=torch.float64)
    assert ((alpha[..., None] - grid).abs().min(-1).values < 1e-5).all(), alpha  # every head on the grid
    means = {h["step"]: h["alpha_mean"] for h in summary["history"] if "alpha_mean" in h}
    assert means[1] != 1.45  # learned before the snap...
    assert means[2] == means[3] == means[4]  # ...frozen from it on
    assert summary["recipe"]["alpha_snap_step"] == 2
    from hf_adasplash.cli.card import _alpha_recipe

    assert _alpha_recipe(summary["recipe"]).endswith("after step 2 snapped to the nearest of 2, 1.5, 1.333, 1.25, 1.2 "
                                                      "(powers without special functions) and frozen")
    # resuming from the step-2 checkpoint (taken after the snap) keeps alpha frozen and ends where the run ended
    out = tmp_path / "resumed"
    shutil.copytree(ref / "checkpoints", out / "checkpoints")
    assert main(_args(tiny_model, corpus, out, *snap, "--resume")) == 0
    a, b = _weights(ref), _weights(out)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("extra, message", [
    (["--alpha-schedule", "fixed"], "needs the learned alpha schedule"),
    (["--max-steps", "2", "--alpha-snap-step", "3"], "must be in [1, max-steps = 2]"),
    (["--min-alpha", "1.6", "--max-alpha", "1.9", "--alpha-init", "1.7", "--alpha", "1.7"], "no snap alpha"),
])
def test_alpha_snap_bad_settings_are_clear_errors(tmp_path, tiny_model, corpus, capsys, extra, message):
    args = ["--alpha-snap-step", "1", *extra]
    assert main(_args(tiny_model, corpus, tmp_path / "run", *args)) == 2
    assert message in capsys.readouterr().err


def test_second_half_throughput_needs_a_log_point_past_half_the_run():
    from hf_adasplash.training import second_half_tokens_per_s

    logs = [{"step": s, "tokens": 100 * s, "seconds": 2.0 * s} for s in (10, 20, 30, 40)]
    # from the first log point at or past step 20 to the end: 2000 tokens in 40 s (evaluation entries are skipped)
    assert second_half_tokens_per_s([*logs, {"step": 40, "eval_loss": 1.0}], 40) == 50.0
    assert second_half_tokens_per_s(logs[:1], 40) is None  # no log point past half the run
    assert second_half_tokens_per_s(logs[:2], 40) is None  # the half-way point is the last one
