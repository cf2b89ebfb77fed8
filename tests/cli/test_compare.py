"""`hf-adasplash compare` end to end on the tiny model: both runs, both evals, sparsity, card, compare.json."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

from hf_adasplash.cli.card import BAR_LABELS
from hf_adasplash.cli.main import main


def test_compare_runs_both_recipes_and_checks_the_bars(tmp_path, tiny_model, corpus):
    out = tmp_path / "cmp"
    rc = main(["compare", "--model", str(tiny_model), "--dataset", str(corpus), "--context-length", "32",
               "--batch-size", "2", "--grad-accum", "1", "--max-steps", "3", "--eval-tokens", "256",
               "--sparsity-sequences", "1", "--alpha-init", "1.5", "--no-progress", "-o", str(out)])
    assert rc == 0
    result = json.loads((out / "compare.json").read_text())
    sdpa, ada = (json.loads((out / a / "finetune.json").read_text()) for a in ("sdpa", "adasplash"))
    # one recipe, one token budget; only the attention differs
    assert sdpa["tokens"] == ada["tokens"] == 3 * 2 * 32
    assert sdpa["recipe"]["attn"] == "sdpa" and ada["recipe"]["attn"] == "adasplash"
    assert {k: v for k, v in sdpa["recipe"].items() if "alpha" not in k and k not in ("attn", "output_dir")} == \
        {k: v for k, v in ada["recipe"].items() if "alpha" not in k and k not in ("attn", "output_dir")}
    assert sdpa["alpha"] == [] and ada["alpha"] and all(len(row) == 4 for row in ada["alpha"])
    assert result["perplexity"]["sdpa"] > 1 and result["perplexity"]["adasplash"] > 1
    ratio = result["perplexity"]["adasplash"] / result["perplexity"]["sdpa"]
    assert abs(result["values"]["ppl_ratio"] - ratio) < 1e-12
    assert 0.0 <= result["values"]["zero_fraction"] <= 1.0
    assert set(result["bars"]) == {"ppl_ratio", "zero_fraction", "block_zero_fraction", "throughput_ratio"}
    assert all(b["met"] in (True, False) for b in result["bars"].values())
    assert result["perplexity_packed"]["sdpa"] > 1 and result["perplexity_packed"]["adasplash"] > 1
    assert result["compile_ahead_seconds"] is None  # CPU: nothing compiles ahead (the interpreter runs the kernels)
    card = (out / "adasplash" / "README.md").read_text()
    assert "sdpa" in card and "adasplash" in card
    # the card states every bar, and by how much a missed one is missed
    section = card.split("## Against softmax")[1].split("## alpha")[0]
    for key, b in result["bars"].items():
        line = next(row for row in section.splitlines() if row.startswith(f"| {BAR_LABELS[key]} |"))
        assert ("| met |" in line) if b["met"] else ("missed** by" in line), line
    assert f"{result['perplexity_packed']['sdpa']:.3f}" in section
    # the training curves of both runs, linked from the card
    assert (out / "compare.png").stat().st_size > 0 and "compare.png)" in section


def test_compare_reuses_a_matching_baseline_and_refuses_another_recipe(tmp_path, tiny_model, corpus, capsys):
    common = ["--model", str(tiny_model), "--dataset", str(corpus), "--context-length", "32", "--batch-size", "2",
              "--grad-accum", "1", "--max-steps", "2", "--eval-tokens", "256", "--sparsity-sequences", "1",
              "--no-progress"]
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["compare", *common, "--alpha-init", "1.5", "-o", str(first)]) == 0
    assert main(["compare", *common, "--alpha-init", "1.3", "--baseline", str(first), "-o", str(second)]) == 0
    # the softmax run is the first one's, not retrained: its record is copied, no weights are written
    assert (second / "sdpa" / "finetune.json").read_text() == (first / "sdpa" / "finetune.json").read_text()
    assert not any(p.suffix == ".safetensors" for p in (second / "sdpa").iterdir())
    a, b = (json.loads((d / "compare.json").read_text()) for d in (first, second))
    assert b["perplexity"]["sdpa"] == a["perplexity"]["sdpa"]
    assert b["alpha"] != a["alpha"]  # the adasplash run is this compare's own
    # the sweep summary names each run by the recipe field that differs, and plots the trade-off
    sweep = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "sweep_compares.py"))
    assert sweep["main"]([str(first), str(second), str(tmp_path / "none"), "-o", str(tmp_path / "sweep")]) == 0
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert summary["varying"] == ["alpha_init"] and summary["unfinished"] == [str(tmp_path / "none")]
    assert sorted(r["alpha_init"] for r in summary["runs"]) == [1.3, 1.5]
    assert {r["ppl_ratio"] for r in summary["runs"]} == {a["values"]["ppl_ratio"], b["values"]["ppl_ratio"]}
    assert (tmp_path / "sweep" / "pareto.png").stat().st_size > 0
    capsys.readouterr()
    rc = main(["compare", *common[:-1], "--lr", "3e-4", "--baseline", str(first), "-o", str(tmp_path / "c")])
    assert rc != 0
    assert "lr" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "c" / "adasplash").exists()


def test_compare_resume_keeps_the_steps_done_and_refuses_another_recipe(tmp_path, tiny_model, corpus, capsys):
    # a compare cut short (here: its adasplash eval and sparsity lost) goes on with --resume: the runs are kept, the
    # missing steps run; a run recorded for another recipe is refused rather than reused
    common = ["compare", "--model", str(tiny_model), "--dataset", str(corpus), "--context-length", "32",
              "--batch-size", "2", "--grad-accum", "1", "--max-steps", "2", "--eval-tokens", "256",
              "--sparsity-sequences", "1", "--alpha-init", "1.5", "--no-progress"]
    out = tmp_path / "cmp"
    assert main([*common, "-o", str(out)]) == 0
    kept = {p: p.stat().st_mtime_ns for p in (out / "sdpa" / "finetune.json", out / "adasplash" / "finetune.json",
                                             out / "eval-sdpa.json")}
    first = json.loads((out / "compare.json").read_text())
    (out / "eval-adasplash.json").unlink()
    shutil.rmtree(out / "sparsity")
    capsys.readouterr()
    assert main([*common, "--resume", "-o", str(out)]) == 0
    assert capsys.readouterr().out.count("(done:") == 3  # "(done: kept)", which the console may wrap
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert (out / "eval-adasplash.json").is_file() and (out / "sparsity" / "sparsity.json").is_file()
    again = json.loads((out / "compare.json").read_text())
    assert again["perplexity"] == first["perplexity"] and again["tokens_per_s"] == first["tokens_per_s"]
    # another alpha recipe: the adasplash run on disk is not this one's
    rc = main([*common[:-3], "--alpha-init", "1.3", "--no-progress", "--resume", "-o", str(out)])
    assert rc != 0 and "alpha_init" in capsys.readouterr().err.replace("\n", " ")
