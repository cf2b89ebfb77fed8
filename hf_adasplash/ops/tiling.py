"""Tile shapes and launch settings for the attention kernels (one place, shared by launchers and fake kernels)."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_TAU_ITERS = 30
LIST_CHUNK = 64  # tiles compared per step when building a tile list


@dataclass(frozen=True)
class Tiles:
    BM: int  # query rows per block
    BN: int  # keys per tile
    BD: int  # head dim padded to a power of two
    fwd_warps: int
    fwd_stages: int
    bwd_warps: int
    bwd_stages: int
    BNS: int  # dq walks each listed tile in slices of BNS keys
    BMS: int  # dk/dv walks each listed query block in slices of BMS rows
    BMQ: int  # rows per dq program (a slice of a forward block)
    dkv_warps: int = 0  # 0: same as bwd_warps (which the dq kernel uses)
    dkv_stages: int = 0  # 0: same as bwd_stages
    dq_maxnreg: int = 0  # register caps of the dq and dk/dv kernels (0: the compiler's choice)
    dkv_maxnreg: int = 0
    # (BMS, dkv stages, dkv register cap) when the dk/dv kernel loops over several query heads per KV head (GQA);
    # 0s: as above
    gqa_dkv: tuple[int, int, int] = (0, 0, 0)
    # the same when the GQA dk/dv grid is short (``dkv_short_grid``): the narrow capped slices that fit 3 programs on
    # an SM pay only when there are programs to fill them; a short grid wants each program's latency low
    gqa_dkv_short: tuple[int, int, int] = (0, 0, 0)
    # the main forward kernel at inference with half-precision inputs (no backward follows): a register cap (0: the
    # compiler's choice) and its stages (0: fwd_stages). At D = 64, 128 registers and 2 stages (80 KiB of shared
    # memory) put two 8-warp programs on an SM instead of one (NOTES v21)
    fwd_infer_maxnreg: int = 0
    fwd_infer_stages: int = 0
    # the main forward's per-alpha-class output loops as sibling ifs instead of an if/elif chain (1), or the chain (0);
    # -1: sibling ifs, but the chain for the inference main kernel when every head is 1.5 or 2 on Triton < 3.8 (5%
    # faster there; sibling ifs took the training forward's main kernel 11-13% faster; H200, bench/NOTES.md v22).
    # Triton >= 3.8 always takes the sibling ifs: its chain needs 2.3x the shared memory, over an H100's at D = 64
    # with 4 stages (v21). The tau passes always take sibling ifs (their chain: D = 128 tau 27% slower, v22)
    flat_dispatch: int = -1
    fwd_ent_warps: int = 0  # forward for a learnable alpha (entropy, and O3 with o3_fwd); 0: fwd_warps
    fwd_ent_stages: int = 0  # 0: fwd_stages
    o3_fwd: bool = True  # d(alpha)'s sum dP p log p as dO . O3 from the forward (else summed in the dq loop)
    halley: bool = True  # tau refinement by Halley steps (curvature from one more row sum), else Newton
    halley_general: bool = True  # that curvature also for alpha not in {1.5, 2} (one more exp2 per element)
    scan: bool = True  # phase A (the dense pass) as its own kernel, with the few registers it needs
    # the scan's tiles inside every boundary in their own loops (no masks, no per-tile test): 0 off, 1 the tiles
    # before the diagonal, 2 also those after it (non-causal)
    scan_split: int = 2
    scan_warps: int = 4
    scan_maxnreg: int = 0  # register cap of the scan kernel (0: the compiler's choice)
    scan_stages: int = 3
    solve: bool = True  # phase B (tau) as its own kernel, after the scan (needs scan)
    solve_warps: int = 4
    solve_stages: int = 3
    solve_maxnreg: int = 0  # register cap of the tau kernel (0: the compiler's choice)
    solve_bn: int = 16  # the tau passes walk each listed tile in slices of this many keys (fewer registers)...
    solve_bn_square: int = 64  # ...and this many for alpha = 1.5 and 2 (no special functions: wider dots pay)
    solve_late_sum: bool = False  # tau passes keep per-thread partial sums, one cross-thread reduction per pass
    # (solve_bn, solve_warps, solve_late_sum, solve_maxnreg) when every head's alpha is known on the host to be 1.5
    # or 2
    square_solve: tuple[int, int, bool, int] | None = None
    # solve_bn_square when every head's alpha is known on the host to be on the multiplication grid (a float, or a
    # snapped and frozen alpha): no head takes the general power, whose loop wants narrow slices (0: no change)
    grid_solve_bn: int = 0
    # the tau loop starts from a bound the scan solves from each row's this many (<= 4) largest tile maxima (alpha
    # <= 1.5; bf16/fp16; needs scan and solve; at inference and while alpha learns); 0: from m - 1 (NOTES v19). 2 and
    # 3 gave dense inference outputs 4e-2 (of the largest entry) away from 4's, unexplained (NOTES v24): 0 or 4
    tile_max_start: int = 0
    # before a backward, the tau kernel's second pass drops a listed tile where no row's max beats that row's
    # certified bound (the list's own test takes the block's lowest bound: on SmolLM2's real q/k it keeps 54% of the
    # tiles where 45% hold weight, at alpha 4/3; bench/NOTES.md v23). Off: on pretrained SmolLM2's q/k, fwd+bwd
    # -2 to -4.5%; on random and synthetic local inputs +2 to +5% (H200, bench/NOTES.md v24)
    row_live: bool = False
    heavy_first: bool = True  # causal forward: the query blocks that see the most keys launch first
    # ...in groups of heads whose K and V fit this many KiB (of the H100's 50 MiB L2; ``heavy_group``); 0: one group
    heavy_group_kib: int = 32768
    # causal dq and dk/dv: likewise the query blocks / key blocks with the most tiles, when the grid is short
    # (``bwd_heavy_first``)
    bwd_heavy_first: bool = True
    fold: bool = True  # the output pass makes tau's last Newton step (to first order), so the tau loop stops earlier
    # how much looser the tau loop's step tolerance is then (from its second pass), for alpha <= 1.5 and alpha > 1.5
    fold_tol: tuple[float, float] = (16.0, 4.0)
    # while alpha learns, half-precision inputs take the fp32 tau tolerance in the tau kernel: d(alpha) reads the tau
    # loop's last point (bench/NOTES.md v16); 0 keeps the loose one, to time what the strict one costs
    strict_tol_learning: bool = True

    def __post_init__(self):
        if not 0 <= self.tile_max_start <= 4:
            raise ValueError(f"tile_max_start={self.tile_max_start}: expected 0 (off) to 4 tile maxima per row")

    def __hash__(self) -> int:
        # cached: the ops' plan keys hash the settings on every call (~40 fields)
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", h)
        return h


@functools.cache  # Tiles is frozen; building it per call cost ~25 us of host time
def tiles(head_dim: int) -> Tiles:
    """The forward and backward share BM x BN: the backward walks the forward's tile list."""
    BD = max(16, triton.next_power_of_2(head_dim))
    if INTERPRET:
        # Small tiles so that tiny test shapes still span several blocks (skipping, boundaries, GQA loops); both
        # d(alpha) paths, as on the GPU; tau passes in slices and a fixed-alpha variant, as on the GPU
        return Tiles(32, 32, BD, 1, 1, 1, 1, 16, 16, 16, o3_fwd=BD <= 64, solve_bn=16, solve_bn_square=16,
                     square_solve=(32, 1, True, 0), grid_solve_bn=32, tile_max_start=4)
    # Measured on H100 (scripts/sweep_tiles.py, bench/NOTES.md v5-v6): 4-warp forward with 4 stages; dq programs of
    # 64 rows (half a forward block) at D <= 64; at D = 128 the forward keeps 8 warps with 3 stages and dk/dv runs
    # 64-row slices at 4 warps. Learnable alpha at D <= 64: O3 from the forward, which then runs 8 warps (a third
    # [BM, D] accumulator spills at 4); at D >= 128 the dq loop sums d(alpha)'s row term instead.
    # v8 (NOTES): the output-only main forward runs 8 warps at D = 64 too; the tau kernel's slices are 16 keys wide
    # at D = 64 (learned alphas: the general power is MUFU-bound and wants 4 programs per SM; a fixed alpha of 1.5
    # or 2 takes 32-key slices with late row sums) and a whole tile at D = 128.
    # v13 (NOTES): on dense rows whole-tile slices made the tau kernel 15-20% faster at alpha = 1.5, 4/3 and 5/4, but
    # 45% slower at a general alpha (214 registers: 2 programs per SM); they are taken only when no head is general.
    # A fixed alpha of 1.5 or 2 keeps 32-key slices with late sums, capped at 168 registers (3 per SM): -18%.
    # v15 (NOTES): under GQA (SmolLM2's 9 query heads on 3 KV heads) dk/dv in 64-row slices without pipelining took
    # 0.72 -> 0.60 ms; without GQA the same settings cost 6% (1.84 -> 1.96 ms), so only GQA takes them.
    # v12 (NOTES): the scan's split loops took 165 registers at D = 64 (3 programs per SM); capped at 128 (4 per SM,
    # 8 B of stack) the sparse 16k forward ran 3% faster. At D = 128 shared memory already limits it to 2 per SM.
    # v17 (NOTES): dq capped at 128 registers at D = 64 (4 programs per SM, was 3 at 167): -3 to -8% on dense, local
    # and learned-alpha shapes, bit-identical; the same cap on dk/dv (229 registers) made it 1.2-3x slower.
    # v19 (NOTES): the tau loop from the 4 largest tile maxima at D <= 128: dense inference forward -19 to -29%,
    # learning-alpha fwd+bwd -7%; the scan +5 to +18% (local 16k inference +2.5 to +5%).
    # v20 (NOTES): the tau kernel capped at 128 registers at D = 64 (4 programs per SM), as it compiled before the
    # grouped longest-first order (without the cap ptxas then took 177; with it, 123 and nothing spills).
    # v21 (NOTES): the inference forward at D = 64 capped at 128 registers with 2 stages (two programs per SM, 240 B
    # of stack): its output kernel -14% on dense 4k, -23% on 16k local; training keeps 220 registers and 4 stages
    # (fwd+bwd +4% with 2 stages).
    # v23 (NOTES): GQA dk/dv on a short grid (<= 4 programs per SM; Qwen2.5-0.5B's 14 query heads on 2 KV heads at
    # 2 x 4096) in 64-row slices without the cap: -18 to -23%; SmolLM2's longer grid keeps the v15/v18 settings.
    if BD <= 64:
        return Tiles(128, 64, BD, 8, 4, 4, 2, 64, 128, 64, fwd_ent_warps=8, fwd_ent_stages=3, solve_bn=16,
                     solve_bn_square=16, square_solve=(32, 4, True, 168), grid_solve_bn=64, scan_maxnreg=128,
                     gqa_dkv=(32, 1, 168), gqa_dkv_short=(64, 1, 0), dq_maxnreg=128, tile_max_start=4,
                     solve_maxnreg=128, fwd_infer_maxnreg=128, fwd_infer_stages=2)
    if BD <= 128:
        return Tiles(128, 64, BD, 8, 3, 8, 2, 64, 32, 128, dkv_warps=4, dkv_stages=2, o3_fwd=False, solve_bn=64,
                     solve_bn_square=64, tile_max_start=4)
    # D = 256 (Gemma 3): the forward at 8 warps. At 4 its [64, 256] fp32 accumulators (128 registers each per
    # thread) spilled ~1 KB of stack; at 8 nothing spills and the forward ran 2.2x faster (H100, NOTES v11). The
    # backward stays at 4 warps: 8 made dq/dk/dv 2.5x slower there
    return Tiles(64, 32, BD, 8, 2, 4, 1, 16, 32, 32, o3_fwd=False)


def with_fields(t: Tiles, items: Iterable[str]) -> Tiles:
    """``t`` with ``FIELD=VALUE`` overrides (integers, 0/1 for flags, ``A:B`` for pairs), as the launch-settings
    scripts take them."""
    fields = dict(item.split("=", 1) for item in items)
    return dataclasses.replace(t, **{k: _field_value(getattr(t, k), v) for k, v in fields.items()})


def _field_value(current, text: str):
    if isinstance(current, tuple):  # colon-separated, e.g. gqa_dkv=64:1 (fields left out keep their values)
        parts = text.split(":")
        if len(parts) > len(current):
            raise ValueError(f"{text!r}: at most {len(current)} colon-separated values")
        return tuple(type(c)(int(x)) for c, x in zip(current, parts)) + current[len(parts):]
    return type(current)(int(text))


def fold_args(t: Tiles) -> dict[str, float]:
    """The tau loop's tolerance multipliers as kernel arguments ``fold_lo``, ``fold_hi`` (1 without the fold).

    Float64 simulation of the loop (scripts/tau_fold_sim.py, bench/NOTES.md v9): 16 / 4 saves one of three passes at
    alpha 1.25-1.5 for an output error <= 1e-4; 16 above alpha = 1.5 breaks. Training reads O2 = U V / sum U at the
    loop's tau, whose error grows with the folded step, yet on the GPU at 4k its bf16 errors against float64 did not
    grow at 16 (`fold_accuracy_h100_v9.txt`), so training takes the same multipliers. d(alpha) is more sensitive:
    while alpha learns, half-precision inputs take the fp32 tau tolerance (``STRICT_TOL``, bench/NOTES.md v16).
    """
    lo, hi = t.fold_tol if t.fold else (1.0, 1.0)
    return {"fold_lo": lo, "fold_hi": hi}


@functools.cache
def solve_settings(t: Tiles, alpha_square: bool, alpha_grid: bool) -> Tiles:
    """``t`` with the tau kernel's settings for what the host knows of alpha: every head 1.5 or 2, or every head on
    the multiplication grid. Either way each head still takes its own class's loop: only speed depends on it."""
    if alpha_square and t.square_solve is not None:
        bn, warps, late, maxnreg = t.square_solve
        return dataclasses.replace(t, solve_bn=bn, solve_bn_square=bn, solve_warps=warps, solve_late_sum=late,
                                   solve_maxnreg=maxnreg)
    if alpha_grid and not alpha_square:
        # the integer powers' output loop under the inference register cap: 0.36-0.45 -> 0.61 ms (SmolLM2 at 4/3,
        # H100, bench/NOTES.md v21); alpha = 1.5 and a general alpha gain from it
        t = dataclasses.replace(t, fwd_infer_maxnreg=0, fwd_infer_stages=0)
    if (alpha_square or alpha_grid) and t.grid_solve_bn:
        # uncapped: the wide slices need 214 registers at D = 64 (at 128 they spill ~300 instructions' worth)
        return dataclasses.replace(t, solve_bn_square=t.grid_solve_bn, solve_maxnreg=0)
    return t


def tau_pass_args(t: Tiles) -> dict[str, int]:
    """The tau passes' slice widths (a slice never exceeds the tile) and row-sum mode as kernel arguments."""
    return {"BNT": min(t.solve_bn, t.BN), "BNT_SQ": min(t.solve_bn_square, t.BN), "LATE_SUM": t.solve_late_sum}


# Longest-first helps a short grid's tail and costs a long grid L2 reuse: grid order runs one head's blocks side by
# side, sharing its K/V (dq) or Q/dO (dk/dv); longest-first runs every head's heaviest block at once. H100, causal,
# N = 4k (NOTES v15): dq -40% at 2304 programs (17 per SM), dk/dv -9% at 768 and -30% at 512; +5 to +17% at
# 4096-8192 programs (31-62 per SM).
HEAVY_FIRST_MAX_PROGRAMS_PER_SM = 24


@functools.cache
def _sm_count(device_index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(device_index).multi_processor_count


def heavy_group(t: Tiles, bh: int, group: int, nk: int, d: int, elem: int) -> int:
    """Heads of the batch x head axis per longest-first group (``query_block``'s ``HG``): the query heads of as many
    KV heads as ``t.heavy_group_kib`` KiB hold K and V for (at least one); all ``bh`` when 0.

    One group, every head's heaviest block at once, kept no K/V in L2: ncu put the dense causal 4k forward's output
    kernel at a 7.6% L2 hit rate, its K/V reads at DRAM speed (H100, bench/NOTES.md v20).
    """
    if not t.heavy_group_kib:
        return bh
    kv_heads = max(1, (t.heavy_group_kib << 10) // max(1, nk * d * elem * 2))
    return max(1, min(bh, kv_heads * group))


def bwd_heavy_first(t: Tiles, causal: bool, programs: int, device) -> bool:
    """Whether a backward kernel's grid of ``programs`` launches its heaviest blocks first (see above)."""
    if not (t.bwd_heavy_first and causal):
        return False
    if device.type != "cuda":  # the interpreter: any order, both are tested
        return True
    return programs <= HEAVY_FIRST_MAX_PROGRAMS_PER_SM * _sm_count(device.index)


# GQA dk/dv at D = 64, H200 (132 SMs), alpha 4/3 snapped (NOTES v23): 64-row slices without a cap against 32-row
# slices capped at 168 registers, by programs (B x KV heads x key blocks): -18 to -23% at 128-512, level at 640,
# +5 to +8% at 768 (SmolLM2's 4 x 3 x 64), +1.5% at 1152.
DKV_SHORT_GRID_PROGRAMS_PER_SM = 4
INTERPRETER_SMS = 1  # the interpreter has no SMs: one, so that tiny test grids take both settings


def dkv_short_grid(programs: int, device) -> bool:
    """Whether a GQA dk/dv grid of ``programs`` is short enough for ``Tiles.gqa_dkv_short``."""
    sms = _sm_count(device.index) if device.type == "cuda" else INTERPRETER_SMS
    return programs <= DKV_SHORT_GRID_PROGRAMS_PER_SM * sms


def dkv_launch_args(t: Tiles, group: int, short_grid: bool = False) -> dict[str, int]:
    """The dk/dv kernel's row slice and launch options for ``group`` query heads per KV head (``short_grid``: see
    ``dkv_short_grid``)."""
    if group > 1 and short_grid and t.gqa_dkv_short[0]:
        bms, stages, maxnreg = t.gqa_dkv_short
    elif group > 1 and t.gqa_dkv[0]:
        bms, stages, maxnreg = t.gqa_dkv
    else:
        bms, stages, maxnreg = t.BMS, t.dkv_stages or t.bwd_stages, t.dkv_maxnreg
    return {"BMS": bms, **_launch_args(t.dkv_warps or t.bwd_warps, stages, maxnreg)}


def dq_launch_args(t: Tiles) -> dict[str, int]:
    """The dq kernel's launch options (the d(alpha) kernel shares them but the register cap)."""
    return _launch_args(t.bwd_warps, t.bwd_stages, t.dq_maxnreg)


def _launch_args(warps: int, stages: int, maxnreg: int) -> dict[str, int]:
    return {"num_warps": warps, "num_stages": stages, **({"maxnreg": maxnreg} if maxnreg else {})}


TRITON_VERSION = tuple(int(x) for x in triton.__version__.split(".")[:2])


def flat_dispatch(t: Tiles, chain_faster: bool = False) -> bool:
    """Whether the main forward kernel takes its alpha classes' output loops as sibling ifs (``Tiles.flat_dispatch``);
    ``chain_faster``: the launch is one where the chain was measured faster (the inference main kernel, every head
    1.5 or 2)."""
    if t.flat_dispatch >= 0:
        return bool(t.flat_dispatch)
    return TRITON_VERSION >= (3, 8) or not chain_faster


def fwd_launch_args(t: Tiles, need_bwd: bool, need_ent: bool, fp32: bool) -> dict[str, int]:
    """The main forward kernel's launch options: while alpha learns (``need_ent``), before a backward, or at
    inference, where half-precision inputs take ``fwd_infer_maxnreg`` and ``fwd_infer_stages``."""
    warps = (need_ent and t.fwd_ent_warps) or t.fwd_warps
    stages = (need_ent and t.fwd_ent_stages) or t.fwd_stages
    infer = not need_bwd and not fp32
    if infer and t.fwd_infer_stages:
        stages = t.fwd_infer_stages
    if fp32:
        # fp32 tiles take twice the shared memory: at D = 128 three stages need 256 KiB (H100: 227 KiB)
        stages = min(stages, 2)
    return _launch_args(warps, stages, t.fwd_infer_maxnreg if infer else 0)


def scan_launch_args(t: Tiles) -> dict[str, int]:
    """The scan kernel's launch options: warps, stages and, where set, its register cap."""
    return _launch_args(t.scan_warps, t.scan_stages, t.scan_maxnreg)


def solve_launch_args(t: Tiles) -> dict[str, int]:
    """The tau kernel's launch options: warps, stages and, where set, its register cap."""
    return _launch_args(t.solve_warps, t.solve_stages, t.solve_maxnreg)
