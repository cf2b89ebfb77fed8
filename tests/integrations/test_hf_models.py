"""Every covered family: adasplash logits vs a float64 reference, alpha = 1 vs sdpa, padding, packing, generate."""

import hf_models as H
import pytest

ALL = list(H.FAMILIES)
TOL = 1e-5


@pytest.mark.parametrize("name", ALL)
def test_matches_float64_reference(name):
    assert H.check_reference(H.FAMILIES[name]) < TOL


@pytest.mark.parametrize("name", ALL)
def test_alpha_one_equals_dense_softmax(name):
    assert H.check_alpha_one(H.FAMILIES[name]) < TOL


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", ALL)
def test_padded_batch_equals_unpadded(name, side):
    assert H.check_padding(H.FAMILIES[name], side) < TOL


@pytest.mark.parametrize("how", ["position_ids", "cu_seq_lens"])
@pytest.mark.parametrize("name", H.DECODERS)
def test_packed_batch_equals_separate(name, how):
    assert H.check_packed(H.FAMILIES[name], how) < TOL


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("name", H.DECODERS)
def test_generate_with_cache_matches_reference_without(name, cache):
    assert H.check_generate(H.FAMILIES[name], cache)


def test_packing_is_read_once_per_forward(monkeypatch):
    # reading position_ids for restarts is a device sync: once per forward (every layer gets the same tensor), and
    # again only for another tensor or one changed in place
    import torch

    from hf_adasplash.integrations import transformers as T

    calls = []
    real = T._read_packing
    monkeypatch.setattr(T, "_read_packing", lambda *a: calls.append(1) or real(*a))
    model = H.adasplash_model(H.FAMILIES["llama"])
    assert model.config.num_hidden_layers > 1
    ids = H.tokens(1, 12)
    pos = torch.cat([torch.arange(5), torch.arange(7)])[None]
    H._logits(model, ids, None, pos, use_cache=False)
    assert len(calls) == 1
    pos.copy_(torch.arange(12)[None])  # in place: read again, and now one sequence
    got = H._logits(model, ids, None, pos, use_cache=False)
    assert len(calls) == 2
    assert H._max_diff(got, H._logits(model, ids, None, None, use_cache=False)) < TOL
