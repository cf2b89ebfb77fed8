"""``torch.library`` custom ops around the attention kernels: one op per launch group, each with a fake kernel.

Both ops take either the padded layout (q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]``) or the packed varlen layout
(q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` with ``cu_seqlens``). Only the last dim needs unit stride; other strides go
to the kernels as they are, so transposed HF layouts are never copied.

Row statistics are fp32 ``[B, Hq, Nq]`` (padded) or ``[Hq, T]`` (varlen): ``tau`` stacks two of them, the row
max ``m`` and the offset ``tau - m`` (kept apart so that fp32 keeps full precision at large scores), and the
entropy term; ``o3`` (like ``o``) holds the values weighted by ``p log2 x``, for the backward's d(alpha). The tile
list is a gap per (query block, key tile) ``[B*Hq, NMB, NKB]`` plus one threshold per query block ``[B*Hq, NMB]``.
"""


import math

import torch
import triton

from hf_adasplash.kernels.attn_bwd import adasplash_bwd_kernel_dkv, adasplash_bwd_kernel_dq
from hf_adasplash.kernels.attn_bwd_dalpha import adasplash_bwd_kernel_dalpha_per_entry
from hf_adasplash.kernels.attn_fwd import adasplash_fwd_kernel, adasplash_fwd_scan_kernel, adasplash_fwd_tau_kernel
from hf_adasplash.ops.launch import launch
from hf_adasplash.ops.plans import Plan, PlanCache, Step, tensor_sig
from hf_adasplash.ops.tiling import (
    LIST_CHUNK,
    MAX_TAU_ITERS,
    bwd_heavy_first,
    dkv_launch_args,
    dkv_short_grid,
    dq_launch_args,
    flat_dispatch,
    fold_args,
    fwd_launch_args,
    heavy_group,
    scan_launch_args,
    solve_launch_args,
    solve_settings,
    tau_pass_args,
    tiles,
)


def _geometry(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k):
    """(B, Hq, Hkv, NQ, NK, D) and the (batch, head, token) strides of q and k."""
    if cu_seqlens_q is None:
        B, Hq, NQ, D = q.shape
        Hkv, NK = k.shape[1], k.shape[2]
        return (B, Hq, Hkv, NQ, NK, D), _strides4
    B = cu_seqlens_q.numel() - 1
    return (B, q.shape[1], k.shape[1], max_seqlen_q, max_seqlen_k, q.shape[2]), _strides3


def _strides4(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _strides3(t):
    return 0, t.stride(1), t.stride(0)


def _row_shape(q, cu_seqlens_q):
    if cu_seqlens_q is None:
        B, H, N, _ = q.shape
        return (B, H, N)
    return (q.shape[1], q.shape[0])


def _row_strides(rows_strides, varlen):
    return (0, rows_strides[0]) if varlen else (rows_strides[0], rows_strides[1])


def _io_strides(strides, **tensors):
    """``stride_{name}b/h/n`` kernel arguments (batch, head, token) for each named tensor."""
    return {f"stride_{name}{axis}": st for name, t in tensors.items() for axis, st in zip("bhn", strides(t))}


def _last_dim_contiguous(*ts):
    # Expanded (stride-0) dims are copied too: the backward writes dq/dk/dv with the inputs' strides.
    return [t if t.stride(-1) == 1 and not _overlaps(t) else t.contiguous() for t in ts]


def _overlaps(t):
    return any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape))


def _aux(q_pos, k_pos, kpm, varlen):
    """The optional inputs' tensor names (the 0-element ``dummy`` where absent) and their batch strides."""
    present = {"cu_seqlens_q": varlen, "cu_seqlens_k": varlen, "q_pos": q_pos is not None,
               "k_pos": k_pos is not None, "kpm": kpm is not None}
    names = {arg: arg if there else "dummy" for arg, there in present.items()}
    strides = {"stride_pqb": _batch_stride(q_pos), "stride_pkb": _batch_stride(k_pos), "stride_mb": _batch_stride(kpm)}
    return names, strides


def _batch_stride(t):
    return t.stride(0) if t is not None and t.dim() == 2 else 0


def _current_device(q):
    """A plan's bound kernels are loaded on the device current when it bound them (as the launch keys have it)."""
    return torch.cuda.current_device() if q.is_cuda else None


def _contiguous_qkv(table) -> bool:
    """Makes ``table``'s q, k, v last-dim contiguous (``_last_dim_contiguous``); whether any was copied follows from
    their strides, so a plan records it."""
    q, k, v = _last_dim_contiguous(table["q"], table["k"], table["v"])
    copied = q is not table["q"] or k is not table["k"] or v is not table["v"]
    table["q"], table["k"], table["v"] = q, k, v
    return copied


def _flags(is_causal, window, softcap, q_pos, kpm, cu_seqlens_q, q):
    return {
        "IS_CAUSAL": bool(is_causal or q_pos is not None), "HAS_WINDOW": window > 0, "HAS_POS": q_pos is not None,
        "HAS_KPM": kpm is not None, "HAS_SOFTCAP": softcap > 0, "IS_VARLEN": cu_seqlens_q is not None,
        "DOT_PREC": "ieee" if q.dtype == torch.float32 else "tf32",
    }


FWD_OUTS = ("o", "o2", "tau", "ent", "o3", "tile_gap", "tile_thr", "tile_idx", "tile_cnt")
_FWD_PLANS, _BWD_PLANS = PlanCache(), PlanCache()


def attn_fwd_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
    q_pos: torch.Tensor | None, k_pos: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
    max_seqlen_q: int, max_seqlen_k: int, is_causal: bool, scale: float, window: int, softcap: float,
    need_bwd: bool, need_ent: bool, alpha_square: bool = False, alpha_grid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """Returns (o, o2, tau, ent, o3, tile_gap, tile_thr, tile_idx, tile_cnt); all but o and the tile scratch are
    empty unless a backward follows (ent and o3: unless alpha needs a gradient). ``alpha_square`` / ``alpha_grid``:
    every head's alpha is known on the host to be 1.5 or 2 / on the multiplication grid, so the tau kernel may take
    the settings those heads prefer (``tiling.solve_settings``)."""
    t = solve_settings(tiles(q.shape[-1]), alpha_square, alpha_grid)
    table = {"q": q, "k": k, "v": v, "alpha": alpha, "cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k,
             "q_pos": q_pos, "k_pos": k_pos, "kpm": key_padding_mask}
    opts = (max_seqlen_q, max_seqlen_k, is_causal, scale, window, softcap, need_bwd, need_ent, alpha_square)
    # the module-level hooks are part of the key: scripts and tests replace them (launch settings, spies)
    key = (t, opts, _current_device(q), *map(tensor_sig, table.values()), fold_args, adasplash_fwd_scan_kernel,
           adasplash_fwd_tau_kernel, adasplash_fwd_kernel)
    plan = _FWD_PLANS.get(key, lambda: _fwd_plan(t, table, *opts))
    if plan.copies:
        _contiguous_qkv(table)
    plan.run(plan.allocate(table), launch)
    return tuple(table[name] for name in FWD_OUTS)


def _fwd_plan(t, table, max_seqlen_q, max_seqlen_k, is_causal, scale, window, softcap, need_bwd, need_ent,
              alpha_square) -> Plan:
    copies = _contiguous_qkv(table)
    q, k, cu_seqlens_q = table["q"], table["k"], table["cu_seqlens_q"]
    (B, Hq, Hkv, NQ, NK, D), strides = _geometry(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    NMB, NKB = triton.cdiv(NQ, t.BM), triton.cdiv(NK, t.BN)
    varlen = cu_seqlens_q is not None
    dummy = q.new_empty(0, dtype=torch.int32)  # the pointer of absent optional inputs, never read (no storage)
    rows_shape = _row_shape(q, cu_seqlens_q)
    solve = t.scan and t.solve
    # the tile-maxima start pays at inference (the first pass may stop at the fold's tolerance) and while alpha learns
    # (the strict tolerance's loop is longer); frozen-alpha training keeps m - 1: its first pass rarely stops, and
    # the scan's max/min chain then only costs (H100, bench/NOTES.md v19). fp32, the accuracy path, keeps m - 1 too:
    # from the start its fp32 d(alpha) at alpha = 1.15 erred 1.2e-5 against the 1e-5 it is held to
    half = q.dtype != torch.float32
    topk = t.tile_max_start if solve and half and (need_ent or not need_bwd) else 0
    # the tau kernel hands the list's threshold and length to the main kernel, also at inference
    keep_list = need_bwd or solve
    f32, i32 = torch.float32, torch.int32

    def new(shape, dtype=f32):
        return lambda b: torch.empty(shape, dtype=dtype, device=b["q"].device)

    def like_q(b):
        return torch.empty_like(b["q"])

    def none_q(b):
        return b["q"].new_empty(0)

    plan = Plan([
        ("o", like_q),
        ("o2", like_q if need_bwd else none_q),
        # with a scan kernel, tau carries (row max, softmax normaliser) from it to the main kernel, also at inference
        ("scratch", new((2, *rows_shape)) if need_bwd or t.scan else new((0,))),
        ("ent", new(rows_shape) if need_ent else new((0,))),
        ("o3", like_q if need_ent and t.o3_fwd else none_q),
        ("tile_gap", new((B * Hq, NMB, NKB))),
        ("tile_thr", new((B * Hq, NMB) if keep_list else (0,))),
        ("tile_idx", new((B * Hq, NMB, NKB), i32)),
        ("tile_cnt", new((B * Hq, NMB) if keep_list else (0,), i32)),
        ("tau", (lambda b: b["scratch"]) if need_bwd else new((0,))),
        ("dummy", lambda b: dummy),
    ], cuda=q.is_cuda, copies=copies)
    if q.numel() == 0 or NMB == 0:
        return plan
    o = plan.allocate(dict(table))["o"]  # an example, for its strides
    aux_names, aux_strides = _aux(table["q_pos"], table["k_pos"], table["kpm"], varlen)
    r_b, r_h = _row_strides(torch.empty(rows_shape, device="meta").stride(), varlen)
    common = dict(
        scale=scale, softcap=softcap, NQ=NQ, NK=NK, W=window, NMB=NMB, NKB=NKB,
        stride_rs=math.prod(rows_shape), stride_rb=r_b, stride_rh=r_h, **aux_strides,
        H=Hq, G=Hq // Hkv, D=D, BD=t.BD, BM=t.BM, BN=t.BN,
        **_flags(is_causal, window, softcap, table["q_pos"], table["kpm"], cu_seqlens_q, q),
    )
    common_tensors = {"alpha": "alpha", "tile_gap": "tile_gap", **aux_names}
    heavy_first = t.heavy_first and common["IS_CAUSAL"]
    grid = (B * Hq, NMB) if heavy_first else (NMB, B * Hq)
    common["HEAVY_FIRST"] = heavy_first
    common["HG"] = heavy_group(t, B * Hq, Hq // Hkv, NK, D, q.element_size()) if heavy_first else 1
    if t.scan:
        plan.steps.append(Step(adasplash_fwd_scan_kernel, grid, dict(
            **_io_strides(strides, q=q, k=k), **common, SCAN_SPLIT=t.scan_split, TOPK=topk, **scan_launch_args(t),
        ), {"q": "q", "k": "k", "rows": "scratch", **common_tensors}))
    if solve:
        plan.steps.append(Step(adasplash_fwd_tau_kernel, grid, dict(
            **_io_strides(strides, q=q, k=k), **common, **fold_args(t), MAX_ITERS=MAX_TAU_ITERS, CH=LIST_CHUNK,
            **tau_pass_args(t), HALLEY=t.halley, HALLEY_GENERAL=t.halley_general,
            STRICT_TOL=need_ent and t.strict_tol_learning, TILE_MAX_START=topk > 0,
            FIRST_FOLD=not need_bwd, ROW_LIVE=t.row_live and need_bwd,
            **solve_launch_args(t),
        ), {"q": "q", "k": "k", "tau": "scratch", "tile_thr": "tile_thr", "tile_idx": "tile_idx",
            "tile_cnt": "tile_cnt", **common_tensors}))
    plan.steps.append(Step(adasplash_fwd_kernel, grid, dict(
        **_io_strides(strides, q=q, k=k, v=table["v"], o=o), **common, **fold_args(t), FOLD=t.fold,
        NEED_BWD=need_bwd, NEED_ENT=need_ent, MAX_ITERS=MAX_TAU_ITERS, CH=LIST_CHUNK, **tau_pass_args(t),
        HALLEY=t.halley, HALLEY_GENERAL=t.halley_general, O3_FWD=t.o3_fwd, SCANNED=t.scan, SOLVED=solve,
        FLAT_DISPATCH=flat_dispatch(t, chain_faster=alpha_square and not need_bwd),
        **fwd_launch_args(t, need_bwd, need_ent, q.element_size() == 4),
    ), {"q": "q", "k": "k", "v": "v", "o": "o", "o2": "o2", "o3": "o3", "tau": "scratch", "ent": "ent",
        "tile_thr": "tile_thr", "tile_idx": "tile_idx", "tile_cnt": "tile_cnt", **common_tensors}))
    return plan


attn_fwd = torch.library.custom_op("hf_adasplash::attn_fwd", attn_fwd_impl, mutates_args=(),
                                   device_types=("cuda", "cpu"))


@attn_fwd.register_fake
def _(q, k, v, alpha, cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, key_padding_mask, max_seqlen_q, max_seqlen_k,
      is_causal, scale, window, softcap, need_bwd, need_ent, alpha_square=False, alpha_grid=False):
    (B, Hq, _, NQ, NK, D), _s = _geometry(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    t = tiles(D)
    NMB, NKB = triton.cdiv(NQ, t.BM), triton.cdiv(NK, t.BN)
    rows = q.new_empty(_row_shape(q, cu_seqlens_q), dtype=torch.float32)
    keep_list = need_bwd or (t.scan and t.solve)
    return (
        torch.empty_like(q),
        torch.empty_like(q) if need_bwd else q.new_empty(0),
        rows.new_empty((2, *rows.shape)) if need_bwd else rows.new_empty(0),
        torch.empty_like(rows) if need_ent else rows.new_empty(0),
        torch.empty_like(q) if need_ent and t.o3_fwd else q.new_empty(0),
        q.new_empty((B * Hq, NMB, NKB), dtype=torch.float32),
        q.new_empty((B * Hq, NMB) if keep_list else (0,), dtype=torch.float32),
        q.new_empty((B * Hq, NMB, NKB), dtype=torch.int32),
        q.new_empty((B * Hq, NMB) if keep_list else (0,), dtype=torch.int32),
    )


def attn_bwd_impl(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, o2: torch.Tensor,
    alpha: torch.Tensor, tau: torch.Tensor, ent: torch.Tensor, o3: torch.Tensor, tile_gap: torch.Tensor,
    tile_thr: torch.Tensor, tile_idx: torch.Tensor, tile_cnt: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
    q_pos: torch.Tensor | None, k_pos: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
    max_seqlen_q: int, max_seqlen_k: int, is_causal: bool, scale: float, window: int, softcap: float,
    need_dalpha: bool, need_dkv: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv, dalpha [Hq] fp32); dalpha empty unless need_dalpha, dk/dv empty unless need_dkv
    (training alpha alone on a frozen model skips the dk/dv kernel)."""
    do = _like(do, o)
    t = tiles(q.shape[-1])
    table = {"do": do, "q": q, "k": k, "v": v, "o": o, "o2": o2, "alpha": alpha, "tau": tau, "ent": ent, "o3": o3,
             "tile_gap": tile_gap, "tile_thr": tile_thr, "tile_idx": tile_idx, "tile_cnt": tile_cnt,
             "cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k, "q_pos": q_pos, "k_pos": k_pos,
             "kpm": key_padding_mask}
    opts = (max_seqlen_q, max_seqlen_k, is_causal, scale, window, softcap, need_dalpha, need_dkv)
    # o2, o3, ent and the tile tensors follow from these (the forward made them); their pointers are per call
    sig = (q, k, v, o, alpha, tau, cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, key_padding_mask)
    key = (t, opts, _current_device(q), do.dtype, *map(tensor_sig, sig), adasplash_bwd_kernel_dq,
           adasplash_bwd_kernel_dalpha_per_entry, adasplash_bwd_kernel_dkv)
    plan = _BWD_PLANS.get(key, lambda: _bwd_plan(t, table, *opts))
    if plan.copies:
        _contiguous_qkv(table)
    plan.run(plan.allocate(table), launch)
    dq, dk, dv = table["dq"], table["dk"], table["dv"]
    if not plan.steps:
        dk.zero_()
        dv.zero_()
    if not need_dalpha:
        dalpha = alpha.new_empty(0)
    elif not plan.steps:
        dalpha = alpha.new_zeros(alpha.shape)
    else:
        # per-row buffer then one reduction per head: deterministic, no atomics
        rows = table["dalpha_row"]
        dalpha = (rows.sum(dim=(0, 2)) if cu_seqlens_q is None else rows.sum(dim=1)).to(alpha.dtype)
    return dq, dk, dv, dalpha


def _bwd_plan(t, table, max_seqlen_q, max_seqlen_k, is_causal, scale, window, softcap, need_dalpha, need_dkv) -> Plan:
    copies = _contiguous_qkv(table)
    q, k, tau, cu_seqlens_q = table["q"], table["k"], table["tau"], table["cu_seqlens_q"]
    (B, Hq, Hkv, NQ, NK, D), strides = _geometry(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    NMB, NKB = triton.cdiv(NQ, t.BM), triton.cdiv(NK, t.BN)
    varlen = cu_seqlens_q is not None

    def like(name):
        return lambda b: torch.empty_like(b[name])

    def none(name):
        return lambda b: b[name].new_empty(0)

    plan = Plan([
        ("dq", like("q")),
        ("dk", like("k") if need_dkv else none("k")),
        ("dv", like("v") if need_dkv else none("v")),
    ], cuda=q.is_cuda, copies=copies)
    if q.numel() == 0 or NMB == 0:
        return plan
    rows = tau[0]  # tau = (row max, tau - row max)
    dummy = q.new_empty(0, dtype=torch.int32)  # the pointer of absent optional inputs, never read (no storage)
    plan.allocs += [
        ("delta", lambda b: torch.empty_like(b["tau"][0])),
        ("dalpha_row", (lambda b: torch.empty_like(b["tau"][0])) if need_dalpha else (lambda b: b["tau"].new_empty(0))),
        ("dummy", lambda b: dummy),
    ]
    aux_names, aux_strides = _aux(table["q_pos"], table["k_pos"], table["kpm"], varlen)
    r_b, r_h = _row_strides(rows.stride(), varlen)
    flags = _flags(is_causal, window, softcap, table["q_pos"], table["kpm"], cu_seqlens_q, q)
    common = dict(
        scale=scale, softcap=softcap, NQ=NQ, NK=NK, W=window, NMB=NMB, NKB=NKB,
        **_io_strides(strides, q=q, k=k, v=table["v"], o=table["o"]),
        stride_rs=tau.stride(0), stride_rb=r_b, stride_rh=r_h, **aux_strides,
        H=Hq, G=Hq // Hkv, D=D, BD=t.BD, BM=t.BM, BN=t.BN, num_warps=t.bwd_warps, num_stages=t.bwd_stages,
        **flags,
    )
    common_tensors = {"q": "q", "k": "k", "v": "v", "alpha": "alpha", "tau": "tau", "delta": "delta", **aux_names}
    # dq first: it also writes delta, which the dk/dv kernel reads.
    NMQ = triton.cdiv(NQ, t.BMQ)
    heavy = bwd_heavy_first(t, flags["IS_CAUSAL"], NMQ * B * Hq, q.device)
    plan.steps.append(Step(adasplash_bwd_kernel_dq, (B * Hq, NMQ) if heavy else (NMQ, B * Hq), dict(
        BNS=t.BNS, BMQ=t.BMQ, NEED_DALPHA=need_dalpha, O3_FWD=t.o3_fwd, HEAVY_FIRST=heavy,
        HG=heavy_group(t, B * Hq, Hq // Hkv, NK, D, q.element_size()) if heavy else 1,
        **{**common, **dq_launch_args(t)},
    ), {"o": "o", "o2": "o2", "o3": "o3", "do": "do", "dq": "dq", "ent": "ent", "dalpha_row": "dalpha_row",
        "tile_idx": "tile_idx", "tile_cnt": "tile_cnt", **common_tensors}))
    if need_dalpha:
        # heads with alpha < 1.2 redo their rows per entry, without the row-sum form's cancellation (others
        # return at once)
        plan.steps.append(Step(adasplash_bwd_kernel_dalpha_per_entry, (NMQ, B * Hq), dict(
            BNS=t.BNS, BMQ=t.BMQ, **common,
        ), {"do": "do", "dalpha_row": "dalpha_row", "tile_idx": "tile_idx", "tile_cnt": "tile_cnt",
            **common_tensors}))
    if NKB == 0 or not need_dkv:
        return plan
    plan.allocs.append(("q_list", lambda b: torch.empty((B * Hkv, NKB, NMB), dtype=torch.int32,
                                                        device=b["q"].device)))
    example = plan.allocate(dict(table))  # for dk's and dv's strides
    heavy = bwd_heavy_first(t, flags["IS_CAUSAL"], NKB * B * Hkv, q.device)
    plan.steps.append(Step(adasplash_bwd_kernel_dkv, (B * Hkv, NKB) if heavy else (NKB, B * Hkv), dict(
        CH=LIST_CHUNK, HEAVY_FIRST=heavy, **_io_strides(strides, dk=example["dk"], dv=example["dv"]),
        **{**common, **dkv_launch_args(t, Hq // Hkv, dkv_short_grid(NKB * B * Hkv, q.device))},
    ), {"do": "do", "dk": "dk", "dv": "dv", "tile_gap": "tile_gap", "tile_thr": "tile_thr", "q_list": "q_list",
        **common_tensors}))
    return plan


attn_bwd = torch.library.custom_op("hf_adasplash::attn_bwd", attn_bwd_impl, mutates_args=(),
                                   device_types=("cuda", "cpu"))


def _like(t, ref):
    """t with ref's strides (the kernels index dO with O's strides)."""
    if t.stride() == ref.stride():
        return t
    out = torch.empty_strided(ref.shape, ref.stride(), dtype=t.dtype, device=t.device)
    return out.copy_(t)


@attn_bwd.register_fake
def _(do, q, k, v, o, o2, alpha, tau, ent, o3, tile_gap, tile_thr, tile_idx, tile_cnt, cu_seqlens_q, cu_seqlens_k,
      q_pos, k_pos, key_padding_mask, max_seqlen_q, max_seqlen_k, is_causal, scale, window, softcap, need_dalpha,
      need_dkv):
    dk, dv = (torch.empty_like(k), torch.empty_like(v)) if need_dkv else (k.new_empty(0), v.new_empty(0))
    return torch.empty_like(q), dk, dv, alpha.new_empty(alpha.shape) if need_dalpha else alpha.new_empty(0)
