"""AdaSplash backward over the tiles the forward listed (tile gap above the block's threshold).

With ``x = z - tau``, ``p = x^(1/(alpha-1))``, ``u = p^(2-alpha) = x^(1/(alpha-1) - 1)`` (softmax heads: ``u = p``),
``dP = dO V^T``, ``delta = dO . O2 = sum u dP / sum u`` and ``dS = u (dP - delta)`` with respect to the scores.

- ``adasplash_bwd_kernel_dq``: one program per BMQ query rows (a slice of a forward block, sharing its list).
  Computes delta (stored for the dk/dv kernel), dq, and the per-row d(alpha)
  ``(dO.O - delta)/(alpha-1)^2 - (sum dP p log p - delta * ent)/(alpha-1)``. With ``O3_FWD``,
  ``sum dP p log p = dO . O3`` comes from the forward (at D = 64 a per-element log in this loop spilled: 664 B of
  stack against 24 B without); else this loop sums it (at D = 128 the forward's third accumulator costs more).
- ``adasplash_bwd_kernel_dkv``: one program per key block and KV head; loops over the query heads of its GQA group
  and their listed query blocks, so dk/dv accumulate in registers without atomics. Runs after the dq kernel.
"""

import triton
import triton.language as tl
from hf_adasplash.kernels.attn_fwd import score_tile
from hf_adasplash.kernels.attn_utils import (
    alpha_terms,
    dot_to_z,
    entmax_log2,
    entmax_u,
    kv_range,
    near1_anchor,
    prescale_q,
    q_range,
    query_block,
    seq_bounds,
    softcap_grad,
    tile_needs_mask,
    visible,
    x_of_r,
    z_minus_tau,
)

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def dalpha_rows(o, ent, dalpha_row, p_orow, p_row, m_qd, m_row, b_do, b_delta, b_spl, b_tau, a_m1, is_soft):
    """Stores each row's d(alpha) term; ``b_spl = sum dP p log2 x``."""
    b_o = tl.load(o + p_orow, mask=m_qd, other=0.0)
    b_doo = tl.sum(b_do.to(tl.float32) * b_o.to(tl.float32), 1)
    b_ent = tl.load(ent + p_row, mask=m_row, other=0.0)
    b_spl = b_spl * (LN2 / a_m1)  # sum dP p log p
    b_da = (b_doo - b_delta) / (a_m1 * a_m1) - (b_spl - b_delta * b_ent) / a_m1
    b_da = tl.where(is_soft, 0.0, tl.where(b_tau < float("inf"), b_da, 0.0))
    tl.store(dalpha_row + p_row, b_da, mask=m_row)


@triton.jit(do_not_specialize=["NQ", "NK", "W", "NMB", "NKB", "HG"])
def adasplash_bwd_kernel_dq(
    q, k, v, o, o2, o3, do, dq, alpha, tau, ent, delta, dalpha_row, tile_idx, tile_cnt,
    cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, kpm,
    scale, softcap, NQ, NK, W, NMB, NKB, HG,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_rs, stride_rb, stride_rh, stride_pqb, stride_pkb, stride_mb,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, IS_VARLEN: tl.constexpr, NEED_DALPHA: tl.constexpr, DOT_PREC: tl.constexpr,
    BNS: tl.constexpr, BMQ: tl.constexpr, O3_FWD: tl.constexpr = True, HEAVY_FIRST: tl.constexpr = False,
):
    # grid: (BMQ-row blocks, batch x head), or (batch x head, blocks) with the last blocks first (HEAVY_FIRST)
    i_m, i_bh, i_b64, i_h, i_hk, bos_q, Nq, bos_k, Nk, m0, m1 = query_block(cu_seqlens_q, cu_seqlens_k, NQ, NK,
                                                                             tl.cdiv(NQ, BMQ), H, G, BMQ, IS_VARLEN,
                                                                             HEAVY_FIRST, HG)
    if m0 >= Nq:
        return
    off = Nk - Nq

    o_m = m0 + tl.arange(0, BMQ)
    o_d = tl.arange(0, BD)
    m_row = o_m < Nq
    m_d = o_d < D
    m_qd = m_row[:, None] & m_d[None, :]
    o_tok = (bos_q + o_m).to(tl.int64)
    p_qrow = i_b64 * stride_qb + i_h * stride_qh + o_tok[:, None] * stride_qn + o_d[None, :]
    p_orow = i_b64 * stride_ob + i_h * stride_oh + o_tok[:, None] * stride_on + o_d[None, :]
    # [BMQ, BD]
    b_q = tl.load(q + p_qrow, mask=m_qd, other=0.0)
    b_do = tl.load(do + p_orow, mask=m_qd, other=0.0)
    b_o2 = tl.load(o2 + p_orow, mask=m_qd, other=0.0)
    # [BMQ]
    b_delta = tl.sum(b_do.to(tl.float32) * b_o2.to(tl.float32), 1)
    p_row = i_b64 * stride_rb + i_h * stride_rh + bos_q + o_m
    tl.store(delta + p_row, b_delta, mask=m_row)
    b_mx = tl.load(tau + p_row, mask=m_row, other=0.0)
    b_tau = tl.load(tau + stride_rs + p_row, mask=m_row, other=float("inf"))  # tau - m

    k_base = k + i_b64 * stride_kb + i_hk * stride_kh + bos_k.to(tl.int64) * stride_kn
    v_base = v + i_b64 * stride_vb + i_hk * stride_vh + bos_k.to(tl.int64) * stride_vn
    k_pos_base = k_pos + i_b64 * stride_pkb + bos_k
    kpm_base = kpm + i_b64 * stride_mb
    b_qp = o_m
    if HAS_POS:
        b_qp = tl.load(q_pos + i_b64 * stride_pqb + bos_q + o_m, mask=m_row, other=0)

    a_m1, is_soft, zs, pm1 = alpha_terms(alpha, i_h)
    anchor = near1_anchor(pm1, DOT_PREC)
    from_r: tl.constexpr = DOT_PREC == "ieee"
    b_qs = prescale_q(b_q, scale, zs, HAS_SOFTCAP, DOT_PREC)  # only for the scores

    # rows m0.. use the list of their forward block (BMQ divides BM)
    i_blk = m0 // BM
    p_idx = tile_idx + (i_bh.to(tl.int64) * NMB + i_blk) * NKB
    cnt = tl.load(tile_cnt + i_bh.to(tl.int64) * NMB + i_blk)

    if NEED_DALPHA and O3_FWD:
        # row terms only, before the loop: nothing of them stays live across it
        b_o3 = tl.load(o3 + p_orow, mask=m_qd, other=0.0)
        b_spl = tl.sum(b_do.to(tl.float32) * b_o3.to(tl.float32), 1)
        dalpha_rows(o, ent, dalpha_row, p_orow, p_row, m_qd, m_row, b_do, b_delta, b_spl, b_tau, a_m1, is_soft)

    b_dq = tl.zeros([BMQ, BD], dtype=tl.float32)
    b_spl = tl.zeros([BMQ], dtype=tl.float32)  # sum dP p log2(x), without O3_FWD
    # each listed BM x BN tile in BNS-key slices: smaller live tiles, no register spills
    for js in range(0, cnt * (BN // BNS)):
        n0 = tl.load(p_idx + js // (BN // BNS)) * BN + (js % (BN // BNS)) * BNS
        b_z, b_kt = score_tile(b_qs, k_base, stride_kn, n0, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp,
                               k_pos_base, kpm_base, scale, softcap, zs, BNS, IS_CAUSAL, HAS_WINDOW, HAS_POS,
                               HAS_KPM, HAS_SOFTCAP, DOT_PREC)
        o_n = n0 + tl.arange(0, BNS)
        # [BD, BNS]
        b_vt = tl.load(v_base + o_n[None, :].to(tl.int64) * stride_vn + o_d[:, None],
                       mask=m_d[:, None] & (o_n[None, :] < Nk), other=0.0)
        # [BMQ, BNS]
        b_r = z_minus_tau(b_z, b_mx[:, None], b_tau[:, None], DOT_PREC)
        b_x = x_of_r(b_r, anchor, DOT_PREC)
        if is_soft:
            b_u = tl.exp2(b_x)  # u = p
        else:
            b_x = tl.maximum(b_x, 0.0)  # hidden entries are -inf
            b_u = entmax_u(b_x, pm1, b_r, from_r)
        b_dp = tl.dot(b_do, b_vt, input_precision=DOT_PREC)
        b_ds = softcap_grad(b_z, b_u * (b_dp - b_delta[:, None]), softcap, zs, HAS_SOFTCAP)
        b_dq += tl.dot(b_ds.to(b_kt.dtype), tl.trans(b_kt), input_precision=DOT_PREC)
        if NEED_DALPHA and not O3_FWD:
            # u > 0 as well: the hardware log2 of a subnormal x is -inf, where u is 0 (attn_utils.log2_of)
            b_spl += tl.sum(tl.where((b_x > 0) & (b_u > 0), b_dp * b_u * b_x * entmax_log2(b_x, pm1, b_r, from_r),
                                     0.0), 1)
    if NEED_DALPHA and not O3_FWD:
        dalpha_rows(o, ent, dalpha_row, p_orow, p_row, m_qd, m_row, b_do, b_delta, b_spl, b_tau, a_m1, is_soft)
    tl.store(dq + p_qrow, (b_dq * scale).to(dq.dtype.element_ty), mask=m_qd)


@triton.jit
def compact_q_blocks(p_gap, stride_gap, p_thr, p_out, n0, Nq, Nk, off, W, start, end, BM: tl.constexpr,
                     BN: tl.constexpr, CH: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     HAS_POS: tl.constexpr):
    """Query blocks in [start, end) whose forward list holds the key tile at n0; returns their count."""
    cnt = start * 0
    for c0 in range(start, end, CH):
        o_c = c0 + tl.arange(0, CH)
        m_c = o_c < end
        b_m0 = o_c * BM
        lo, hi = kv_range(b_m0, tl.minimum(b_m0 + BM, Nq) - 1, Nk, off, W, BN, IS_CAUSAL, HAS_WINDOW, HAS_POS)
        m_c = m_c & (n0 >= lo) & (n0 < hi)
        b_g = tl.load(p_gap + o_c.to(tl.int64) * stride_gap, mask=m_c, other=float("-inf"))
        b_keep = m_c & (b_g > tl.load(p_thr + o_c, mask=m_c, other=float("inf")))
        b_k = b_keep.to(tl.int32)
        tl.store(p_out + cnt + tl.cumsum(b_k, 0) - 1, o_c, mask=b_keep)
        cnt += tl.sum(b_k, 0)
    return cnt


@triton.jit(do_not_specialize=["NQ", "NK", "W", "NMB", "NKB"])
def adasplash_bwd_kernel_dkv(
    q, k, v, do, dk, dv, alpha, tau, delta, tile_gap, tile_thr, q_list,
    cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, kpm,
    scale, softcap, NQ, NK, W, NMB, NKB,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    stride_rs, stride_rb, stride_rh, stride_pqb, stride_pkb, stride_mb,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, CH: tl.constexpr,
    BMS: tl.constexpr, HEAVY_FIRST: tl.constexpr = False,
):
    if HEAVY_FIRST:  # grid (batch x KV head, key block): under a causal mask the first key blocks see the most rows
        i_n, i_bhk = tl.program_id(1), tl.program_id(0)
    else:
        i_n, i_bhk = tl.program_id(0), tl.program_id(1)
    i_b, i_hk = i_bhk // (H // G), i_bhk % (H // G)
    bos_q, Nq, bos_k, Nk = seq_bounds(cu_seqlens_q, cu_seqlens_k, i_b, NQ, NK, IS_VARLEN)
    n0 = i_n * BN
    if n0 >= Nk:
        return
    n1 = n0 + BN - 1
    off = Nk - Nq
    i_b64 = i_b.to(tl.int64)

    o_n = n0 + tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    m_n = o_n < Nk
    m_d = o_d < D
    m_kd = m_n[:, None] & m_d[None, :]
    o_ktok = (bos_k + o_n).to(tl.int64)
    # [BN, BD]
    b_k = tl.load(k + i_b64 * stride_kb + i_hk * stride_kh + o_ktok[:, None] * stride_kn + o_d[None, :], mask=m_kd,
                  other=0.0)
    b_v = tl.load(v + i_b64 * stride_vb + i_hk * stride_vh + o_ktok[:, None] * stride_vn + o_d[None, :], mask=m_kd,
                  other=0.0)
    b_kp = o_n
    b_kpm = m_n
    if HAS_POS:
        b_kp = tl.load(k_pos + i_b64 * stride_pkb + bos_k + o_n, mask=m_n, other=0)
    if HAS_KPM:
        b_kpm = tl.load(kpm + i_b64 * stride_mb + o_n, mask=m_n, other=0) != 0

    b_dk = tl.zeros([BN, BD], dtype=tl.float32)
    b_dv = tl.zeros([BN, BD], dtype=tl.float32)
    p_list = q_list + (i_bhk.to(tl.int64) * NKB + i_n) * NMB
    mlo, mhi = q_range(n0, tl.minimum(n1, Nk - 1), Nq, off, W, BM, IS_CAUSAL, HAS_WINDOW, HAS_POS)
    for i_g in range(G):
        i_h = i_hk * G + i_g
        i_bh = i_b * H + i_h
        a_m1, is_soft, zs, pm1 = alpha_terms(alpha, i_h)
        anchor = near1_anchor(pm1, DOT_PREC)
        q_base = q + i_b64 * stride_qb + i_h * stride_qh
        do_base = do + i_b64 * stride_ob + i_h * stride_oh
        r_base = i_b64 * stride_rb + i_h * stride_rh + bos_q
        # this key block's query blocks: forward visited the tile (its range) and the gap beats the threshold
        p_gap = tile_gap + i_bh.to(tl.int64) * NMB * NKB + i_n
        p_thr = tile_thr + i_bh.to(tl.int64) * NMB
        tl.debug_barrier()  # the previous head's list is fully read before it is overwritten
        cnt = compact_q_blocks(p_gap, NKB, p_thr, p_list, n0, Nq, Nk, off, W, mlo // BM, tl.cdiv(mhi, BM), BM,
                               BN, CH, IS_CAUSAL, HAS_WINDOW, HAS_POS)
        tl.debug_barrier()
        # each listed query block in BMS-row slices: smaller live tiles, no register spills
        for js in range(0, cnt * (BM // BMS)):
            m0 = tl.load(p_list + js // (BM // BMS)) * BM + (js % (BM // BMS)) * BMS
            m1 = tl.minimum(m0 + BMS, Nq) - 1
            o_m = m0 + tl.arange(0, BMS)
            m_row = o_m < Nq
            o_tok = (bos_q + o_m).to(tl.int64)
            m_dq = m_d[:, None] & m_row[None, :]
            # [BD, BMS]
            b_qt = tl.load(q_base + o_tok[None, :] * stride_qn + o_d[:, None], mask=m_dq, other=0.0)
            b_dot = tl.load(do_base + o_tok[None, :] * stride_on + o_d[:, None], mask=m_dq, other=0.0)
            # [BM]
            b_mx = tl.load(tau + r_base + o_m, mask=m_row, other=0.0)
            b_tau = tl.load(tau + stride_rs + r_base + o_m, mask=m_row, other=float("inf"))  # tau - m
            b_delta = tl.load(delta + r_base + o_m, mask=m_row, other=0.0)
            # [BN, BMS]
            b_qs = prescale_q(b_qt, scale, zs, HAS_SOFTCAP, DOT_PREC)
            b_z = dot_to_z(tl.dot(b_k, b_qs, input_precision=DOT_PREC), scale, softcap, zs, HAS_SOFTCAP, DOT_PREC)
            if tile_needs_mask(m0, m1, n0, n1, Nk, off, W, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM):
                b_qp = o_m
                if HAS_POS:
                    b_qp = tl.load(q_pos + i_b64 * stride_pqb + bos_q + o_m, mask=m_row, other=0)
                vis = visible(o_m[None, :], o_n[:, None], Nk, off, W, b_qp[None, :], b_kp[:, None],
                              b_kpm[:, None], IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM)
                b_z = tl.where(vis, b_z, float("-inf"))
            b_r = z_minus_tau(b_z, b_mx[None, :], b_tau[None, :], DOT_PREC)
            b_x = x_of_r(b_r, anchor, DOT_PREC)
            if is_soft:
                b_p = tl.exp2(b_x)
                b_u = b_p
            else:
                b_x = tl.maximum(b_x, 0.0)
                b_u = entmax_u(b_x, pm1, b_r, DOT_PREC == "ieee")
                b_p = b_u * b_x
            b_dv += tl.dot(b_p.to(b_dot.dtype), tl.trans(b_dot), input_precision=DOT_PREC)
            b_dpt = tl.dot(b_v, b_dot, input_precision=DOT_PREC)
            b_ds = softcap_grad(b_z, b_u * (b_dpt - b_delta[None, :]), softcap, zs, HAS_SOFTCAP)
            b_dk += tl.dot(b_ds.to(b_qt.dtype), tl.trans(b_qt), input_precision=DOT_PREC)
    tl.store(dk + i_b64 * stride_dkb + i_hk * stride_dkh + o_ktok[:, None] * stride_dkn + o_d[None, :],
             (b_dk * scale).to(dk.dtype.element_ty), mask=m_kd)
    tl.store(dv + i_b64 * stride_dvb + i_hk * stride_dvh + o_ktok[:, None] * stride_dvn + o_d[None, :],
             b_dv.to(dv.dtype.element_ty), mask=m_kd)
