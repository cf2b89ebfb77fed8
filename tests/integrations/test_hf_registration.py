"""Registration, the key-validity mask, cache alignment, alpha/backend resolution, errors for what is unsupported."""

import hf_models as H
import pytest
import torch
from transformers import AttentionInterface, DynamicCache, StaticCache
from transformers.masking_utils import AttentionMaskInterface

import hf_adasplash
from hf_adasplash.integrations import transformers as integ

LLAMA = H.FAMILIES["llama"]


def test_import_registers_attention_and_mask_idempotently():
    hf_adasplash.register()
    hf_adasplash.register()
    assert AttentionInterface._global_mapping["adasplash"] is integ.adasplash_attention_forward
    assert AttentionMaskInterface._global_mapping["adasplash"] is integ.adasplash_mask
    assert integ.is_registered()


def test_without_the_mask_function_padding_would_be_ignored():
    """Negative control for the padding tests: Transformers drops the mask when no mask function is registered."""
    model = H.adasplash_model(LLAMA)
    assert H.check_padding(LLAMA, "left", model=model) < 1e-5
    del AttentionMaskInterface._global_mapping["adasplash"]
    try:
        assert H.check_padding(LLAMA, "left", model=model) > 1e-3
    finally:
        hf_adasplash.register()


def test_mask_function_builds_only_2d_key_masks():
    m = integ.adasplash_mask
    assert m(2, 6, 6, attention_mask=None) is None
    # Static-cache prefill without a user mask: 6 written slots out of 10.
    got = m(2, 6, 10, q_offset=0, attention_mask=None)
    assert got.shape == (2, 10) and got[:, :6].all() and not got[:, 6:].any()
    # Static-cache decode with left padding: the 2-D mask is shorter than the cache.
    pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7], dtype=torch.bool)
    got = m(2, 1, 10, q_offset=torch.tensor(6), attention_mask=pad)
    assert torch.equal(got, torch.cat([pad, torch.zeros(2, 3, dtype=torch.bool)], 1))
    # Sliding-window cache layer keeping the last 5 keys.
    assert torch.equal(m(2, 1, 5, q_offset=6, attention_mask=pad), pad[:, -5:])


class _Spy:
    def __init__(self):
        self.seen = []

    def __call__(self, module, q, k, v, mask, **kw):
        self.seen.append((q.shape[2], k.shape[2], None if mask is None else tuple(mask.shape)))
        return integ.adasplash_attention_forward(module, q, k, v, mask, **kw)


@pytest.fixture
def spy():
    s = _Spy()
    AttentionInterface.register("adasplash", s)
    yield s
    hf_adasplash.register()


def test_static_cache_generate_sees_2d_masks_and_q_lt_k(spy):
    assert H.check_generate(LLAMA, "static")
    assert all(m is None or len(m) == 2 for _, _, m in spy.seen)
    assert any(q < k and m is not None and m[1] == k for q, k, m in spy.seen)


def test_static_cache_prefill_and_decode_without_attention_mask():
    """Top-left case: an empty StaticCache returns all its slots; unwritten ones must be invisible."""
    model = H.adasplash_model(LLAMA)
    ids = H.tokens(1, 7)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = StaticCache(config=model.config, max_cache_len=12)
        pre = model(ids[:, :6], past_key_values=cache, use_cache=True).logits
        step = model(ids[:, 6:], past_key_values=cache, use_cache=True).logits
    assert (pre - full[:, :6]).abs().max() < 1e-5
    assert (step - full[:, 6:]).abs().max() < 1e-5


def test_chunked_prefill_with_dynamic_cache_is_bottom_right_aligned():
    model = H.adasplash_model(H.FAMILIES["mistral"])  # also crosses the sliding window
    ids = H.tokens(1, 11)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        model(ids[:, :6], past_key_values=cache, use_cache=True)
        chunk = model(ids[:, 6:], past_key_values=cache, use_cache=True).logits
    assert (chunk - full[:, 6:]).abs().max() < 1e-5


def _llama(**cfg):
    fam = H.Family("llama", "LlamaConfig", {**H.FAMILIES["llama"].kwargs, **cfg})
    return H.adasplash_model(fam)


def test_attention_dropout_in_training_raises_naming_model_and_option():
    model = _llama(attention_dropout=0.1).train()
    with pytest.raises(NotImplementedError, match=r"attention dropout.*LlamaAttention.*'llama'"):
        model(H.tokens(1, 5))
    model.eval()(H.tokens(1, 5))  # eval: dropout is 0, fine


def test_output_attentions_raises():
    model = H.adasplash_model(LLAMA)
    with pytest.raises(NotImplementedError, match=r"output_attentions.*LlamaAttention"):
        model(H.tokens(1, 5), output_attentions=True)


def test_custom_4d_mask_raises():
    model = H.adasplash_model(LLAMA)
    mask4 = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    with pytest.raises(NotImplementedError, match="4-D"):
        model(H.tokens(1, 5), attention_mask=mask4)


def test_attention_sinks_raise():
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
                       layer_types=["full_attention"], attn_implementation="eager")
    model = GptOssForCausalLM(cfg).eval()
    with pytest.raises(NotImplementedError, match=r"gpt_oss.*attention sinks"):
        hf_adasplash.patch(model)
    model.set_attn_implementation("adasplash")  # registered, but the sinks reach the function
    with pytest.raises(NotImplementedError, match=r"s_aux.*GptOssAttention"):
        model(H.tokens(1, 4))


def test_alpha_from_config_settings_and_default():
    """No attached alpha: config.adasplash["alpha"] (else 1.5) for every head."""
    ids = H.tokens(2, 9)
    for alpha, settings in ((1.5, None), (1.8, {"alpha": 1.8})):
        plain = H.build(LLAMA, "adasplash")
        if settings:
            plain.config.adasplash = settings
        patched = H.adasplash_model(LLAMA, alpha=alpha, spread=False)
        with torch.no_grad():
            assert (plain(ids).logits - patched(ids).logits).abs().max() < 1e-6


def test_checkpoint_with_alpha_loaded_without_it_raises():
    model = H.adasplash_model(LLAMA)
    for _, m in hf_adasplash.patching.attention_modules(model):
        del m.adasplash_alpha  # what a plain from_pretrained of a patched checkpoint gives
    with pytest.raises(RuntimeError, match="hf_adasplash.from_pretrained"):
        model(H.tokens(1, 4))


def test_backend_resolution(monkeypatch):
    model = H.adasplash_model(LLAMA, backend="reference")
    module = hf_adasplash.patching.attention_modules(model)[0][1]
    assert integ._resolve_backend(module) == "reference"
    monkeypatch.setenv(integ.BACKEND_ENV, "auto")
    assert integ._resolve_backend(module) == "auto"
    monkeypatch.setenv(integ.BACKEND_ENV, "cuda-please")
    with pytest.raises(ValueError, match="backend"):
        model(H.tokens(1, 4))


@pytest.mark.parametrize("kwarg", ["position_bias", "alibi", "sinks", "head_mask"])
def test_extra_score_terms_raise(kwarg):
    model = H.adasplash_model(LLAMA)
    module = hf_adasplash.patching.attention_modules(model)[0][1]
    q, k = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 3, 16)
    with pytest.raises(NotImplementedError, match=rf"\({kwarg}\).*LlamaAttention"):
        integ.adasplash_attention_forward(module, q, k, k, None, **{kwarg: torch.zeros(1)})


def test_plain_transformers_user_story_uses_the_default_alpha(tmp_path):
    """`AutoModelForCausalLM.from_pretrained(path, attn_implementation="adasplash")` on a plain checkpoint."""
    from transformers import AutoModelForCausalLM

    H.build(LLAMA, "sdpa").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="adasplash")
    patched = hf_adasplash.from_pretrained(str(tmp_path), alpha=integ.DEFAULT_ALPHA)
    ids = H.tokens(2, 9)
    with torch.no_grad():
        assert (model(ids).logits - patched(ids).logits).abs().max() < 1e-6


def test_mask_patterns_beyond_causal_window_padding_packing_raise():
    from transformers import masking_utils as mu

    cfg = LLAMA.config()
    for ok in (mu.causal_mask_function, mu.sliding_window_causal_mask_function(4), mu.bidirectional_mask_function):
        integ.adasplash_mask(1, 4, 4, mask_function=ok, config=cfg)
    image_tokens = mu.or_masks(mu.causal_mask_function, lambda b, h, q, kv: kv < 2)  # e.g. bidirectional images
    chunked = mu.chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long))
    for bad, what in ((image_tokens, "or_mask"), (chunked, "chunked_overlay")):
        with pytest.raises(NotImplementedError, match=rf"{what}.*'llama'"):
            integ.adasplash_mask(1, 4, 4, mask_function=bad, config=cfg)


def test_patch_refuses_models_outside_the_attention_interface():
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=128, hidden_size=64, n_layer=1, n_head=4))
    with pytest.raises(NotImplementedError, match=r"BloomForCausalLM.*'bloom'.*AttentionInterface"):
        hf_adasplash.patch(model)
