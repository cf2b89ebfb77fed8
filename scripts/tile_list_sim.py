#!/usr/bin/env python
"""How many of a real model's key tiles the kernels' tile lists keep, against what a per-row test would keep
(float64 simulation on the CPU; bench/NOTES.md v23).

The tau kernel lists a 128-row block's key tile when its *gap* (the largest, over the block's rows, of the tile's row
max less the row max) beats the block's *lowest* tau offset: one threshold for 128 rows. A tile holds nonzero weights
only if some row's tile max beats that row's own tau. This captures SmolLM2-135M's post-RoPE q/k on one held-out
shakespeare block of 4096 tokens and, per alpha, counts the visible tiles that are

- ``empty_64``: all-zero at 64 x 64 (what ``hf-adasplash sparsity`` reports);
- ``skip_exact_128``: all-zero at 128 x 64, the kernels' block (the most any list at that granularity can skip);
- ``skip_list_final``: dropped by the kernels' block-min threshold at the exact tau;
- ``skip_row_newton_K``: dropped by a per-row test against the certified bound after K Newton steps from m - 1
  (what a tau pass could test as it goes: the bound only grows).

    python scripts/tile_list_sim.py --layers 0,5,10,15,20,25,29 --alphas 1.3333333,1.5 --out tile_lists.json
"""

from __future__ import annotations

import argparse
import json
import math

import torch

BN = 64


def newton_offsets(z: torch.Tensor, alpha: float, steps: int) -> list[torch.Tensor]:
    """tau - m per row after 0..steps Newton steps from m - 1 (each a certified lower bound; ``z`` holds -inf where
    masked, scores times alpha - 1)."""
    p = 1.0 / (alpha - 1.0)
    m = z.max(1).values
    t = torch.full_like(m, -1.0)
    out = [t]
    for _ in range(steps):
        x = (z - (m + t)[:, None]).clamp(min=0)
        s0, s1 = (x**p).sum(1), (x ** (p - 1)).sum(1)
        t = t + (s0 - torch.exp((2.0 - alpha) * torch.log(s0))) / s1
        out.append(t)
    return out


def list_counts(z: torch.Tensor, alpha: float, newton: tuple[int, ...] = (1, 2), exact_steps: int = 30,
                bm: int = 128) -> dict[str, int]:
    """Tile counts of one head's ``[N, N]`` scores ``z`` (see the module docstring); N a multiple of ``bm``."""
    n = z.shape[0]
    offs = newton_offsets(z, alpha, max(exact_steps, *newton))
    m, tau = z.max(1).values, offs[-1]
    tmax = z.view(n, n // BN, BN).max(2).values  # each row's max per key tile; -inf where masked
    counts = {}
    for rows in (64, bm):
        vis = torch.isfinite(tmax).view(n // rows, rows, -1).any(1)
        live = (tmax > (m + tau)[:, None]).view(n // rows, rows, -1).any(1)
        counts[f"visible_{rows}"] = int(vis.sum())
        counts[f"skip_exact_{rows}"] = int((vis & ~live).sum())
    vis = torch.isfinite(tmax).view(n // bm, bm, -1).any(1)
    gap = (tmax - m[:, None]).view(n // bm, bm, -1).max(1).values
    thr = tau.view(n // bm, bm).min(1).values
    counts["skip_list_final"] = int((vis & ~(gap > thr[:, None])).sum())
    for k in newton:
        live = (tmax > (m + offs[k])[:, None]).view(n // bm, bm, -1).any(1)
        counts[f"skip_row_newton_{k}"] = int((vis & ~live).sum())
    return counts


def capture_qk(layers: tuple[int, ...], tokens: int) -> dict[int, tuple[torch.Tensor, torch.Tensor, float]]:
    """Post-RoPE q and k (fp32, batch 0) and the scale of SmolLM2's ``layers`` on one held-out block."""
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from hf_adasplash.assets import smollm2_path
    from hf_adasplash.data import load_text, pack

    cap = {}

    def capture(module, q, k, v, mask, **kw):
        if module.layer_idx in layers:
            cap[module.layer_idx] = (q.detach()[0], k.detach()[0], module.scaling)
        return sdpa_attention_forward(module, q, k, v, mask, **kw)

    AttentionInterface.register("capture_qk", capture)
    path = str(smollm2_path())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="capture_qk").eval()
    block = pack(load_text("shakespeare", "test"), AutoTokenizer.from_pretrained(path), tokens, max_blocks=1)[0]
    with torch.no_grad():
        model(input_ids=block["input_ids"][None], use_cache=False)
    return cap


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="0,5,10,15,20,25,29")
    p.add_argument("--alphas", default="1.3333333,1.5")
    p.add_argument("--tokens", type=int, default=4096, help="block length (a multiple of 128)")
    p.add_argument("--out", default=None, help="write the counts as JSON here")
    args = p.parse_args(argv)
    layers = tuple(int(x) for x in args.layers.split(","))
    cap = capture_qk(layers, args.tokens)
    n = args.tokens
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    result = {}
    for alpha in (float(a) for a in args.alphas.split(",")):
        total: dict[str, int] = {}
        for layer in layers:
            q, k, scale = cap[layer]
            group = q.shape[0] // k.shape[0]
            for h in range(q.shape[0]):
                z = ((q[h].double() @ k[h // group].double().T) * scale * (alpha - 1)).masked_fill(~causal, -math.inf)
                for key, value in list_counts(z, alpha).items():
                    total[key] = total.get(key, 0) + value
        result[f"{alpha:.4f}"] = total
        v64, v128 = total["visible_64"], total["visible_128"]
        print(f"alpha {alpha:.4f}: empty 64x64 {total['skip_exact_64'] / v64:.1%}; of 128x64 tiles: all-zero "
              f"{total['skip_exact_128'] / v128:.1%}, the kernels' list skips {total['skip_list_final'] / v128:.1%}, "
              f"a per-row test skips {total['skip_row_newton_1'] / v128:.1%} after one Newton step from m - 1 and "
              f"{total['skip_row_newton_2'] / v128:.1%} after two", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": "SmolLM2-135M (pretrained)", "layers": layers, "tokens": n, "counts": result}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
