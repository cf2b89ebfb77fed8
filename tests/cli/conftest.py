"""A tiny random Llama (hidden 64, 2 layers, GQA) with a tiny trained BPE tokenizer, and a tiny text corpus."""

from __future__ import annotations

import random

import pytest

WORDS = ("the", "king", "queen", "speaks", "to", "his", "her", "loyal", "servant", "friend", "about", "war", "peace",
         "love", "night", "day", "crown", "sword", "castle", "river", "storm", "fate", "honour", "truth")


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):  # a little structure for the model to learn: subject verb object
        out.append(f"The {rng.choice(WORDS)} {rng.choice(WORDS)} of the {rng.choice(WORDS)} {rng.choice(WORDS)}.")
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Folder with ``train/doc{0..3}.txt`` and ``test/test.txt`` (one document per file): splits train and test."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "train").mkdir()
    (root / "test").mkdir()
    for i in range(4):
        (root / "train" / f"doc{i}.txt").write_text(" ".join(_sentences(150, seed=i)))
    (root / "test" / "test.txt").write_text(" ".join(_sentences(120, seed=99)))
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, corpus):
    """A saved random LlamaForCausalLM + fast tokenizer (vocab ~200) that the CLI can load by path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(p) for p in sorted((corpus / "train").glob("*.txt"))], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path
