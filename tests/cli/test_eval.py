"""`hf-adasplash eval`, the offline perplexity metric, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import math

import pytest

from hf_adasplash.cli.main import main


def _eval(tmp_path, tiny_model, corpus, *extra):
    out = tmp_path / f"eval{len(list(tmp_path.iterdir()))}.json"
    rc = main(["eval", "--model", str(tiny_model), "--dataset", str(corpus), "--split", "test",
               "--context-length", "64", "--stride", "32", "--max-tokens", "300", "-o", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_metric_module_loads_by_path_offline():
    from hf_adasplash.evaluation import load_perplexity_metric

    metric = load_perplexity_metric()
    r = metric.compute(nll_sums=[6.0, 2.0], num_tokens=[3, 1])
    assert r["perplexity"] == pytest.approx(math.exp(2.0))
    assert r["num_tokens"] == 4 and r["num_windows"] == 2


def test_sliding_window_scores_every_token_once(tiny_model, corpus):
    import torch

    from hf_adasplash.evaluation import load_model, window_nlls

    model, _, _ = load_model(str(tiny_model), "sdpa")
    ids = torch.randint(0, 100, (1, 150))
    sums, counts = window_nlls(model, ids, max_length=64, stride=32, progress=False)
    assert sum(counts) == 149  # every token but the first, exactly once
    # stride == window (no overlap): a window's first token has no context and is not scored (as in the guide)
    _, counts2 = window_nlls(model, ids, max_length=64, stride=64, progress=False)
    assert counts2 == [63, 63, 21]
    # one window covering everything equals the plain model loss
    s3, c3 = window_nlls(model, ids, max_length=150, stride=150, progress=False)
    with torch.no_grad():
        ref = model(ids, labels=ids).loss.item()
    assert s3[0] / c3[0] == pytest.approx(ref, rel=1e-5)


def test_sdpa_equals_adasplash_at_alpha_one(tmp_path, tiny_model, corpus):
    sdpa = _eval(tmp_path, tiny_model, corpus, "--attn", "sdpa")
    eager = _eval(tmp_path, tiny_model, corpus, "--attn", "eager")
    ada = _eval(tmp_path, tiny_model, corpus, "--attn", "adasplash", "--alpha", "1.0")
    assert sdpa["num_tokens"] == ada["num_tokens"] == 299
    assert ada["perplexity"] == pytest.approx(sdpa["perplexity"], rel=1e-5)
    assert eager["perplexity"] == pytest.approx(sdpa["perplexity"], rel=1e-5)
    sparse = _eval(tmp_path, tiny_model, corpus, "--attn", "adasplash", "--alpha", "1.5")
    assert sparse["perplexity"] != pytest.approx(sdpa["perplexity"], rel=1e-5)  # alpha actually reaches the model


def test_packed_eval_scores_the_training_blocks(tmp_path, tiny_model, corpus):
    import torch
    from transformers import AutoTokenizer

    from hf_adasplash.data import load_text, pack
    from hf_adasplash.evaluation import load_model

    out = tmp_path / "packed.json"
    rc = main(["eval", "--model", str(tiny_model), "--dataset", str(corpus), "--split", "test",
               "--context-length", "64", "--packed", "-o", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    # the same blocks finetune evaluates on, each scored alone: mean of the per-block losses (blocks are equal-sized)
    blocks = pack(load_text(str(corpus), "test"), AutoTokenizer.from_pretrained(tiny_model), 64)[:]["input_ids"]
    model, _, _ = load_model(str(tiny_model), "sdpa")
    with torch.no_grad():
        losses = [model(b[None], labels=b[None]).loss.item() for b in blocks]
    assert result["format"] == "packed" and result["num_windows"] == len(blocks) >= 2
    assert result["num_tokens"] == len(blocks) * 63
    assert result["perplexity"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    assert _eval(tmp_path, tiny_model, corpus)["format"] == "stream"


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "/no/such/model"], "unknown model"),
    (["eval", "--model", "{model}", "--dataset", "/no/such/data.txt"], "not found locally"),
    (["eval", "--model", "{model}", "--dataset", "{corpus}", "--split", "test", "--context-length", "0"],
     "context length must be > 0"),
    (["eval", "--model", "{model}", "--dataset", "{corpus}", "--split", "test", "--text-column", "body"],
     "has no column 'body'"),
    (["finetune", "--model", "{model}", "-o", "{tmp}/o", "--dataset", "{corpus}/train", "--context-length", "-5"],
     "context length must be > 0"),
    (["finetune", "--model", "/no/such/model", "-o", "{tmp}/o", "--dataset", "{corpus}/train"], "unknown model"),
    (["finetune", "--model", "{model}", "-o", "{tmp}/o", "--dataset", "nonexistent_dataset_xyz"], "not found locally"),
    (["finetune", "--model", "{model}", "-o", "{tmp}/o", "--alpha", "2.5"], "--alpha must be in"),
    (["eval", "--attn", "flash"], "invalid choice"),
    (["eval", "--model", "{model}", "--dataset", "{corpus}", "--split", "test", "--packed", "--stride", "8"],
     "drop --stride"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, tiny_model, corpus, capsys, argv, message):
    argv = [a.format(model=tiny_model, corpus=corpus, tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) if "invalid choice" in message else _nullcontext():
        rc = main(argv)
        assert rc == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0] and errors[0] == err.splitlines()[-1], err
    assert "Traceback" not in err


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
