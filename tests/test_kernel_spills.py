"""`scripts/kernel_spills.py`: the kernels compile for sm_90 on a CPU host and ptxas's counts are read back."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kernel_spills.py"


def _report(tmp_path, *args, name="spills.json", timeout=900) -> dict:
    """``kernel_spills.py ARGS --json``'s report, compiled for the GPU's tiles (not the interpreter's)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / name
    run = subprocess.run([sys.executable, str(SCRIPT), *args, "--json", str(out)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(out.read_text())


def test_spill_report_compiles_for_hopper_without_a_gpu(tmp_path):
    rows = _report(tmp_path, "--head-dims", "64", "--kernels", "dq learnable")["rows"]
    assert [r["kernel"] for r in rows] == ["dq learnable alpha"]
    r = rows[0]
    assert 0 < r["regs"] <= 255 and r["stack_bytes"] >= 0 and r["stl"] >= 0 and r["warps"] == 4


def test_spill_report_refuses_the_interpreter(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, str(SCRIPT), "--head-dims", "64"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "unset TRITON_INTERPRET" in run.stderr


def test_spill_report_lists_the_tau_kernel_once_per_alpha_hint(tmp_path):
    # the launch settings the host picks from what it knows of alpha (tiling.solve_settings) are separate kernels
    rows = {r["kernel"]: r for r in _report(tmp_path, "--head-dims", "64", "--kernels", "tau")["rows"]}
    assert sorted(rows) == ["fwd tau (phase B)", "fwd tau (phase B) 1.5/2 alpha", "fwd tau (phase B) alpha learns",
                            "fwd tau (phase B) grid alpha"]
    assert rows["fwd tau (phase B) 1.5/2 alpha"]["regs"] <= 168  # the register cap reaches ptxas
    # a learning alpha's fp32 tau tolerance is a constant: no more registers than the loose one's runtime formula
    assert rows["fwd tau (phase B) alpha learns"]["regs"] <= rows["fwd tau (phase B)"]["regs"]
    assert rows["fwd tau (phase B) grid alpha"]["regs"] > rows["fwd tau (phase B)"]["regs"]  # wider slices


def test_spill_report_compiles_the_fp32_kernels(tmp_path):
    # fp32 inputs take exact-precision dots (DOT_PREC "ieee"): their own specialisations, reported on request
    rows = _report(tmp_path, "--head-dims", "64", "--dtype", "fp32", "--kernels", "dq fixed")["rows"]
    assert [r["kernel"] for r in rows] == ["dq fixed alpha"] and rows[0]["regs"] > 0


def test_half_precision_general_power_takes_the_hardware_log2(tmp_path):
    # bf16/fp16 passes take lg2.approx (one special-function op) where libdevice's log2f costs ~25 instructions per
    # element; fp32, the accuracy path, keeps libdevice (attn_utils.log2_of)
    counts = {}
    for dtype in ("bf16", "fp32"):
        (row,) = _report(tmp_path, "--head-dims", "64", "--kernels", "alpha learns", "--dtype", dtype,
                         name=f"{dtype}.json")["rows"]
        counts[dtype] = row["lg2_approx"], row["libdevice_log2"]
    assert counts["bf16"][0] > 0 and counts["fp32"][0] == 0, counts
    # libdevice stays only in per-row steps in bf16; fp32 takes it per element in every alpha class's loop
    assert counts["bf16"][1] < counts["fp32"][1], counts


def test_inference_forward_fits_two_programs_per_sm(tmp_path):
    # D = 64 at inference: 128 registers and 2 stages, so two 8-warp programs share an H100 SM (64K registers,
    # 227 KiB of shared memory); the training forward keeps its 4 stages
    report = _report(tmp_path, "--head-dims", "64", "--kernels", "fwd inference")
    (row,) = report["rows"]
    assert row["warps"] == 8 and row["stages"] == 2 and row["regs"] <= 128, row
    need = row["smem_bytes"] + 1024  # 1 KiB per program is the driver's
    assert 2 * need <= 227 * 1024, (report["triton"], row)


def test_forward_fits_hopper_shared_memory_on_this_triton(tmp_path):
    # Triton 3.8+ gives each loop of an if/elif chain its own stage buffers; the forward's per-class loops then
    # take sibling ifs there (Tiles.flat_dispatch) and every forward kernel fits an H100's 227 KiB at its stages
    rows = _report(tmp_path, "--head-dims", "64,128", "--kernels", "fwd", timeout=1800)["rows"]
    assert len(rows) >= 12
    assert all(r["smem_bytes"] <= 227 * 1024 for r in rows), [(r["D"], r["kernel"], r["smem_bytes"]) for r in rows]


def test_gqa_dkv_compiles_both_grid_settings(tmp_path):
    # GQA dk/dv takes one setting on a long grid (32-row slices, capped at 168 registers: 3 programs per SM) and
    # another on a short one (64-row slices, uncapped; tiling.dkv_short_grid): both compile for sm_90
    rows = {r["kernel"]: r for r in _report(tmp_path, "--head-dims", "64", "--kernels", "dk/dv GQA")["rows"]}
    assert sorted(rows) == ["dk/dv GQA", "dk/dv GQA short grid"]
    assert rows["dk/dv GQA"]["regs"] <= 168 and rows["dk/dv GQA"]["stages"] == 1
    assert rows["dk/dv GQA short grid"]["stages"] == 1 and 0 < rows["dk/dv GQA short grid"]["regs"] <= 255
