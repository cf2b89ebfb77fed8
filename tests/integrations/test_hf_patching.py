"""patch / unpatch / from_pretrained, and training through PEFT, Accelerate, gradient checkpointing, torch.compile."""

import hf_models as H
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import hf_adasplash
from hf_adasplash.modules import AlphaParameter
from hf_adasplash.patching import attention_modules

LLAMA = H.FAMILIES["llama"]


def _alpha_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "adasplash_alpha" in n}


def _loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def test_patch_attaches_fp32_alpha_per_head_and_writes_config():
    model = H.build(LLAMA, "sdpa").to(torch.bfloat16)
    hf_adasplash.patch(model, alpha=1.3)
    mods = attention_modules(model)
    assert len(mods) == 2 and model.config._attn_implementation == "adasplash"
    for _, m in mods:
        assert isinstance(m.adasplash_alpha, AlphaParameter)
        assert m.adasplash_alpha.logit.dtype == torch.float32 and m.adasplash_alpha.logit.shape == (4,)
        assert torch.equal(m.adasplash_alpha(), AlphaParameter(4, init=1.3)())
    assert model.config.adasplash == {"alpha": 1.3, "learnable": True, "per_head": True, "min_alpha": 1.001,
                                      "max_alpha": 2.0, "attached": True}
    assert len(hf_adasplash.alpha_parameters(model)) == 2
    with pytest.raises(ValueError, match="already patched"):
        hf_adasplash.patch(model)


def test_unpatch_restores_original_logits_exactly():
    model = H.build(LLAMA, "sdpa")
    ids = H.tokens(2, 9)
    with torch.no_grad():
        before = model(ids).logits
        hf_adasplash.patch(model)
        assert not torch.allclose(model(ids).logits, before)
        hf_adasplash.unpatch(model)
        after = model(ids).logits
    assert torch.equal(before, after)
    assert model.config._attn_implementation == "sdpa"
    assert not hasattr(model.config, "adasplash") and not hf_adasplash.alpha_parameters(model)


def test_save_and_from_pretrained_round_trip_is_bit_exact(tmp_path):
    model = H.adasplash_model(LLAMA)
    ids = H.tokens(2, 9)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert "model.layers.0.self_attn.adasplash_alpha.logit" in f.keys()  # noqa: SIM118
    loaded = hf_adasplash.from_pretrained(str(tmp_path))
    assert loaded.config._attn_implementation == "adasplash"
    assert loaded.config.adasplash == model.config.adasplash
    want, got = _alpha_state(model), _alpha_state(loaded)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    # Loaded in bf16, alpha stays the saved fp32 values.
    bf16 = hf_adasplash.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    assert all(torch.equal(want[k], v) and v.dtype == torch.float32 for k, v in _alpha_state(bf16).items())


def test_from_pretrained_on_a_plain_checkpoint_gives_the_init_alpha(tmp_path):
    H.build(LLAMA, "sdpa").save_pretrained(tmp_path)
    model = hf_adasplash.from_pretrained(str(tmp_path), alpha=1.25)
    assert model.config._attn_implementation == "adasplash"
    for _, m in attention_modules(model):
        assert torch.equal(m.adasplash_alpha(), AlphaParameter(4, init=1.25)())
    default = hf_adasplash.from_pretrained(str(tmp_path))
    assert all(torch.equal(m.adasplash_alpha(), AlphaParameter(4, init=1.5)()) for _, m in attention_modules(default))
    with torch.no_grad():  # a softmax start: alpha = 1 gives the checkpoint's sdpa logits
        ids = H.tokens(1, 7)
        soft = hf_adasplash.from_pretrained(str(tmp_path), alpha=1.0)(ids).logits
        ref = AutoModelForCausalLM.from_pretrained(str(tmp_path))(ids).logits
    assert (soft - ref).abs().max() < 1e-5


def test_plain_transformers_load_of_a_patched_checkpoint_refuses_to_drop_alpha(tmp_path):
    H.adasplash_model(LLAMA).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="adasplash")
    with pytest.raises(RuntimeError, match="from_pretrained"):
        model(H.tokens(1, 4))


def test_peft_lora_trains_alpha_and_saves_it_with_the_adapter(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    H.adasplash_model(LLAMA).save_pretrained(base_dir)
    model = get_peft_model(hf_adasplash.from_pretrained(str(base_dir)),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["adasplash_alpha"]))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any("adasplash_alpha" in n for n in trainable) and any("lora_B" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _loss(model, H.tokens(2, 8)).backward()
    opt.step()
    after = dict(model.named_parameters())
    for kind in ("adasplash_alpha", "lora_B"):
        assert all(not torch.equal(after[n], v) for n, v in trainable.items() if kind in n), kind
    model.save_pretrained(adapter_dir)
    ids = H.tokens(1, 6)
    reloaded = PeftModel.from_pretrained(hf_adasplash.from_pretrained(str(base_dir)), str(adapter_dir)).eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, reloaded(ids).logits)


def test_accelerate_bf16_training_step_with_alpha_param_group():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")  # autocast: q/k/v reach the attention in bf16
    model = H.adasplash_model(LLAMA).train()
    alpha = hf_adasplash.alpha_parameters(model)
    others = [p for n, p in model.named_parameters() if "adasplash_alpha" not in n]
    opt = torch.optim.AdamW([{"params": others, "lr": 1e-3}, {"params": alpha, "lr": 1e-2}])
    model, opt = accelerator.prepare(model, opt)
    before = _alpha_state(model)
    accelerator.backward(_loss(model, H.tokens(2, 8)))
    opt.step()
    assert all(not torch.equal(before[n], v) for n, v in _alpha_state(model).items())
    assert all(p.dtype == torch.float32 for p in hf_adasplash.alpha_parameters(model))
    assert accelerator.unwrap_model(model).config._attn_implementation == "adasplash"


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    # torch.utils.checkpoint allocates a requires-grad placeholder with torch.empty, which the suite's NaN
    # poisoning cannot fill in place: use the real allocator here (nothing of ours reads uninitialised memory).
    monkeypatch.setattr(torch, "empty", torch._C._VariableFunctions.empty)
    ids = H.tokens(2, 8)
    grads = []
    for ckpt in (False, True):
        model = H.adasplash_model(LLAMA).train()
        if ckpt:  # non-reentrant: the recommended mode (and the default on recent Transformers)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        _loss(model, ids).backward()
        grads.append(torch.cat([p.grad.flatten() for p in hf_adasplash.alpha_parameters(model)]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_torch_compile_matches_eager():
    model = H.adasplash_model(LLAMA)
    ids = H.tokens(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with torch.no_grad():
        eager = model(ids, attention_mask=mask).logits
        compiled = torch.compile(model, backend="aot_eager")(ids, attention_mask=mask).logits
    assert (compiled - eager).abs().max() < 1e-5


def test_encoder_round_trip_and_one_alpha_per_layer(tmp_path):
    from transformers import AutoModelForMaskedLM

    bert = H.FAMILIES["bert"]
    model = H.adasplash_model(bert, alpha=1.7, spread=False, per_head=False)
    assert all(m.adasplash_alpha.logit.shape == () for _, m in attention_modules(model))
    per_head = H.adasplash_model(bert, alpha=1.7, spread=False)
    ids = H.tokens(2, 9)
    with torch.no_grad():
        assert (model(ids).logits - per_head(ids).logits).abs().max() < 1e-6
    model.save_pretrained(tmp_path)
    loaded = hf_adasplash.from_pretrained(str(tmp_path), model_cls=AutoModelForMaskedLM)
    assert loaded.config.adasplash["per_head"] is False
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_load_report_is_dropped_only_when_it_lists_nothing_but_alpha():
    import logging

    from hf_adasplash.patching import _AlphaOnlyLoadReport

    def record(rows):
        msg = "LlamaForCausalLM LOAD REPORT from: x\nKey | Status |\n----+----+\n" + "\n".join(rows)
        return logging.LogRecord("t", logging.WARNING, "", 0, msg, (), None)

    f = _AlphaOnlyLoadReport()
    alpha_row = "model.layers.{0, 1}.self_attn.adasplash_alpha.logit | UNEXPECTED |"
    assert not f.filter(record([alpha_row]))
    assert f.filter(record([alpha_row, "lm_head.weight | MISSING |"]))
    assert f.filter(logging.LogRecord("t", logging.WARNING, "", 0, "something else", (), None))


def test_a_snapped_alpha_tells_the_kernels_it_is_on_the_grid(monkeypatch):
    # learning alphas are never read on the host; once snapped and frozen, every call says so (launch settings)
    from hf_adasplash.integrations import transformers as integration

    hints = []
    real = integration.adasplash_attention
    monkeypatch.setattr(integration, "adasplash_attention",
                        lambda *a, _alpha_grid=False, **kw: hints.append(_alpha_grid) or real(*a, **kw))
    model = H.adasplash_model(LLAMA)
    ids = H.tokens(2, 9)
    _loss(model, ids).backward()
    assert hints == [False, False]
    hints.clear()
    assert hf_adasplash.snap_alpha(model) == 8
    with torch.no_grad():
        model(ids)
    assert hints == [True, True]
