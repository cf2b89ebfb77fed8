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
