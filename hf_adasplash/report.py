"""Turning sparsity statistics into numbers people can check: compute/memory saved, heatmaps, a pattern plot.

The savings are counted from the measured all-zero ``block_size^2`` tiles and the kernels' design
(``kernels/attn_fwd.py``, ``kernels/attn_bwd.py``), against FlashAttention-style dense attention that already
skips the tiles the causal mask hides. Nothing is extrapolated from element sparsity: a tile with one nonzero
weight costs as much as a dense one.
"""

from __future__ import annotations

from pathlib import Path


def savings(stats: dict, head_dim: int, dtype_bytes: int = 2) -> dict:
    """FLOPs and bytes of the attention core, summed over layers and heads, dense vs adasplash.

    * ``qk_pv``: QK^T + PV (2 matmuls, 4 bs^2 D FLOPs per tile) on non-skipped tiles vs all visible tiles: the work
      block sparsity removes from the output pass.
    * ``forward``: the whole forward. Dense: QK^T + PV on visible tiles. adasplash: one dense QK^T pass for the row
      max (all visible tiles), then QK^T + PV on non-skipped tiles. The Newton iterations for tau revisit only
      tiles that can still hold support and are *not* counted, so this is a lower bound of adasplash's cost.
    * ``backward``: dense FlashAttention-2 recomputes 5 matmuls per visible tile; the adasplash backward runs 7
      (dq kernel: QK^T, dO V^T, dS K; dk/dv kernel: QK^T, P^T dO, dO V^T, dS^T Q) on non-skipped tiles only.
    * ``kv_bytes``: K and V tile reads of the output pass.
    * ``probs_bytes``: storing P densely (eager attention, fp32) vs as nonzeros (fp32 value + int32 column).
    """
    bs = stats["block_size"]
    tile = bs * bs * head_dim * 2  # FLOPs of one [bs, D] x [D, bs] matmul
    vis = sum(h["visible_blocks"] for h in stats["heads"])
    kept = sum(h["visible_blocks"] * (1.0 - h["block_zero_fraction"]) for h in stats["heads"])
    entries = sum(h["visible_entries"] for h in stats["heads"])
    nnz = sum(h["visible_entries"] * (1.0 - h["zero_fraction"]) for h in stats["heads"])

    def pair(dense: float, sparse: float) -> dict:
        return {"dense": dense, "adasplash": sparse, "saved_fraction": 1.0 - sparse / dense if dense else 0.0}

    return {
        "block_size": bs, "head_dim": head_dim, "visible_tiles": vis, "nonzero_tiles": kept,
        "qk_pv_flops": pair(2 * tile * vis, 2 * tile * kept),
        "forward_flops_lower_bound": pair(2 * tile * vis, tile * vis + 2 * tile * kept),
        "backward_flops": pair(5 * tile * vis, 7 * tile * kept),
        "kv_bytes": pair(2 * bs * head_dim * dtype_bytes * vis, 2 * bs * head_dim * dtype_bytes * kept),
        "probs_bytes": pair(4 * entries, 8 * nnz),
    }


def _grid(stats: dict, key: str):
    import numpy as np

    grid = np.full((stats["num_layers"], stats["num_heads"]), np.nan)
    for h in stats["heads"]:
        grid[h["layer"], h["head"]] = h[key]
    return grid


def _save(fig, path: str | Path) -> Path:
    """Lays out, writes (creating the folder) and closes one matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def heatmaps(stats: dict, out_dir: str | Path) -> list[Path]:
    """One layer x head heatmap PNG per quantity: alpha, zero fraction, all-zero block fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = [("alpha", "alpha", "viridis", (1.0, None)),
              ("zero_fraction", "fraction of zero attention weights", "magma", (0.0, 1.0)),
              ("block_zero_fraction", f"fraction of all-zero {stats['block_size']}x{stats['block_size']} blocks",
               "magma", (0.0, 1.0))]
    paths = []
    for key, title, cmap, (lo, hi) in panels:
        grid = _grid(stats, key)
        fig, ax = plt.subplots(figsize=(1.2 + 0.35 * grid.shape[1], 1.0 + 0.22 * grid.shape[0]), dpi=120)
        im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        paths.append(out_dir / f"{key}.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


def training_curves(runs: dict[str, dict], path: str | Path) -> Path:
    """Training loss of each fine-tune (``finetune.json`` contents by attention name) against tokens seen, with the
    mean learned alpha on a second axis: the comparison of one recipe under two attentions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    ax2 = None
    for name, ft in runs.items():
        per_step = ft["tokens"] / max(ft["steps"], 1)
        pts = [(h["step"] * per_step, h["loss"]) for h in ft["history"] if "loss" in h]
        if pts:
            ax.plot(*zip(*pts), label=f"{name} train loss")
        alpha = [(h["step"] * per_step, h["alpha_mean"]) for h in ft["history"] if "alpha_mean" in h]
        if alpha and max(a for _, a in alpha) > 1.0:
            ax2 = ax2 or ax.twinx()
            ax2.plot(*zip(*alpha), ls="--", color="0.4", label=f"{name} mean alpha")
            ax2.set_ylabel("mean alpha")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss")
    lines = ax.get_legend_handles_labels()
    if ax2 is not None:
        more = ax2.get_legend_handles_labels()
        lines = (lines[0] + more[0], lines[1] + more[1])
    ax.legend(*lines, fontsize=8)
    ax.set_title("same recipe, softmax (sdpa) vs learned alpha-entmax (adasplash)", fontsize=9)
    return _save(fig, path)


def pattern_plot(pattern: dict, block_size: int, path: str | Path, alpha: float | None = None) -> Path:
    """Attention probabilities of one head (zeros in white), with the block grid the kernels skip on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    probs = np.asarray(pattern["probs"], dtype=float)
    masked = np.ma.masked_where(probs <= 0, probs)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    cmap = plt.get_cmap("viridis").copy()
    cmap = cmap.with_extremes(bad="white")
    im = ax.imshow(masked, cmap=cmap, interpolation="nearest",
                   norm=matplotlib.colors.LogNorm(vmin=min(max(masked.min(), 1e-6), 1e-3), vmax=1.0)
                   if masked.count() else None)
    for x in range(block_size, max(probs.shape), block_size):
        ax.axhline(x - 0.5, color="0.7", lw=0.5)
        ax.axvline(x - 0.5, color="0.7", lw=0.5)
    zero = float((probs <= 0)[np.tril(np.ones_like(probs, dtype=bool), k=probs.shape[1] - probs.shape[0])].mean())
    a = f", alpha {alpha:.3f}" if alpha is not None else ""
    ax.set_title(f"layer {pattern['layer']} head {pattern['head']}{a}: {zero:.0%} of visible weights are 0", fontsize=9)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    fig.colorbar(im, ax=ax, label="probability (white = exactly 0)")
    return _save(fig, path)


def per_layer(stats: dict) -> list[dict]:
    """Mean alpha, zero fraction and block fraction per layer (for tables)."""
    rows = []
    for layer in range(stats["num_layers"]):
        hs = [h for h in stats["heads"] if h["layer"] == layer]
        if hs:
            rows.append({"layer": layer, **{k: sum(h[k] for h in hs) / len(hs)
                                           for k in ("alpha", "zero_fraction", "block_zero_fraction", "support_mean")}})
    return rows


def _pct(x: float) -> str:
    return f"{x:.1%}"


def demo_markdown(result: dict, pngs: list) -> str:
    """The demo's REPORT.md: perplexities, learned/annealed alpha, sparsity, savings, timings."""
    ft, sp, hw = result["finetune"], result["sparsity"], result["hardware"]
    r = ft["recipe"]
    lines = ["# AdaSplash demo: softmax -> alpha-entmax fine-tuning", "",
             f"Base model `{ft['base_model']}`, data `{r['dataset']}`, {ft['steps']} steps of "
             f"{r['batch_size']}x{r['context_length']} tokens ({ft['tokens']:,} tokens, {ft['tokens_per_s']} tok/s), "
             f"alpha schedule `{r['alpha_schedule']}` (init {r['alpha_init']}, target {r['alpha']}), "
             f"lr {r['lr']}, alpha lr {r['alpha_lr']}.", "",
             f"## Perplexity (held-out split, {result['eval_tokens']:,} tokens, non-overlapping windows of "
             f"{result['eval_window']})", "", "| model | perplexity |", "|---|---:|"]
    for name, v in result["perplexity"].items():
        lines.append(f"| {name} | {v['perplexity']:.2f} |")
    flat = [a for row in ft["alpha"] for a in row]
    lines += ["", "## alpha", "", f"{len(ft['alpha'])} layers x {len(ft['alpha'][0]) if ft['alpha'] else 0} heads: "
              f"mean {sum(flat) / len(flat):.3f}, min {min(flat):.3f}, max {max(flat):.3f}.", "",
              f"## Sparsity (measured on {sp['num_sequences']} held-out sequences of {sp['context_length']} tokens)",
              "",
              f"{_pct(sp['zero_fraction'])} of the visible attention weights are exactly zero; "
              f"{_pct(sp['block_zero_fraction'])} of the visible {sp['block_size']}x{sp['block_size']} tiles are "
              "all-zero and skipped by the kernels.", "",
              "| layer | alpha (mean) | zero weights | all-zero tiles | support per query |",
              "|---:|---:|---:|---:|---:|"]
    for row in sp["per_layer"]:
        lines.append(f"| {row['layer']} | {row['alpha']:.3f} | {_pct(row['zero_fraction'])} | "
                     f"{_pct(row['block_zero_fraction'])} | {row['support_mean']:.1f} |")
    sv = sp["savings"]
    lines += ["", "### What the skipped tiles save (vs dense attention that skips only causally hidden tiles)", "",
              "| quantity | dense | adasplash | saved |", "|---|---:|---:|---:|"]
    for key, label in (("qk_pv_flops", "QK^T + PV FLOPs (output pass)"),
                       ("forward_flops_lower_bound", "forward FLOPs (tau search not counted)"),
                       ("backward_flops", "backward FLOPs"), ("kv_bytes", "K/V bytes read (output pass)"),
                       ("probs_bytes", "P stored dense fp32 vs sparse (value + index)")):
        v = sv[key]
        lines.append(f"| {label} | {v['dense']:.3g} | {v['adasplash']:.3g} | {_pct(v['saved_fraction'])} |")
    lines += ["", "Counted from measured all-zero tiles and the kernels' passes; a negative saving means the "
              "extra passes of alpha-entmax cost more than the skipped tiles save at this sparsity and length.", "",
              "## Plots", ""] + [f"![{p.stem}]({p})" for p in pngs]
    lines += ["", "## Run", "", f"Hardware: {hw['device']}, {hw['cpu_threads']} CPU threads; torch {hw['torch']}, "
              f"transformers {hw['transformers']}, hf_adasplash {hw['hf_adasplash']}.", "",
              "Timings (s): " + ", ".join(f"{k} {v}" for k, v in result["timings_s"].items()) + ".", ""]
    return "\n".join(lines)
