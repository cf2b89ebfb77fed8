#!/usr/bin/env python
"""Long-run numerical stability: train a tiny transformer with learned per-head alpha and check every step.

A small causal LM (public API only: ``adasplash_attention`` with ``backend="auto"`` and ``AlphaParameter``) learns an
induction task (the second half of each sequence repeats the first), which pushes heads towards sparse attention.
After every optimizer step it checks that the loss, every gradient and every alpha are finite and that alpha stays
inside its bounds (or exactly 1). The run stops at the first violation. A JSON summary is written at the end.

GPU (the figure in RELIABILITY.md):  python scripts/stability_run.py --steps 10000 --out stability.json
CPU smoke test:                      python scripts/stability_run.py --steps 50 --device cpu
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from hf_adasplash import AlphaParameter, adasplash_attention


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, alpha_init: float):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.hd, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.alpha = AlphaParameter(heads, init=alpha_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(B, N, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(h).view(B, N, 2, self.kv_heads, self.hd).permute(2, 0, 3, 1, 4)
        a = adasplash_attention(q, k, v, self.alpha(), is_causal=True, backend="auto")
        x = x + self.o(a.transpose(1, 2).reshape(B, N, -1))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, kv_heads: int, seq: int, alpha_init: float):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads, alpha_init) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def induction_batch(batch: int, seq: int, vocab: int, gen: torch.Generator, device) -> torch.Tensor:
    half = torch.randint(0, vocab, (batch, seq // 2), generator=gen)
    return torch.cat([half, half], 1)[:, :seq].to(device)


def git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="default 32 on CUDA, 4 on CPU")
    p.add_argument("--seq", type=int, default=None, help="default 256 on CUDA, 32 on CPU")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--alpha-init", type=float, default=1.5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--alpha-lr", type=float, default=1e-2, help="a large alpha lr stresses the bounds on purpose")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--out", default="stability.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype or
                                                                                    ("bf16" if cuda else "fp32")]
    batch, seq = args.batch or (32 if cuda else 4), args.seq or (256 if cuda else 32)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = TinyLM(args.vocab, args.dim, args.layers, args.heads, args.kv_heads, seq, args.alpha_init).to(dev)
    alphas = [b.alpha for b in model.blocks]
    alpha_params = [a.logit for a in alphas]
    others = [p for n, p in model.named_parameters() if not n.endswith("alpha.logit")]
    opt = torch.optim.AdamW([{"params": others, "lr": args.lr},
                             {"params": alpha_params, "lr": args.alpha_lr, "weight_decay": 0.0}])
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    summary = {"config": vars(args) | {"batch": batch, "seq": seq, "dtype": str(dtype)},
               "device": torch.cuda.get_device_name(dev) if cuda else platform.processor() or "cpu",
               "torch": torch.__version__, "git_sha": git_sha(), "first_failure": None, "log": []}
    t0 = time.time()
    step = 0
    for step in range(1, args.steps + 1):
        ids = induction_batch(batch, seq, args.vocab, gen, dev)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(ids[:, :-1])
        # loss on the repeated half only: solvable by attending to the first occurrence
        tgt = ids[:, 1:].clone()
        tgt[:, : seq // 2 - 1] = -100
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, args.vocab), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        a = torch.cat([m().detach().flatten() for m in alphas])
        # one host sync per step for every check
        flags = torch.stack([
            torch.isfinite(loss.detach()).all(),
            torch.stack([torch.isfinite(g).all() for g in grads]).all(),
            torch.isfinite(a).all(),
            ((a == 1) | ((a >= alphas[0].min_alpha) & (a <= alphas[0].max_alpha))).all(),
        ]).cpu()
        if not bool(flags.all()):
            names = ["loss_finite", "grads_finite", "alpha_finite", "alpha_in_bounds"]
            summary["first_failure"] = {"step": step, **{n: bool(f) for n, f in zip(names, flags)},
                                        "loss": float(loss.detach()), "alpha": a.cpu().tolist()}
            break
        scaler.step(opt)
        scaler.update()
        if step % args.log_every == 0 or step == args.steps:
            a_after = torch.cat([m().detach().flatten() for m in alphas]).cpu()
            summary["log"].append({"step": step, "loss": round(float(loss.detach()), 5),
                                   "alpha_min": float(a_after.min()), "alpha_max": float(a_after.max()),
                                   "alpha_mean": float(a_after.mean())})
    ok = summary["first_failure"] is None
    summary.update({
        "steps_requested": args.steps,
        "steps_completed": step if ok else step - 1,
        "nan_free_steps": step if ok else step - 1,
        "passed": ok,
        "final_loss": summary["log"][-1]["loss"] if summary["log"] else None,
        "initial_loss_uniform": math.log(args.vocab),
        "final_alpha": [m().detach().cpu().tolist() for m in alphas],
        "wall_s": round(time.time() - t0, 1),
    })
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("passed", "steps_completed", "final_loss", "wall_s")}))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
