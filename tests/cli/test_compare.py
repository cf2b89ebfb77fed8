"""`hf-adasplash compare` end to end on the tiny model: both runs, both evals, sparsity, card, compare.json."""

from __future__ import annotations

import json

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
