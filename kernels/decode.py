"""Split-K alpha-entmax decode (few queries against a long KV cache): phases 1 and 3.

Phase 1 grid: ``(num_splits, B * HKV, row_blocks)``. A program owns one KV head, all ``R = G * NQ`` query
rows of its GQA group (row ``r = g * NQ + i``: group head g, query i) and a contiguous range of ``SPLIT_TILES``
key tiles of ``BN`` keys, so each K/V byte is read by one program only.

- Phase 1 (``decode_scores_fwd_kernel``): ``s = scale * q k^T`` (softcap, masks -> -inf) into an fp32 buffer
  ``[rows, NT * BN]`` plus the max of every (row, tile). Tiles wholly outside the sliding window are not loaded.
  It also keeps the running (max, sum exp) of each split: softmax heads (alpha == 1) need nothing more.
- Phase 2 is ``entmax_rows_tau_kernel`` (tau and 1 / sum per row, from the stored scores).
- Phase 3 (``decode_output_fwd_kernel``, grid ``(num_chunks, B * HKV, row_blocks)``): one vector load of the
  chunk's tile maxima says which V tiles some row of the group needs; only those are read, the rest of the chunk
  costs nothing. tau is global, so partial outputs just add up (``decode_reduce_kernel``): no rescaling as in
  flash-decoding.
"""

import triton
import triton.language as tl
from hf_adasplash.kernels.entmax_rows import entmax_prob

SOFTMAX_CUTOFF = tl.constexpr(-88.0)


@triton.jit(do_not_specialize=["Nk", "NT", "SPLIT_TILES", "window"])
def decode_scores_fwd_kernel(
    q,
    k,
    kpm,
    s,
    tmax,
    ml,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_mb,
    scale,
    softcap,
    Nk,
    NT,
    SPLIT_TILES,
    window,
    HKV: tl.constexpr,
    G: tl.constexpr,
    NQ: tl.constexpr,
    D: tl.constexpr,
    BR: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_KPM: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_IEEE: tl.constexpr,
):
    i_s, i_bh, i_r = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_hkv = i_bh // HKV, i_bh % HKV
    R: tl.constexpr = G * NQ
    o_r = i_r * BR + tl.arange(0, BR)
    m_r = o_r < R
    o_g, o_i = o_r // NQ, o_r % NQ
    o_d = tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    q_pos = o_i + Nk - NQ  # bottom-right aligned

    # [BR, BD]
    p_q = q + i_b.to(tl.int64) * stride_qb + (i_hkv * G + o_g)[:, None] * stride_qh + o_i[:, None] * stride_qn
    b_q = tl.load(p_q + o_d[None, :], mask=m_r[:, None] & (o_d[None, :] < D), other=0.0)
    if DOT_IEEE:
        b_q = b_q.to(tl.float32)
    p_k = k + i_b.to(tl.int64) * stride_kb + i_hkv.to(tl.int64) * stride_kh
    row0 = (i_bh * R).to(tl.int64)
    p_s = s + (row0 + o_r)[:, None] * NT * BN
    p_tm = tmax + (row0 + o_r) * NT
    # first key any row of the block can see: tiles wholly before it are skipped
    k_lo = 0
    if HAS_WINDOW:
        k_lo = tl.maximum(Nk - NQ - window + 1, 0)  # min q_pos - window + 1

    # running (max, sum exp(s - max)) of the split per row: softmax rows need nothing else from phase 2
    b_mrun = tl.full([BR], float("-inf"), dtype=tl.float32)
    b_lrun = tl.zeros([BR], dtype=tl.float32)
    t0 = i_s * SPLIT_TILES
    t1 = tl.minimum(t0 + SPLIT_TILES, NT)
    for i_t in range(t0, t1):
        o_k = i_t * BN + o_n
        m_live = (i_t * BN + BN + o_n * 0) > k_lo  # [BN], one value: the tile is not wholly before k_lo
        m_k = (o_k < Nk) & m_live
        # [BN, BD]
        b_k = tl.load(p_k + o_k[:, None].to(tl.int64) * stride_kn + o_d[None, :],
                      mask=m_k[:, None] & (o_d[None, :] < D), other=0.0)
        # [BR, BN]
        if DOT_IEEE:
            b_s = tl.dot(b_q, tl.trans(b_k.to(tl.float32)), input_precision="ieee")
        else:
            b_s = tl.dot(b_q, tl.trans(b_k))
        b_s = b_s * scale
        if HAS_SOFTCAP:
            # tanh(x) = 1 - 2 / (exp(2x) + 1): saturates cleanly at +-1 for large |x|
            b_s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * b_s / softcap) + 1.0))
        m_vis = m_k[None, :] & m_r[:, None]
        if IS_CAUSAL:
            m_vis = m_vis & (o_k[None, :] <= q_pos[:, None])
        if HAS_WINDOW:
            if IS_CAUSAL:
                m_vis = m_vis & (q_pos[:, None] - o_k[None, :] < window)
            else:
                d_pos = q_pos[:, None] - o_k[None, :]
                m_vis = m_vis & (tl.where(d_pos < 0, -d_pos, d_pos) < window)
        if HAS_KPM:
            b_m = tl.load(kpm + i_b.to(tl.int64) * stride_mb + o_k, mask=m_k, other=0)
            m_vis = m_vis & (b_m != 0)[None, :]
        b_s = tl.where(m_vis, b_s, float("-inf"))
        tl.store(p_s + o_k[None, :], b_s, mask=m_r[:, None] & m_live[None, :])
        b_tm = tl.max(b_s, axis=1)
        tl.store(p_tm + i_t, b_tm, mask=m_r)
        b_mnew = tl.maximum(b_mrun, b_tm)
        b_msafe = tl.where(b_mnew > float("-inf"), b_mnew, 0.0)
        b_lrun = b_lrun * tl.exp(b_mrun - b_msafe) + tl.sum(tl.exp(b_s - b_msafe[:, None]), axis=1)
        b_mrun = b_mnew
    # ml is [rows, 2, num_splits]
    p_ml = ml + (row0 + o_r) * 2 * tl.num_programs(0) + i_s
    tl.store(p_ml, b_mrun, mask=m_r)
    tl.store(p_ml + tl.num_programs(0), b_lrun, mask=m_r)


@triton.jit
def decode_probs(b_s, b_am1, b_tau, b_inv, b_soft, b_pow):
    """[BR, BN] normalised probabilities from stored scores and per-row (alpha - 1, tau, 1 / sum), tau in score
    units as in ``entmax_rows``: p = [1 + (alpha-1)(s - tau)]_+^(1/(alpha-1)), exp(s - tau) for softmax rows."""
    b_d = b_s - b_tau[:, None]
    b_p, _ = entmax_prob(b_d, 0.0, b_am1[:, None], b_pow[:, None])
    return tl.where(b_soft[:, None], tl.exp(b_d), b_p) * b_inv[:, None]


@triton.jit
def decode_pick(b_x, o_x, i):
    """Element i of a block, as a scalar (a masked sum: Triton has no scalar indexing)."""
    return tl.sum(tl.where(o_x == i, b_x, 0), axis=0)


@triton.jit(do_not_specialize=["Nk", "NT", "HQ"])
def decode_output_fwd_kernel(
    v,
    s,
    tmax,
    tau,
    inv_norm,
    alpha,
    o_part,
    stride_vb,
    stride_vh,
    stride_vn,
    Nk,
    NT,
    HQ,
    HKV: tl.constexpr,
    G: tl.constexpr,
    NQ: tl.constexpr,
    D: tl.constexpr,
    BR: tl.constexpr,
    BD: tl.constexpr,
    BN: tl.constexpr,
    TCH: tl.constexpr,
    DOT_IEEE: tl.constexpr,
):
    """Program (i_c, i_bh, i_r) owns TCH key tiles: one vector load of their maxima says which hold support."""
    i_c, i_bh, i_r = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_hkv = i_bh // HKV, i_bh % HKV
    R: tl.constexpr = G * NQ
    o_r = i_r * BR + tl.arange(0, BR)
    m_r = o_r < R
    o_d = tl.arange(0, BD)
    o_n = tl.arange(0, BN)
    o_tc = tl.arange(0, TCH)
    o_row = (i_bh * R).to(tl.int64) + o_r

    # [BR] per-row alpha - 1, tau, 1 / sum
    b_am1 = tl.load(alpha + i_hkv * G + o_r // NQ, mask=m_r, other=2.0).to(tl.float32) - 1.0
    b_soft = b_am1 == 0.0
    b_pow = 1.0 / tl.where(b_soft, 1.0, b_am1)
    b_tau = tl.load(tau + o_row, mask=m_r, other=float("inf"))
    b_inv = tl.load(inv_norm + o_row, mask=m_r, other=0.0)

    # [BR, TCH] rows x tiles with support (same formula as p, so a skipped tile has p == 0)
    o_t = i_c * TCH + o_tc
    b_tm = tl.load(tmax + o_row[:, None] * NT + o_t[None, :], mask=m_r[:, None] & (o_t[None, :] < NT),
                   other=float("-inf"))
    b_dm = b_tm - b_tau[:, None]
    m_live = tl.where(b_soft[:, None], b_dm > SOFTMAX_CUTOFF, b_am1[:, None] * b_dm > -1.0)
    m_live = m_live & m_r[:, None]
    # [TCH] tiles some row of the group needs
    b_tile = tl.max(m_live.to(tl.int32), axis=0)

    p_v = v + i_b.to(tl.int64) * stride_vb + i_hkv.to(tl.int64) * stride_vh
    p_s = s + o_row[:, None] * NT * BN
    b_o = tl.zeros([BR, BD], dtype=tl.float32)
    n_tiles = tl.sum(b_tile, axis=0)
    if n_tiles == TCH:
        # every tile needed: a plain pipelined stream of V (rows without support in a tile get p == 0 anyway)
        for i in range(0, TCH):
            o_k = (i_c * TCH + i) * BN + o_n
            b_s = tl.load(p_s + o_k[None, :], mask=m_r[:, None], other=float("-inf"))
            b_p = decode_probs(b_s, b_am1, b_tau, b_inv, b_soft, b_pow)
            b_v = tl.load(p_v + o_k[:, None].to(tl.int64) * stride_vn + o_d[None, :],
                          mask=(o_k[:, None] < Nk) & (o_d[None, :] < D), other=0.0)
            if DOT_IEEE:
                b_o += tl.dot(b_p, b_v.to(tl.float32), input_precision="ieee")
            else:
                b_o += tl.dot(b_p.to(b_v.dtype), b_v)
    elif n_tiles > 0:
        for i in range(0, TCH):
            if decode_pick(b_tile, o_tc, i) > 0:
                o_k = (i_c * TCH + i) * BN + o_n
                m_row = tl.sum(tl.where(o_tc[None, :] == i, m_live.to(tl.int32), 0), axis=1) > 0
                # [BR, BN]
                b_s = tl.load(p_s + o_k[None, :], mask=m_row[:, None], other=float("-inf"))
                b_p = decode_probs(b_s, b_am1, b_tau, b_inv, b_soft, b_pow)
                # [BN, BD]
                b_v = tl.load(p_v + o_k[:, None].to(tl.int64) * stride_vn + o_d[None, :],
                              mask=(o_k[:, None] < Nk) & (o_d[None, :] < D), other=0.0)
                if DOT_IEEE:
                    b_o += tl.dot(b_p, b_v.to(tl.float32), input_precision="ieee")
                else:
                    b_o += tl.dot(b_p.to(b_v.dtype), b_v)
    # o_part is [num_chunks, rows, BD]
    p_o = o_part + (i_c * tl.num_programs(1) * R + o_row)[:, None] * BD + o_d[None, :]
    tl.store(p_o, b_o, mask=m_r[:, None])


@triton.jit(do_not_specialize=["NS"])
def decode_reduce_kernel(o_part, o, NS, ROWS, D: tl.constexpr, BD: tl.constexpr):
    """o[row] = sum over splits of o_part[split, row] (o is [B, HQ, NQ, D] contiguous)."""
    i_row = tl.program_id(0).to(tl.int64)
    o_d = tl.arange(0, BD)
    b_o = tl.zeros([BD], dtype=tl.float32)
    for i_s in range(0, NS):
        b_o += tl.load(o_part + (i_s * ROWS + i_row) * BD + o_d)
    tl.store(o + i_row * D + o_d, b_o.to(o.dtype.element_ty), mask=o_d < D)
