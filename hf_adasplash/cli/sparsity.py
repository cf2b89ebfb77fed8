"""``hf-adasplash sparsity``: measured attention sparsity on real text, the compute it saves, and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_adasplash.cli._common import add_data_args, add_model_args, console, positive_int, write_json


def build_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--alpha", type=float, default=None,
                   help="override every head's alpha (default: the checkpoint's learned alpha; 1.5 for a softmax "
                   "checkpoint)")
    add_data_args(p, split="test")
    p.add_argument("--context-length", type=int, default=256, help="tokens per sequence (default: 256)")
    p.add_argument("--num-sequences", type=positive_int, default=2, help="sequences measured (default: 2)")
    p.add_argument("--block-size", type=positive_int, default=64, help="tile size of the block statistic (default: 64)")
    p.add_argument("--pattern", default=None, metavar="LAYER,HEAD",
                   help="head whose attention pattern to plot (default: the median head by zero fraction)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--output-dir", "-o", default="adasplash-sparsity", help="JSON + PNGs go here")


def _pattern(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        layer, head = (int(x) for x in text.split(","))
    except ValueError:
        from hf_adasplash.assets import UserError

        raise UserError(f"--pattern expects LAYER,HEAD (e.g. 3,0), got {text!r}") from None
    return layer, head


def head_dim(config) -> int:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def measure(model, blocks, block_size: int = 64, pattern: tuple[int, int] | None = None) -> dict:
    """sparsity_stats over ``blocks [N, T]`` (one sequence at a time), merged, plus savings and one pattern."""
    import torch

    import hf_adasplash
    from hf_adasplash import report

    device = next(model.parameters()).device
    runs = []
    with torch.no_grad():
        for i in range(blocks.size(0)):
            runs.append(hf_adasplash.sparsity_stats(model, {"input_ids": blocks[i : i + 1].to(device)}, block_size)
                        .to_dict())
    stats = _merge(runs)
    if pattern is None:  # a typical head: the median by zero fraction (the sparsest ones often just sink to token 0)
        ranked = sorted(stats["heads"], key=lambda h: (h["zero_fraction"], h["block_zero_fraction"]))
        typical = ranked[len(ranked) // 2]
        pattern = (typical["layer"], typical["head"])
    if not (0 <= pattern[0] < stats["num_layers"] and 0 <= pattern[1] < stats["num_heads"]):
        from hf_adasplash.assets import UserError

        raise UserError(f"--pattern {pattern[0]},{pattern[1]} is outside {stats['num_layers']} layers x "
                        f"{stats['num_heads']} heads")
    with torch.no_grad():
        one = hf_adasplash.sparsity_stats(model, {"input_ids": blocks[:1].to(device)}, block_size, pattern=pattern)
    stats["pattern"] = one.to_dict()["pattern"]
    stats["savings"] = report.savings(stats, head_dim(model.config))
    stats["per_layer"] = report.per_layer(stats)
    return stats


def _merge(runs: list[dict]) -> dict:
    """Sum the counts of several single-sequence runs (sequences of equal length)."""
    out = {k: v for k, v in runs[0].items() if k not in ("heads", "pattern")}
    heads = []
    for hs in zip(*(r["heads"] for r in runs)):
        h = dict(hs[0])
        for key in ("visible_entries", "visible_blocks", "rows"):
            h[key] = sum(x[key] for x in hs)
        for key, weight in (("zero_fraction", "visible_entries"), ("block_zero_fraction", "visible_blocks"),
                            ("support_mean", "rows"), ("visible_mean", "rows")):
            h[key] = sum(x[key] * x[weight] for x in hs) / max(h[weight], 1)
        h["support_hist"] = {"edges": hs[0]["support_hist"]["edges"],
                             "counts": [sum(c) for c in zip(*(x["support_hist"]["counts"] for x in hs))]}
        heads.append(h)
    out["heads"] = heads
    ent, blk = sum(h["visible_entries"] for h in heads), sum(h["visible_blocks"] for h in heads)
    out["zero_fraction"] = sum(h["zero_fraction"] * h["visible_entries"] for h in heads) / max(ent, 1)
    out["block_zero_fraction"] = sum(h["block_zero_fraction"] * h["visible_blocks"] for h in heads) / max(blk, 1)
    out["num_sequences"] = len(runs)
    return out


def write_outputs(stats: dict, out_dir: Path) -> list[Path]:
    from hf_adasplash import report

    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = report.heatmaps(stats, out_dir)
    pat = stats["pattern"]
    alpha = next(h["alpha"] for h in stats["heads"] if h["layer"] == pat["layer"] and h["head"] == pat["head"])
    pngs.append(report.pattern_plot(pat, stats["block_size"], out_dir / "pattern.png", alpha))
    slim = {**stats, "pattern": {k: v for k, v in pat.items() if k != "probs"}}  # the matrix is in pattern.png
    write_json(out_dir / "sparsity.json", slim)
    return pngs


def print_summary(stats: dict) -> None:
    from rich.table import Table

    sv = stats["savings"]
    table = Table(title="attention sparsity per layer (mean over heads)")
    for col in ("layer", "alpha", "zero weights", f"zero {stats['block_size']}² blocks", "support / row"):
        table.add_column(col, justify="right")
    for r in stats["per_layer"]:
        table.add_row(str(r["layer"]), f"{r['alpha']:.3f}", f"{r['zero_fraction']:.1%}",
                      f"{r['block_zero_fraction']:.1%}", f"{r['support_mean']:.1f}")
    c = console()
    c.print(table)
    saved = {k: f"{v['saved_fraction']:.1%}" for k, v in sv.items() if isinstance(v, dict)}
    c.print(f"overall: {stats['zero_fraction']:.1%} zero weights, {stats['block_zero_fraction']:.1%} all-zero blocks; "
            f"saved vs dense: QK^T+PV FLOPs {saved['qk_pv_flops']}, forward FLOPs {saved['forward_flops_lower_bound']} "
            f"(tau search not counted), backward FLOPs {saved['backward_flops']}")


def run(args) -> int:
    from hf_adasplash.assets import UserError
    from hf_adasplash.data import load_text, pack
    from hf_adasplash.evaluation import load_model, resolve_model

    if args.context_length <= 0:
        raise UserError(f"context length must be > 0, got {args.context_length}")
    pattern = _pattern(args.pattern)
    resolve_model(args.model)
    ds = load_text(args.dataset, args.split, args.dataset_config, args.text_column)
    model, tokenizer, path = load_model(args.model, "adasplash", args.alpha, device=args.device)
    blocks = pack(ds, tokenizer, args.context_length, args.text_column, args.num_sequences)[:]["input_ids"]
    stats = measure(model, blocks, args.block_size, pattern)
    stats.update(model=path, dataset=args.dataset, split=args.split, context_length=args.context_length)
    print_summary(stats)
    pngs = write_outputs(stats, Path(args.output_dir))
    console().print(f"wrote {Path(args.output_dir) / 'sparsity.json'} and {len(pngs)} PNGs")
    return 0
