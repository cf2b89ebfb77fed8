"""Summarise several ``hf-adasplash compare`` folders: one table, one JSON and the quality-sparsity plot.

Each folder is one recipe (an alpha option, a learning rate, ...). The table shows every recipe field that varies
across the folders and the four bars' values, and names each run by where it departs from the most common value;
the plot puts held-out perplexity ratio against empty 64x64 tiles, with the bars as lines, so the trade-off between
them is visible at a glance.

    python scripts/sweep_compares.py runs/sweep/* -o bench/finetune_h100/sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# recipe fields that never name a variant (paths, logging)
IGNORED = {"output_dir", "progress", "report_to", "resume", "compile_ahead", "save_every", "keep_checkpoints",
           "log_every", "eval_every"}


def load(folder: Path) -> dict:
    cmp = json.loads((folder / "compare.json").read_text())
    run = json.loads((folder / "adasplash" / "finetune.json").read_text())
    return {"folder": str(folder), "compare": cmp, "recipe": run["recipe"]}


def varying(runs: list[dict]) -> list[str]:
    keys = sorted({k for r in runs for k in r["recipe"]} - IGNORED)
    return [k for k in keys if len({json.dumps(r["recipe"].get(k)) for r in runs}) > 1]


def row(r: dict, keys: list[str]) -> dict:
    c = r["compare"]
    v = c["values"]
    return {"folder": r["folder"], **{k: r["recipe"].get(k) for k in keys},
            "ppl_sdpa": c["perplexity"]["sdpa"], "ppl_adasplash": c["perplexity"]["adasplash"],
            "ppl_ratio": v["ppl_ratio"], "packed_ratio": _ratio(c.get("perplexity_packed") or {}),
            "zero_fraction": v["zero_fraction"], "block_zero_fraction": v["block_zero_fraction"],
            "throughput_ratio": v["throughput_ratio"], "throughput_ratio_second_half":
            c.get("throughput_ratio_second_half"), "bars_met": [k for k, b in c["bars"].items() if b["met"]],
            "hardware": c.get("hardware")}


def _ratio(pair: dict) -> float | None:
    a, s = pair.get("adasplash"), pair.get("sdpa")
    return a / s if a and s else None


def label_runs(rows: list[dict], keys: list[str]) -> None:
    """Names each run by where it departs from the sweep's most common value of each varying field."""
    from collections import Counter

    common = {k: Counter(json.dumps(r[k]) for r in rows).most_common(1)[0][0] for k in keys}
    for r in rows:
        r["label"] = ", ".join(f"{k}={r[k]}" for k in keys if json.dumps(r[k]) != common[k]) or "common recipe"


def markdown(rows: list[dict], keys: list[str]) -> str:
    head = ["run", *keys, "ppl sdpa", "ppl adasplash", "ratio", "packed ratio", "zero weights", "empty tiles",
            "tokens/s ratio (2nd half)"]

    def fmt(x, pct=False):
        if x is None:
            return "n/a"
        if isinstance(x, float):
            if pct:
                return f"{100 * x:.1f}%"
            return f"{x:.3g}" if abs(x) < 0.1 else f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"
        return str(x)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tp = f"{fmt(r['throughput_ratio'])} ({fmt(r['throughput_ratio_second_half'])})"
        cells = [r["label"], *(fmt(r[k]) for k in keys), fmt(r["ppl_sdpa"]), fmt(r["ppl_adasplash"]),
                 fmt(r["ppl_ratio"]), fmt(r["packed_ratio"]), fmt(r["zero_fraction"], True),
                 fmt(r["block_zero_fraction"], True), tp]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for r in rows:
        ax.scatter(r["block_zero_fraction"], r["ppl_ratio"], s=36, label=r["label"])
    ax.axhline(1.03, color="tab:red", lw=0.8, ls="--", label="perplexity bar (<= 1.03x)")
    ax.axvline(0.60, color="tab:green", lw=0.8, ls="--", label="empty-tile bar (>= 60%)")
    ax.set_xlabel("empty 64x64 tiles on held-out text")
    ax.set_ylabel("held-out perplexity / softmax run's")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="compare output folders (each with compare.json)")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="sweep.json, sweep.md and pareto.png go here")
    args = p.parse_args(argv)
    runs = [load(f) for f in args.folders if (f / "compare.json").is_file()]
    missing = [str(f) for f in args.folders if not (f / "compare.json").is_file()]
    if not runs:
        p.error(f"no compare.json in {', '.join(map(str, args.folders))}")
    keys = varying(runs)
    rows = sorted((row(r, keys) for r in runs), key=lambda r: r["ppl_ratio"])
    label_runs(rows, keys)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "sweep.json").write_text(json.dumps({"varying": keys, "runs": rows, "unfinished": missing},
                                                           indent=2) + "\n")
    table = markdown(rows, keys)
    (args.output_dir / "sweep.md").write_text(table)
    plot(rows, keys, args.output_dir / "pareto.png")
    print(table + (f"unfinished (no compare.json): {', '.join(missing)}\n" if missing else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
