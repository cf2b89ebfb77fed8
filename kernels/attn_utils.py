"""Shared tile geometry and masking for the AdaSplash attention kernels.

Positions follow ``hf_adasplash.masks``: by default query row i sits at ``i + off`` (``off = Nk - Nq``, bottom-right
aligned) and key j at ``j``; with explicit positions (``HAS_POS``) every tile is masked and no range is narrowed.
All scores inside the kernels live in "z units": ``z = s * zs`` with ``zs = alpha - 1`` (entmax heads, so that
``p = [z - tau]_+ ** (1 / (alpha - 1))``) or ``zs = log2(e)`` (softmax heads, so that ``p = exp2(z - tau)``).
"""

import os

import triton
import triton.language as tl

# tl.log2 is libdevice's log2f: ~25 instructions of polynomial and special cases per element, which made the general
# power's passes issue-bound (ncu: 84% of issue slots in the tau kernel at alpha = 1.4; H100, bench/NOTES.md v20).
# Half-precision inputs take the hardware's lg2.approx.ftz instead (one special-function op, ~2^-22 absolute error,
# far below their own rounding); fp32, the accuracy path, keeps libdevice. The interpreter runs no PTX.
FAST_LOG2 = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")


@triton.jit
def kv_range(m0, m1, Nk, off, W, BN: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
             HAS_POS: tl.constexpr):
    """[lo, hi) of keys that rows m0..m1 (inclusive) may see; lo is aligned down to a BN tile."""
    lo = m0 * 0
    hi = Nk + m0 * 0
    if not HAS_POS:
        if IS_CAUSAL:
            hi = tl.minimum(Nk, m1 + off + 1)
            if HAS_WINDOW:
                lo = tl.maximum(lo, m0 + off - W + 1)
        elif HAS_WINDOW:
            lo = tl.maximum(lo, m0 + off - W + 1)
            hi = tl.minimum(Nk, m1 + off + W)
    lo = (lo // BN) * BN
    return lo, hi


@triton.jit
def seq_bounds(cu_seqlens_q, cu_seqlens_k, i_b, NQ, NK, IS_VARLEN: tl.constexpr):
    """(first token, length) of batch entry ``i_b``'s queries and keys: a varlen segment, or the padded layout."""
    if IS_VARLEN:
        bos_q = tl.load(cu_seqlens_q + i_b).to(tl.int32)
        Nq = tl.load(cu_seqlens_q + i_b + 1).to(tl.int32) - bos_q
        bos_k = tl.load(cu_seqlens_k + i_b).to(tl.int32)
        Nk = tl.load(cu_seqlens_k + i_b + 1).to(tl.int32) - bos_k
    else:
        bos_q, Nq, bos_k, Nk = NQ * 0, NQ, NK * 0, NK
    return bos_q, Nq, bos_k, Nk


@triton.jit
def query_block(cu_seqlens_q, cu_seqlens_k, NQ, NK, NMB, H: tl.constexpr, G: tl.constexpr, BM: tl.constexpr,
                IS_VARLEN: tl.constexpr, HEAVY_FIRST: tl.constexpr, HG=1):
    """This program's query block (grid: block, batch x head): its indices, the sequence's bounds and rows m0..m1.

    ``HEAVY_FIRST`` (grid: batch x head, block): the last query blocks, which see the most keys under a causal mask,
    are launched first; the short ones then fill the last wave instead of one long block per head trailing behind
    (longest-first scheduling). It runs in groups of ``HG`` heads (of the batch x head axis, in launch order): a
    group's blocks from the heaviest down, its heads interleaved, then the next group. Sized so that a group's K/V
    stays in L2 (``tiling.heavy_group``), as flash attention 3's longest-first scheduler groups heads; HG = B x H
    is one group, every head's heaviest block at once, whose K/V no L2 holds.

    Returns (i_m, i_bh, i_b as int64, i_h, KV head, first query token, Nq, first key token, Nk, m0, m1); the caller
    returns early when m0 >= Nq (a block past this varlen segment's end).
    """
    if HEAVY_FIRST:
        BH = tl.num_programs(0)
        pid = tl.program_id(1) * BH + tl.program_id(0)  # launch order
        i_g = pid // (HG * NMB)
        rem = pid - i_g * (HG * NMB)
        n_g = tl.minimum(HG, BH - i_g * HG)  # the last group may hold fewer heads
        j = rem // n_g
        i_m, i_bh = NMB - 1 - j, i_g * HG + (rem - j * n_g)
    else:
        i_m, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos_q, Nq, bos_k, Nk = seq_bounds(cu_seqlens_q, cu_seqlens_k, i_b, NQ, NK, IS_VARLEN)
    m0 = i_m * BM
    m1 = tl.minimum(m0 + BM, Nq) - 1
    return i_m, i_bh, i_b.to(tl.int64), i_h, i_h // G, bos_q, Nq, bos_k, Nk, m0, m1


@triton.jit
def alpha_terms(alpha, i_h):
    """Head i_h's (alpha - 1, is softmax, z scale, pm1 = 1/(alpha-1) - 1); softmax heads get alpha - 1 := 1.

    alpha arrives in float64: alpha - 1 is taken before the cast, so alpha = 1.0001 keeps full precision.
    """
    a_m1 = (tl.load(alpha + i_h) - 1.0).to(tl.float32)
    is_soft = a_m1 == 0.0
    a_m1 = tl.where(is_soft, 1.0, a_m1)
    pm1 = 1.0 / a_m1 - 1.0  # exponent of u = x^(p-1) = p^(2-alpha)
    # alpha = 1 + 1/n (n = 1..5) within float32 rounding (a learned alpha stored through a sigmoid lands a few ulps
    # off): exactly that alpha, so the multiplication-only power classes take it
    pm1_n = tl.floor(pm1 + 0.5)
    on_grid = (tl.abs(pm1 - pm1_n) <= INT_POW_TOL) & (pm1_n <= 4.0)
    pm1 = tl.where(on_grid, pm1_n, pm1)
    a_m1 = tl.where(on_grid, 1.0 / (pm1_n + 1.0), a_m1)
    zs = tl.where(is_soft, 1.4426950408889634, a_m1)  # log2(e): softmax heads' scores in base-2 exponent units
    return a_m1, is_soft, zs, pm1


@triton.jit
def is_int_power(pm1):
    """alpha = 4/3, 5/4 or 6/5 (pm1 = 2, 3, 4): the ``POW_INT`` class."""
    return (pm1 >= 2.0) & (pm1 <= 4.0) & (pm1 == tl.floor(pm1))


@triton.jit
def q_range(n0, n1, Nq, off, W, BM: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
            HAS_POS: tl.constexpr):
    """[lo, hi) of query rows that may see keys n0..n1 (inclusive); lo is aligned down to a BM tile."""
    lo = n0 * 0
    hi = Nq + n0 * 0
    if not HAS_POS:
        if IS_CAUSAL:
            lo = tl.maximum(lo, n0 - off)
            if HAS_WINDOW:
                hi = tl.minimum(Nq, n1 - off + W)
        elif HAS_WINDOW:
            lo = tl.maximum(lo, n0 - off - W + 1)
            hi = tl.minimum(Nq, n1 - off + W)
    lo = (lo // BM) * BM
    return lo, hi


@triton.jit
def tile_needs_mask(m0, m1, n0, n1, Nk, off, W, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                    HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr):
    """Whether the tile rows m0..m1 x keys n0..n1 (n1 = last key of the full tile) holds any hidden entry."""
    need = n1 >= Nk
    if HAS_POS or HAS_KPM:
        need = need | True
    else:
        if IS_CAUSAL:
            need = need | (n1 > m0 + off)
            if HAS_WINDOW:
                need = need | (n0 < m1 + off - W + 1)
        elif HAS_WINDOW:
            need = need | (n0 < m1 + off - W + 1) | (n1 > m0 + off + W - 1)
    return need


@triton.jit
def visible(i_q, i_k, Nk, off, W, b_qp, b_kp, b_kpm, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
            HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr):
    """Boolean visibility of keys ``i_k`` to rows ``i_q`` (broadcast shapes; b_qp/b_kp/b_kpm broadcast likewise)."""
    vis = i_k < Nk
    if HAS_POS:
        diff = b_qp - b_kp
    else:
        diff = i_q + off - i_k
    if IS_CAUSAL:
        vis = vis & (diff >= 0)
        if HAS_WINDOW:
            vis = vis & (diff < W)
    elif HAS_WINDOW:
        vis = vis & (diff < W) & (diff > -W)
    if HAS_KPM:
        vis = vis & b_kpm
    return vis


@triton.jit
def dot_to_z(b_s, scale, softcap, zs, HAS_SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr):
    """Raw q.k dot products -> z units, with the optional tanh soft-cap (tanh via exp2 for portability).

    fp32 inputs (``DOT_PREC == "ieee"``) without soft-cap come with q already scaled (``prescale_q``): the dot is z.
    """
    if HAS_SOFTCAP:
        b_t = b_s * (scale / softcap)
        # tanh(t) = 1 - 2 / (exp(2t) + 1): exact limits at +-inf, no libdevice call
        b_th = 1.0 - 2.0 / (tl.exp2(b_t * 2.8853900817779268) + 1.0)
        b_z = b_th * (softcap * zs)
    elif DOT_PREC == "ieee":
        b_z = b_s
    else:
        b_z = b_s * (scale * zs)
    return b_z


@triton.jit
def prescale_q(b_q, scale, zs, HAS_SOFTCAP: tl.constexpr, DOT_PREC: tl.constexpr):
    """fp32: q times scale * zs once per program, so the dot is z and no multiply follows it.

    A multiply after the dot gets fused by the compiler with the next subtraction (z - tau) into one FMA, whose
    unrounded product no longer cancels exactly against the row max: at |z| ~ 1e4 the top entry of a row was off
    by half an ulp of z. fp32 is the dtype held to 1e-5; bf16/fp16 keep q as it is for the tensor cores.
    """
    if DOT_PREC == "ieee" and not HAS_SOFTCAP:
        b_q = b_q * (scale * zs)
    return b_q


@triton.jit
def z_minus_tau(b_z, b_m, b_off, DOT_PREC: tl.constexpr):
    """x = z - tau with tau = m + off per row (row max m, offset off < 0), operands broadcast by the caller.

    fp32 subtracts the max first: a row's top entries then cancel exactly and x keeps full precision however large
    |z| is (the offset is small). bf16/fp16 inputs fold tau into one subtraction, far below their own rounding.
    """
    if DOT_PREC == "ieee":
        b_x = (b_z - b_m) - b_off
    else:
        b_x = b_z - (b_m + b_off)
    return b_x


@triton.jit
def softcap_grad(b_z, b_ds, softcap, zs, HAS_SOFTCAP: tl.constexpr):
    """Chain rule through the soft-cap: d s_capped / d s_raw = 1 - tanh^2 (zero where the entry is hidden)."""
    if HAS_SOFTCAP:
        b_th = b_z / (softcap * zs)
        b_ds = tl.where(b_z > float("-inf"), b_ds * (1.0 - b_th * b_th), 0.0)
    return b_ds


@triton.jit
def log2_atanh(b_t):
    """log2(x) as 2 atanh(t) / ln 2 with t = (x - 1) / (x + 1), by its series: ~1e-8 relative for x in [1/2, 1]."""
    b_t2 = b_t * b_t
    b_s = b_t2 * (1.0 / 13.0) + 1.0 / 11.0
    b_s = b_s * b_t2 + 1.0 / 9.0
    b_s = b_s * b_t2 + 1.0 / 7.0
    b_s = b_s * b_t2 + 1.0 / 5.0
    b_s = b_s * b_t2 + 1.0 / 3.0
    b_s = b_s * b_t2 + 1.0
    return (2.0 * 1.4426950408889634) * b_t * b_s


@triton.jit
def log2_near1(b_x):
    """log2(x) for x in [0, 1] with ~1e-8 relative accuracy near x = 1 (see ``entmax_log2``); half-precision heads
    only (fp32 takes ``log2_1p_near``), so below 1/2, where x^pm1 < 2^-32, the hardware approximation does."""
    # x - 1 is exact for x in [1/2, 1]
    return tl.where(b_x >= 0.5, log2_atanh((b_x - 1.0) / (b_x + 1.0)), log2_of(b_x, False))


@triton.jit
def log2_1p_near(b_r):
    """log2(1 + r) for r in [-1, 0], ~1e-8 relative near r = 0: ``log2_near1`` from r = x - 1 itself, which an fp32
    head near alpha = 1 carries to full precision (``near1_anchor``) where x, ~1, would be rounded to 6e-8."""
    return tl.where(b_r >= -0.5, log2_atanh(b_r / (b_r + 2.0)), tl.log2(1.0 + b_r))


@triton.jit
def near1_anchor(pm1, DOT_PREC: tl.constexpr):
    """How far below the row max an fp32 head near alpha = 1 (pm1 > 32) anchors its tau offset: 1, else 0.

    Such a head carries ``tau - (m - 1)`` instead of ``tau - m``, so r = (z - m) - offset is x - 1 to full precision:
    x = z - tau itself sits near 1, where fp32 rounds it to 6e-8, and p = x^(1/(alpha-1)) multiplies that error by
    up to 1e4 (d(alpha) was off by 160% at alpha = 1.0001). Half-precision inputs keep the plain offset: their own
    rounding is far above it. Softmax heads have pm1 = 0.
    """
    if DOT_PREC == "ieee":
        anchor = tl.where(pm1 > 32.0, 1.0, 0.0)
    else:
        anchor = 0.0
    return anchor


@triton.jit
def x_of_r(b_r, anchor, DOT_PREC: tl.constexpr):
    """x = z - tau from r = (z - m) - stored offset (``near1_anchor``); half precision has no anchor."""
    b_x = b_r
    if DOT_PREC == "ieee":
        b_x = b_r + anchor
    return b_x


@triton.jit
def log2_of(b_x, EXACT: tl.constexpr):
    """log2(x): libdevice's where ``EXACT`` (fp32 inputs), else the hardware approximation (``FAST_LOG2``).

    The hardware op flushes subnormal x to zero (log2 = -inf): harmless in a power (exp2(-inf) = 0), but a product
    ``p log2 x`` would be 0 * -inf = NaN there, so the entropy terms mask on p > 0 (p is 0 at such x), not x > 0.
    """
    if EXACT or not FAST_LOG2:
        b_l = tl.log2(b_x)
    else:
        b_l = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [b_x], dtype=tl.float32,
                                        is_pure=True, pack=1)
    return b_l


@triton.jit
def entmax_log2(b_x, pm1, b_r=None, FROM_R: tl.constexpr = False):
    """log2(x) for x in [0, 1], accurate near x = 1 when alpha is close to 1 (pm1 = 1/(alpha-1) - 1 > 32).

    The powers x^(1/(alpha-1)) multiply log2(x) by up to 1e4 there, and the hardware log2 (absolute error ~1e-7,
    not even exactly 0 at x = 1) would cost ~1e-3 of relative accuracy. ln x = 2 atanh(t), t = (x-1)/(x+1), is exact
    at x = 1 and ~1e-8 relative for x >= 1/2; below 1/2, x^pm1 < 2^-32 and the hardware log2 is good enough.
    ``FROM_R``: fp32, where such a head also has r = x - 1 exactly (``near1_anchor``), and libdevice's log2.
    """
    b_l = log2_of(b_x, FROM_R)
    if pm1 > 32.0:
        if FROM_R:
            b_l = log2_1p_near(b_r)
        else:
            b_l = log2_near1(b_x)
    return b_l


# alpha classes with their own code path (constexpr): a runtime branch whose result is a whole tile keeps every
# variant's tile live at once, which is what pushed the tau passes to 255 registers
POW_GENERAL = tl.constexpr(0)
POW_SQUARE = tl.constexpr(1)  # alpha = 1.5: p = x^2, u = x, u2 = 1
POW_LINEAR = tl.constexpr(2)  # alpha = 2: p = x, u = 1, no curvature
POW_NEAR1 = tl.constexpr(3)  # alpha < 1.0303 (pm1 > 32): the general power with the accurate log2 near x = 1
POW_SOFTMAX = tl.constexpr(4)  # alpha = 1: p = exp2(z - tau)
POW_ANY = tl.constexpr(5)  # every class in one loop, chosen per element at run time
POW_INT = tl.constexpr(6)  # alpha = 4/3, 5/4, 6/5 (pm1 = 2, 3, 4): u = x^pm1 by multiplications, where learned
# alphas settle (1.25-1.45), for heads snapped to that grid
MIN_LOG_X = tl.constexpr(5.421010862427522e-20)  # 2^-64
# |pm1 - n| this small counts as n: alpha = 6/5 stored a few float32 ulps off moves pm1 by ~6e-6 (d pm1/d alpha =
# -25 there); taking p = n instead then changes p by ~1e-6 relative
INT_POW_TOL = tl.constexpr(1.52587890625e-05)  # 2^-16


@triton.jit
def entmax_u_u2_of(b_x, pm1, KIND: tl.constexpr, NEED_U2: tl.constexpr, b_r=None, FROM_R: tl.constexpr = False):
    """(u, u2) = (x^(p-1), x^(p-2)) for clamped x >= 0 (0 off the support) on a constexpr ``POW_*`` path
    (``FROM_R``: the near-1 path takes its log from r = x - 1, see ``near1_anchor``)."""
    if KIND == POW_SQUARE:
        b_u = b_x
        b_u2 = tl.where(b_x > 0, 1.0, 0.0)
    elif KIND == POW_LINEAR:
        b_u = tl.where(b_x > 0, 1.0, 0.0)
        b_u2 = tl.zeros_like(b_x)
    elif KIND == POW_INT:
        # u2 = x^(pm1-1): x, x^2 or x^3, no special-function op at all; the branch is on a per-head scalar and
        # holds one tile besides x (selects between precomputed powers spilled the D = 128 tau kernel)
        if pm1 == 2.0:
            b_u2 = b_x
        elif pm1 == 3.0:
            b_u2 = b_x * b_x
        else:
            b_u2 = b_x * b_x * b_x
        b_u = b_u2 * b_x
    else:
        b_xl = b_x
        if NEED_U2:
            # the log at x >= 2^-64 so that u2 = x^(p-2) stays finite for p < 2 (alpha > 1.5), where it grows as
            # x -> 0; a nonzero x = z - tau is never that small (the top entry's x is >= N^(1-alpha), and the others
            # differ from tau by at least its ulp)
            b_xl = tl.maximum(b_x, MIN_LOG_X)
        if KIND == POW_NEAR1:
            if FROM_R:
                b_l = log2_1p_near(b_r)
            else:
                b_l = log2_near1(b_xl)
        else:
            b_l = log2_of(b_xl, FROM_R)
        if NEED_U2:
            # one exp2 for both, u = u2 x: two exp2 would make three special-function ops per element, which bound
            # these passes
            b_u2 = tl.where(b_x > 0, tl.exp2((pm1 - 1.0) * b_l), 0.0)
            b_u = b_u2 * b_x
        else:
            b_u = tl.where(b_x > 0, tl.exp2(pm1 * b_l), 0.0)
            b_u2 = tl.zeros_like(b_x)
    return b_u, b_u2


@triton.jit
def entmax_xup(b_x, pm1, is_soft, KIND: tl.constexpr, b_r=None, FROM_R: tl.constexpr = False):
    """(x, u, p) from x = z - tau on a ``POW_*`` path: x clamped at 0 for entmax heads, u = x^(p-1) and the
    probability p = u x (softmax heads: p = u = exp2(x), x as given). ``FROM_R``: see ``entmax_log2``."""
    if KIND == POW_SOFTMAX:
        b_p = tl.exp2(b_x)
        b_u = b_p
    elif KIND == POW_ANY:
        if is_soft:
            b_p = tl.exp2(b_x)
            b_u = b_p
        else:
            b_x = tl.maximum(b_x, 0.0)  # hidden entries are -inf: 0 * -inf would be NaN
            b_u = entmax_u(b_x, pm1, b_r, FROM_R)
            b_p = b_u * b_x
    else:
        b_x = tl.maximum(b_x, 0.0)
        b_u, b_u2 = entmax_u_u2_of(b_x, pm1, KIND, False, b_r, FROM_R)
        b_p = b_u * b_x
    return b_x, b_u, b_p


@triton.jit
def entmax_log2_of(b_x, pm1, KIND: tl.constexpr, b_r=None, FROM_R: tl.constexpr = False):
    """log2(x) on a ``POW_*`` path (accurate near x = 1 where alpha is near 1, as ``entmax_log2``)."""
    if KIND == POW_NEAR1:
        if FROM_R:
            b_l = log2_1p_near(b_r)
        else:
            b_l = log2_near1(b_x)
    elif KIND == POW_ANY:
        b_l = entmax_log2(b_x, pm1, b_r, FROM_R)
    else:
        b_l = log2_of(b_x, FROM_R)
    return b_l


@triton.jit
def entmax_u(b_x, pm1, b_r=None, FROM_R: tl.constexpr = False):
    """u = x^(1/(alpha-1) - 1) for clamped x >= 0 (0 off the support), so that p = u * x.

    alpha = 1.5 (u = x), 2 (u = 1) and 4/3, 5/4, 6/5 (u = x^2, x^3, x^4) skip the two transcendental ops per element
    that the general power costs: on Hopper the special-function units, not the tensor cores, bound these passes.
    """
    if pm1 == 1.0:
        b_u = b_x
    elif pm1 == 0.0:
        b_u = tl.where(b_x > 0, 1.0, 0.0)
    elif is_int_power(pm1):
        b_u, b_u2 = entmax_u_u2_of(b_x, pm1, POW_INT, False)
    else:
        b_u = tl.where(b_x > 0, tl.exp2(pm1 * entmax_log2(b_x, pm1, b_r, FROM_R)), 0.0)
    return b_u


@triton.jit
def compact(p_val, stride_val, p_thr, thr, p_idx, p_out, start, end, CH: tl.constexpr, THR_VEC: tl.constexpr,
            GATHER: tl.constexpr):
    """Writes to ``p_out`` the indices i in [start, end) whose value beats the threshold; returns their count.

    Values are ``p_val[i * stride_val]`` (or ``p_val[p_idx[i] * stride_val]`` with ``GATHER``, indices then being
    ``p_idx[i]``); the threshold is the scalar ``thr`` or ``p_thr[index]`` (``THR_VEC``). In place is allowed
    (``p_out == p_idx``): an entry is written at or before the position it was read from.
    """
    cnt = start * 0
    for c0 in range(start, end, CH):
        o_c = c0 + tl.arange(0, CH)
        m_c = o_c < end
        o_i = o_c
        if GATHER:
            o_i = tl.load(p_idx + o_c, mask=m_c, other=0)
            tl.debug_barrier()  # every thread has read this chunk before any compacted entry overwrites it
        b_g = tl.load(p_val + o_i.to(tl.int64) * stride_val, mask=m_c, other=float("-inf"))
        if THR_VEC:
            b_keep = m_c & (b_g > tl.load(p_thr + o_i, mask=m_c, other=float("inf")))
        else:
            b_keep = m_c & (b_g > thr)
        b_k = b_keep.to(tl.int32)
        tl.store(p_out + cnt + tl.cumsum(b_k, 0) - 1, o_i, mask=b_keep)
        cnt += tl.sum(b_k, 0)
    return cnt
