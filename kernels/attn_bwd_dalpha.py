"""d(alpha) per entry for heads with alpha < 1.2, without the cancellation of the dq kernel's row-sum form.

The dq kernel forms each row's d(alpha) from row sums, ``(dO.O - delta) / a^2 - (sum dP p log p - delta H) / a``
(a = alpha - 1). Each term is O(1/a) and they cancel to O(1): in fp32 the result was 64% off at a = 1e-3 and
7e-4 at a = 0.05; in fp16, whose O and O2 are rounded to 2^-11, 150% off at a = 0.05 and 38% at 0.15. With
``l = ln p = ln(x) / a``, ``phi = ln x - (x - 1) / x`` (= e^-t - 1 + t at t = ln x, O(a^2) on the support),
``Phi = sum p phi``, ``W = Phi - a H`` and ``D = (Phi - phi) / a``, the reference's per-element form
(``hf_adasplash/entmax.py``) becomes

    d(alpha) = sum_j dP_j p_j [D_j (1 - a H) - (l_j - H) Phi] / ((1 + W) a),

where every term is O(a) and computed without cancellation: ``phi`` by its series in y = x - 1 for |y| <= 0.1,
and y is exact in fp32 near alpha = 1 (``near1_anchor``). p is recomputed in fp32 from the scores, so half
precision's rounded outputs do not enter. This kernel runs after the dq kernel for heads with pm1 > 4
(alpha < 1.2) and overwrites their rows of ``dalpha_row``; other heads' programs return at once. It walks each
query block's forward tile list twice (the row sums H and Phi, then the bracket): a cost only heads that low pay,
and only while alpha learns.
"""

import triton
import triton.language as tl
from hf_adasplash.kernels.attn_fwd import load_q_block, score_tile
from hf_adasplash.kernels.attn_utils import (
    alpha_terms,
    log2_1p_near,
    near1_anchor,
    prescale_q,
    query_block,
    z_minus_tau,
)

LN2 = tl.constexpr(0.6931471805599453)
PER_ENTRY_PM1 = tl.constexpr(4.0)  # heads with pm1 = 1/(alpha-1) - 1 above this (alpha < 1.2) take this kernel


@triton.jit
def per_entry_terms(b_r, anchor, a_m1):
    """(p, l = ln p, phi = ln x - y / x) of a head's entries from r = (z - m) - offset; 0 off the support."""
    b_y = b_r + (anchor - 1.0)  # x - 1: exact where the offset is anchored at m - 1 (near1_anchor)
    on = b_y > -1.0
    b_y = tl.where(on, b_y, 0.0)  # off the support: finite values, masked below
    b_lnx = log2_1p_near(b_y) * LN2
    b_l = b_lnx / a_m1
    b_p = tl.where(on, tl.exp(b_l), 0.0)
    # phi = sum_{k >= 2} (-1)^k (k - 1) / k y^k: 12 terms reach ~1e-12 relative at |y| = 0.1; beyond, the closed form
    # loses at most ~20x its rounding to cancellation
    b_s = b_y * (-12.0 / 13.0) + 11.0 / 12.0
    b_s = b_s * b_y - 10.0 / 11.0
    b_s = b_s * b_y + 9.0 / 10.0
    b_s = b_s * b_y - 8.0 / 9.0
    b_s = b_s * b_y + 7.0 / 8.0
    b_s = b_s * b_y - 6.0 / 7.0
    b_s = b_s * b_y + 5.0 / 6.0
    b_s = b_s * b_y - 4.0 / 5.0
    b_s = b_s * b_y + 3.0 / 4.0
    b_s = b_s * b_y - 2.0 / 3.0
    b_s = b_s * b_y + 1.0 / 2.0
    b_phi = tl.where(b_y >= -0.1, b_y * b_y * b_s, b_lnx - b_y / (1.0 + b_y))
    return b_p, b_l, b_phi


@triton.jit
def per_entry_tile(b_qs, k_base, stride_kn, p_idx, js, b_mx, b_tau, anchor, a_m1, o_m, o_d, m_d, m0, m1, Nk, off, W,
                   b_qp, k_pos_base, kpm_base, scale, softcap, zs, BN: tl.constexpr, BNS: tl.constexpr,
                   IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr,
                   HAS_SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr):
    """Slice ``js`` of the listed tiles: (p, l, phi) of its [BMQ, BNS] entries and the offsets of its keys."""
    n0 = tl.load(p_idx + js // (BN // BNS)) * BN + (js % (BN // BNS)) * BNS
    b_z, b_kt = score_tile(b_qs, k_base, stride_kn, n0, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base,
                           kpm_base, scale, softcap, zs, BNS, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP,
                           DOT_PREC)
    b_p, b_l, b_phi = per_entry_terms(z_minus_tau(b_z, b_mx[:, None], b_tau[:, None], DOT_PREC), anchor, a_m1)
    return b_p, b_l, b_phi, n0 + tl.arange(0, BNS)


@triton.jit(do_not_specialize=["NQ", "NK", "W", "NMB", "NKB"])
def adasplash_bwd_kernel_dalpha_per_entry(
    q, k, v, do, alpha, tau, delta, dalpha_row, tile_idx, tile_cnt,
    cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, kpm,
    scale, softcap, NQ, NK, W, NMB, NKB,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_rs, stride_rb, stride_rh, stride_pqb, stride_pkb, stride_mb,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, BNS: tl.constexpr,
    BMQ: tl.constexpr,
):
    """Rows m0.. of one (batch, head) with alpha < 1.2: d(alpha) per row into ``dalpha_row`` (see the module)."""
    i_m, i_bh, i_b64, i_h, i_hk, bos_q, Nq, bos_k, Nk, m0, m1 = query_block(cu_seqlens_q, cu_seqlens_k, NQ, NK, NMB, H,
                                                                             G, BMQ, IS_VARLEN, False)
    a_m1, is_soft, zs, pm1 = alpha_terms(alpha, i_h)
    if m0 >= Nq:
        return
    if pm1 <= PER_ENTRY_PM1:  # every other head keeps the dq kernel's value (softmax heads have pm1 = 0)
        return
    anchor = near1_anchor(pm1, DOT_PREC)
    off = Nk - Nq
    o_m, o_d, m_row, m_d, o_tok, b_q, b_qp = load_q_block(q, q_pos, i_b64, i_h, bos_q, m0, Nq, stride_qb, stride_qh,
                                                          stride_qn, stride_pqb, BMQ, BD, D, HAS_POS)
    b_do = tl.load(do + i_b64 * stride_ob + i_h * stride_oh + o_tok[:, None] * stride_on + o_d[None, :],
                   mask=m_row[:, None] & m_d[None, :], other=0.0)
    p_row = i_b64 * stride_rb + i_h * stride_rh + bos_q + o_m
    b_mx = tl.load(tau + p_row, mask=m_row, other=0.0)
    b_tau = tl.load(tau + stride_rs + p_row, mask=m_row, other=float("inf"))
    k_base = k + i_b64 * stride_kb + i_hk * stride_kh + bos_k.to(tl.int64) * stride_kn
    v_base = v + i_b64 * stride_vb + i_hk * stride_vh + bos_k.to(tl.int64) * stride_vn
    k_pos_base = k_pos + i_b64 * stride_pkb + bos_k
    kpm_base = kpm + i_b64 * stride_mb
    b_qs = prescale_q(b_q, scale, zs, HAS_SOFTCAP, DOT_PREC)
    i_blk = m0 // BM
    p_idx = tile_idx + (i_bh.to(tl.int64) * NMB + i_blk) * NKB
    cnt = tl.load(tile_cnt + i_bh.to(tl.int64) * NMB + i_blk)

    # pass 1: H = sum p l and Phi = sum p phi per row
    b_h = tl.zeros([BMQ], dtype=tl.float32)
    b_phi_sum = tl.zeros([BMQ], dtype=tl.float32)
    for js in range(0, cnt * (BN // BNS)):
        b_p, b_l, b_phi, o_n = per_entry_tile(b_qs, k_base, stride_kn, p_idx, js, b_mx, b_tau, anchor, a_m1, o_m,
                                              o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base, kpm_base, scale, softcap,
                                              zs, BN, BNS, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP,
                                              DOT_PREC)
        b_h += tl.sum(b_p * b_l, 1)
        b_phi_sum += tl.sum(b_p * b_phi, 1)
    b_w = b_phi_sum - a_m1 * b_h  # W = sum p w, w = 1/x - 1
    # pass 2: sum dP p [D (1 - a H) - (l - H) Phi] with D = (Phi - phi) / a
    b_g = tl.zeros([BMQ], dtype=tl.float32)
    for js in range(0, cnt * (BN // BNS)):
        b_p, b_l, b_phi, o_n = per_entry_tile(b_qs, k_base, stride_kn, p_idx, js, b_mx, b_tau, anchor, a_m1, o_m,
                                              o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base, kpm_base, scale, softcap,
                                              zs, BN, BNS, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP,
                                              DOT_PREC)
        # [BD, BNS]
        b_vt = tl.load(v_base + o_n[None, :].to(tl.int64) * stride_vn + o_d[:, None],
                       mask=m_d[:, None] & (o_n[None, :] < Nk), other=0.0)
        b_dp = tl.dot(b_do, b_vt, input_precision=DOT_PREC)
        b_d = (b_phi_sum[:, None] - b_phi) / a_m1
        b_br = b_d * (1.0 - a_m1 * b_h)[:, None] - (b_l - b_h[:, None]) * b_phi_sum[:, None]
        b_g += tl.sum(tl.where(b_p > 0, b_dp * b_p * b_br, 0.0), 1)
    b_da = b_g / ((1.0 + b_w) * a_m1)
    tl.store(dalpha_row + p_row, tl.where(b_tau < float("inf"), b_da, 0.0), mask=m_row)
