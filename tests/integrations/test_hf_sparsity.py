"""sparsity_stats: counts checked against the reference probabilities, schema, alpha = 1 has no zeros."""

import json

import hf_models as H
import pytest
import torch

import hf_adasplash
from hf_adasplash.patching import attention_modules
from hf_adasplash.reference import attention_reference

LLAMA = H.FAMILIES["llama"]


def _model(alpha, spread=False):
    """Random init gives near-uniform scores (nothing to prune): sharpen q and k so the scores spread out."""
    model = H.adasplash_model(LLAMA, alpha=alpha, spread=spread)
    with torch.no_grad():
        for _, m in attention_modules(model):
            m.q_proj.weight.mul_(15)
            m.k_proj.weight.mul_(15)
    return model


def _batch(T=20):
    ids = H.tokens(2, T)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


def test_stats_match_probabilities_recomputed_by_hand():
    model = _model(1.9)
    batch = _batch()
    # Capture layer 0's q/k of the padded batch with a forward hook-free trick: rerun its inputs.
    seen = {}
    from hf_adasplash.integrations import transformers as integ

    def rec(module, q, k, v, alpha, dense):
        if module is attention_modules(model)[0][1]:
            seen.update(q=q, k=k, v=v, alpha=alpha, dense=dense)

    integ._RECORDER = rec
    try:
        with torch.no_grad():
            model(**batch, use_cache=False)
    finally:
        integ._RECORDER = None
    d = {k: v for k, v in seen["dense"].items() if k != "backend"}
    _, p = attention_reference(seen["q"].double(), seen["k"].double(), seen["v"].double(), seen["alpha"],
                               return_probs=True, **d)
    stats = hf_adasplash.sparsity_stats(model, batch, block_size=4, pattern=(0, 2))
    # Visible entries of layer 0, head 0: causal, real queries and keys only.
    qmask = batch["attention_mask"].bool()
    vis = torch.ones(20, 20, dtype=torch.bool).tril()[None] & qmask[:, None, :] & qmask[:, :, None]
    h0 = stats.head(0, 0)
    assert h0["visible_entries"] == int(vis.sum())
    zeros = int((vis & (p[:, 0] == 0)).sum())
    assert h0["zero_fraction"] == pytest.approx(zeros / int(vis.sum()))
    assert 0 < h0["zero_fraction"] < 1
    support = (p[:, 0] > 0).sum(-1)[qmask]
    assert h0["support_mean"] == pytest.approx(float(support.double().mean()))
    assert sum(h0["support_hist"]["counts"]) == h0["rows"] == int(qmask.sum())
    tiles = lambda t: t.reshape(2, 5, 4, 5, 4).any(4).any(2)  # noqa: E731 (4x4 tiles of [2, 20, 20])
    vblocks, nzblocks = tiles(vis), tiles(vis & (p[:, 0] > 0))
    assert h0["visible_blocks"] == int(vblocks.sum())
    assert h0["block_zero_fraction"] == pytest.approx(int((vblocks & ~nzblocks).sum()) / int(vblocks.sum()))
    assert stats.block_zero_fraction > 0
    assert h0["alpha"] == pytest.approx(1.9, abs=1e-6)
    probs = torch.tensor(stats.pattern["probs"])
    assert stats.pattern["layer"] == 0 and stats.pattern["head"] == 2 and probs.shape == (20, 20)
    torch.testing.assert_close(probs.sum(-1), torch.ones(20, dtype=torch.float32))
    d = json.loads(json.dumps(stats.to_dict()))
    assert d["schema_version"] == 1 and d["num_layers"] == 2 and d["num_heads"] == 4 and len(d["heads"]) == 8


def test_softmax_has_no_zeros_and_unpatched_models_are_refused():
    model = _model(1.0)
    stats = hf_adasplash.sparsity_stats(model, _batch())
    assert stats.zero_fraction == 0.0 and stats.block_zero_fraction == 0.0
    with pytest.raises(ValueError, match="adasplash"):
        hf_adasplash.sparsity_stats(H.build(LLAMA, "sdpa"), _batch())


def test_sparsemax_is_sparser_than_entmax15():
    z = [hf_adasplash.sparsity_stats(_model(a), _batch()).zero_fraction
         for a in (1.5, 2.0)]
    assert 0 < z[0] < z[1]
