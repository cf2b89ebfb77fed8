"""``hf-adasplash card``: a model card from the finetune / eval / sparsity JSON results."""

from __future__ import annotations

import argparse
import os
import string
from pathlib import Path

from hf_adasplash.cli._common import read_json

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "model_card.md"


def build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="fine-tuned model folder (holds finetune.json, written by `finetune`)")
    p.add_argument("--eval", nargs="*", default=[], metavar="JSON",
                   help="`eval --output` results (e.g. the softmax baseline and the adasplash model)")
    p.add_argument("--sparsity", default=None, metavar="JSON", help="`sparsity` result (sparsity.json)")
    p.add_argument("--compare", default=None, metavar="JSON",
                   help="`compare` result (compare.json): the bars against the softmax run, and by how much each is "
                   "met or missed")
    p.add_argument("--name", default=None, help="model name in the title (default: the folder name)")
    p.add_argument("--base-model", default=None,
                   help="base model id for the card's metadata (default: the path recorded in finetune.json)")
    p.add_argument("--model-id", default=None,
                   help="how users load the model, e.g. a Hub repo id (default: the model folder)")
    p.add_argument("--license", default=None,
                   help="license tag (default: the offline base model's: apache-2.0 for SmolLM2, gemma for Gemma; "
                   "else apache-2.0)")
    p.add_argument("--output", "-o", default=None,
                   help="card path (default: model_cards/<name>.md); use <model_dir>/README.md for the Hub")


def _ppl_table(evals: list[dict], model_dir: Path) -> str:
    if not evals:
        return "No evaluation given (`hf-adasplash eval ... -o eval.json`, then `card --eval eval.json`)."
    rows = ["| model | attention | alpha | dataset / split | window / stride | tokens | perplexity |",
            "|---|---|---|---|---|---:|---:|"]
    for e in evals:
        alpha = "checkpoint's" if e["attn"] == "adasplash" and e.get("alpha") is None else (e.get("alpha") or "softmax")
        name = "this model" if Path(e["model"]).resolve() == model_dir.resolve() else Path(e["model"]).name
        span = (f"{e['max_length']} blocks (packed)" if e.get("format") == "packed" else
                f"{e['max_length']} / {e['stride']}")
        rows.append(f"| {name} | {e['attn']} | {alpha} | {e['dataset']} / {e['split']} | "
                    f"{span} | {e['num_tokens']:,} | {e['perplexity']:.3f} |")
    return "\n".join(rows)


def _alpha_summary(alpha: list[list[float]]) -> str:
    if not alpha:
        return "No alpha found."
    flat = [a for row in alpha for a in row]
    rows = [f"{len(alpha)} layers x {len(alpha[0])} heads; mean {sum(flat) / len(flat):.3f}, min {min(flat):.3f}, "
            f"max {max(flat):.3f}."]
    if max(flat) - min(flat) < 1e-4:  # fixed or annealed: every head has the same alpha
        return rows[0]
    rows += ["", "| layer | mean | min | max |", "|---:|---:|---:|---:|"]
    rows += [f"| {i} | {sum(r) / len(r):.3f} | {min(r):.3f} | {max(r):.3f} |" for i, r in enumerate(alpha)]
    return "\n".join(rows)


def _sparsity(sp: dict | None) -> str:
    if sp is None:
        return ("Not measured (`hf-adasplash sparsity --model <dir> -o <dir>`, then "
                "`card --sparsity <dir>/sparsity.json`).")
    sv = sp["savings"]
    return "\n".join([
        f"Measured on {sp.get('num_sequences', '?')} x {sp.get('context_length', '?')} tokens of "
        f"{sp.get('dataset', '?')}/{sp.get('split', '?')}: **{sp['zero_fraction']:.1%}** of the visible attention "
        f"weights are exactly zero and **{sp['block_zero_fraction']:.1%}** of the visible "
        f"{sp['block_size']}x{sp['block_size']} tiles are all-zero (skipped by the kernels).", "",
        f"Versus dense attention: QK^T+PV FLOPs {sv['qk_pv_flops']['saved_fraction']:.1%} saved; whole forward "
        f"{sv['forward_flops_lower_bound']['saved_fraction']:.1%} (tau search not counted); backward "
        f"{sv['backward_flops']['saved_fraction']:.1%}; negative = costs more."])


BAR_LABELS = {
    "ppl_ratio": "held-out perplexity / softmax run's",
    "zero_fraction": "attention weights exactly zero",
    "block_zero_fraction": "64x64 tiles all-zero",
    "throughput_ratio": "fine-tuning tokens/s / softmax run's",
}


def _comparison(cmp: dict | None) -> str:
    if cmp is None:
        return "Not compared (`hf-adasplash compare` fine-tunes both and writes compare.json; then `card --compare`)."
    rows = ["| measure | value | bar | verdict |", "|---|---:|---|---|"]
    for key, b in cmp["bars"].items():
        v = cmp["values"].get(key)
        if v is None:
            verdict, shown = "not measured", "n/a"
        else:
            shown = f"{v:.3f}"
            gap = v - b["bar"] if b["op"] == "<=" else b["bar"] - v
            verdict = "met" if b["met"] else f"**missed** by {gap:.3f}"
        rows.append(f"| {BAR_LABELS.get(key, key)} | {shown} | {b['op']} {b['bar']} | {verdict} |")
    out = ["Both runs share the recipe and token budget above; only the attention differs.", "", *rows]
    packed = cmp.get("perplexity_packed")
    if packed:
        ratio = packed["adasplash"] / packed["sdpa"]
        blocks = cmp.get("packed_eval_blocks")
        first = f"its first {blocks} blocks" if blocks else "its held-out blocks"
        out += ["", "On held-out blocks cut as in training (documents joined with BOS/EOS, no overlap; `finetune`'s "
                f"own evaluation, {first} of {cmp.get('context_length')} tokens) the perplexities are "
                f"{packed['sdpa']:.3f} (softmax) and {packed['adasplash']:.3f} (this model), a ratio of {ratio:.3f}."]
    tps = cmp.get("tokens_per_s") or {}
    if tps.get("sdpa") and tps.get("adasplash"):
        out += ["", f"Fine-tuning throughput: {tps['sdpa']:,.0f} tokens/s (softmax, sdpa) and {tps['adasplash']:,.0f} "
                f"tokens/s (this model, learned alpha)."]
        half = cmp.get("tokens_per_s_second_half") or {}
        if half.get("sdpa") and half.get("adasplash"):
            out[-1] += (f" Over the second half of the run alone, after the one-time kernel compiles (and, with a "
                        f"snapped alpha, the learnable-alpha phase): {half['sdpa']:,.0f} and {half['adasplash']:,.0f} "
                        f"tokens/s, a ratio of {half['adasplash'] / half['sdpa']:.3f} (not the bar's measure).")
    return "\n".join(out)


def _alpha_recipe(r: dict) -> str:
    """The alpha schedule in words: a fixed value, an anneal from init to target, or learned from init in bounds."""
    if r["alpha_schedule"] == "fixed":
        return f"fixed at {r['alpha']}"
    if r["alpha_schedule"] == "anneal":
        return f"annealed from {r['alpha_init']} to {r['alpha']}"
    learned = f"learned per head from {r['alpha_init']}, kept in [{r['min_alpha']}, {r['max_alpha']}]"
    if r.get("alpha_snap_step"):
        from hf_adasplash.patching import snap_grid

        grid = ", ".join(f"{a:.4g}" for a in snap_grid(r["min_alpha"], r["max_alpha"]))
        learned += (f", then after step {r['alpha_snap_step']} snapped to the nearest of {grid} (powers without "
                    "special functions) and frozen")
    return learned


def _offline_base(path: str):
    """The offline model (converted into the cache from its GGUF) a recorded base path is, if any."""
    from hf_adasplash import assets

    return next((m for m in assets.OFFLINE_MODELS.values() if m.name == Path(path).name), None)


def _images(paths: list[Path], card_dir: Path) -> str:
    return "\n".join(f"![{p.stem.replace('_', ' ')}]({os.path.relpath(p, card_dir)})" for p in paths)


def render(model_dir: Path, evals: list[dict], sparsity: dict | None, name: str, license: str | None = None,
           base_model: str | None = None, model_id: str | None = None, comparison: dict | None = None,
           sparsity_plots: str = "", comparison_plots: str = "") -> str:
    """The card's markdown. Base model id and license default to the offline base model's (Hub id, its license tag),
    else to the base path recorded in finetune.json and apache-2.0."""
    ft = read_json(model_dir / "finetune.json")
    r, hw = ft["recipe"], ft.get("hardware", {})
    base = _offline_base(ft["base_model"])
    return string.Template(TEMPLATE.read_text()).substitute(
        name=name, base_model=base_model or (base.hub_id if base else ft["base_model"]),
        license=license or (base.license if base else "apache-2.0"),
        version=hw.get("hf_adasplash", "?"),
        model_path=model_id or str(model_dir), dataset=r["dataset"], split=r["split"], tokens=f"{ft['tokens']:,}",
        steps=ft["steps"], batch=r["batch_size"] * r["grad_accum"] * ft.get("num_processes", 1),
        epochs=f"; {ft['epochs']:.2f} epochs of the split" if ft.get("epochs") else "",
        context=r["context_length"], alpha_recipe=_alpha_recipe(r), lr=r["lr"],
        alpha_lr=r["alpha_lr"], lr_scheduler=r["lr_scheduler"], warmup=r["warmup_steps"],
        precision=ft.get("mixed_precision", "?"), processes=ft.get("num_processes", 1),
        throughput=ft.get("tokens_per_s"), hardware=hw.get("device", "?"),
        ppl_table=_ppl_table(evals, model_dir), alpha_summary=_alpha_summary(ft["alpha"]),
        sparsity="\n\n".join(filter(None, [_sparsity(sparsity), sparsity_plots])),
        comparison="\n\n".join(filter(None, [_comparison(comparison), comparison_plots])),
        versions=", ".join(f"{k} {hw[k]}" for k in ("hf_adasplash", "transformers", "torch") if k in hw))


def run(args) -> int:
    from hf_adasplash.assets import UserError

    model_dir = Path(args.model_dir)
    if not (model_dir / "finetune.json").is_file():
        raise UserError(f"{model_dir} has no finetune.json: point at a folder written by `hf-adasplash finetune`")
    name = args.name or model_dir.resolve().name
    out = Path(args.output) if args.output else Path("model_cards") / f"{name}.md"
    # plots written next to the JSON by `sparsity` and `compare`, linked relative to the card
    sp_plots = sorted(Path(args.sparsity).parent.glob("*.png")) if args.sparsity else []
    cmp_plots = sorted(Path(args.compare).parent.glob("compare*.png")) if args.compare else []
    card = render(model_dir, [read_json(p) for p in args.eval],
                  read_json(args.sparsity) if args.sparsity else None, name, args.license, args.base_model,
                  args.model_id, read_json(args.compare) if args.compare else None,
                  _images(sp_plots, out.parent.resolve()), _images(cmp_plots, out.parent.resolve()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(card)
    print(f"wrote {out}")
    return 0
