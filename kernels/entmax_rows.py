"""Row-wise alpha-entmax threshold over stored fp32 scores (phase 2 of split-K decode).

Each row of ``s`` holds ``NT`` tiles of ``BN`` scores (masked entries are ``-inf``); ``tmax[row, t]`` is the max
of tile t. tau is kept in score units, ``p_j = [1 + (alpha - 1)(s_j - tau)]_+^{1/(alpha-1)}`` (the spec's
``[(alpha-1) s - tau_z]_+^{1/(alpha-1)}`` with ``tau_z = (alpha - 1) tau - 1``), and p is evaluated as
``exp(log1p(.) / (alpha - 1))`` so its error stays that of softmax as alpha -> 1. ``f(tau) = sum_j p_j - 1`` is
convex and decreasing, ``f'(tau) = -sum_j p_j / (1 + (alpha - 1)(s_j - tau))``, and ``tau = max s`` is a certified
lower bound (the max alone has p = 1):

1. Tile bound. Each tile contributes at least its max's term, so ``g(tau) = sum_t p(tmax_t) - 1 <= f(tau)``; the
   root of g is a certified lower bound on tau, found by Newton on the tile maxima alone (``NT`` values, in
   registers). When the support has at most one key per tile it is tau itself.
2. Only tiles whose max is still on the support side can hold support: their indices are compacted into ``live``
   (usually a few percent of the tiles).
3. Exact Newton from that bound over the scores of the listed tiles only. Newton from the left never overshoots.

Outputs per row: ``tau`` (score units; for softmax rows, alpha == 1, the row max) and ``inv_norm`` = 1 / sum of
the unnormalised probabilities at that tau, so ``p * inv_norm`` sums to one even if Newton stopped a rounding
step early. Softmax rows combine the per-split (max, sum exp) of phase 1 instead. Rows with no finite score get
``tau = +inf``, ``inv_norm = 0`` (p = 0).
"""

import triton
import triton.language as tl


@triton.jit
def entmax_log1p(y):
    """log(1 + y) to full precision for small |y| (Kahan's trick: the rounding of 1 + y cancels)."""
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def entmax_prob(b_s, tau, am1, power):
    """(p, p / (1 + base)) with base = (alpha - 1)(s - tau) > -1 on the support; p = (1 + base)^(1/(alpha-1)).

    alpha = 1.5 and 2 are plain products; other alphas go through exp(log1p(base) / (alpha - 1)), whose error
    stays that of softmax as alpha -> 1 (instead of eps / (alpha - 1)).
    """
    b_base = am1 * (b_s - tau)
    b_on = b_base > -1.0
    b_1 = tl.maximum(1.0 + b_base, 0.0)
    b_gen = tl.exp(entmax_log1p(tl.maximum(b_base, -1.0)) * power)
    b_p = tl.where(power == 2.0, b_1 * b_1, tl.where(power == 1.0, b_1, b_gen))
    b_p = tl.where(b_on, b_p, 0.0)
    # d p / d tau = -p / (1 + base): no second power needed
    return b_p, tl.where(b_on, b_p / tl.where(b_on, b_1, 1.0), 0.0)


@triton.jit
def entmax_tile_bound_sums(p_tm, b_tm0, tau, am1, power, NT, TB: tl.constexpr):
    """Sums of g over all tile maxima: the first block is in registers, the rest (NT > TB) is loaded."""
    b_p, b_d = entmax_prob(b_tm0, tau, am1, power)
    b_sum, b_dsum = tl.sum(b_p, axis=0), tl.sum(b_d, axis=0)
    for i_b in range(1, tl.cdiv(NT, TB)):
        o_t = i_b * TB + tl.arange(0, TB)
        b_tm = tl.load(p_tm + o_t, mask=o_t < NT, other=float("-inf"))
        b_p, b_d = entmax_prob(b_tm, tau, am1, power)
        b_sum += tl.sum(b_p, axis=0)
        b_dsum += tl.sum(b_d, axis=0)
    return b_sum, b_dsum


@triton.jit
def entmax_live_sums(p_s, p_live, n_live, tau, am1, power, TCL: tl.constexpr, BN: tl.constexpr):
    """Exact sums of f over the scores of the listed tiles."""
    o_n = tl.arange(0, BN)
    b_sum = tl.zeros([TCL, BN], dtype=tl.float32)
    b_dsum = tl.zeros([TCL, BN], dtype=tl.float32)
    for i_c in range(0, tl.cdiv(n_live, TCL)):
        o_l = i_c * TCL + tl.arange(0, TCL)
        m_l = o_l < n_live
        b_idx = tl.load(p_live + o_l, mask=m_l, other=0)
        # [TCL, BN]
        b_s = tl.load(p_s + b_idx[:, None].to(tl.int64) * BN + o_n[None, :], mask=m_l[:, None], other=float("-inf"))
        b_p, b_d = entmax_prob(b_s, tau, am1, power)
        b_sum += b_p
        b_dsum += b_d
    return tl.sum(tl.sum(b_sum, axis=1), axis=0), tl.sum(tl.sum(b_dsum, axis=1), axis=0)


@triton.jit(do_not_specialize=["NT", "NS", "NQ", "HQ"])
def entmax_rows_tau_kernel(
    s,
    tmax,
    ml,
    live,
    alpha,
    tau,
    inv_norm,
    NT,
    NS,
    NQ,
    HQ,
    TOL,
    MAX_ITERS: tl.constexpr,
    TB: tl.constexpr,
    TCL: tl.constexpr,
    BN: tl.constexpr,
    BS: tl.constexpr,
):
    i_row = tl.program_id(0).to(tl.int64)
    p_s = s + i_row * NT * BN
    p_tm = tmax + i_row * NT
    p_live = live + i_row * NT
    # rows are laid out [B, HQ, NQ]: the head gives alpha
    am1 = tl.load(alpha + (i_row // NQ) % HQ).to(tl.float32) - 1.0

    if am1 == 0.0:
        # softmax: combine the per-split (max, sum exp(s - max)) of phase 1
        b_m = tl.full([BS], float("-inf"), dtype=tl.float32)
        for i_b in range(0, tl.cdiv(NS, BS)):
            o_b = i_b * BS + tl.arange(0, BS)
            b_m = tl.maximum(b_m, tl.load(ml + i_row * 2 * NS + o_b, mask=o_b < NS, other=float("-inf")))
        m = tl.max(b_m, axis=0)
        valid = m > float("-inf")
        m = tl.where(valid, m, 0.0)
        b_l = tl.zeros([BS], dtype=tl.float32)
        for i_b in range(0, tl.cdiv(NS, BS)):
            o_b = i_b * BS + tl.arange(0, BS)
            b_ms = tl.load(ml + i_row * 2 * NS + o_b, mask=o_b < NS, other=float("-inf"))
            b_ls = tl.load(ml + i_row * 2 * NS + NS + o_b, mask=o_b < NS, other=0.0)
            b_l += tl.where(b_ms > float("-inf"), b_ls * tl.exp(b_ms - m), 0.0)
        b_tau = m
        b_sum = tl.sum(b_l, axis=0)
    else:
        power = 1.0 / am1
        # 1) certified bound from the tile maxima
        o_t = tl.arange(0, TB)
        b_tm0 = tl.load(p_tm + o_t, mask=o_t < NT, other=float("-inf"))
        m = tl.max(b_tm0, axis=0)
        for i_b in range(1, tl.cdiv(NT, TB)):
            o_tb = i_b * TB + o_t
            m = tl.maximum(m, tl.max(tl.load(p_tm + o_tb, mask=o_tb < NT, other=float("-inf")), axis=0))
        valid = m > float("-inf")
        m = tl.where(valid, m, 0.0)
        b_tau = m  # the max alone has p = 1: g(max) >= 0
        b_sum, b_dsum = entmax_tile_bound_sums(p_tm, b_tm0, b_tau, am1, power, NT, TB)
        it = 0
        moved = valid
        while ((b_sum - 1.0) > TOL) & (it < MAX_ITERS) & moved:
            b_new = b_tau + tl.maximum((b_sum - 1.0) / b_dsum, 0.0)
            moved = b_new > b_tau
            b_tau = b_new
            b_sum, b_dsum = entmax_tile_bound_sums(p_tm, b_tm0, b_tau, am1, power, NT, TB)
            it += 1
        # 2) compact the tiles that can still hold support
        n_live = 0
        for i_b in range(0, tl.cdiv(NT, TB)):
            o_tb = i_b * TB + o_t
            b_tm = tl.load(p_tm + o_tb, mask=o_tb < NT, other=float("-inf"))
            m_live = am1 * (b_tm - b_tau) > -1.0
            o_pos = n_live + tl.cumsum(m_live.to(tl.int32), axis=0) - 1
            tl.store(p_live + o_pos, o_tb, mask=m_live)
            n_live += tl.sum(m_live.to(tl.int32), axis=0)
        tl.debug_barrier()  # the list is read back by other threads of this program
        # 3) exact Newton over the listed tiles, from the certified bound
        b_sum, b_dsum = entmax_live_sums(p_s, p_live, n_live, b_tau, am1, power, TCL, BN)
        it = 0
        moved = valid
        while ((b_sum - 1.0) > TOL) & (it < MAX_ITERS) & moved:
            # convexity: a Newton step from the left stays left of tau; clamp rounding to keep it monotone
            b_new = b_tau + tl.maximum((b_sum - 1.0) / b_dsum, 0.0)
            moved = b_new > b_tau
            b_tau = b_new
            b_sum, b_dsum = entmax_live_sums(p_s, p_live, n_live, b_tau, am1, power, TCL, BN)
            it += 1
    b_tau = tl.where(valid, b_tau, float("inf"))
    b_inv = tl.where(valid & (b_sum > 0), 1.0 / tl.where(b_sum > 0, b_sum, 1.0), 0.0)
    tl.store(tau + i_row, b_tau)
    tl.store(inv_norm + i_row, b_inv)
