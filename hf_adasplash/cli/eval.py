"""``hf-adasplash eval``: perplexity of a model over a dataset split.

By default the split is one token stream (documents joined by a blank line) scored with a strided sliding window, as
in the Transformers perplexity guide. ``--packed`` scores it as ``finetune`` trains and evaluates: documents between
BOS/EOS, cut into non-overlapping context-length blocks (the tail dropped), every block scored on its own.
"""

from __future__ import annotations

import argparse

from hf_adasplash.cli._common import add_data_args, add_model_args, console, positive_int, write_json


def build_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "adasplash"],
                   help="attention implementation; sdpa/eager score the same weights with softmax (default: sdpa)")
    p.add_argument("--alpha", type=float, default=None,
                   help="with --attn adasplash: override every head's alpha (1.0 = exact softmax); "
                   "default: the checkpoint's alpha (1.5 for a softmax checkpoint)")
    add_data_args(p, split="test")
    p.add_argument("--context-length", type=int, default=None,
                   help="window length in tokens (default: the model's maximum, capped at 4096 on GPU, 1024 on CPU)")
    p.add_argument("--stride", type=int, default=None, help="window step in tokens (default: half the window)")
    p.add_argument("--packed", action="store_true",
                   help="score blocks cut as in training (documents between BOS/EOS, no overlap) instead of one "
                   "stream with a sliding window")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="score only the first N tokens of the split")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--output", "-o", default=None, help="write the result as JSON here")


def evaluate_model(args) -> dict:
    from hf_adasplash.data import corpus_ids, load_text
    from hf_adasplash.evaluation import hardware, load_model, model_context, perplexity, resolve_model

    if args.context_length is not None and args.context_length <= 0:
        from hf_adasplash.assets import UserError

        raise UserError(f"context length must be > 0, got {args.context_length}")
    resolve_model(args.model)  # fail fast, before the data is read
    ds = load_text(args.dataset, args.split, args.dataset_config, args.text_column)
    model, tokenizer, path = load_model(args.model, args.attn, args.alpha, device=args.device)
    ctx = model_context(model, args.context_length)
    if args.packed:
        if args.stride is not None:
            from hf_adasplash.assets import UserError

            raise UserError("--packed scores whole blocks: drop --stride")
        from hf_adasplash.data import pack

        max_blocks = None if args.max_tokens is None else max(args.max_tokens // ctx, 1)
        ids = pack(ds, tokenizer, ctx, args.text_column, max_blocks)[:]["input_ids"].reshape(1, -1)
        result = perplexity(model, ids, ctx, ctx)  # stride == window: each block alone, as training sees it
    else:
        ids = corpus_ids(ds, tokenizer, args.text_column, args.max_tokens)
        result = perplexity(model, ids, ctx, args.stride)
    return {"model": path, "attn": args.attn, "alpha": args.alpha, "dataset": args.dataset,
            "dataset_config": args.dataset_config, "split": args.split, "format": "packed" if args.packed else "stream",
            **result, "hardware": hardware()}


def run(args) -> int:
    result = evaluate_model(args)
    how = (f"{result['num_windows']} packed blocks of {result['max_length']}" if args.packed else
           f"window {result['max_length']}, stride {result['stride']}")
    console().print(f"[bold]perplexity {result['perplexity']:.3f}[/] ({args.attn}) on {result['num_tokens']:,} tokens "
                    f"of {args.dataset}/{args.split}, {how}, {result['tokens_per_s']} tok/s")
    if args.output:
        write_json(args.output, result)
        console().print(f"wrote {args.output}")
    return 0
