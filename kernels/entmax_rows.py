"""Row-wise alpha-entmax threshold over stored fp32 scores (phase 2 of split-K decode).

Each row of ``s`` holds ``NT`` tiles of ``BN`` scores (masked entries are ``-inf``); ``tmax[row, t]`` is the max
of tile t. With ``z = (alpha - 1) s`` the kernel finds tau per row by Newton from the certified lower bound
``max(z) - 1``: ``f(tau) = sum_j [z_j - tau]_+^{1/(alpha-1)} - 1`` is convex decreasing, so every iterate stays a
lower bound and only tiles with ``(alpha-1) * tmax > tau`` can hold support. Those are the only tiles loaded
(masked loads move no bytes), and the set shrinks as tau rises: after one full pass the later passes touch only
the few tiles near the support.

Outputs per row: ``tau`` (z units; for softmax rows, alpha == 1, the row max in s units) and ``inv_norm`` = 1 / sum
of the unnormalised probabilities at that tau, so ``p = [z - tau]_+^{1/(alpha-1)} * inv_norm`` sums to one even if
Newton stopped a rounding step early. Rows with no finite score get ``tau = +inf``, ``inv_norm = 0`` (p = 0).
"""

import triton
import triton.language as tl

# exp(x) < 1e-38 below this: a softmax tile whose max is this far under the row max contributes nothing in fp32.
SOFTMAX_CUTOFF = tl.constexpr(-88.0)


@triton.jit
def entmax_rows_pass(p_s, p_tm, tau, am1, power, NT, SOFT: tl.constexpr, TC: tl.constexpr, BN: tl.constexpr):
    """One pass over a row: (sum p, sum dp/dtau * power) at tau, loading only tiles that can be live."""
    o_t = tl.arange(0, TC)
    o_n = tl.arange(0, BN)
    b_sum = tl.zeros([TC, BN], dtype=tl.float32)
    b_dsum = tl.zeros([TC, BN], dtype=tl.float32)
    for i_c in range(0, tl.cdiv(NT, TC)):
        o_tc = i_c * TC + o_t
        # [TC]
        b_tm = tl.load(p_tm + o_tc, mask=o_tc < NT, other=float("-inf"))
        if SOFT:
            m_live = (b_tm - tau) > SOFTMAX_CUTOFF
        else:
            m_live = (b_tm * am1) > tau
        # [TC, BN]
        b_s = tl.load(p_s + o_tc[:, None] * BN + o_n[None, :], mask=m_live[:, None], other=float("-inf"))
        if SOFT:
            b_sum += tl.exp(b_s - tau)
        else:
            b_x = tl.maximum(b_s * am1 - tau, 0.0)
            b_on = b_x > 0
            b_xp = tl.where(power == 2.0, b_x * b_x, tl.exp2(tl.log2(b_x) * power))
            b_xp = tl.where(b_on, b_xp, 0.0)
            b_sum += b_xp
            b_dsum += tl.where(b_on, b_xp / tl.where(b_on, b_x, 1.0), 0.0)
    return tl.sum(tl.sum(b_sum, axis=1), axis=0), power * tl.sum(tl.sum(b_dsum, axis=1), axis=0)


@triton.jit(do_not_specialize=["NT", "NQ", "HQ"])
def entmax_rows_tau_kernel(
    s,
    tmax,
    alpha,
    tau,
    inv_norm,
    NT,
    NQ,
    HQ,
    TOL,
    MAX_ITERS: tl.constexpr,
    TC: tl.constexpr,
    BN: tl.constexpr,
    BT: tl.constexpr,
):
    i_row = tl.program_id(0).to(tl.int64)
    p_s = s + i_row * NT * BN
    p_tm = tmax + i_row * NT
    # rows are laid out [B, HQ, NQ]: the head gives alpha
    am1 = tl.load(alpha + (i_row // NQ) % HQ).to(tl.float32) - 1.0

    # row max from the tile maxima (s units)
    b_m = tl.full([BT], float("-inf"), dtype=tl.float32)
    for i_t in range(0, tl.cdiv(NT, BT)):
        o_t = i_t * BT + tl.arange(0, BT)
        b_m = tl.maximum(b_m, tl.load(p_tm + o_t, mask=o_t < NT, other=float("-inf")))
    m = tl.max(b_m, axis=0)
    valid = m > float("-inf")
    m = tl.where(valid, m, 0.0)

    if am1 == 0.0:
        b_tau = m
        b_sum, _ = entmax_rows_pass(p_s, p_tm, b_tau, am1, 1.0, NT, True, TC, BN)
    else:
        power = 1.0 / am1
        b_tau = m * am1 - 1.0  # f(max z - 1) >= 0: certified lower bound
        b_sum, b_dsum = entmax_rows_pass(p_s, p_tm, b_tau, am1, power, NT, False, TC, BN)
        it = 0
        moved = valid
        while ((b_sum - 1.0) > TOL) & (it < MAX_ITERS) & moved:
            # convexity: a Newton step from the left stays left of tau; clamp rounding to keep it monotone
            b_new = b_tau + tl.maximum((b_sum - 1.0) / b_dsum, 0.0)
            moved = b_new > b_tau
            b_tau = b_new
            b_sum, b_dsum = entmax_rows_pass(p_s, p_tm, b_tau, am1, power, NT, False, TC, BN)
            it += 1
    b_tau = tl.where(valid, b_tau, float("inf"))
    b_inv = tl.where(valid & (b_sum > 0), 1.0 / tl.where(b_sum > 0, b_sum, 1.0), 0.0)
    tl.store(tau + i_row, b_tau)
    tl.store(inv_norm + i_row, b_inv)
