"""On CUDA the "auto" backend runs the Triton kernels inside Transformers: compare with the reference backend."""

import hf_models as H
import pytest
import torch

from hf_adasplash.integrations import transformers as integ

pytestmark = pytest.mark.gpu


def _pair(monkeypatch, fam, dtype, fn):
    """fn(model) under the Triton backend and under the reference backend, same weights."""
    model = H.adasplash_model(fam).to("cuda", dtype)
    monkeypatch.setenv(integ.BACKEND_ENV, "triton")
    got = fn(model)
    monkeypatch.setenv(integ.BACKEND_ENV, "reference")
    return got, fn(model)


@pytest.mark.parametrize("name", ["llama", "gemma2", "mistral", "bert"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_backend_matches_reference_in_models(monkeypatch, name, dtype):
    fam = H.FAMILIES[name]
    ids = H.tokens(2, 40).cuda()
    mask = torch.ones_like(ids)
    mask[0, :7] = 0 if fam.decoder else 1
    mask[1, -5:] = 0

    def logits(model):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits.float()

    got, want = _pair(monkeypatch, fam, dtype, logits)
    keep = mask.bool()
    tol = 2e-3 if dtype == torch.float32 else 5e-2
    assert (got[keep] - want[keep]).abs().max() < tol * want.abs().max()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_triton_generate_matches_reference(monkeypatch, cache):
    ids = H.tokens(2, 12).cuda()
    mask = torch.ones_like(ids)
    ids[0, :4], mask[0, :4] = H.PAD, 0
    kw = {"attention_mask": mask, "max_new_tokens": 8, "do_sample": False, "pad_token_id": H.PAD, "eos_token_id": None}
    if cache == "static":
        kw["cache_implementation"] = "static"

    def gen(model):
        with torch.no_grad():
            return model.generate(ids, **kw)

    got, want = _pair(monkeypatch, H.FAMILIES["llama"], torch.float32, gen)
    assert torch.equal(got, want)


def test_triton_training_step_grads_match_reference(monkeypatch):
    ids = H.tokens(2, 33).cuda()

    def grads(model):
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "adasplash_alpha" in n
                          or "q_proj" in n])

    got, want = _pair(monkeypatch, H.FAMILIES["llama"], torch.float32, grads)
    assert (got - want).abs().max() < 2e-3 * want.abs().max()


def test_triton_autocast_bf16_training_step(monkeypatch):
    """Accelerate's bf16 mode: fp32 weights, autocast; RoPE leaves q/k fp32 while v is bf16."""
    ids = H.tokens(2, 48).cuda()

    def grads(model):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "adasplash_alpha" in n])

    got, want = _pair(monkeypatch, H.FAMILIES["llama"], torch.float32, grads)
    assert torch.isfinite(got).all() and got.abs().max() > 0
    assert (got - want).abs().max() < 5e-2 * want.abs().max()


def test_torch_compile_with_triton_backend(monkeypatch):
    monkeypatch.setenv(integ.BACKEND_ENV, "triton")
    model = H.adasplash_model(H.FAMILIES["llama"]).cuda()
    ids = H.tokens(2, 40).cuda()
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask).logits
        compiled = torch.compile(model)(input_ids=ids, attention_mask=mask).logits
    assert (compiled - eager).abs().max() < 1e-3 * eager.abs().max()


def test_compile_ahead_leaves_the_run_nothing_to_compile(monkeypatch):
    # finetune's compile_ahead warms a learned step, the snapped step and an evaluation forward: the real ones then
    # find every kernel in the JIT's cache (a specialisation it missed would compile here, mid-run)
    from triton.runtime.jit import JITFunction

    from hf_adasplash import prewarm
    from hf_adasplash.ops import attention_ops, launch
    from hf_adasplash.patching import snap_alpha

    monkeypatch.setenv(integ.BACKEND_ENV, "triton")
    kernels = [attention_ops.adasplash_fwd_scan_kernel, attention_ops.adasplash_fwd_tau_kernel,
               attention_ops.adasplash_fwd_kernel, attention_ops.adasplash_bwd_kernel_dq,
               attention_ops.adasplash_bwd_kernel_dalpha_per_entry, attention_ops.adasplash_bwd_kernel_dkv]
    for k in kernels:
        k.device_caches.clear()  # forget what earlier tests compiled (the disk cache may still serve them)
    launch._launchers.clear()  # and the cached launch's kernels, which would otherwise skip the JIT
    compiles = []
    real = JITFunction._do_compile
    monkeypatch.setattr(JITFunction, "_do_compile",
                        lambda self, *a, **kw: compiles.append(self) or real(self, *a, **kw))
    model = H.adasplash_model(H.FAMILIES["llama"]).cuda().train()
    ids = H.tokens(2, 300).cuda()

    def autocast():
        return torch.autocast("cuda", torch.bfloat16)

    timings = []
    assert prewarm.compile_ahead(model, ids, snapped=True, autocast=autocast, timings=timings) > 0
    assert compiles and {"adasplash_fwd_kernel", "adasplash_bwd_kernel_dkv"} <= {name for name, _ in timings}
    compiles.clear()
    for snapped in (False, True):
        if snapped:
            snap_alpha(model)
        with autocast():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad(), autocast():
        model(input_ids=ids, labels=ids)
    assert compiles == []
