"""``hf-adasplash convert``: materialise an offline model's plain checkpoint once (or re-do it)."""

from __future__ import annotations

import argparse
import shutil


def build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="'smollm2' (SmolLM2-135M), 'gemma3' (Gemma-3-270M) or "
                   "'qwen2.5-coder' (Qwen2.5-Coder-0.5B-Instruct)")
    p.add_argument("--force", action="store_true", help="convert again even if the cached checkpoint exists")
    p.add_argument("--print-path", action="store_true", help="print only the checkpoint folder (for scripts)")


def run(args) -> int:
    from hf_adasplash import assets

    target = assets.cache_dir() / assets.offline_model(args.model, required=True).name
    if args.force and target.exists():
        shutil.rmtree(target)
    existed = (target / "config.json").is_file()
    path = assets.offline_model_path(args.model)
    if args.print_path:
        print(path)
    else:
        print(f"{'cached' if existed else 'converted'}: {path} (set HF_ADASPLASH_CACHE to move it)")
    return 0
