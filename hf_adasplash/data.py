"""Text data for training and evaluation: load a corpus, tokenize it, pack it into fixed-length blocks.

A corpus is named by ``dataset``:

* ``shakespeare`` / ``wiki``: the offline corpora of :mod:`hf_adasplash.assets` (splits ``train`` / ``test``);
* a local file or folder of ``.txt``/``.md`` (one document per file), ``.json``/``.jsonl``, ``.csv`` or ``.parquet``:
  a file is split ``train``; a folder's splits follow the file/folder names (``train/``, ``test.txt``, ...), and
  slices such as ``train[:90%]`` work;
* anything else is passed to ``datasets.load_dataset(dataset, config, split=split)`` (a hub id, when online or cached).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import torch

from hf_adasplash import assets
from hf_adasplash.assets import UserError

BUILTIN = ("shakespeare", "wiki")
_BUILDERS = {".txt": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_text(dataset: str, split: str = "train", config: str | None = None, text_column: str = "text",
              max_docs: int | None = None) -> datasets.Dataset:
    """One split of a corpus as a ``datasets.Dataset`` with a string column ``text_column``."""
    if dataset == "shakespeare":
        files = [str(p) for p in assets.shakespeare_files(split)]
        ds = datasets.load_dataset("text", data_files=files, sample_by="document", split="train")
    elif dataset == "wiki":
        if split not in ("train", "test", "validation"):
            raise UserError(f"the wiki corpus has splits train and test (alias validation), not {split!r}")
        ds = datasets.Dataset.from_list(assets.wiki_summaries())
        # every 20th article (by title) is held out: deterministic and independent of the datasets version
        keep = (lambda i: i % 20 == 0) if split != "train" else (lambda i: i % 20 != 0)
        ds = ds.select([i for i in range(len(ds)) if keep(i)])
    elif Path(dataset).exists():
        ds = _load_local(Path(dataset), split)
    else:
        ds = _load_hub(dataset, config, split)
    if text_column not in ds.column_names:
        raise UserError(f"dataset {dataset!r} has no column {text_column!r} (columns: {', '.join(ds.column_names)}); "
                        "pick one with --text-column")
    if max_docs is not None:
        ds = ds.select(range(min(max_docs, len(ds))))
    if len(ds) == 0:
        raise UserError(f"dataset {dataset!r} split {split!r} is empty")
    return ds


def _load_local(path: Path, split: str) -> datasets.Dataset:
    files = sorted(p for p in path.rglob("*") if p.suffix in _BUILDERS) if path.is_dir() else [path]
    if not files:
        raise UserError(f"no data files ({', '.join(_BUILDERS)}) in {path}")
    builders = {_BUILDERS.get(p.suffix) for p in files}
    if len(builders) != 1 or None in builders:
        raise UserError(f"{path}: use files of one kind among {', '.join(_BUILDERS)}")
    builder = builders.pop()
    kw = {"sample_by": "document"} if builder == "text" else {}
    try:
        if path.is_dir() and all(p.suffix != ".md" for p in files):
            # datasets infers the splits from the names (train/, test.txt, validation-*.jsonl, ...)
            return datasets.load_dataset(str(path), split=split, **kw)
        return datasets.load_dataset(builder, data_files=[str(p) for p in files], split=split, **kw)
    except ValueError as e:  # e.g. a split other than train
        raise UserError(f"cannot read split {split!r} of local data {path}: {e}") from None


def _load_hub(name: str, config: str | None, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline misses, unknown names and bad splits all surface here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"dataset {name!r} not found locally ({first}); use shakespeare, wiki, "
                        "a local file/folder, or a cached datasets name") from None


def _bos(tokenizer) -> list[int]:
    """BOS to prepend, unless the tokenizer already adds one (Gemma) or has none (GPT-2)."""
    bos = tokenizer.bos_token_id
    if bos is None or bos in tokenizer("a")["input_ids"][:1]:
        return []
    return [bos]


def pack(ds: datasets.Dataset, tokenizer, block_size: int, text_column: str = "text",
         max_blocks: int | None = None) -> datasets.Dataset:
    """Tokenize every document, join them (each one ``[bos] ids [eos]``) and cut the stream into blocks.

    Returns a dataset with one column ``input_ids`` of length ``block_size`` (the tail shorter than a block is
    dropped), formatted as torch tensors.
    """
    if block_size <= 0:
        raise UserError(f"context length must be > 0, got {block_size}")
    bos, eos = _bos(tokenizer), [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def tok_and_group(batch):
        stream: list[int] = []
        for ids in tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]:
            stream += bos + ids + eos
        n = len(stream) // block_size * block_size
        return {"input_ids": [stream[i : i + block_size] for i in range(0, n, block_size)]}

    blocks = ds.map(tok_and_group, batched=True, batch_size=256, remove_columns=ds.column_names,
                    desc=f"tokenize + pack into {block_size}-token blocks")
    if len(blocks) == 0:
        raise UserError(f"the corpus has fewer than {block_size} tokens: lower the context length or add data")
    if max_blocks is not None:
        blocks = blocks.select(range(min(max_blocks, len(blocks))))
    return blocks.with_format("torch")


def corpus_ids(ds: datasets.Dataset, tokenizer, text_column: str = "text", max_tokens: int | None = None):
    """The whole split as one token stream (documents joined by a blank line), as in the Transformers
    perplexity guide. Returns a ``[1, T]`` LongTensor."""
    ids = _bos(tokenizer) + tokenizer("\n\n".join(ds[text_column]), add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise UserError("the evaluation text has fewer than 2 tokens")
    return torch.tensor([ids], dtype=torch.long)
