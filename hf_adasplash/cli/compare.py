"""``hf-adasplash compare``: the same fine-tune twice, dense softmax (sdpa) vs adasplash with learned alpha.

One recipe and token budget for both runs, then held-out perplexity of each (each under its own attention), the
sparsity of the adasplash model on held-out text, its model card, and ``compare.json``: perplexity ratio, sparsity
and training throughput ratio, each checked against the project's bar (ppl <= 1.03x softmax, >= 95% zero weights,
>= 60% empty 64x64 blocks, throughput >= 1.0x sdpa). Every step is the matching subcommand, run in this process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_adasplash.cli._common import add_data_args, add_model_args, console, positive_int, write_json

BARS = {"ppl_ratio": ("<=", 1.03), "zero_fraction": (">=", 0.95), "block_zero_fraction": (">=", 0.60),
        "throughput_ratio": (">=", 1.0)}


def build_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p, split="train")
    p.add_argument("--eval-split", default="test", help="held-out split for perplexity and sparsity (default: test)")
    p.add_argument("--output-dir", "-o", required=True, help="sdpa/, adasplash/, eval JSONs, sparsity/, compare.json")
    p.add_argument("--context-length", type=int, default=4096, help="tokens per training block (default: 4096)")
    # defaults: the recipe of the README's results (SmolLM2-135M, one H100, 7.9M tokens)
    p.add_argument("--batch-size", type=positive_int, default=4, help="blocks per micro-step (default: 4)")
    p.add_argument("--grad-accum", type=positive_int, default=2, help="micro-steps per optimizer step (default: 2)")
    p.add_argument("--max-steps", type=positive_int, default=240, help="optimizer steps of each run (default: 240)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the weights (default: 1e-4)")
    p.add_argument("--alpha-init", type=float, default=1.5,
                   help="learned alpha starts here (default: 1.5; from near 1 the heads stay dense)")
    p.add_argument("--alpha-lr", type=float, default=5e-2, help="learning rate of the alpha logits (default: 5e-2)")
    p.add_argument("--min-alpha", type=float, default=1.25,
                   help="learned alpha stays >= this (default: 1.25; the loss alone pulls alpha down, towards softmax)")
    p.add_argument("--max-alpha", type=float, default=2.0, help="learned alpha stays <= this (default: 2.0)")
    p.add_argument("--alpha-snap-step", type=positive_int, default=None,
                   help="after this step the learned alphas snap to the kernels' fast grid and freeze (see finetune)")
    p.add_argument("--warmup-steps", type=int, default=8, help="linear warm-up steps of both runs (default: 8)")
    p.add_argument("--eval-tokens", type=positive_int, default=None, help="held-out tokens scored (default: all)")
    p.add_argument("--sparsity-sequences", type=positive_int, default=4,
                   help="held-out sequences measured (default: 4)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="both runs trade compute for memory")
    p.add_argument("--seed", type=int, default=0, help="seed of both runs")
    p.add_argument("--card", default=None, help="model card path (default: <output-dir>/adasplash/README.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--summarize-only", action="store_true",
                   help="skip the runs: rebuild compare.json, compare.png and the card from the files in --output-dir")
    p.add_argument("--resume", action="store_true",
                   help="keep the steps already done in --output-dir (a run's finetune.json of this recipe, an eval's "
                   "JSON, sparsity.json) and run the rest: a compare cut short by a time limit goes on from there")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="reuse the softmax run and its eval from another compare's --output-dir (its recipe must "
                   "match this one's, alpha options aside): a sweep over alpha options trains sdpa once")


def _check(value: float | None, op: str, bar: float) -> bool | None:
    if value is None:
        return None
    return value <= bar if op == "<=" else value >= bar


def _runs(out: Path) -> dict:
    """Both fine-tunes' ``finetune.json``, by attention."""
    return {a: json.loads((out / a / "finetune.json").read_text()) for a in ("sdpa", "adasplash")}


def summarize(out: Path) -> dict:
    """compare.json's content from the files the steps wrote (also usable on its own, e.g. after a rerun)."""
    runs = _runs(out)
    evals = {a: json.loads((out / f"eval-{a}.json").read_text()) for a in ("sdpa", "adasplash")}
    sp = json.loads((out / "sparsity" / "sparsity.json").read_text())
    tps = {a: runs[a]["tokens_per_s"] for a in runs}
    half = {a: runs[a].get("tokens_per_s_second_half") for a in runs}
    values = {
        "ppl_ratio": evals["adasplash"]["perplexity"] / evals["sdpa"]["perplexity"],
        "zero_fraction": sp["zero_fraction"],
        "block_zero_fraction": sp["block_zero_fraction"],
        "throughput_ratio": tps["adasplash"] / tps["sdpa"] if tps["sdpa"] and tps["adasplash"] else None,
    }
    return {
        "perplexity": {a: evals[a]["perplexity"] for a in evals},
        # finetune's own held-out blocks, cut like the training data (documents joined with BOS/EOS, no overlap)
        "perplexity_packed": {a: (runs[a].get("eval") or {}).get("ppl") for a in runs},
        "packed_eval_blocks": runs["adasplash"]["recipe"].get("eval_blocks"), "tokens_per_s": tps,
        # no bar: the whole-run figure above is the one judged; this one leaves out the one-time costs
        "tokens_per_s_second_half": half,
        "throughput_ratio_second_half": (half["adasplash"] / half["sdpa"]
                                         if half["sdpa"] and half["adasplash"] else None),
        "tokens": {a: runs[a]["tokens"] for a in runs}, "alpha": runs["adasplash"]["alpha"],
        # inside the adasplash run's time: its kernels compiled before its first step (None: compiled as met)
        "compile_ahead_seconds": runs["adasplash"].get("compile_ahead_seconds"),
        "context_length": sp.get("context_length"), "hardware": runs["adasplash"].get("hardware"),
        "values": values,
        "bars": {k: {"op": op, "bar": bar, "met": _check(values[k], op, bar)} for k, (op, bar) in BARS.items()},
    }


# the finetune recipe the sdpa run shares with the adasplash run (what a reused baseline must match)
SHARED_RECIPE = ("model", "dataset", "dataset_config", "split", "eval_split", "text_column", "context_length",
                 "batch_size", "grad_accum", "max_steps", "lr", "warmup_steps", "seed", "gradient_checkpointing")
# ...and the adasplash run's own (what --resume also checks for it)
ALPHA_RECIPE = ("alpha_init", "alpha_lr", "min_alpha", "max_alpha", "alpha_snap_step")


def reuse_baseline(src: Path, out: Path, args) -> None:
    """Copies ``src``'s sdpa run record and eval into ``out`` after checking they are this compare's recipe."""
    import shutil

    from hf_adasplash.assets import UserError
    from hf_adasplash.cli._common import read_json

    ev = read_json(src / "eval-sdpa.json")
    diff = _recipe_diff(read_json(src / "sdpa" / "finetune.json"), args, "sdpa")
    wanted_eval = {"attn": "sdpa", "dataset": args.dataset, "split": args.eval_split,
                   "max_length": args.context_length}
    diff.update({f"eval {k}": (ev.get(k), v) for k, v in wanted_eval.items() if ev.get(k) != v})
    if diff:
        raise UserError(f"--baseline {src} is not this recipe's softmax run; differing (baseline, here): {diff}")
    (out / "sdpa").mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "sdpa" / "finetune.json", out / "sdpa" / "finetune.json")
    shutil.copy2(src / "eval-sdpa.json", out / "eval-sdpa.json")


def _recipe_diff(run: dict, args, attn: str) -> dict:
    """The fields where a run's ``finetune.json`` record differs from this compare's ``attn`` run, as (there, here):
    the shared recipe, and for adasplash the alpha options too."""
    recipe = run.get("recipe", {})
    fields = SHARED_RECIPE + (ALPHA_RECIPE if attn == "adasplash" else ())
    diff = {k: (recipe.get(k), getattr(args, k)) for k in fields if recipe.get(k) != getattr(args, k)}
    if recipe.get("attn") != attn:
        diff["attn"] = (recipe.get("attn"), attn)
    return diff


def _done(path: Path, finetune_of: str | None, args) -> bool:
    """Whether ``--resume`` keeps the step that wrote ``path``: it exists, and a run's record (``finetune_of``: the
    run's attention) is this recipe's."""
    if not path.is_file():
        return False
    if finetune_of:
        from hf_adasplash.assets import UserError

        diff = _recipe_diff(json.loads(path.read_text()), args, finetune_of)
        if diff:
            raise UserError(f"--resume: {path} is another recipe's run; differing (there, here): {diff}")
    return True


def run(args) -> int:
    from hf_adasplash.cli.main import main

    out = Path(args.output_dir)
    data = ["--dataset", args.dataset, "--text-column", args.text_column]
    if args.dataset_config:
        data += ["--dataset-config", args.dataset_config]
    quiet = ["--no-progress"] if args.no_progress else []
    recipe = ["--model", args.model, *data, "--split", args.split, "--eval-split", args.eval_split,
              "--context-length", str(args.context_length), "--batch-size", str(args.batch_size),
              "--grad-accum", str(args.grad_accum), "--max-steps", str(args.max_steps), "--lr", str(args.lr),
              "--warmup-steps", str(args.warmup_steps), "--seed", str(args.seed), "--report-to", "none", *quiet]
    if args.gradient_checkpointing:
        recipe.append("--gradient-checkpointing")
    learned = ["--alpha-schedule", "learned", "--alpha-init", str(args.alpha_init), "--alpha-lr", str(args.alpha_lr),
               "--min-alpha", str(args.min_alpha), "--max-alpha", str(args.max_alpha)]
    if args.alpha_snap_step:
        learned += ["--alpha-snap-step", str(args.alpha_snap_step)]
    held_out = [*data, "--split", args.eval_split, "--context-length", str(args.context_length)]
    if args.eval_tokens:
        held_out += ["--max-tokens", str(args.eval_tokens)]
    # (argv, the file the step writes, the run it reads): a step after a run that reran reruns too (--resume)
    steps = [
        (["finetune", *recipe, "--attn", "sdpa", "-o", str(out / "sdpa")], out / "sdpa" / "finetune.json", "sdpa"),
        (["finetune", *recipe, "--attn", "adasplash", *learned, "-o", str(out / "adasplash")],
         out / "adasplash" / "finetune.json", "adasplash"),
        (["eval", "--model", str(out / "sdpa"), "--attn", "sdpa", *held_out, "-o", str(out / "eval-sdpa.json")],
         out / "eval-sdpa.json", "sdpa"),
        (["eval", "--model", str(out / "adasplash"), "--attn", "adasplash", *held_out,
          "-o", str(out / "eval-adasplash.json")], out / "eval-adasplash.json", "adasplash"),
        (["sparsity", "--model", str(out / "adasplash"), *data, "--split", args.eval_split,
          "--context-length", str(args.context_length), "--num-sequences", str(args.sparsity_sequences),
          "-o", str(out / "sparsity")], out / "sparsity" / "sparsity.json", "adasplash"),
    ]
    card = ["card", str(out / "adasplash"), "--eval", str(out / "eval-sdpa.json"), str(out / "eval-adasplash.json"),
            "--sparsity", str(out / "sparsity" / "sparsity.json"), "--compare", str(out / "compare.json"),
            "-o", args.card or str(out / "adasplash" / "README.md")]
    if args.card:
        card += ["--name", Path(args.card).stem]
    if args.baseline and not args.summarize_only:
        reuse_baseline(Path(args.baseline), out, args)
        steps = [steps[1], *steps[3:]]  # the adasplash run, its eval and sparsity
    rerun: set[str] = set()
    for i, (argv, writes, run_name) in enumerate([] if args.summarize_only else steps, 1):
        label = f"[bold]compare {i}/{len(steps) + 1}:[/] hf-adasplash {' '.join(argv[:1] + argv[-2:])}"
        is_run = argv[0] == "finetune"
        if args.resume and run_name not in rerun and _done(writes, run_name if is_run else None, args):
            console().print(f"{label} (done: kept)")
            continue
        console().print(label)
        if is_run:
            rerun.add(run_name)
        rc = main(argv)
        if rc:
            return rc
    result = summarize(out)
    write_json(out / "compare.json", result)
    from hf_adasplash.report import training_curves

    training_curves(_runs(out), out / "compare.png")
    n = len(steps) + 1
    console().print(f"[bold]compare {n}/{n}:[/] hf-adasplash {' '.join(card[:1] + card[-2:])}")
    rc = main(card)
    if rc:
        return rc
    c = console()
    for k, b in result["bars"].items():
        v = result["values"][k]
        shown = "n/a" if v is None else f"{v:.3f}"
        verdict = {True: "met", False: "MISSED", None: "n/a"}[b["met"]]
        c.print(f"{k:20s} {shown:>8s}  bar {b['op']} {b['bar']}  {verdict}")
    if result.get("throughput_ratio_second_half") is not None:
        c.print(f"{'throughput, 2nd half':20s} {result['throughput_ratio_second_half']:>8.3f}  (no bar: after the "
                "one-time kernel compiles and the learnable-alpha phase)")
    c.print(f"wrote {out / 'compare.json'}")
    return 0
