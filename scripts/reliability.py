#!/usr/bin/env python
"""Collect the reliability figures quoted in RELIABILITY.md, each from a real run, and write them as JSON.

    python scripts/reliability.py                      # matrix, hypothesis, determinism (CPU: a few minutes)
    python scripts/reliability.py --stability stability.json --resume resume.json   # add the GPU/CLI figures

Figures that were not measured in this run are reported as "not yet measured", never estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_MEASURED = "not yet measured"


def _pytest(args: list[str]) -> tuple[Counter, dict, str]:
    """Run pytest (the installed package, not the source tree) and count outcomes per test function."""
    exe = shutil.which("pytest", path=str(Path(sys.executable).parent)) or "pytest"
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if not _has_cuda():
            env["TRITON_INTERPRET"] = "1"
        proc = subprocess.run([exe, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        totals, per_fn = Counter(), {}
        if xml.exists():
            for tc in ET.parse(xml).getroot().iter("testcase"):
                fn = tc.get("name", "").split("[")[0]
                kind = "passed"
                for child, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
                    node = tc.find(child)
                    if node is not None:
                        # JUnit has no xfail: pytest writes it as <skipped type="pytest.xfail">
                        kind = "xfailed" if node.get("type") == "pytest.xfail" else name
                totals[kind] += 1
                per_fn.setdefault(fn, Counter())[kind] += 1
    return totals, {k: dict(v) for k, v in per_fn.items()}, proc.stdout + proc.stderr


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def matrix() -> dict:
    totals, per_fn, _ = _pytest(["tests/test_matrix.py"])
    return {"command": "pytest tests/test_matrix.py", "totals": dict(totals), "per_test": per_fn}


def hypothesis() -> dict:
    totals, _, out = _pytest(["tests/test_properties.py", "--hypothesis-show-statistics"])
    stats = {}
    for m in re.finditer(r"test_properties\.py::(\w+):.*?(\d+) passing, (\d+) failing, and (\d+) invalid", out, re.S):
        stats[m.group(1)] = {"passing": int(m.group(2)), "failing": int(m.group(3)), "invalid": int(m.group(4))}
    return {"command": "pytest tests/test_properties.py --hypothesis-show-statistics", "totals": dict(totals),
            "examples": stats, "examples_passing": sum(s["passing"] for s in stats.values())}


def determinism() -> dict:
    totals, per_fn, _ = _pytest(["tests/test_determinism.py"])
    return {"command": "pytest tests/test_determinism.py", "totals": dict(totals), "per_test": per_fn}


RESUME_TEST = "tests/cli/test_finetune.py::test_resume_after_sigkill_matches_uninterrupted_run"


def resume_trials(n: int) -> dict:
    """Kill/resume trials: the CLI test SIGKILLs `finetune` mid-run, resumes, and compares every weight with an
    uninterrupted run (rtol 1e-5, atol 1e-6); each passing trial reports its max |weight difference|."""
    totals = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "resume.jsonl")
        os.environ["HF_ADASPLASH_RESUME_REPORT"] = report
        try:
            for _ in range(n):
                t, _, _ = _pytest([RESUME_TEST])
                totals.update(t)
        finally:
            del os.environ["HF_ADASPLASH_RESUME_REPORT"]
        lines = Path(report).read_text().splitlines() if os.path.exists(report) else []
        diffs = [json.loads(line)["max_weight_diff"] for line in lines]
    return {"command": f"pytest {RESUME_TEST} (x{n})", "totals": dict(totals),
            "max_weight_diff": max(diffs) if diffs else NOT_MEASURED, "per_trial_max_weight_diff": diffs}


def numerics() -> dict:
    """float32 vs float64 error of the reference entmax and of d(alpha), per alpha (scores ~ N(0, 3^2), 1000 keys)."""
    import torch

    from hf_adasplash.entmax import entmax

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1000, generator=g, dtype=torch.float64) * 3
    dp = torch.randn(64, 1000, generator=g, dtype=torch.float64)
    rows = {}
    for alpha in (1.0001, 1.001, 1.01, 1.25, 1.5, 1.999, 2.0):
        res = []
        for dt in (torch.float64, torch.float32):
            a = torch.full((64, 1), alpha, dtype=dt, requires_grad=True)
            p = entmax(x.to(dt), a)
            (p * dp.to(dt)).sum().backward()
            res.append((p.detach().double(), a.grad.double()))
        (p64, g64), (p32, g32) = res
        rows[str(alpha)] = {"p_max_abs_err_fp32": float((p32 - p64).abs().max()),
                            "dalpha_max_rel_err_fp32": float((g32 - g64).abs().max() / g64.abs().max())}
    return {"command": "python scripts/reliability.py (numerics)", "per_alpha": rows}


def _optional(path: str | None, keys: list[str]) -> dict | str:
    if not path or not Path(path).exists():
        return NOT_MEASURED
    data = json.loads(Path(path).read_text())
    return {k: data.get(k) for k in keys} | {"source": path}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stability", help="JSON written by scripts/stability_run.py on a GPU")
    p.add_argument("--resume", help="JSON with the kill/resume trials (finetune --resume tests)")
    p.add_argument("--resume-trials", type=int, default=0, help="run the kill/resume CLI test this many times")
    p.add_argument("--out", default="reliability.json")
    p.add_argument("--skip", nargs="*", default=[], choices=["matrix", "hypothesis", "determinism", "numerics"])
    args = p.parse_args(argv)
    figures = {
        "matrix": NOT_MEASURED if "matrix" in args.skip else matrix(),
        "hypothesis": NOT_MEASURED if "hypothesis" in args.skip else hypothesis(),
        "determinism": NOT_MEASURED if "determinism" in args.skip else determinism(),
        "numerics": NOT_MEASURED if "numerics" in args.skip else numerics(),
        "gpu_long_run": _optional(args.stability, ["passed", "steps_completed", "nan_free_steps", "first_failure",
                                                   "final_loss", "final_alpha", "device", "torch", "git_sha"]),
        "kill_resume": resume_trials(args.resume_trials) if args.resume_trials else
        _optional(args.resume, ["trials", "max_weight_diff", "passed", "device", "git_sha"]),
        "cuda": _has_cuda(),
    }
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
