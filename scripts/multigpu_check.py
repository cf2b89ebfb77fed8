#!/usr/bin/env python
"""`finetune` on two GPUs against one: DDP loss curves, alpha across ranks, checkpoint + resume, FSDP.

Runs `accelerate launch scripts/finetune.py` four times with learned alpha in bf16:

1. one GPU with a global batch of B sequences;
2. two GPUs (DDP) with B/2 each: the same blocks per optimizer step, so the loss curve (the global batch's mean) and
   the held-out loss must match run 1 within bf16 noise, and alpha must be identical on both ranks;
3. run 2 resumed from its mid-way checkpoint in a fresh folder: it must end with run 2's weights;
4. (``--fsdp``) two GPUs under FSDP (full shard): it must finish, with alpha identical on both ranks.

Writes ``summary.json`` (loss curves, gaps, alpha spread, weight difference after resume, tokens/s of each run) and
``loss_curves.png`` in ``--out`` and exits non-zero when a check fails (``--plot-only`` redraws the plot from a
``summary.json``).

    python scripts/multigpu_check.py --model smollm2 --dataset shakespeare --context-length 2048 --out mg
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "finetune.py"
FSDP = ["--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_auto_wrap_policy", "NO_WRAP",
        "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_use_orig_params", "true"]


def launch(out: Path, model: str, dataset: str, procs: int, batch: int, steps: int, save_at: int, context: int,
           extra: list[str], launcher: list[str] | None = None, timeout: int = 900, precision: str = "bf16") -> dict:
    """One `accelerate launch` of finetune; returns its finetune.json (raises with the log tail on failure)."""
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        raise RuntimeError("the accelerate CLI is not on PATH")
    if launcher is None:
        launcher = ["--multi_gpu"] if procs > 1 else []
    cmd = [accelerate, "launch", *launcher, "--num_processes", str(procs), "--num_machines", "1",
           "--mixed_precision", precision, "--dynamo_backend", "no", str(SCRIPT),
           "--model", model, "--dataset", dataset, "--context-length", str(context), "--batch-size", str(batch),
           "--max-steps", str(steps), "--log-every", "1", "--save-every", str(save_at),
           "--alpha-schedule", "learned", "--alpha-init", "1.5", "--report-to", "none", "--no-progress",
           "-o", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    (out.parent / f"{out.name}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"{out.name}: exit {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return json.loads((out / "finetune.json").read_text())


def weight_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between two saved models' weights."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max((wa[n].float() - wb[n].float()).abs().max().item() for n in wa)


def curve(run: dict) -> list[float]:
    return [h["loss"] for h in run["history"] if "loss" in h]


def check(args) -> dict:
    """Runs the launches and returns the summary, with ``failures`` listing every check that did not hold."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {"model": args.model, "dataset": args.dataset, "steps": args.steps, "save_at": args.save_at,
              "context": args.context_length, "timeout": args.timeout, "precision": args.mixed_precision}
    extra = list(args.extra)
    one = launch(out / "one", procs=1, batch=args.batch, extra=extra, **common)
    two = launch(out / "two", procs=2, batch=args.batch // 2, extra=extra, **common)
    failures = []
    c1, c2 = curve(one), curve(two)
    gap = max(abs(a - b) for a, b in zip(c1, c2)) if c1 and len(c1) == len(c2) else float("inf")
    if gap > args.loss_tol * max(c1):
        failures.append(f"loss curves differ by {gap:.4f} (> {args.loss_tol} x {max(c1):.3f})")
    if two["alpha_rank_spread"] != 0.0:
        failures.append(f"alpha differs across ranks by {two['alpha_rank_spread']}")
    if two["tokens"] != one["tokens"]:
        failures.append(f"token counts differ: {one['tokens']} vs {two['tokens']}")
    eval_gap = abs(two["eval"]["loss"] - one["eval"]["loss"]) / one["eval"]["loss"]
    if eval_gap > args.eval_tol:
        failures.append(f"held-out loss of 1 and 2 GPUs differs by {eval_gap:.2%} (> {args.eval_tol:.2%})")
    # Per head, alpha can drift apart between the two runs: Adam's normalised step turns the rounding noise of a
    # near-zero gradient into +-lr per step. The mean over heads must agree.
    flat1 = [a for row in one["alpha"] for a in row]
    flat2 = [a for row in two["alpha"] for a in row]
    mean1, mean2 = sum(flat1) / len(flat1), sum(flat2) / len(flat2)
    if abs(mean1 - mean2) > args.alpha_tol:
        failures.append(f"mean alpha of 1 and 2 GPUs differs by {abs(mean1 - mean2):.3e}")

    resumed = out / "resumed"
    (resumed / "checkpoints").mkdir(parents=True, exist_ok=True)
    src = out / "two" / "checkpoints" / f"step-{args.save_at}"
    shutil.copytree(src, resumed / "checkpoints" / src.name, dirs_exist_ok=True)
    again = launch(resumed, procs=2, batch=args.batch // 2, extra=[*extra, "--resume"], **common)
    diff = weight_difference(out / "two", resumed)
    if again["steps"] != args.steps or diff > args.resume_tol:
        failures.append(f"resume: {again['steps']} steps, weights differ by {diff:.3e} (> {args.resume_tol})")

    summary = {
        "model": args.model, "dataset": args.dataset, "context_length": args.context_length, "steps": args.steps,
        "global_batch": args.batch, "hardware": two.get("hardware"),
        "loss_one_gpu": c1, "loss_two_gpus": c2, "max_loss_gap": round(gap, 5),
        "eval_loss": {"one_gpu": one["eval"]["loss"], "two_gpus_ddp": two["eval"]["loss"]},
        "eval_loss_rel_gap": eval_gap,
        "alpha_rank_spread": two["alpha_rank_spread"],
        "mean_alpha": {"one_gpu": round(mean1, 5), "two_gpus_ddp": round(mean2, 5)},
        "max_alpha_gap_per_head": max(abs(a - b) for a, b in zip(flat1, flat2)),
        "resumed_from_step": args.save_at, "resume_max_weight_diff": diff,
        "tokens_per_s": {"one_gpu": one["tokens_per_s"], "two_gpus_ddp": two["tokens_per_s"]},
    }
    if args.fsdp:
        fsdp = launch(out / "fsdp", procs=2, batch=args.batch // 2, extra=extra, launcher=FSDP, **common)
        c3 = curve(fsdp)
        summary["loss_fsdp"] = c3
        summary["fsdp_alpha_rank_spread"] = fsdp["alpha_rank_spread"]
        summary["eval_loss"]["two_gpus_fsdp"] = fsdp["eval"]["loss"]
        summary["tokens_per_s"]["two_gpus_fsdp"] = fsdp["tokens_per_s"]
        if fsdp["steps"] != args.steps or fsdp["alpha_rank_spread"] != 0.0:
            failures.append(f"fsdp: {fsdp['steps']} steps, alpha spread {fsdp['alpha_rank_spread']}")
    summary["failures"] = failures
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_curves(summary, out / "loss_curves.png")
    return summary


def plot_curves(summary: dict, path: Path) -> Path:
    """Training loss (the global batch's mean) per step of each launch, and the 2-GPU runs' difference to 1 GPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = summary["loss_one_gpu"]
    runs = {"1 GPU": one, "2 GPUs, DDP": summary["loss_two_gpus"]}
    if summary.get("loss_fsdp"):
        runs["2 GPUs, FSDP"] = summary["loss_fsdp"]
    fig, (ax, dx) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=[2, 1])
    for (name, c), color in zip(runs.items(), ("C0", "C1", "C2")):
        steps = range(1, len(c) + 1)
        ax.plot(steps, c, label=name, lw=1.2, color=color)
        if c is not one:
            dx.plot(steps, [b - a for a, b in zip(one, c)], label=f"{name} - 1 GPU", lw=1.0, color=color)
    ax.set_ylabel("training loss")
    ax.set_title(f"{summary['model']} on {summary['dataset']}, {summary['context_length']} tokens, "
                 f"global batch {summary['global_batch']}")
    ax.legend()
    dx.axhline(0.0, color="gray", lw=0.6)
    dx.set_xlabel("optimizer step")
    dx.set_ylabel("difference")
    dx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model name finetune knows (e.g. smollm2) or a saved folder")
    p.add_argument("--dataset", required=True)
    p.add_argument("--context-length", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4, help="global batch (sequences per step); two GPUs take half each")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--save-at", type=int, default=15, help="checkpoint step the resumed run starts from")
    p.add_argument("--fsdp", action="store_true", help="also run two GPUs under FSDP")
    p.add_argument("--mixed-precision", default="bf16", choices=["bf16", "fp16", "no"],
                   help="accelerate's mixed precision (default: bf16; 'no' for two CPU processes over gloo)")
    p.add_argument("--loss-tol", type=float, default=0.05, help="allowed loss gap, relative to the largest loss")
    p.add_argument("--eval-tol", type=float, default=0.01, help="allowed relative held-out loss gap, 1 vs 2 GPUs")
    p.add_argument("--alpha-tol", type=float, default=1e-2, help="allowed gap of the mean alpha, 1 vs 2 GPUs")
    p.add_argument("--resume-tol", type=float, default=1e-3, help="allowed weight gap after resuming")
    p.add_argument("--timeout", type=int, default=900, help="seconds per launch")
    p.add_argument("--out", required=True)
    p.add_argument("--plot-only", action="store_true", help="only redraw loss_curves.png from --out's summary.json")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more finetune arguments")
    args = p.parse_args(argv)
    if args.extra and args.extra[0] == "--":
        args.extra = args.extra[1:]
    if args.plot_only:
        out = Path(args.out)
        print(plot_curves(json.loads((out / "summary.json").read_text()), out / "loss_curves.png"))
        return 0
    summary = check(args)
    print(json.dumps({k: v for k, v in summary.items() if not k.startswith("loss_")}, indent=1))
    for f in summary["failures"]:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
