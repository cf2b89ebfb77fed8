"""`hf-adasplash bench`: argument parsing and the JSON schema, on one tiny interpreted decode case."""

import argparse
import json

import pytest

from hf_adasplash.cli import bench


def _parse(argv):
    p = argparse.ArgumentParser()
    bench.build_parser(p)
    return p.parse_args(argv)


def test_bench_parser_lists_and_defaults():
    a = _parse(["--seqlens", "1024,4096", "--backends", "ours,sdpa", "--decode-shape", "1,4,2,32"])
    assert a.seqlens == [1024, 4096] and a.backends == ["ours", "sdpa"] and a.decode_shape == [1, 4, 2, 32]
    assert set(_parse([]).modes) == {"fwd", "fwd_bwd", "decode"}


def test_bench_rejects_unknown_backend(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        bench.run(_parse(["--backends", "ours,nope", "--device", "cpu", "--out", str(tmp_path / "r.json")]))


def test_bench_tiny_decode_case_writes_schema(tmp_path):
    out = tmp_path / "r.json"
    args = _parse(["--device", "cpu", "--dtype", "float16", "--modes", "decode", "--decode-nk", "96",
                   "--decode-shape", "1,2,1,32", "--families", "local2", "--backends", "ours,sdpa,official",
                   "--out", str(out), "--plot", str(tmp_path / "r.png")])
    assert bench.run(args) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == bench.SCHEMA and data["device"] == "cpu" and data["torch"] and data["triton"]
    (case,) = data["cases"]
    assert case["mode"] == "decode" and case["N"] == 96 and case["family"] == "local2"
    assert 0.0 <= case["block_sparsity"] <= 1.0 and case["mean_support"] >= 1
    assert case["results"]["ours"]["fwd_ms"] > 0 and case["results"]["sdpa"]["fwd_ms"] > 0
    assert case["results"]["ours"]["max_abs_err_vs_fp32"] < 5e-3  # fp16 inputs
    assert "not supported" in case["results"]["official"]["error"]  # decode is outside the official kernels
    ratio = case["ratio_vs_sdpa"]["fwd_ms"]["ours"]
    assert ratio == pytest.approx(case["results"]["ours"]["fwd_ms"] / case["results"]["sdpa"]["fwd_ms"], rel=1e-2)
    assert (tmp_path / "r.png").stat().st_size > 0


def test_bench_records_the_working_directory_commit_when_installed(tmp_path, monkeypatch):
    # an installed package lives in site-packages, no git checkout: the commit comes from where the bench runs
    import subprocess

    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "c"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    outside = tmp_path / "site-packages" / "hf_adasplash" / "cli"
    outside.mkdir(parents=True)
    monkeypatch.setattr(bench, "__file__", str(outside / "bench.py"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path / "site-packages"))  # no repo found above it
    monkeypatch.chdir(tmp_path)
    assert bench._git_commit() == head
    monkeypatch.chdir(outside)
    assert bench._git_commit() is None
