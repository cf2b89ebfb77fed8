"""Fine-tune a causal LM from softmax into alpha-entmax ("adasplash") attention with Accelerate.

Runs the same under ``python``/``hf-adasplash finetune`` and ``accelerate launch`` (DDP, FSDP, multi-GPU): bf16
autocast on GPU, fp32 on CPU, gradient accumulation, a separate learning rate for alpha, three alpha schedules
(``fixed``, ``learned``, ``anneal``; learned alpha optionally snapped to the kernels' fastest values and frozen
after ``alpha_snap_step``), periodic evaluation, atomic checkpoints with exact ``--resume``, TensorBoard.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_adasplash import checkpoints
from hf_adasplash.assets import UserError
from hf_adasplash.patching import snap_alpha, snap_grid
from hf_adasplash.prewarm import compile_ahead

SCHEDULES = ("fixed", "learned", "anneal")
ATTNS = ("adasplash", "sdpa", "eager")


@dataclass
class FinetuneConfig:
    model: str = "smollm2"
    output_dir: str = "adasplash-finetune"
    dataset: str = "shakespeare"
    dataset_config: str | None = None
    split: str = "train"
    eval_split: str | None = "test"
    text_column: str = "text"
    attn: str = "adasplash"  # sdpa / eager: the dense softmax baseline under the same recipe (alpha options unused)
    context_length: int = 256
    batch_size: int = 4  # per process, per micro-step
    grad_accum: int = 1
    max_steps: int = 100  # optimizer steps
    lr: float = 5e-5
    alpha_lr: float = 5e-2
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    alpha_schedule: str = "learned"
    alpha: float = 1.5  # fixed value, or the anneal target
    alpha_init: float = 1.01  # start of learned/anneal: near softmax, so the pretrained model starts almost unchanged
    anneal_steps: int | None = None  # default: all steps
    anneal_shape: str = "linear"
    min_alpha: float = 1.001
    max_alpha: float = 2.0
    # learned schedule: after this optimizer step every head's alpha moves to the nearest of SNAP_GRID (the alphas
    # whose powers the kernels take by multiplication alone) and stops learning
    alpha_snap_step: int | None = None
    per_head: bool = True
    max_train_blocks: int | None = None
    eval_blocks: int = 16
    eval_every: int = 0  # 0: only at the end
    log_every: int = 10
    save_every: int = 0  # 0: no intermediate checkpoints
    keep_checkpoints: int = 2
    resume: str | None = None  # "auto" (latest in output_dir) or a checkpoint folder
    seed: int = 0
    mixed_precision: str = "auto"  # auto: bf16 on GPU, no on CPU
    gradient_checkpointing: bool = False
    report_to: str = "tensorboard"
    progress: bool = True
    # compile every attention kernel the training loop will launch (learned, snapped, its evaluations) at once before
    # the first step
    compile_ahead: bool = True

    def validate(self) -> None:
        if self.context_length <= 0:
            raise UserError(f"context length must be > 0, got {self.context_length}")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_blocks", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.attn not in ATTNS:
            raise UserError(f"attention must be one of {', '.join(ATTNS)}, got {self.attn!r}")
        if self.alpha_schedule not in SCHEDULES:
            raise UserError(f"alpha schedule must be one of {', '.join(SCHEDULES)}, got {self.alpha_schedule!r}")
        if self.anneal_shape not in ("linear", "cosine"):
            raise UserError(f"anneal shape must be linear or cosine, got {self.anneal_shape!r}")
        lo, hi = self.min_alpha, self.max_alpha
        if not 1.0 < lo < hi <= 2.0:
            raise UserError(f"alpha bounds must satisfy 1 < min-alpha < max-alpha <= 2, got ({lo}, {hi})")
        if not (self.alpha == 1.0 and self.alpha_schedule == "fixed") and not lo < self.alpha <= hi:
            raise UserError(f"--alpha must be in ({lo}, {hi}] (or 1.0 with the fixed schedule), got {self.alpha}")
        if self.alpha_schedule != "fixed" and not lo < self.alpha_init <= hi:
            raise UserError(f"--alpha-init must be in ({lo}, {hi}], got {self.alpha_init}")
        if self.alpha_snap_step is not None:
            if self.alpha_schedule != "learned" or self.attn != "adasplash":
                raise UserError("--alpha-snap-step needs the learned alpha schedule and adasplash attention")
            if not 0 < self.alpha_snap_step <= self.max_steps:
                raise UserError(f"--alpha-snap-step must be in [1, max-steps = {self.max_steps}], "
                                f"got {self.alpha_snap_step}")
            try:
                snap_grid(lo, hi)
            except ValueError as e:
                raise UserError(str(e)) from None


def anneal_alpha(cfg: FinetuneConfig, step: int) -> float:
    """SparseModernBERT-style schedule: alpha_init -> alpha over ``anneal_steps``, then constant."""
    frac = min(1.0, step / max(1, cfg.anneal_steps or cfg.max_steps))
    if cfg.anneal_shape == "cosine":
        frac = 0.5 * (1.0 - math.cos(math.pi * frac))
    return cfg.alpha_init + (cfg.alpha - cfg.alpha_init) * frac


@torch.no_grad()
def set_alpha(model, value: float) -> None:
    for m in model.modules():
        if hasattr(m, "adasplash_alpha"):
            m.adasplash_alpha.reset_parameters(value)


def alpha_table(model) -> list[list[float]]:
    """alpha per layer (rows) and head (columns)."""
    out = []
    for m in model.modules():
        if hasattr(m, "adasplash_alpha"):
            out.append([round(a, 5) for a in m.adasplash_alpha().detach().float().cpu().reshape(-1).tolist()])
    return out


def _build_model(cfg: FinetuneConfig, path: str):
    from transformers import AutoModelForCausalLM

    import hf_adasplash

    # master weights fp32 (autocast does bf16); sdpa/eager: the dense baseline, the model as it comes
    dense = {} if cfg.attn == "adasplash" else {"attn_implementation": cfg.attn}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **dense)
    if cfg.attn == "adasplash":
        start = {"fixed": cfg.alpha, "learned": cfg.alpha_init, "anneal": cfg.alpha_init}[cfg.alpha_schedule]
        hf_adasplash.patch(model, alpha=start, learnable=cfg.alpha_schedule == "learned", per_head=cfg.per_head,
                           min_alpha=cfg.min_alpha, max_alpha=cfg.max_alpha)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _optimizer(cfg: FinetuneConfig, model):
    alpha_ids = {id(p) for n, p in model.named_parameters() if "adasplash_alpha" in n}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in alpha_ids],
               "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    alpha = [p for p in model.parameters() if p.requires_grad and id(p) in alpha_ids]
    if alpha:  # alpha lives on a logit scale: it needs a much larger step than the weights, and no decay
        groups.append({"params": alpha, "lr": cfg.alpha_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups)


@torch.no_grad()
def evaluate_blocks(accelerator, model, loader) -> dict:
    """Mean token loss over packed evaluation blocks, gathered over processes."""
    model.eval()
    losses = []
    for batch in loader:
        out = model(input_ids=batch["input_ids"], labels=batch["input_ids"])
        losses.append(accelerator.gather_for_metrics(out.loss.detach().float().reshape(1)))
    model.train()
    loss = torch.cat(losses).mean().item()
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}


def _sparsity(model, block) -> dict:
    """Overall zero and 64x64-block fractions on one evaluation block (skipped if the model cannot report)."""
    import hf_adasplash

    s = hf_adasplash.sparsity_stats(model, {"input_ids": block[:1]}).to_dict()
    return {"zero_fraction": s["zero_fraction"], "block_zero_fraction": s["block_zero_fraction"]}


def finetune(cfg: FinetuneConfig) -> dict:
    """Train and save to ``cfg.output_dir``; returns (and writes ``finetune.json``) the run summary."""
    from accelerate import Accelerator
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        GradientAccumulationPlugin,
        ProjectConfiguration,
        set_seed,
    )
    from transformers import AutoTokenizer, get_scheduler

    from hf_adasplash.data import load_text, pack
    from hf_adasplash.evaluation import hardware, resolve_model

    cfg.validate()
    out = Path(cfg.output_dir)
    mp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if torch.cuda.is_available() else "no")
    accelerator = Accelerator(
        # Without CUDA, processes started by `accelerate launch --multi_gpu`/torchrun form a gloo (MULTI_CPU) group.
        cpu=not torch.cuda.is_available(),
        mixed_precision=mp,
        # Epochs are cut to whole accumulation windows, so syncing at the loader's end is never needed; this
        # keeps the micro-step -> optimizer-step mapping identical after --resume.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.grad_accum, sync_with_dataloader=False),
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "runs")),
        # a snapped alpha stops getting gradients mid-run: DDP must not wait for them
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.alpha_snap_step is not None)],
    )
    if cfg.alpha_snap_step is not None and accelerator.distributed_type.value == "FSDP":
        raise UserError("--alpha-snap-step is not supported under FSDP (it would freeze part of a flat parameter); "
                        "use DDP or one process")
    set_seed(cfg.seed)
    with accelerator.main_process_first():  # converts/caches the model and tokenizes the data once
        path = resolve_model(cfg.model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        train = pack(load_text(cfg.dataset, cfg.split, cfg.dataset_config, cfg.text_column), tokenizer,
                     cfg.context_length, cfg.text_column, cfg.max_train_blocks)
        evals = None
        if cfg.eval_split:
            evals = pack(load_text(cfg.dataset, cfg.eval_split, cfg.dataset_config, cfg.text_column), tokenizer,
                         cfg.context_length, cfg.text_column, cfg.eval_blocks)
    micro_per_epoch = len(train) // (cfg.batch_size * accelerator.num_processes) // cfg.grad_accum * cfg.grad_accum
    if micro_per_epoch == 0:
        raise UserError(f"{len(train)} training blocks cannot fill one optimizer step of batch {cfg.batch_size} x "
                        f"accumulation {cfg.grad_accum} x {accelerator.num_processes} processes")
    data = {"train_blocks": len(train), "epochs": round(epochs_covered(cfg, len(train), accelerator.num_processes), 3)}
    memorise = " (held-out perplexity can rise as the model memorises the split)" * (data["epochs"] > MANY_EPOCHS)
    accelerator.print(f"training split: {len(train)} blocks of {cfg.context_length} tokens; {cfg.max_steps} steps "
                      f"cover {data['epochs']:.2f} epochs{memorise}")
    model = _build_model(cfg, path)
    optimizer = _optimizer(cfg, model)
    # The prepared scheduler steps once per process per optimizer step (Accelerate's convention): scale to match.
    n = accelerator.num_processes
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps * n,
                              num_training_steps=cfg.max_steps * n)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    eval_loader = None
    if evals is not None:
        eval_loader = accelerator.prepare(torch.utils.data.DataLoader(evals, batch_size=cfg.batch_size))
    state = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "tokens": 0, "train_seconds": 0.0, "history": []}
    if cfg.resume:
        ckpt = checkpoints.resolve(out / "checkpoints", cfg.resume)
        accelerator.load_state(str(ckpt))
        state = checkpoints.read_state(ckpt)
        accelerator.print(f"resumed from {ckpt} at step {state['step']}")
    unwrapped = accelerator.unwrap_model(model)
    if cfg.alpha_snap_step is not None and state["step"] >= cfg.alpha_snap_step:
        snap_alpha(unwrapped)  # the checkpoint holds the snapped alphas; they stay frozen
    if cfg.report_to != "none":
        accelerator.init_trackers("finetune", config={k: v for k, v in asdict(cfg).items() if v is not None})

    model.train()
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="finetune", disable=not (
        cfg.progress and accelerator.is_local_main_process), dynamic_ncols=True)
    window_loss, window_n, t0 = torch.zeros((), device=accelerator.device), 0, time.perf_counter()
    # (FSDP: the unwrapped module cannot run on its own; its kernels compile as met)
    if (cfg.attn == "adasplash" and cfg.compile_ahead and state["step"] < cfg.max_steps
            and accelerator.distributed_type.value != "FSDP"):
        # inside the timed run: compiling is part of the run's cost, ahead of time or not
        first = torch.stack([train[i]["input_ids"] for i in range(min(cfg.batch_size, len(train)))])
        snaps = cfg.alpha_snap_step is not None and state["step"] < cfg.alpha_snap_step
        # evaluations inside the loop count in its time; the final one runs after it and compiles its own kernels
        timings = []
        secs = compile_ahead(unwrapped, first.to(accelerator.device), snapped=snaps, evaluation=cfg.eval_every > 0,
                             autocast=accelerator.autocast, timings=timings)
        if secs is not None:
            state["compile_ahead_seconds"] = round(secs, 2)
            state["compile_ahead_kernels"] = sorted(timings, key=lambda t: -t[1])  # (kernel, seconds), slowest first
            accelerator.print(f"attention kernels compiled ahead in {secs:.1f} s")
    while state["step"] < cfg.max_steps:
        # A fresh, seeded order per epoch; a resumed run skips exactly the micro-batches already consumed.
        order = torch.utils.data.DataLoader(train.shuffle(seed=cfg.seed + state["epoch"]), batch_size=cfg.batch_size)
        loader = accelerator.prepare_data_loader(order)
        if state["micro_in_epoch"]:
            loader = accelerator.skip_first_batches(loader, state["micro_in_epoch"])
        for batch in loader:
            if cfg.alpha_schedule == "anneal":
                set_alpha(unwrapped, anneal_alpha(cfg, state["step"]))
            with accelerator.accumulate(model):
                loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state["micro_in_epoch"] += 1
            state["tokens"] += batch["input_ids"].numel() * accelerator.num_processes
            window_loss, window_n = window_loss + loss.detach().float(), window_n + 1  # no host sync per step
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            bar.update(1)
            step = state["step"]
            if step == cfg.alpha_snap_step:
                snap_alpha(unwrapped)
                grid = ", ".join(f"{a:.4g}" for a in snap_grid(cfg.min_alpha, cfg.max_alpha))
                accelerator.print(f"step {step}: alpha snapped to the nearest of {grid} and frozen")
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                state["train_seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                # the loss of the whole global batch (every process's share), as one process would log it
                mean_loss = accelerator.reduce(window_loss, "mean").item() / window_n
                log = _log(accelerator, model, unwrapped, step, mean_loss, scheduler, state)
                bar.set_postfix(loss=f"{log['train/loss']:.3f}", alpha=f"{log['alpha/mean']:.3f}")
                window_loss, window_n = torch.zeros((), device=accelerator.device), 0
            if eval_loader is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                _eval_and_log(accelerator, model, unwrapped, eval_loader, evals, step, state, cfg.attn)
            if state["micro_in_epoch"] >= micro_per_epoch:
                state["epoch"], state["micro_in_epoch"] = state["epoch"] + 1, 0
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                checkpoints.save(accelerator, out / "checkpoints", step, state, cfg.keep_checkpoints)
            if step >= cfg.max_steps or state["micro_in_epoch"] == 0:
                break
    bar.close()
    state["train_seconds"] += time.perf_counter() - t0
    final_eval = None
    if eval_loader is not None:
        final_eval = _eval_and_log(accelerator, model, unwrapped, eval_loader, evals, state["step"], state, cfg.attn)
    summary = {**_summary(cfg, path, accelerator, model, unwrapped, state, final_eval, hardware()), **data}
    _save_final(accelerator, model, tokenizer, out, summary)
    accelerator.end_training()
    return summary


def _alphas(accelerator, model, unwrapped) -> list[list[float]]:
    """``alpha_table``; under FSDP parameters are shards outside forward, so gather them first (collective)."""
    if accelerator.distributed_type.value == "FSDP":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            return alpha_table(unwrapped)
    return alpha_table(unwrapped)


def _log(accelerator, model, unwrapped, step, loss, scheduler, state) -> dict:
    alphas = _alphas(accelerator, model, unwrapped)
    flat = [a for row in alphas for a in row] or [1.0]
    log = {"train/loss": loss, "train/ppl": math.exp(min(loss, 50.0)), "train/lr": scheduler.get_last_lr()[0],
           "alpha/mean": sum(flat) / len(flat), "alpha/max": max(flat), "train/tokens": state["tokens"]}
    log.update({f"alpha/layer_{i:02d}": sum(r) / len(r) for i, r in enumerate(alphas)})
    accelerator.log(log, step=step)
    state["history"].append({"step": step, "loss": round(loss, 5), "lr": log["train/lr"],
                             "alpha_mean": round(log["alpha/mean"], 5), "tokens": state["tokens"],
                             "seconds": round(state["train_seconds"], 3)})
    accelerator.print(f"step {step}: loss {loss:.4f}  ppl {log['train/ppl']:.2f}  alpha mean {log['alpha/mean']:.4f} "
                      f"max {log['alpha/max']:.4f}  lr {log['train/lr']:.2e}")
    return log


def _eval_and_log(accelerator, model, unwrapped, eval_loader, evals, step, state, attn) -> dict:
    result = evaluate_blocks(accelerator, model, eval_loader)
    # sparsity of the adasplash model only (FSDP: forward is collective, so the main process alone cannot run it)
    if attn == "adasplash" and accelerator.is_main_process and accelerator.distributed_type.value != "FSDP":
        with accelerator.autocast():
            result.update(_sparsity(unwrapped, evals[:1]["input_ids"].to(accelerator.device)))
    accelerator.log({f"eval/{k}": v for k, v in result.items()}, step=step)
    state["history"].append({"step": step, **{f"eval_{k}": round(v, 5) for k, v in result.items()}})
    accelerator.print(f"step {step}: eval loss {result['loss']:.4f}  ppl {result['ppl']:.2f}" + (
        f"  zero weights {result['zero_fraction']:.1%}  zero 64x64 blocks {result['block_zero_fraction']:.1%}"
        if "zero_fraction" in result else ""))
    return result


# Past this many passes over the training split, finetune says that held-out perplexity can rise: Qwen2.5-0.5B
# memorised shakespeare over SmolLM2's ~6-epoch recipe (held-out perplexity 148 against ~72 before; README).
MANY_EPOCHS = 2.0


def epochs_covered(cfg, train_blocks: int, processes: int) -> float:
    """Passes over the training split that ``cfg.max_steps`` optimizer steps make."""
    return cfg.max_steps * cfg.grad_accum * cfg.batch_size * processes / train_blocks


def second_half_tokens_per_s(history: list[dict], max_steps: int) -> float | None:
    """Throughput between the first log point at or past half the run and its end.

    The whole-run figure also holds one-time costs: the Triton kernels compile on their first calls (again when a
    snapped alpha freezes), and a learned alpha runs the d(alpha) path until it is snapped.
    """
    logs = [h for h in history if "seconds" in h]
    mid = next((h for h in logs if h["step"] >= max_steps / 2), None)
    if mid is None or logs[-1] is mid or logs[-1]["seconds"] <= mid["seconds"]:
        return None
    return round((logs[-1]["tokens"] - mid["tokens"]) / (logs[-1]["seconds"] - mid["seconds"]), 1)


def _summary(cfg, path, accelerator, model, unwrapped, state, final_eval, hw) -> dict:
    last_loss = next((h["loss"] for h in reversed(state["history"]) if "loss" in h), None)
    alphas = _alphas(accelerator, model, unwrapped)
    secs = state["train_seconds"]
    return {
        "base_model": path, "recipe": asdict(cfg), "steps": state["step"], "tokens": state["tokens"],
        "train_seconds": round(secs, 2), "tokens_per_s": round(state["tokens"] / secs, 1) if secs else None,
        "tokens_per_s_second_half": second_half_tokens_per_s(state["history"], cfg.max_steps),
        "final_train_loss": last_loss, "final_train_ppl": math.exp(last_loss) if last_loss is not None else None,
        "eval": final_eval, "alpha": alphas, "history": state["history"],
        "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "alpha_rank_spread": _alpha_rank_spread(accelerator, alphas), "hardware": hw,
        "compile_ahead_seconds": state.get("compile_ahead_seconds"),
        "compile_ahead_kernels": state.get("compile_ahead_kernels"),
    }


def _alpha_rank_spread(accelerator, alphas) -> float:
    """Largest difference of any alpha between a process and process 0 (data parallelism keeps them equal)."""
    flat = torch.tensor([a for row in alphas for a in row] or [1.0], device=accelerator.device)
    every = accelerator.gather(flat).reshape(accelerator.num_processes, -1)
    return float((every - every[0]).abs().max())


def _save_final(accelerator, model, tokenizer, out: Path, summary: dict) -> None:
    """A normal Transformers folder (config + safetensors + tokenizer) that keeps the learned alpha."""
    from hf_adasplash.cli._common import write_json

    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP shards on the main process
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(out, state_dict=state_dict, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(out)
        write_json(out / "finetune.json", summary)
    accelerator.wait_for_everyone()
