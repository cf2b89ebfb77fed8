"""AdaSplash forward: one program per (query block, batch x head), three phases over the key tiles.

A. One dense pass over the visible key tiles, starting at the block's diagonal tile: row max ``m`` (z units) and,
   per tile, the gap ``g = max_rows(tile row max - running row max)``. The running max only grows, so ``g`` bounds
   the final gap from above; a tile with ``g <= min_rows(tau - m)`` holds no entry above tau in any row and is
   all-zero. Masks are applied only on tiles that cross a causal/window/sequence boundary (or when key padding /
   explicit positions are given). By default this pass is its own kernel (``adasplash_fwd_scan_kernel``, ``SCANNED``):
   on sparse inputs it is most of the forward's time, and alone it needs ~120 registers instead of the main
   kernel's 255, so more programs share an SM and hide its loads.
B. The candidate tiles (``g > -1``, as tau >= m - 1) are compacted into a list on the device. Softmax heads sum
   their normaliser over it (``g > -150``: below that exp2 is 0 in fp32) and keep the tiles it leaves nonzero.
   tau (entmax heads):
   Newton on the convex decreasing ``h(tau) = (sum_j [z_j - tau]_+^(1/(alpha-1)))^(alpha-1) - 1`` (an L_p norm of
   convex functions), started at the certified lower bound ``m - 1``. Steps from the left never overshoot, every
   iterate is a certified lower bound (so skipping stays exact), and the step is exact when the support is a set
   of equal scores: ``step = (S0 - S0^(2-alpha)) / S1`` with ``S0 = sum x^p``, ``S1 = sum x^(p-1)``. Each
   iteration walks the list (Halley steps where the curvature is known, bracketed by the Newton point); the list is
   then compacted again to the tiles that beat the final threshold. By default this phase is its own kernel too
   (``adasplash_fwd_tau_kernel``, ``SOLVED``): its 3-4 dense passes are most of the forward on dense rows, and they
   need no output accumulators.
C. Output over that list: ``O = P V``, ``U V`` and ``sum U`` with ``U = p^(2-alpha)``, and ``sum p``. With ``FOLD``
   the pass makes tau's last Newton step itself, to first order: ``c = (sum p - 1) / sum U``, ``O -= c U V``,
   ``tau += c (alpha - 1)``; the tau loop may then stop a step earlier (its tolerance times ``fold_lo``/``fold_hi``
   from the second pass on). When a backward follows it also stores ``O2 = U V / sum U`` (the backward's
   ``delta = dO . O2``), tau, the block's threshold and the list's length (the backward walks the same list, compacted
   again with the folded step as its bound). When alpha needs a gradient, also the row term ``sum p log p`` and
   (``O3_FWD``) ``O3 = (p log2 x) V``: the backward's ``sum_j dP_j p_j log p_j`` is then ``dO . O3`` per row, with
   no per-element log in the dq loop.
   A third output accumulator costs registers: the launch settings choose per head dim (``Tiles.o3_fwd``).
"""

import triton
import triton.language as tl
from hf_adasplash.kernels.attn_utils import (
    POW_ANY,
    POW_GENERAL,
    POW_INT,
    POW_LINEAR,
    POW_NEAR1,
    POW_SOFTMAX,
    POW_SQUARE,
    alpha_terms,
    compact,
    dot_to_z,
    entmax_log2_of,
    entmax_u,
    entmax_u_u2_of,
    entmax_xup,
    is_int_power,
    kv_range,
    near1_anchor,
    prescale_q,
    query_block,
    tile_needs_mask,
    visible,
    x_of_r,
    z_minus_tau,
)

LN2 = tl.constexpr(0.6931471805599453)
TAU_TOL = tl.constexpr(2.44140625e-04)  # 2^-12 relative: Newton's next step would be ~1e-8, below fp32 resolution
# bf16/fp16 inputs at alpha = 1.5: 2^-6 relative leaves an output error ~1e-4 (float64 simulation, bench/NOTES.md
# v8), far below the inputs' own rounding, and saves the last tau pass on dense rows (4 -> 3); scaled down towards
# alpha = 1 and 2
TAU_TOL_HALF = tl.constexpr(1.5625e-02)
# |sum p - 1| beyond this after the tau loop (it hit MAX_ITERS): too far for the output pass's first-order step
FOLD_MAX_DEFECT = tl.constexpr(0.25)
SOFT_SKIP = tl.constexpr(150.0)  # exp2(-150) == 0 in fp32: softmax tiles this far below the normaliser are exactly zero
# the tile-maxima start (``tile_max_start``) moves down by this much: its fp32 Newton steps may land an ulp or so
# right of their root, and a start above tau would pin the loop there
START_MARGIN = tl.constexpr(1.52587890625e-05)  # 2^-16
START_NEWTON = tl.constexpr(3)  # Newton steps of that start


@triton.jit
def score_tile(b_q, k_base, stride_kn, n0, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base, kpm_base,
                scale, softcap, zs, BN: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr):
    o_n = n0 + tl.arange(0, BN)
    m_n = o_n < Nk
    # [BD, BN]
    b_kt = tl.load(k_base + o_n[None, :].to(tl.int64) * stride_kn + o_d[:, None], mask=m_d[:, None] & m_n[None, :],
                   other=0.0)
    # [BM, BN]
    b_z = dot_to_z(tl.dot(b_q, b_kt, input_precision=DOT_PREC), scale, softcap, zs, HAS_SOFTCAP, DOT_PREC)
    if tile_needs_mask(m0, m1, n0, n0 + BN - 1, Nk, off, W, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM):
        b_kp = o_n
        b_kpm = m_n
        if HAS_POS:
            b_kp = tl.load(k_pos_base + o_n, mask=m_n, other=0)
        if HAS_KPM:
            b_kpm = tl.load(kpm_base + o_n, mask=m_n, other=0) != 0
        vis = visible(o_m[:, None], o_n[None, :], Nk, off, W, b_qp[:, None], b_kp[None, :], b_kpm[None, :],
                      IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM)
        b_z = tl.where(vis, b_z, float("-inf"))
    return b_z, b_kt


@triton.jit
def load_q_block(q, q_pos, i_b64, i_h, bos_q, m0, Nq, stride_qb, stride_qh, stride_qn, stride_pqb,
                 BM: tl.constexpr, BD: tl.constexpr, D: tl.constexpr, HAS_POS: tl.constexpr):
    """One query block's row/dim offsets and masks, its Q tile [BM, BD] and the rows' positions."""
    o_m = m0 + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_row = o_m < Nq
    m_d = o_d < D
    o_tok = (bos_q + o_m).to(tl.int64)
    b_q = tl.load(q + i_b64 * stride_qb + i_h * stride_qh + o_tok[:, None] * stride_qn + o_d[None, :],
                  mask=m_row[:, None] & m_d[None, :], other=0.0)
    b_qp = o_m
    if HAS_POS:
        b_qp = tl.load(q_pos + i_b64 * stride_pqb + bos_q + o_m, mask=m_row, other=0)
    return o_m, o_d, m_row, m_d, o_tok, b_q, b_qp


@triton.jit
def scan_gap(b_t, b_m, b_t2, b_t3, b_t4, m_row, p_gap, i_t, MAYBE_EMPTY: tl.constexpr, TOPK: tl.constexpr):
    """Stores tile ``i_t``'s gap from its row maxima ``b_t``; returns the updated running row max and 2nd to
    ``TOPK``-th largest tile maxima (``top_insert``)."""
    b_t2, b_t3, b_t4 = top_insert(b_t2, b_t3, b_t4, tl.minimum(b_m, b_t), TOPK)
    b_mn = tl.maximum(b_m, b_t)
    ok = m_row
    if MAYBE_EMPTY:
        ok = ok & (b_t > float("-inf"))
    tl.store(p_gap + i_t, tl.max(tl.where(ok, b_t - b_mn, float("-inf")), 0))
    return b_mn, b_t2, b_t3, b_t4


@triton.jit
def top_insert(b_t2, b_t3, b_t4, b_x, TOPK: tl.constexpr):
    """Each row's 2nd to ``TOPK``-th largest tile maxima so far (sorted; the largest is the running max), with
    ``b_x`` inserted: a tile's row maxima where they lost to the running max, or the max they replaced.

    A chain of max/min on [BM] rows in the scan's own layout: a [BM, K] tensor with an argmin (v19's first build)
    needed a layout conversion per tile and made the scan 30-37% slower. Each slot holds one tile's max, so equal
    maxima of different tiles stay separate entries.
    """
    if TOPK > 1:
        b_n = tl.maximum(b_t2, b_x)
        b_x = tl.minimum(b_t2, b_x)
        b_t2 = b_n
    if TOPK > 2:
        b_n = tl.maximum(b_t3, b_x)
        b_x = tl.minimum(b_t3, b_x)
        b_t3 = b_n
    if TOPK > 3:
        b_t4 = tl.maximum(b_t4, b_x)
    return b_t2, b_t3, b_t4


@triton.jit
def start_terms(b_d, b_t, pm1):
    """(x^p, x^(p-1)) of one tile max at offset ``b_d`` from the row max, for tau - m = ``b_t`` (0 off the support)."""
    b_x = tl.maximum(b_d - b_t, 0.0)
    b_u = entmax_u(b_x, pm1)
    return b_u * b_x, b_u


@triton.jit
def newton_step(b_s0, b_s1, a_m1):
    """Newton's step on the convex decreasing ``h(tau) = (sum x^p)^(alpha-1) - 1`` from the sums S0 = sum x^p and
    S1 = sum x^(p-1) (> 0) at tau: ``(S0 - S0^(2-alpha)) / S1``. It lands left of the root from any point, and is exact
    when the support is a set of equal scores."""
    return (b_s0 - tl.exp2((1.0 - a_m1) * tl.log2(b_s0))) / b_s1


@triton.jit
def tile_max_start(b_m, b_t2, b_t3, b_t4, a_m1, pm1, NEWTON: tl.constexpr, TOPK: tl.constexpr):
    """A certified lower bound on tau - m from each row's ``TOPK`` largest tile maxima (z units; the first is m).

    Each tile holds an entry at its max, so sum_j [M_j - t]_+^(1/(alpha-1)) over those maxima is at most the row's
    own sum at t: the t where it is 1 lies at or below tau. Newton on the convex decreasing
    ``(sum x^p)^(alpha-1) - 1`` from m - 1 lands left of that root at every step; a few steps reach it (float64
    simulation: three, ``scripts/tau_fold_sim.py --tile-max-newton``). The fp32 rounding of the last steps is
    covered by a margin far below the tau loop's tolerances. Rows with no visible key get -1.
    """
    ok = b_m > float("-inf")
    b_mm = tl.where(ok, b_m, 0.0)
    b_d2 = tl.where(ok, b_t2 - b_mm, float("-inf"))
    b_d3 = tl.where(ok, b_t3 - b_mm, float("-inf"))
    b_d4 = tl.where(ok, b_t4 - b_mm, float("-inf"))
    b_t = tl.zeros_like(b_mm) - 1.0
    for _ in tl.static_range(NEWTON):
        b_s0, b_s1 = start_terms(0.0, b_t, pm1)
        if TOPK > 1:
            b_a, b_b = start_terms(b_d2, b_t, pm1)
            b_s0 += b_a
            b_s1 += b_b
        if TOPK > 2:
            b_a, b_b = start_terms(b_d3, b_t, pm1)
            b_s0 += b_a
            b_s1 += b_b
        if TOPK > 3:
            b_a, b_b = start_terms(b_d4, b_t, pm1)
            b_s0 += b_a
            b_s1 += b_b
        b_t = tl.where(ok & (b_s1 > 0), b_t + newton_step(b_s0, tl.where(b_s1 > 0, b_s1, 1.0), a_m1), b_t)
    return tl.maximum(b_t - START_MARGIN, -1.0)


@triton.jit
def scan_masked(b_q, k_base, stride_kn, o_m, o_d, m_d, m_row, m0, m1, lo, i0, i1, n_tiles, Nk, off, W, b_qp,
                k_pos_base, kpm_base, b_m, b_t2, b_t3, b_t4, p_gap, scale, softcap, zs, BN: tl.constexpr,
                IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr,
                HAS_SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr, TOPK: tl.constexpr):
    """Tiles i0 .. i1 - 1 (taken modulo n_tiles), each masked where it crosses a boundary."""
    for i_t in range(i0, i1):
        n0 = lo + (i_t % n_tiles) * BN
        b_z, b_kt = score_tile(b_q, k_base, stride_kn, n0, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base,
                                kpm_base, scale, softcap, zs, BN, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM,
                                HAS_SOFTCAP, DOT_PREC)
        b_m, b_t2, b_t3, b_t4 = scan_gap(tl.max(b_z, 1), b_m, b_t2, b_t3, b_t4, m_row, p_gap, n0 // BN, True, TOPK)
    return b_m, b_t2, b_t3, b_t4


@triton.jit
def scan_clean(b_q, k_base, stride_kn, o_d, m_d, m_row, lo, i0, i1, b_m, b_t2, b_t3, b_t4, p_gap, scale, softcap,
               zs, BN: tl.constexpr, D_PAD: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr,
               TOPK: tl.constexpr):
    """Tiles i0 .. i1 - 1, known to lie inside every boundary: no masks and no per-tile test, and the row max is
    taken on the raw dot (the scale is positive, so it commutes with max)."""
    # in-tile offsets fit 32 bits; the tile's start is a 64-bit scalar
    o_kt = tl.arange(0, BN)[None, :] * stride_kn + o_d[:, None]
    for i_t in range(i0, i1):
        p_k = k_base + (lo + i_t * BN).to(tl.int64) * stride_kn + o_kt
        if D_PAD:
            b_kt = tl.load(p_k, mask=m_d[:, None], other=0.0)
        else:
            b_kt = tl.load(p_k)
        b_s = tl.dot(b_q, b_kt, input_precision=DOT_PREC)
        if HAS_SOFTCAP:
            b_t = tl.max(dot_to_z(b_s, scale, softcap, zs, HAS_SOFTCAP, DOT_PREC), 1)
        else:
            b_t = dot_to_z(tl.max(b_s, 1), scale, softcap, zs, HAS_SOFTCAP, DOT_PREC)
        b_m, b_t2, b_t3, b_t4 = scan_gap(b_t, b_m, b_t2, b_t3, b_t4, m_row, p_gap, lo // BN + i_t, False, TOPK)
    return b_m, b_t2, b_t3, b_t4


@triton.jit
def scan_tiles(b_q, k_base, stride_kn, o_m, o_d, m_d, m_row, m0, m1, lo, hi, Nk, off, W, b_qp, k_pos_base, kpm_base,
               p_gap, scale, softcap, zs, BM: tl.constexpr, BN: tl.constexpr, IS_CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               DOT_PREC: tl.constexpr, SPLIT: tl.constexpr = 0, D_PAD: tl.constexpr = True,
               TOPK: tl.constexpr = 0):
    """Phase A: the one dense pass. Returns the row max and each row's 2nd to ``TOPK``-th largest tile maxima
    (``top_insert``; -inf where unused) and stores each tile's gap.

    Nothing else happens here (the softmax normaliser is summed later, over listed tiles only): the loop then needs
    few registers, and more programs per SM hide its loads.
    """
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_t2 = tl.full([BM], float("-inf"), tl.float32)
    b_t3 = b_t2
    b_t4 = b_t2
    # Start at the tile of the block's diagonal and wrap around: row maxima usually sit near the diagonal, and
    # the earlier the running max is close to final, the tighter every later tile's gap.
    n_tiles = tl.cdiv(hi - lo, BN)
    i_diag = tl.minimum(tl.maximum(m0 + off - lo, 0) // BN, tl.maximum(n_tiles - 1, 0))
    if SPLIT > 0 and not (HAS_WINDOW or HAS_POS or HAS_KPM):
        # The same order in three loops. Tiles before i_clean lie below the causal diagonal and inside the keys;
        # i_diag <= i_clean, so: clean [i_diag, i_clean), masked [i_clean, n_tiles), then clean [0, i_diag).
        i_clean = tl.minimum((Nk - lo) // BN, n_tiles)
        if IS_CAUSAL:
            i_clean = tl.minimum(i_clean, tl.maximum(m0 + off - lo + 1, 0) // BN)
        i_clean = tl.maximum(i_clean, i_diag)
        if SPLIT > 1:  # (SPLIT = 1: the tiles after the diagonal all go through the masked loop)
            b_m, b_t2, b_t3, b_t4 = scan_clean(b_q, k_base, stride_kn, o_d, m_d, m_row, lo, i_diag, i_clean, b_m,
                                               b_t2, b_t3, b_t4, p_gap, scale, softcap, zs, BN, D_PAD, HAS_SOFTCAP,
                                               DOT_PREC, TOPK)
        else:
            i_clean = i_diag
        b_m, b_t2, b_t3, b_t4 = scan_masked(b_q, k_base, stride_kn, o_m, o_d, m_d, m_row, m0, m1, lo, i_clean,
                                            n_tiles, n_tiles, Nk, off, W, b_qp, k_pos_base, kpm_base, b_m, b_t2, b_t3,
                                            b_t4, p_gap, scale, softcap, zs, BN, IS_CAUSAL, HAS_WINDOW, HAS_POS,
                                            HAS_KPM, HAS_SOFTCAP, DOT_PREC, TOPK)
        b_m, b_t2, b_t3, b_t4 = scan_clean(b_q, k_base, stride_kn, o_d, m_d, m_row, lo, 0, i_diag, b_m, b_t2, b_t3,
                                           b_t4, p_gap, scale, softcap, zs, BN, D_PAD, HAS_SOFTCAP, DOT_PREC, TOPK)
    else:
        b_m, b_t2, b_t3, b_t4 = scan_masked(b_q, k_base, stride_kn, o_m, o_d, m_d, m_row, m0, m1, lo, i_diag,
                                            i_diag + n_tiles, n_tiles, Nk, off, W, b_qp, k_pos_base, kpm_base, b_m,
                                            b_t2, b_t3, b_t4, p_gap, scale, softcap, zs, BN, IS_CAUSAL, HAS_WINDOW,
                                            HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, TOPK)
    return b_m, b_t2, b_t3, b_t4


@triton.jit
def tau_sums(b_q, k_base, stride_kn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base, kpm_base, b_m,
             b_tau, pm1, anchor, scale, softcap, zs, BM: tl.constexpr, BN: tl.constexpr, BNT: tl.constexpr,
             IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr,
             HAS_SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr, KIND: tl.constexpr, NEED_U2: tl.constexpr,
             LATE_SUM: tl.constexpr, ROW_LIVE: tl.constexpr = False, b_lim=None, p_gap=None, check=False):
    """One pass over the listed tiles at tau = m + b_tau: per row S0 = sum x^p, S1 = sum x^(p-1), S2 = sum x^(p-2).

    ``ROW_LIVE`` (in the pass where ``check``): a listed tile where no row's max beats that row's certified bound
    (``b_lim`` = bound - b_tau) holds no weight; its gap is set to -inf, so the list's last compaction and dk/dv's
    query lists drop it. The list's own test takes one threshold for the whole block (its lowest bound; bench/NOTES.md
    v23, v24)."""
    # LATE_SUM: per-thread partial sums, reduced across threads once after the loop (as flash attention keeps its
    # row sum) instead of three cross-thread reductions per slice; costs three [BM, BNT] accumulators
    b_s0 = tl.zeros([BM], dtype=tl.float32)
    b_s1 = tl.zeros([BM], dtype=tl.float32)
    b_s2 = tl.zeros([BM], dtype=tl.float32)
    b_a0 = tl.zeros([BM, BNT], dtype=tl.float32)
    b_a1 = tl.zeros([BM, BNT], dtype=tl.float32)
    b_a2 = tl.zeros([BM, BNT], dtype=tl.float32)
    # each listed tile in slices of BNT keys: a [BM, BNT] score slice and its three powers are what the pass holds
    # (the general power's log2/exp2 tiles at BNT = BN alone took 255 registers); alpha = 1.5, 2 and 4/3 to 6/5,
    # bound by the dots rather than the special-function units, take wider slices (BNT_SQ)
    b_rm = tl.full([BM], float("-inf"), tl.float32)
    for i_s in range(0, cnt * (BN // BNT)):
        i_tile = tl.load(p_idx + i_s // (BN // BNT))
        n0 = i_tile * BN + (i_s % (BN // BNT)) * BNT
        b_z, b_kt = score_tile(b_q, k_base, stride_kn, n0, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base,
                               kpm_base, scale, softcap, zs, BNT, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM,
                               HAS_SOFTCAP, DOT_PREC)
        # [BM, BNT]
        b_r = z_minus_tau(b_z, b_m[:, None], b_tau[:, None], DOT_PREC)
        if ROW_LIVE and KIND != POW_NEAR1:  # noqa: SIM102 (compile time; then the device's)
            # (POW_NEAR1's offsets carry an anchor: not tested)
            if check:  # one pass only; in it one block-wide reduction per tile, not per slice
                b_rm = tl.maximum(b_rm, tl.max(b_r, 1))
                if (i_s % (BN // BNT)) == BN // BNT - 1:
                    # rows with no visible key carry b_lim = nan (inf - inf): never live
                    dead = tl.max((b_rm > b_lim).to(tl.int32), 0) == 0
                    tl.store(p_gap + i_tile, float("-inf"), mask=dead)
                    b_rm = tl.full([BM], float("-inf"), tl.float32)
        if KIND == POW_NEAR1:  # only this class has an anchor (near1_anchor)
            b_x = tl.maximum(x_of_r(b_r, anchor, DOT_PREC), 0.0)
        else:
            b_x = tl.maximum(b_r, 0.0)
        b_u, b_u2 = entmax_u_u2_of(b_x, pm1, KIND, NEED_U2, b_r, DOT_PREC == "ieee")
        if LATE_SUM:
            if NEED_U2:
                b_a2 += b_u2
            b_a0 += b_u * b_x
            b_a1 += b_u
        else:
            if NEED_U2:
                b_s2 += tl.sum(b_u2, 1)
            b_s0 += tl.sum(b_u * b_x, 1)
            b_s1 += tl.sum(b_u, 1)
    if LATE_SUM:
        b_s0, b_s1, b_s2 = tl.sum(b_a0, 1), tl.sum(b_a1, 1), tl.sum(b_a2, 1)
    return b_s0, b_s1, b_s2


@triton.jit
def solve_tau(b_q, k_base, stride_kn, o_m, o_d, m_d, m_row, m0, m1, lo, hi, Nk, off, W, b_qp, k_pos_base, kpm_base,
              p_gap, p_idx, b_m, scale, softcap, zs, a_m1, pm1, is_soft, anchor, fold_lo, fold_hi, BM: tl.constexpr,
              BN: tl.constexpr, BNT: tl.constexpr, BNT_SQ: tl.constexpr, IS_CAUSAL: tl.constexpr,
              HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr,
              HAS_KPM: tl.constexpr, HAS_SOFTCAP: tl.constexpr, MAX_ITERS: tl.constexpr, DOT_PREC: tl.constexpr,
              CH: tl.constexpr, HALLEY: tl.constexpr, HALLEY_GENERAL: tl.constexpr, LATE_SUM: tl.constexpr,
              STRICT_TOL: tl.constexpr = False, b_start=None, TILE_MAX_START: tl.constexpr = False,
              FIRST_FOLD: tl.constexpr = False, ROW_LIVE: tl.constexpr = False):
    """Phase B: tau per row from the row max ``b_m``; returns (row max, tau - row max, list threshold, list length).

    ``TILE_MAX_START``: heads with alpha <= 1.5 start at ``b_start`` (the scan's ``tile_max_start``, a certified
    bound at or above m - 1) instead of m - 1. ``FIRST_FOLD``: from there the first pass may stop at the fold's
    tolerance (inference only: training reads O2 at the loop's tau, and a first step that large doubled dq's bf16
    error against float64 at alpha = 1.5, to 1.4e-2; H100, bench/NOTES.md v19).

    Rows with no visible key come back with row max 0 and offset inf. The candidate tiles' list (``p_idx``) ends
    compacted to the tiles that beat the returned threshold: the output pass and the backward walk it. The offset
    is from m - anchor (``near1_anchor``), the threshold from m.
    """
    # tau = m + off per row; the offset (in [-1, 0) for entmax, log2 of the normaliser for softmax) is what the
    # kernels carry and store, so that fp32 keeps full precision in x = z - tau however large |z| is
    row_ok = m_row & (b_m > float("-inf"))
    b_m = tl.where(row_ok, b_m, 0.0)  # rows with no visible key: off = inf makes every x = -inf
    tol = TAU_TOL
    if DOT_PREC != "ieee" and not STRICT_TOL:
        # the loose tolerance only away from alpha = 1 and 2: near 2, x^(p-2) ~ 1/x makes Halley's error estimate
        # unreliable (fp16 at alpha = 1.999 erred 1e-2 with 2^-6)
        tol = tl.maximum(TAU_TOL, TAU_TOL_HALF * tl.minimum(1.0, 2.0 * tl.minimum(a_m1, 1.0 - a_m1)))
    # the output pass makes one more (first-order) Newton step from the sums it computes anyway, so the loop may
    # stop a step earlier: from the second pass on (the first step, from m - 1, says little about the next one) the
    # tolerance grows by fold_lo (alpha <= 1.5) or fold_hi (both 1 without the fold)
    tol_fold = tol * tl.where(pm1 >= 1.0, fold_lo, fold_hi)
    if is_soft:
        thr = -SOFT_SKIP  # tau >= m (the normaliser is >= 1): tiles this far below the max hold exact zeros
    else:
        thr = -1.0  # tau >= m - 1: the top entry alone has p <= 1
    b_tau = tl.where(row_ok, thr + anchor, float("inf"))
    started = False
    if TILE_MAX_START:
        # alpha <= 1.5 only (pm1 >= 1; softmax has pm1 = 0): above it the fold's step from a first pass stopped at its
        # tolerance erred up to 6.7e-2 (alpha = 1.75, mildly local rows; float64 simulation, bench/NOTES.md v19).
        # fp32 heads near alpha = 1 (anchor 1) keep m - 1
        started = (pm1 >= 1.0) & (anchor == 0.0)
        if started:
            b_tau = tl.where(row_ok, tl.maximum(b_start, -1.0), b_tau)
            # the candidate list needs only the tiles above the block's lowest start
            thr = tl.min(b_tau, 0)
    # the candidate tiles, as a list: the loops below then have no per-tile branch and pipeline their loads
    tl.debug_barrier()
    cnt = compact(p_gap, 1, p_gap, thr, p_idx, p_idx, lo // BN, tl.cdiv(hi, BN), CH, False, False)
    tl.debug_barrier()
    if is_soft:
        # the normaliser, relative to the final row max (no rescaling), then the list shrinks to its support
        b_l = tl.zeros([BM], dtype=tl.float32)
        for j in range(0, cnt):
            n0 = tl.load(p_idx + j) * BN
            b_z, b_kt = score_tile(b_q, k_base, stride_kn, n0, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base,
                                   kpm_base, scale, softcap, zs, BN, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM,
                                   HAS_SOFTCAP, DOT_PREC)
            b_l += tl.sum(tl.exp2(b_z - b_m[:, None]), 1)
        b_tau = tl.where(row_ok, tl.log2(tl.where(row_ok, b_l, 1.0)), float("inf"))
        thr = tl.min(b_tau, 0) - SOFT_SKIP
        cnt = compact(p_gap, 1, p_gap, thr, p_idx, p_idx, 0, cnt, CH, False, True)
        tl.debug_barrier()
    else:
        tol_first = tol
        if FIRST_FOLD:
            tol_first = tl.where(started, tol_fold, tol)
        it = 0
        b_lo = b_tau  # certified lower bound: every Newton point is one (h is convex and decreasing)
        b_hi = tl.where(row_ok, anchor, float("inf"))  # tau < m: the row's top entry always has p > 0
        go = tl.max(row_ok.to(tl.int32), 0) > 0
        while go:
            # one loop per alpha class, as sibling ifs (one set of stage buffers; an if/elif chain gives each loop
            # its own on Triton 3.8+): a runtime branch inside one loop would keep every class's tiles live. The
            # classes an entmax head takes here (softmax heads summed their normaliser above): alpha = 1.5, 2 and
            # the integer powers in wide slices; Halley where the curvature is known (not alpha = 2)
            b_s0 = tl.zeros([BM], dtype=tl.float32)
            b_s1 = b_s0
            b_s2 = b_s0
            kind = alpha_class(pm1, is_soft)
            for K in tl.static_range(POW_INT + 1):
                if K != POW_ANY and K != POW_SOFTMAX:  # noqa: SIM102 (compile time; the test below: device)
                    if kind == K:
                        b_s0, b_s1, b_s2 = tau_sums(
                            b_q, k_base, stride_kn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base,
                            kpm_base, b_m, b_tau, pm1, anchor, scale, softcap, zs, BM, BN,
                            BNT_SQ if (K == POW_SQUARE) | (K == POW_LINEAR) | (K == POW_INT) else BNT, IS_CAUSAL,
                            HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, K,
                            (K != POW_LINEAR) & HALLEY & ((K == POW_SQUARE) | (K == POW_INT) | HALLEY_GENERAL),
                            LATE_SUM, ROW_LIVE, b_lo - b_tau, p_gap, it == 1)
            ok = row_ok & (b_s1 > 0)
            b_s0 = tl.where(ok, b_s0, 1.0)
            b_s1 = tl.where(ok, b_s1, 1.0)
            # Newton on h: exact when the support is a set of equal scores; lands left of the root from any point
            b_dn = tl.where(ok, newton_step(b_s0, b_s1, a_m1), 0.0)
            b_lo = tl.where(ok, tl.maximum(b_lo, b_tau + b_dn), b_lo)
            b_sc = tl.maximum(tl.abs(b_lo), 1.0)
            tol_it = tl.where(it > 0, tol_fold, tol_first)
            if HALLEY:
                # Halley: h''/(-2h') = (p-1)(S0 S2 - S1^2)/(2 S0 S1) >= 0 (Cauchy-Schwarz); steps past the root
                # are caught by the bracket [lo, hi) and fall back to the certified Newton point
                b_hi = tl.where(ok & (b_s0 < 1.0), tl.minimum(b_hi, b_tau), b_hi)
                b_r = tl.maximum(pm1 * (b_s0 * tl.where(ok, b_s2, 0.0) - b_s1 * b_s1) / (2.0 * b_s0 * b_s1), 0.0)
                # S2 is known for alpha = 1.5 (and any alpha with HALLEY_GENERAL); alpha = 2 has no curvature term
                if HALLEY_GENERAL:
                    has_curv = pm1 != 0.0
                else:
                    has_curv = pm1 == 1.0
                b_r = tl.where(has_curv, b_r, 0.0)
                b_den = 1.0 - b_dn * b_r
                b_new = b_tau + tl.where(b_den > 0.25, b_dn / b_den, b_dn)
                b_new = tl.where((b_new >= b_lo) & (b_new < b_hi), b_new, b_lo)
                # converged: the step is tiny, or Newton's own error after it (r dn^2) is far below the tolerance
                b_lim = tl.where(has_curv, tol_it * 1e-3 * b_sc, -1.0)  # no curvature: no error estimate
                b_conv = (tl.abs(b_new - b_tau) <= tol_it * b_sc) | (b_r * b_dn * b_dn <= b_lim)
            else:
                b_new = b_lo
                b_conv = b_new - b_tau <= tol_it * b_sc
            b_tau = tl.where(ok, b_new, b_tau)
            it += 1
            go = (it < MAX_ITERS) & (tl.max((ok & ~b_conv).to(tl.int32), 0) > 0)
        # the output uses a tau at or above the certified bound the tile list is compacted with
        b_tau = tl.where(row_ok, tl.maximum(b_tau, b_lo), b_tau)
        thr = tl.min(tl.where(row_ok, b_lo, float("inf")), 0) - anchor
        # the bound only grew: keep the tiles that still beat it (in place, order kept)
        cnt = compact(p_gap, 1, p_gap, thr, p_idx, p_idx, 0, cnt, CH, False, True)
        tl.debug_barrier()
    return b_m, b_tau, thr, cnt


@triton.jit(do_not_specialize=["NQ", "NK", "W", "NMB", "NKB", "HG"])
def adasplash_fwd_scan_kernel(
    q, k, alpha, rows, tile_gap, cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, kpm,
    scale, softcap, NQ, NK, W, NMB, NKB, HG,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_rs, stride_rb, stride_rh, stride_pqb, stride_pkb, stride_mb,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, HEAVY_FIRST: tl.constexpr = False,
    SCAN_SPLIT: tl.constexpr = 0, TOPK: tl.constexpr = 0,
):
    """Phase A alone: row max (``rows[0]``) and tile gaps; with ``TOPK`` also the tau kernel's start
    (``rows[1]``, ``tile_max_start`` from each row's TOPK largest tile maxima).

    Split from the main kernel so that this dense pass, most of the forward's time on sparse inputs, runs with the
    few registers it needs (more programs per SM) instead of the tau and output passes' register budget.
    """
    i_m, i_bh, i_b64, i_h, i_hk, bos_q, Nq, bos_k, Nk, m0, m1 = query_block(cu_seqlens_q, cu_seqlens_k, NQ, NK, NMB, H,
                                                                             G, BM, IS_VARLEN, HEAVY_FIRST, HG)
    if m0 >= Nq:
        return
    off = Nk - Nq
    o_m, o_d, m_row, m_d, o_tok, b_q, b_qp = load_q_block(q, q_pos, i_b64, i_h, bos_q, m0, Nq, stride_qb, stride_qh,
                                                          stride_qn, stride_pqb, BM, BD, D, HAS_POS)
    k_base = k + i_b64 * stride_kb + i_hk * stride_kh + bos_k.to(tl.int64) * stride_kn
    a_m1, is_soft, zs, pm1 = alpha_terms(alpha, i_h)
    b_q = prescale_q(b_q, scale, zs, HAS_SOFTCAP, DOT_PREC)
    lo, hi = kv_range(m0, m1, Nk, off, W, BN, IS_CAUSAL, HAS_WINDOW, HAS_POS)
    p_gap = tile_gap + (i_bh.to(tl.int64) * NMB + i_m) * NKB
    b_m, b_t2, b_t3, b_t4 = scan_tiles(b_q, k_base, stride_kn, o_m, o_d, m_d, m_row, m0, m1, lo, hi, Nk, off, W,
                                       b_qp, k_pos + i_b64 * stride_pkb + bos_k, kpm + i_b64 * stride_mb, p_gap, scale,
                                       softcap, zs, BM, BN, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP,
                                       DOT_PREC, SCAN_SPLIT, BD != D, TOPK)
    p_row = rows + i_b64 * stride_rb + i_h * stride_rh + bos_q + o_m
    tl.store(p_row, b_m, mask=m_row)
    if TOPK > 0:
        b_start = tile_max_start(b_m, b_t2, b_t3, b_t4, a_m1, pm1, START_NEWTON, TOPK)
        tl.store(p_row + stride_rs, b_start, mask=m_row)


@triton.jit(do_not_specialize=["NQ", "NK", "W", "NMB", "NKB", "HG"])
def adasplash_fwd_tau_kernel(
    q, k, alpha, tau, tile_gap, tile_thr, tile_idx, tile_cnt, cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, kpm,
    scale, softcap, fold_lo, fold_hi, NQ, NK, W, NMB, NKB, HG,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_rs, stride_rb, stride_rh, stride_pqb, stride_pkb, stride_mb,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, IS_VARLEN: tl.constexpr, MAX_ITERS: tl.constexpr, DOT_PREC: tl.constexpr,
    CH: tl.constexpr, BNT: tl.constexpr, BNT_SQ: tl.constexpr, HALLEY: tl.constexpr = True,
    HALLEY_GENERAL: tl.constexpr = False, LATE_SUM: tl.constexpr = False, HEAVY_FIRST: tl.constexpr = False,
    STRICT_TOL: tl.constexpr = False, TILE_MAX_START: tl.constexpr = False, FIRST_FOLD: tl.constexpr = False,
    ROW_LIVE: tl.constexpr = False,
):
    """Phase B alone: tau from the scan kernel's row max; writes (row max, offset) rows, the tile list and its
    threshold and length. ``STRICT_TOL``: the fp32 tolerance also for half-precision inputs. ``TILE_MAX_START``: the
    scan left each row's start in the offset row (its ``TOPK``); ``FIRST_FOLD``: see ``solve_tau``.

    On dense rows its 3-4 passes over QK^T are most of the forward: without the output accumulators it needs about
    half the main kernel's registers, so more programs share an SM and hide each other's loads and MUFU latency.
    """
    i_m, i_bh, i_b64, i_h, i_hk, bos_q, Nq, bos_k, Nk, m0, m1 = query_block(cu_seqlens_q, cu_seqlens_k, NQ, NK, NMB, H,
                                                                             G, BM, IS_VARLEN, HEAVY_FIRST, HG)
    if m0 >= Nq:
        return
    off = Nk - Nq
    o_m, o_d, m_row, m_d, o_tok, b_q, b_qp = load_q_block(q, q_pos, i_b64, i_h, bos_q, m0, Nq, stride_qb, stride_qh,
                                                          stride_qn, stride_pqb, BM, BD, D, HAS_POS)
    k_base = k + i_b64 * stride_kb + i_hk * stride_kh + bos_k.to(tl.int64) * stride_kn
    a_m1, is_soft, zs, pm1 = alpha_terms(alpha, i_h)
    b_q = prescale_q(b_q, scale, zs, HAS_SOFTCAP, DOT_PREC)
    lo, hi = kv_range(m0, m1, Nk, off, W, BN, IS_CAUSAL, HAS_WINDOW, HAS_POS)
    p_blk = i_bh.to(tl.int64) * NMB + i_m
    p_row = i_b64 * stride_rb + i_h * stride_rh + bos_q + o_m
    b_m = tl.max(tl.load(tau + p_row, mask=m_row, other=float("-inf"))[:, None], 1)  # expand + reduce: see main
    b_start = b_m
    if TILE_MAX_START:
        b_start = tl.max(tl.load(tau + stride_rs + p_row, mask=m_row, other=-1.0)[:, None], 1)
    b_m, b_tau, thr, cnt = solve_tau(b_q, k_base, stride_kn, o_m, o_d, m_d, m_row, m0, m1, lo, hi, Nk, off, W, b_qp,
                                     k_pos + i_b64 * stride_pkb + bos_k, kpm + i_b64 * stride_mb,
                                     tile_gap + p_blk * NKB, tile_idx + p_blk * NKB, b_m, scale, softcap, zs, a_m1,
                                     pm1, is_soft, near1_anchor(pm1, DOT_PREC), fold_lo, fold_hi, BM, BN, BNT, BNT_SQ,
                                     IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, MAX_ITERS, DOT_PREC, CH,
                                     HALLEY, HALLEY_GENERAL, LATE_SUM, STRICT_TOL, b_start, TILE_MAX_START,
                                     FIRST_FOLD, ROW_LIVE)
    tl.store(tau + p_row, b_m, mask=m_row)
    tl.store(tau + stride_rs + p_row, b_tau, mask=m_row)
    tl.store(tile_thr + p_blk, thr)
    tl.store(tile_cnt + p_blk, cnt)


@triton.jit
def alpha_class(pm1, is_soft):
    """The ``POW_*`` class of a head's alpha, as the forward's per-class loops pick it."""
    return tl.where(is_soft, POW_SOFTMAX, tl.where(pm1 == 1.0, POW_SQUARE, tl.where(pm1 == 0.0, POW_LINEAR, tl.where(
        is_int_power(pm1), POW_INT, tl.where(pm1 > 32.0, POW_NEAR1, POW_GENERAL)))))


@triton.jit
def output_pass(b_q, k_base, v_base, stride_kn, stride_vn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp,
                k_pos_base, kpm_base, b_mc, b_tc, pm1, is_soft, anchor, scale, softcap, zs, BM: tl.constexpr,
                BN: tl.constexpr, BD: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr,
                NEED_BWD: tl.constexpr, NEED_ENT: tl.constexpr, O3_FWD: tl.constexpr, KIND: tl.constexpr,
                FOLD: tl.constexpr):
    """Phase C over the listed tiles: O = P V, U V with sum U (for the backward, and with sum P for the folded
    Newton step), sum p log2 x and (p log2 x) V."""
    b_o = tl.zeros([BM, BD], dtype=tl.float32)
    b_o2 = tl.zeros([BM, BD], dtype=tl.float32)
    b_su = tl.zeros([BM], dtype=tl.float32)
    b_ent = tl.zeros([BM], dtype=tl.float32)
    b_o3 = tl.zeros([BM, BD], dtype=tl.float32)
    b_sp = tl.zeros([BM], dtype=tl.float32)
    for j in range(0, cnt):
        n0 = tl.load(p_idx + j) * BN
        b_z, b_kt = score_tile(b_q, k_base, stride_kn, n0, o_m, o_d, m_d, m0, m1, Nk, off, W, b_qp, k_pos_base,
                               kpm_base, scale, softcap, zs, BN, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM,
                               HAS_SOFTCAP, DOT_PREC)
        o_n = n0 + tl.arange(0, BN)
        # [BN, BD]
        b_v = tl.load(v_base + o_n[:, None].to(tl.int64) * stride_vn + o_d[None, :],
                      mask=(o_n[:, None] < Nk) & m_d[None, :], other=0.0)
        # [BM, BN]
        b_r = z_minus_tau(b_z, b_mc, b_tc, DOT_PREC)  # rows broadcast by the caller: see adasplash_fwd_kernel
        b_x, b_u, b_p = entmax_xup(x_of_r(b_r, anchor, DOT_PREC), pm1, is_soft, KIND, b_r, DOT_PREC == "ieee")
        if KIND != POW_SOFTMAX:
            if NEED_ENT:
                # p > 0, not x > 0: the hardware log2 of a subnormal x is -inf, where p is 0 (attn_utils.log2_of)
                on = b_p > 0
                if KIND == POW_ANY:
                    on = on & (b_x > 0)  # its softmax heads have p > 0 at x <= 0
                b_pl = tl.where(on, b_p * entmax_log2_of(b_x, pm1, KIND, b_r, DOT_PREC == "ieee"), 0.0)
                b_ent += tl.sum(b_pl, 1)
                if O3_FWD:
                    b_o3 += tl.dot(b_pl.to(b_v.dtype), b_v, input_precision=DOT_PREC)
            if NEED_BWD or FOLD:
                # softmax heads reuse O as O2 (u = p): the extra dot is only for entmax heads (POW_ANY: computed,
                # then replaced after the loop)
                b_o2 += tl.dot(b_u.to(b_v.dtype), b_v, input_precision=DOT_PREC)
                b_su += tl.sum(b_u, 1)
            if FOLD:
                b_sp += tl.sum(b_p, 1)
        b_o += tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PREC)
    return b_o, b_o2, b_su, b_ent, b_o3, b_sp


@triton.jit(do_not_specialize=["NQ", "NK", "W", "NMB", "NKB", "HG"])
def adasplash_fwd_kernel(
    q, k, v, o, o2, o3, alpha, tau, ent, tile_gap, tile_thr, tile_idx, tile_cnt,
    cu_seqlens_q, cu_seqlens_k, q_pos, k_pos, kpm,
    scale, softcap, fold_lo, fold_hi, NQ, NK, W, NMB, NKB, HG,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_rs, stride_rb, stride_rh, stride_pqb, stride_pkb, stride_mb,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, IS_VARLEN: tl.constexpr, NEED_BWD: tl.constexpr, NEED_ENT: tl.constexpr,
    MAX_ITERS: tl.constexpr, DOT_PREC: tl.constexpr, CH: tl.constexpr, BNT: tl.constexpr, BNT_SQ: tl.constexpr,
    HALLEY: tl.constexpr = True, HALLEY_GENERAL: tl.constexpr = False, O3_FWD: tl.constexpr = True,
    SCANNED: tl.constexpr = False, SOLVED: tl.constexpr = False, LATE_SUM: tl.constexpr = False,
    FOLD: tl.constexpr = True, HEAVY_FIRST: tl.constexpr = False, FLAT_DISPATCH: tl.constexpr = False,
):
    i_m, i_bh, i_b64, i_h, i_hk, bos_q, Nq, bos_k, Nk, m0, m1 = query_block(cu_seqlens_q, cu_seqlens_k, NQ, NK, NMB, H,
                                                                             G, BM, IS_VARLEN, HEAVY_FIRST, HG)
    if m0 >= Nq:
        return
    off = Nk - Nq

    o_m, o_d, m_row, m_d, o_tok, b_q, b_qp = load_q_block(q, q_pos, i_b64, i_h, bos_q, m0, Nq, stride_qb, stride_qh,
                                                          stride_qn, stride_pqb, BM, BD, D, HAS_POS)
    m_qd = m_row[:, None] & m_d[None, :]
    k_base = k + i_b64 * stride_kb + i_hk * stride_kh + bos_k.to(tl.int64) * stride_kn
    v_base = v + i_b64 * stride_vb + i_hk * stride_vh + bos_k.to(tl.int64) * stride_vn
    k_pos_base = k_pos + i_b64 * stride_pkb + bos_k
    kpm_base = kpm + i_b64 * stride_mb

    a_m1, is_soft, zs, pm1 = alpha_terms(alpha, i_h)
    anchor = near1_anchor(pm1, DOT_PREC)
    b_q = prescale_q(b_q, scale, zs, HAS_SOFTCAP, DOT_PREC)

    lo, hi = kv_range(m0, m1, Nk, off, W, BN, IS_CAUSAL, HAS_WINDOW, HAS_POS)
    p_gap = tile_gap + (i_bh.to(tl.int64) * NMB + i_m) * NKB
    p_idx = tile_idx + (i_bh.to(tl.int64) * NMB + i_m) * NKB

    # ---- A and B: row max and tile gaps, then tau (from the scan and tau kernels when SCANNED / SOLVED) -------
    p_row = i_b64 * stride_rb + i_h * stride_rh + bos_q + o_m
    p_thr = tile_thr + i_bh.to(tl.int64) * NMB + i_m
    p_cnt = tile_cnt + i_bh.to(tl.int64) * NMB + i_m
    if SOLVED:
        # expand + reduce: a plain 1-D load here makes Triton 3.6's layout pass emit invalid IR ("operand does not
        # dominate this use") at 4 warps; the reduction hands the rows to the tiles' layout (no extra traffic)
        b_m = tl.max(tl.load(tau + p_row, mask=m_row, other=0.0)[:, None], 1)
        b_tau = tl.max(tl.load(tau + stride_rs + p_row, mask=m_row, other=float("inf"))[:, None], 1)
        thr = tl.load(p_thr)
        cnt = tl.load(p_cnt)
    else:
        if SCANNED:
            b_m = tl.max(tl.load(tau + p_row, mask=m_row, other=float("-inf"))[:, None], 1)
        else:
            b_m, _, _, _ = scan_tiles(b_q, k_base, stride_kn, o_m, o_d, m_d, m_row, m0, m1, lo, hi, Nk, off, W, b_qp,
                                k_pos_base, kpm_base, p_gap, scale, softcap, zs, BM, BN, IS_CAUSAL, HAS_WINDOW,
                                HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC)
        b_m, b_tau, thr, cnt = solve_tau(b_q, k_base, stride_kn, o_m, o_d, m_d, m_row, m0, m1, lo, hi, Nk, off, W,
                                         b_qp, k_pos_base, kpm_base, p_gap, p_idx, b_m, scale, softcap, zs, a_m1,
                                         pm1, is_soft, anchor, fold_lo, fold_hi, BM, BN, BNT, BNT_SQ, IS_CAUSAL,
                                         HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, MAX_ITERS, DOT_PREC, CH, HALLEY,
                                         HALLEY_GENERAL, LATE_SUM, NEED_ENT)  # d(alpha): the fp32 tolerance

    # ---- C: output over the tiles that hold support ---------------------------------------------------------
    # one loop per alpha class (softmax, alpha = 1.5, 2, 4/3 to 6/5, near 1, general): a runtime branch inside the
    # loop would keep every class's tiles live at once. The rows are broadcast here, once: inside each branch, Triton
    # 3.6's layout pass shared one hoisted copy between the branches and emitted invalid IR ("operand does not dominate
    # this use")
    b_mc = b_m[:, None]
    b_tc = b_tau[:, None]
    if DOT_PREC == "ieee":
        # fp32: one loop for every class. Per-class loops made Triton 3.6 spill ~10 KiB of stack here (the rows
        # broadcast to five branches); fp32 is the accuracy path, bf16/fp16 the fast one
        res = output_pass(b_q, k_base, v_base, stride_kn, stride_vn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off,
                          W, b_qp, k_pos_base, kpm_base, b_mc, b_tc, pm1, is_soft, anchor, scale, softcap, zs, BM,
                          BN, BD, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, NEED_BWD,
                          NEED_ENT, O3_FWD, POW_ANY, FOLD)
    elif FLAT_DISPATCH:
        # the same classes as one if per class after another instead of an if/elif chain: Triton 3.8 and 3.9 give
        # each loop of a chain its own stage buffers (336 KiB at D = 64, 4 stages; 144 here), sibling ifs share them
        # (80 KiB). The default on every Triton but where 3.6's chain timed faster (``Tiles.flat_dispatch``, NOTES v22)
        b_o = tl.zeros([BM, BD], dtype=tl.float32)
        b_o2 = b_o
        b_o3 = b_o
        b_su = tl.zeros([BM], dtype=tl.float32)
        b_ent = b_su
        b_sp = b_su
        kind = alpha_class(pm1, is_soft)
        for K in tl.static_range(POW_INT + 1):  # every class's constant but POW_ANY (fp32's one loop)
            if K != POW_ANY:  # noqa: SIM102 (resolved at compile time; the test below runs on the device)
                if kind == K:
                    b_o, b_o2, b_su, b_ent, b_o3, b_sp = output_pass(
                        b_q, k_base, v_base, stride_kn, stride_vn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off, W,
                        b_qp, k_pos_base, kpm_base, b_mc, b_tc, pm1, is_soft, anchor, scale, softcap, zs, BM, BN, BD,
                        IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, NEED_BWD, NEED_ENT, O3_FWD, K,
                        FOLD)
        res = b_o, b_o2, b_su, b_ent, b_o3, b_sp
    elif is_soft:
        res = output_pass(b_q, k_base, v_base, stride_kn, stride_vn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off,
                          W, b_qp, k_pos_base, kpm_base, b_mc, b_tc, pm1, is_soft, anchor, scale, softcap, zs, BM,
                          BN, BD, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, NEED_BWD,
                          NEED_ENT, O3_FWD, POW_SOFTMAX, FOLD)
    elif pm1 == 1.0:
        res = output_pass(b_q, k_base, v_base, stride_kn, stride_vn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off,
                          W, b_qp, k_pos_base, kpm_base, b_mc, b_tc, pm1, is_soft, anchor, scale, softcap, zs, BM,
                          BN, BD, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, NEED_BWD,
                          NEED_ENT, O3_FWD, POW_SQUARE, FOLD)
    elif pm1 == 0.0:
        res = output_pass(b_q, k_base, v_base, stride_kn, stride_vn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off,
                          W, b_qp, k_pos_base, kpm_base, b_mc, b_tc, pm1, is_soft, anchor, scale, softcap, zs, BM,
                          BN, BD, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, NEED_BWD,
                          NEED_ENT, O3_FWD, POW_LINEAR, FOLD)
    elif is_int_power(pm1):
        res = output_pass(b_q, k_base, v_base, stride_kn, stride_vn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off,
                          W, b_qp, k_pos_base, kpm_base, b_mc, b_tc, pm1, is_soft, anchor, scale, softcap, zs, BM,
                          BN, BD, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, NEED_BWD,
                          NEED_ENT, O3_FWD, POW_INT, FOLD)
    elif pm1 > 32.0:
        res = output_pass(b_q, k_base, v_base, stride_kn, stride_vn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off,
                          W, b_qp, k_pos_base, kpm_base, b_mc, b_tc, pm1, is_soft, anchor, scale, softcap, zs, BM,
                          BN, BD, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, NEED_BWD,
                          NEED_ENT, O3_FWD, POW_NEAR1, FOLD)
    else:
        res = output_pass(b_q, k_base, v_base, stride_kn, stride_vn, p_idx, cnt, o_m, o_d, m_d, m0, m1, Nk, off,
                          W, b_qp, k_pos_base, kpm_base, b_mc, b_tc, pm1, is_soft, anchor, scale, softcap, zs, BM,
                          BN, BD, IS_CAUSAL, HAS_WINDOW, HAS_POS, HAS_KPM, HAS_SOFTCAP, DOT_PREC, NEED_BWD,
                          NEED_ENT, O3_FWD, POW_GENERAL, FOLD)
    b_o, b_o2, b_su, b_ent, b_o3, b_sp = res
    if FOLD:
        # the last Newton step on sum p = 1, made here to first order instead of by one more tau pass: with
        # c = (sum p - 1) / sum u, tau moves by c (alpha - 1) and P V by -c U V (d p / d tau = -u / (alpha - 1))
        b_cn = (b_sp - 1.0) / tl.where(b_su > 0, b_su, 1.0)
        b_c = tl.where((b_su > 0) & (tl.abs(b_sp - 1.0) <= FOLD_MAX_DEFECT), b_cn, 0.0)
        b_c = tl.where(is_soft, 0.0, b_c)
        b_o -= b_c[:, None] * b_o2
        if NEED_BWD:
            # the same step is exact Newton on the convex decreasing sum p - 1, which lands left of the root from
            # any point: a certified bound, one step tighter than the tau kernel's (whose loop stopped a pass early),
            # so the list the backward walks keeps only the tiles that beat it
            b_lo = tl.where(b_su > 0, b_tau + b_cn * a_m1, float("inf"))
            thr = tl.where(is_soft, thr, tl.maximum(thr, tl.min(b_lo, 0) - anchor))
            tl.debug_barrier()  # every thread is done with the list before it is compacted in place
            cnt = compact(p_gap, 1, p_gap, thr, p_idx, p_idx, 0, cnt, CH, False, True)
        b_tau += b_c * a_m1

    o_ptrs = i_b64 * stride_ob + i_h * stride_oh + o_tok[:, None] * stride_on + o_d[None, :]
    tl.store(o + o_ptrs, b_o.to(o.dtype.element_ty), mask=m_qd)
    if NEED_BWD:
        if is_soft:
            b_o2 = b_o
        else:
            b_o2 = b_o2 / tl.where(b_su > 0, b_su, 1.0)[:, None]
        tl.store(o2 + o_ptrs, b_o2.to(o2.dtype.element_ty), mask=m_qd)
        if not SOLVED:
            tl.store(tau + p_row, b_m, mask=m_row)
        if FOLD or not SOLVED:
            tl.store(tau + stride_rs + p_row, b_tau, mask=m_row)
            tl.store(p_thr, thr)
            tl.store(p_cnt, cnt)
        if NEED_ENT:
            # sum p log p, log p = ln(x) / (alpha - 1); O3 stays in log2 x units (the backward scales its dot)
            tl.store(ent + p_row, b_ent * (LN2 / a_m1), mask=m_row)
            if O3_FWD:
                tl.store(o3 + o_ptrs, b_o3.to(o3.dtype.element_ty), mask=m_qd)
