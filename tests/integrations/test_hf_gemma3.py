"""A second real pretrained model: Gemma-3-270M (GQA with one KV head, head dim 256, sliding-window layers), on CPU.

The passage is longer than the model's 512-token window, so its sliding layers really drop keys.
"""

import math

import pytest
import torch

import hf_adasplash

pytestmark = pytest.mark.slow

N_TOKENS = 700  # > sliding_window (512)


@pytest.fixture(scope="module")
def gemma3():
    from transformers import AutoTokenizer

    from hf_adasplash.assets import gemma3_path, shakespeare_text

    path = str(gemma3_path())
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(shakespeare_text()[2000:9000], return_tensors="pt").input_ids[:, :N_TOKENS]
    assert ids[0, 0] == tok.bos_token_id and ids.shape[1] == N_TOKENS  # Gemma's tokenizer adds its own BOS
    return path, ids


def _ppl(model, ids):
    with torch.no_grad():
        return math.exp(model(ids, labels=ids, use_cache=False).loss.item())


def test_gemma3_alpha_one_matches_sdpa_past_the_sliding_window(gemma3):
    path, ids = gemma3
    model = hf_adasplash.from_pretrained(path, alpha=1.5, dtype=torch.float32).eval()
    assert model.config._attn_implementation == "adasplash"
    assert model.config.sliding_window < N_TOKENS and "sliding_attention" in model.config.layer_types
    ppl_entmax = _ppl(model, ids)
    hf_adasplash.unpatch(model)
    ppl_sdpa = _ppl(model, ids)
    hf_adasplash.patch(model, alpha=1.0)
    assert 1.0 < ppl_sdpa < 200.0  # a real language model on English verse
    assert _ppl(model, ids) == pytest.approx(ppl_sdpa, rel=1e-4)
    assert math.isfinite(ppl_entmax) and ppl_entmax > ppl_sdpa  # untuned entmax attention is a worse model


def test_gemma3_alpha_gets_a_gradient_in_sliding_and_global_layers(gemma3):
    path, ids = gemma3
    model = hf_adasplash.from_pretrained(path, alpha=1.5, dtype=torch.float32)
    model(ids, labels=ids, use_cache=False).loss.backward()
    grads = [(n, p.grad) for n, p in model.named_parameters() if "adasplash_alpha" in n]  # in layer order
    kinds = model.config.layer_types
    assert len(grads) == len(kinds)
    for (name, g), kind in zip(grads, kinds):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, (name, kind)
