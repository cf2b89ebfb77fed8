"""Packaging: `kernels/` ships only as `hf_adasplash.kernels` and never shadows Hugging Face's `kernels` package."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import importlib.util, json
import transformers.utils as u
s = importlib.util.find_spec("kernels")
info = None
if s is not None:
    info = {"origin": s.origin, "locations": list(s.submodule_search_locations or [])}
print(json.dumps({"spec": info, "hf_kernels": bool(u.is_kernels_available())}))
"""


def _probe(cwd: Path) -> dict:
    import json

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    # `python -c` puts the working directory first on sys.path: the worst case for shadowing.
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernels_not_importable_from_elsewhere(tmp_path):
    info = _probe(tmp_path)
    spec = info["spec"]
    if spec is not None:  # Hugging Face's `kernels` may be installed: it must not be this repo's folder
        assert REPO not in Path(spec["origin"] or spec["locations"][0]).resolve().parents


def test_repo_root_kernels_is_at_most_an_empty_namespace(tmp_path):
    outside, inside = _probe(tmp_path), _probe(REPO)
    spec = inside["spec"]
    if spec is not None and any(Path(p).resolve() == REPO / "kernels" for p in spec["locations"]):
        assert spec["origin"] is None  # PEP 420 namespace: no __init__.py, so no code runs on `import kernels`
    assert inside["hf_kernels"] == outside["hf_kernels"]


def test_kernels_folder_has_no_init():
    assert not (REPO / "kernels" / "__init__.py").exists()
    assert list((REPO / "kernels").glob("*.py")), "kernels/ should hold the Triton kernels"


def test_every_python_folder_is_a_listed_package():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, pkg_dir = set(cfg["packages"]), cfg["package-dir"]
    roots = {Path(folder): pkg for pkg, folder in pkg_dir.items()}
    missing = []
    for root, pkg in roots.items():
        for py in (REPO / root).rglob("*.py"):
            rel = py.parent.relative_to(REPO / root)
            if "__pycache__" in rel.parts:
                continue
            name = ".".join([pkg, *rel.parts])
            if name not in listed and not _covered_by_package_data(cfg, name, py):
                missing.append(name)
    assert not sorted(set(missing)), f"folders with Python files missing from pyproject packages: {set(missing)}"


def _covered_by_package_data(cfg, name: str, py: Path) -> bool:
    # e.g. metrics/*/*.py shipped as data files of `hf_adasplash` (evaluate-style metric scripts)
    data = cfg.get("package-data", {}).get("hf_adasplash", [])
    rel = ".".join(name.split(".")[1:]).replace(".", "/") + "/" + py.name
    return any(Path(rel).match(pattern) for pattern in data)


def test_imports_on_cpu_only_machine(tmp_path):
    code = (
        "import torch, hf_adasplash, hf_adasplash.kernels, hf_adasplash.functional, hf_adasplash.reference;"
        "assert not torch.cuda.is_available();"
        "q = torch.randn(1, 2, 3, 8);"
        "print(hf_adasplash.adasplash_attention(q, q, q, 1.5).shape)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([1, 2, 3, 8])" in out.stdout


@pytest.mark.parametrize("module", sorted(p.stem for p in (REPO / "kernels").glob("*.py")))
def test_kernel_modules_import_under_package(module):
    import importlib

    mod = importlib.import_module(f"hf_adasplash.kernels.{module}")
    assert Path(mod.__file__).name == f"{module}.py"
