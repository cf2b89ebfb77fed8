"""``hf-adasplash finetune``: fine-tune a causal LM into alpha-entmax attention (plain or ``accelerate launch``)."""

from __future__ import annotations

import argparse

from hf_adasplash.cli._common import add_data_args, add_model_args, console, positive_int


def build_parser(p: argparse.ArgumentParser) -> None:
    from hf_adasplash.training import FinetuneConfig as C

    add_model_args(p)
    p.add_argument("--output-dir", "-o", required=True,
                   help="where the model (loadable with hf_adasplash.from_pretrained), finetune.json, TensorBoard "
                   "logs (runs/) and checkpoints (checkpoints/) go")
    add_data_args(p, split="train")
    p.add_argument("--eval-split", default=C.eval_split, help="held-out split for evaluation; 'none' to skip "
                   f"(default: {C.eval_split})")
    p.add_argument("--attn", choices=["adasplash", "sdpa", "eager"], default=C.attn,
                   help="adasplash: alpha-entmax attention with the alpha options below; sdpa/eager: the dense softmax "
                   "baseline trained with the same recipe (alpha options unused) (default: adasplash)")
    g = p.add_argument_group("alpha")
    g.add_argument("--alpha-schedule", choices=["fixed", "learned", "anneal"], default=C.alpha_schedule,
                   help="fixed: --alpha everywhere, not learned; learned: per-head alpha trained from --alpha-init; "
                   "anneal: --alpha-init -> --alpha over --anneal-steps, not learned (default: learned)")
    g.add_argument("--alpha", type=float, default=C.alpha,
                   help=f"fixed value, or the anneal target, in (1, 2] (default: {C.alpha})")
    g.add_argument("--alpha-init", type=float, default=C.alpha_init,
                   help="start of learned/anneal; near 1 keeps the pretrained softmax behaviour "
                   f"(default: {C.alpha_init})")
    g.add_argument("--alpha-lr", type=float, default=C.alpha_lr,
                   help=f"learning rate of the alpha logits (their own AdamW group, no decay; default: {C.alpha_lr})")
    g.add_argument("--anneal-steps", type=positive_int, default=None, help="steps of the anneal (default: all)")
    g.add_argument("--anneal-shape", choices=["linear", "cosine"], default=C.anneal_shape, help="anneal curve")
    g.add_argument("--min-alpha", type=float, default=C.min_alpha,
                   help=f"lower bound of alpha (default: {C.min_alpha})")
    g.add_argument("--max-alpha", type=float, default=C.max_alpha,
                   help=f"upper bound of alpha (default: {C.max_alpha})")
    g.add_argument("--alpha-snap-step", type=positive_int, default=None,
                   help="learned schedule: after this step each head's alpha moves to the nearest of 2, 1.5, 4/3, "
                   "1.25, 1.2 inside the bounds (powers the kernels take by multiplication alone, ~2x faster "
                   "attention) and stops learning (default: never)")
    g.add_argument("--per-layer", action="store_true", help="one alpha per layer instead of one per head")
    t = p.add_argument_group("training")
    t.add_argument("--context-length", type=int, default=C.context_length,
                   help=f"tokens per packed training block (default: {C.context_length})")
    t.add_argument("--batch-size", type=int, default=C.batch_size, help=f"blocks per process per micro-step "
                   f"(default: {C.batch_size})")
    t.add_argument("--grad-accum", type=int, default=C.grad_accum, help="micro-steps per optimizer step (default: 1)")
    t.add_argument("--max-steps", type=int, default=C.max_steps, help=f"optimizer steps (default: {C.max_steps})")
    t.add_argument("--lr", type=float, default=C.lr, help=f"learning rate of the model weights (default: {C.lr})")
    t.add_argument("--weight-decay", type=float, default=C.weight_decay, help="AdamW weight decay of the weights")
    t.add_argument("--warmup-steps", type=int, default=C.warmup_steps, help="linear warm-up steps (default: 0)")
    t.add_argument("--lr-scheduler", default=C.lr_scheduler, help="transformers scheduler name (default: cosine)")
    t.add_argument("--max-grad-norm", type=float, default=C.max_grad_norm, help="gradient clipping; 0 disables")
    t.add_argument("--max-train-blocks", type=positive_int, default=None, help="use only the first N packed blocks")
    t.add_argument("--eval-blocks", type=positive_int, default=C.eval_blocks,
                   help=f"held-out blocks per evaluation (default: {C.eval_blocks})")
    t.add_argument("--eval-every", type=int, default=C.eval_every, help="evaluate every N steps (0: at the end only)")
    t.add_argument("--log-every", type=positive_int, default=C.log_every,
                   help=f"log every N steps (default: {C.log_every})")
    t.add_argument("--save-every", type=int, default=C.save_every, help="checkpoint every N steps (0: never)")
    t.add_argument("--keep-checkpoints", type=positive_int, default=C.keep_checkpoints,
                   help=f"checkpoints kept (default: {C.keep_checkpoints})")
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue exactly from the latest checkpoint in --output-dir, or from the given folder")
    t.add_argument("--seed", type=int, default=C.seed, help="seed of the initialisation and the data order")
    t.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default=C.mixed_precision,
                   help="auto: bf16 on GPU, fp32 on CPU (an `accelerate launch --mixed_precision` wins)")
    t.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    t.add_argument("--report-to", default=C.report_to, help="Accelerate tracker: tensorboard, wandb, ... or none")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    t.add_argument("--no-compile-ahead", action="store_true",
                   help="compile each attention kernel when first launched, not all at once before the first step")


def config_from_args(args):
    from hf_adasplash.training import FinetuneConfig

    return FinetuneConfig(
        model=args.model, output_dir=args.output_dir, dataset=args.dataset, dataset_config=args.dataset_config,
        split=args.split, eval_split=None if args.eval_split in (None, "none", "") else args.eval_split,
        text_column=args.text_column, attn=args.attn, context_length=args.context_length, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_steps=args.max_steps, lr=args.lr, alpha_lr=args.alpha_lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_scheduler=args.lr_scheduler,
        max_grad_norm=args.max_grad_norm, alpha_schedule=args.alpha_schedule, alpha=args.alpha,
        alpha_init=args.alpha_init, anneal_steps=args.anneal_steps, anneal_shape=args.anneal_shape,
        min_alpha=args.min_alpha, max_alpha=args.max_alpha, alpha_snap_step=args.alpha_snap_step,
        per_head=not args.per_layer,
        max_train_blocks=args.max_train_blocks, eval_blocks=args.eval_blocks, eval_every=args.eval_every,
        log_every=args.log_every, save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
        resume=args.resume, seed=args.seed, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, report_to=args.report_to, progress=not args.no_progress,
        compile_ahead=not args.no_compile_ahead,
    )


def run(args) -> int:
    from accelerate import PartialState

    from hf_adasplash.training import finetune

    summary = finetune(config_from_args(args))
    ev = summary["eval"] or {}
    if ev and PartialState().is_main_process:
        console().print(f"[bold]eval ppl {ev['ppl']:.2f}[/], {summary['tokens']:,} tokens at "
                        f"{summary['tokens_per_s']} tok/s; model saved to {args.output_dir}")
    return 0
