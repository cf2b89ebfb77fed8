"""Training checkpoints that are either complete or absent, and verified before a resume.

A checkpoint is Accelerate's ``save_state`` (model with alpha, optimizer, scheduler, RNG of every process) plus
``trainer_state.json`` (step, epoch, data position, tokens, history) and ``manifest.json`` (size and sha256 of
every file). It is written into ``.tmp-step-N`` and renamed to ``step-N`` only when complete, so a run killed
mid-save leaves the previous checkpoint as the latest one. The last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from hf_adasplash.assets import UserError

STATE_FILE, MANIFEST_FILE = "trainer_state.json", "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (``step-N``), oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))


def save(accelerator, root: Path, step: int, state: dict, keep: int) -> Path:
    """Collective: every process must call it (each saves its own RNG state)."""
    root = Path(root)
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a run killed while saving
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(tmp / STATE_FILE, state)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
        _write_json(tmp / MANIFEST_FILE, {"step": step, "files": manifest})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def verify(ckpt: Path) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong."""
    try:
        manifest = json.loads((ckpt / MANIFEST_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return f"{MANIFEST_FILE} is missing or unreadable"
    for name, info in manifest.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != info["size"]:
            return f"{name} is truncated ({path.stat().st_size} of {info['size']} bytes)"
        if _sha256(path) != info["sha256"]:
            return f"{name} is corrupted (sha256 mismatch)"
    return None


def resolve(root: Path, resume: str) -> Path:
    """The checkpoint to resume from: ``auto`` (the latest under ``root``) or a folder; verified."""
    root = Path(root)
    if resume == "auto":
        found = list_checkpoints(root)
        if not found:
            raise UserError(f"--resume auto: no checkpoint in {root} (save some with --save-every)")
        ckpt = found[-1]
    else:
        ckpt = Path(resume)
        if not ckpt.is_dir():
            raise UserError(f"--resume: no checkpoint folder {ckpt}")
    problem = verify(ckpt)
    if problem:
        others = [p for p in list_checkpoints(ckpt.parent) if p.name != ckpt.name and verify(p) is None]
        hint = f"; checkpoint {others[-1]} is intact: --resume {others[-1]}" if others else ""
        raise UserError(f"checkpoint {ckpt} is unusable: {problem}{hint}")
    return ckpt


def read_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / STATE_FILE).read_text())
