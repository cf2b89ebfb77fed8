#!/usr/bin/env python
"""Float64 simulation of the forward's tau loop, with and without the output pass's folded Newton step (NOTES v9).

Follows the kernel's rules per query block: start at m - 1, Halley steps bracketed by the Newton point, stop when
every row's step is below the tolerance (bf16/fp16: 2^-6 scaled towards alpha = 1 and 2; fp32: 2^-12). The fold
variant stops at the first pass (from the second on) whose steps are all below ``mult`` x the tolerance, then
makes the output pass's first-order step. Prints passes per block and the output / O2 / tau errors against the
exact entmax, for random causal inputs (``--temp`` scales the scores). ``err_norm``: the output at the fold's stop
normalised by sum p instead of folded, which would spare the output pass its U V dot (NOTES v20: too coarse).

    python scripts/tau_fold_sim.py --alphas 1.25,1.5,1.75 --mult 16

``--scan-start`` (alpha = 1 + 1/n only) also simulates the first tau step made by the scan: it visits the diagonal
tile first, so it can keep the exact sums ``sum x^n``, ``x^(n-1)``, ``x^(n-2)`` of ``x = [z - tau0]_+`` at
``tau0 = (the diagonal tile's row max) - 1 <= m - 1``, a valid point for a Newton/Halley step (certified from the
left). The tau loop then starts at that step's point, and its first pass may already stop at the fold's tolerance.
``--sink`` adds a score bump on key 0 (an attention sink: the row max then lies outside the diagonal tile).

``passes_closed`` (alpha = 1.5): the loop's passes if each pass also made the closed-form step on its support and
stopped a row where that step is exact (``closed_form_step``): fewer passes on local rows, none saved on random
ones (bench/NOTES.md v24).
"""

import argparse

import numpy as np


def scan_start_sums(z, p, bn=64, b0=0, bm=128):
    """(t0, S0, S1, S2): the sums of x = [z - tau0]_+ at tau0 = (the diagonal tile's row max) - 1, which the scan can
    keep exactly as it goes (the diagonal tile comes first), and t0 = tau0 - (final row max)."""
    rows = z[b0:b0 + bm]
    diag = b0 // bn
    ref = rows[:, diag * bn:(diag + 1) * bn].max(1) - 1.0
    x = np.maximum(rows - ref[:, None], 0.0)
    x = np.where(np.isfinite(x), x, 0.0)
    on = x > 0
    s0, s1, s2 = (np.where(on, x**j, 0.0).sum(1) if j >= 0 else 0 * ref for j in (p, p - 1, p - 2))
    return ref - rows.max(1), s0, s1, s2


def tile_maxima(zb, bn=64):
    """Each row's best score per ``bn``-key tile, ``[rows, tiles]`` (a partial last tile padded with -inf)."""
    zp = np.pad(zb, ((0, 0), (0, (-zb.shape[1]) % bn)), constant_values=-np.inf)
    return zp.reshape(len(zb), -1, bn).max(2)


def tile_max_start(zb, p, k, bn=64, newton=0):
    """A certified lower bound on each row's tau from its ``k`` largest per-tile maxima (``bn``-key tiles): every
    tile holds an entry at its max, so sum_j [M_j - t]_+^p over those k maxima is at most the row's sum at t, and
    the t where that partial sum is 1 lies at or below tau. The scan sees each tile's row maxima as it reduces them
    into the row max; keeping the top k per row costs O(k) per row and tile, next to the tile's QK^T."""
    top = -np.sort(-tile_maxima(zb, bn), axis=1)[:, :k]
    if newton:
        # the kernel's way: Newton steps on h = S0^(alpha-1) - 1 from m - 1, each a certified bound (h is convex)
        t = np.full(len(zb), -1.0)
        for _ in range(newton):
            x = np.where(np.isfinite(top), np.maximum(top - t[:, None], 0.0), 0.0)
            s0 = (x**p).sum(1)
            s1 = np.where(x > 0, x ** (p - 1), 0.0).sum(1)
            t = t + (s0 - s0 ** (1 - 1 / p)) / s1
        return t
    lo, hi = np.full(len(zb), -1.0), np.zeros(len(zb))  # offsets from the row max (0): tau in [m - 1, m]
    for _ in range(100):
        mid = (lo + hi) / 2
        big = np.where(np.isfinite(top), np.maximum(top - mid[:, None], 0.0) ** p, 0.0).sum(1) > 1
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    return lo


def halley(t, s0, s1, s2, am1, pm1, t_lo, t_hi):
    """The kernel's step from the exact sums at t: the bracket [t_lo, t_hi) tightened by them (the Newton point is
    a certified lower bound; S0 < 1 puts t above the root), then (new t, Newton step, curvature term, t_lo, t_hi)."""
    dn = (s0 - s0 ** (1 - am1)) / s1  # Newton on h = S0^(alpha-1) - 1
    t_lo = np.maximum(t_lo, t + dn)
    t_hi = np.where(s0 < 1, np.minimum(t_hi, t), t_hi)
    r = np.maximum(pm1 * (s0 * s2 - s1 * s1) / (2 * s0 * s1), 0.0) if pm1 != 0 else np.zeros_like(t)
    den = 1 - dn * r
    new = t + np.where(den > 0.25, dn / den, dn)
    return np.where((new >= t_lo) & (new < t_hi), new, t_lo), dn, r, t_lo, t_hi


def square_sums(zb, t):
    """alpha = 1.5: x = z - t per entry and the pass's sums S0 = sum x^2, S1 = sum x, S2 = #(x > 0) over x > 0."""
    x = zb - t[:, None]
    xp = np.where(np.isfinite(x), np.maximum(x, 0.0), 0.0)
    return x, (xp * xp).sum(1), xp.sum(1), (xp > 0).sum(1).astype(float)


def closed_form_step(zb, t, sums=None):
    """alpha = 1.5 (x^2): from one pass at offsets ``t`` (its ``square_sums``, computed here if not given), the root of
    sum [z - t - d]^2 = 1 on the current support (rows with no real root: nan) and whether it is exact: no entry
    crosses the threshold on the way (the pass's smallest positive x lies above a rightward step, its largest
    non-positive x at or below a leftward one). Returns (step, exact)."""
    x, s0, s1, s2 = square_sums(zb, t) if sums is None else sums
    disc = s1 * s1 - s2 * (s0 - 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dc = np.where(disc >= 0, (s0 - 1.0) / (s1 + np.sqrt(np.maximum(disc, 0.0))), np.nan)
    x_pos = np.where(x > 0, x, np.inf).min(1)
    x_neg = np.where(np.isfinite(x) & (x <= 0), x, -np.inf).max(1)
    exact = np.isfinite(dc) & (((dc >= 0) & (dc < x_pos)) | ((dc < 0) & (x_neg <= dc)))
    return dc, exact


def closed_form_passes(zb, t, tol, am1=0.5):
    """Passes until every row of the block is done, rows finishing by the kernel's Halley test or by an exact
    closed-form step (``closed_form_step``), each row moving to its closed-form point where that is exact and to the
    Halley point otherwise; returns (passes, offsets)."""
    t_lo, t_hi = t.copy(), np.zeros(len(zb))
    done = np.zeros(len(zb), bool)
    for it in range(64):
        sums = square_sums(zb, t)  # one pass: both steps from its sums
        new, dn, r, t_lo, t_hi = halley(t, *sums[1:], am1, 1.0, t_lo, t_hi)
        dc, exact = closed_form_step(zb, t, sums)
        conv = (np.abs(new - t) <= tol) | (r * dn * dn <= tol * 1e-3)
        t = np.where(done, t, np.where(exact, t + np.nan_to_num(dc), new))
        done |= exact | conv
        if done.all():
            return it + 1, t
    return 64, t


def simulate(alpha, mult, n=1024, d=64, bm=128, half=True, temp=1.0, seed=0, scan_start=False, sink=0.0,
             tile_max_k=0, pos=0.0, tile_max_newton=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((n, d)) for _ in range(3))
    if pos:  # the bench's "local" family: its shared position code makes rows local
        from hf_adasplash.cli.bench import pos_code

        code = pos_code(n, d, "cpu").double().numpy()
        q, k = q + pos * code, k + pos * code
    am1, p = alpha - 1.0, 1.0 / (alpha - 1.0)
    pm1 = p - 1.0
    s = temp * (q @ k.T) / np.sqrt(d)
    s[:, 0] += sink
    z_raw = np.where(np.tril(np.ones((n, n), bool)), am1 * s, -np.inf)
    z = z_raw - z_raw.max(1, keepdims=True)  # tau as an offset from the row max, as the kernels carry it
    tol = max(2.0**-12, 2.0**-6 * min(1.0, 2 * min(am1, 1 - am1))) if half else 2.0**-12

    def sums(zb, t):
        x = np.maximum(zb - t[:, None], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.where(x > 0, x**pm1, 0.0)
            u2 = np.where(x > 0, x ** (pm1 - 1), 0.0)
        return (u * x).sum(1), u.sum(1), u2.sum(1), x, u

    lo, hi = -np.ones(n), np.zeros(n)  # exact tau by bisection
    for _ in range(200):
        mid = (lo + hi) / 2
        big = sums(z, mid)[0] > 1
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    s0, s1, _, x, u = sums(z, (lo + hi) / 2)
    o_ex, o2_ex = (u * x) @ v, (u @ v) / s1[:, None]

    passes = {"loop": [], "fold": [], "closed": []}
    listed = []  # per block: the share of its visible tiles in the tau passes' candidate list (a gap above thr)
    o_loop, o_fold, o2_fold, o_norm = (np.zeros_like(o_ex) for _ in range(4))
    for b0 in range(0, n, bm):
        zb = z[b0:b0 + bm]
        t, t_lo, t_hi = -np.ones(len(zb)), -np.ones(len(zb)), np.zeros(len(zb))
        first = 1
        if scan_start:
            # the first step from the scan's exact sums at t0 <= -1: its Newton point is a certified bound
            t0, s0, s1, s2 = scan_start_sums(z_raw, int(round(p)), b0=b0, bm=bm)
            t, _, _, t_lo, t_hi = halley(t0, s0, s1, s2, am1, pm1, t_lo, t_hi)
            first = 0
        elif tile_max_k:
            # the loop starts at the certified bound from the k largest tile maxima, and may stop after one pass
            t = t_lo = tile_max_start(zb, p, tile_max_k, newton=tile_max_newton)
            first = 0
        gaps = tile_maxima(zb).max(0)  # each tile's gap in the block (z is already an offset from the row max)
        thr = t.min() if tile_max_k else -1.0  # the candidate list's threshold: the block's lowest bound
        listed.append((gaps > thr).sum() / max(1, np.isfinite(gaps).sum()))
        hist, stop = [t.copy()], None
        for it in range(64):
            s0, s1, s2, _, _ = sums(zb, t)
            new, dn, r, t_lo, t_hi = halley(t, s0, s1, s2, am1, pm1, t_lo, t_hi)
            step = np.abs(new - t)
            t = new
            hist.append(t.copy())
            if stop is None and it >= first and (step <= mult * tol).all():
                stop = it + 1
            if ((step <= tol) | (r * dn * dn <= tol * 1e-3)).all():
                break
        passes["loop"].append(len(hist) - 1)
        passes["fold"].append(stop or len(hist) - 1)
        if alpha == 1.5:
            passes["closed"].append(closed_form_passes(zb, hist[0], tol)[0])
        o_loop[b0:b0 + bm] = sums(zb, np.maximum(t, t_lo))[3] ** p @ v
        s0, s1, _, x, u = sums(zb, hist[passes["fold"][-1]])
        o_fold[b0:b0 + bm] = (u * x) @ v - ((s0 - 1) / s1)[:, None] * (u @ v)
        o2_fold[b0:b0 + bm] = (u @ v) / s1[:, None]
        o_norm[b0:b0 + bm] = (u * x) @ v / s0[:, None]
    scale = np.abs(o_ex).max()
    closed = {"passes_closed": np.mean(passes["closed"])} if passes["closed"] else {}
    return {**closed, "passes_loop": np.mean(passes["loop"]), "passes_fold": np.mean(passes["fold"]),
            "err_loop": np.abs(o_loop - o_ex).max() / scale, "err_fold": np.abs(o_fold - o_ex).max() / scale,
            "o2_err_fold": np.abs(o2_fold - o2_ex).max(), "err_norm": np.abs(o_norm - o_ex).max() / scale,
            "tiles_listed": np.mean(listed)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", default="1.1,1.25,1.35,1.5,1.65,1.8")
    ap.add_argument("--mult", type=float, default=16.0, help="the fold's tolerance multiplier")
    ap.add_argument("--fp32", action="store_true", help="the fp32 tolerance (default: bf16/fp16's)")
    ap.add_argument("--temp", type=float, default=1.0, help="score scale (sharper rows above 1)")
    ap.add_argument("-n", type=int, default=1024)
    ap.add_argument("--scan-start", action="store_true",
                    help="also the start from the scan's sums at the diagonal tile's max - 1 (alpha = 1 + 1/n)")
    ap.add_argument("--sink", type=float, default=0.0, help="score added to key 0 (an attention sink)")
    ap.add_argument("--pos", type=float, default=0.0, help="local rows: the bench's position code at this weight")
    ap.add_argument("--tile-max-start", type=int, default=0, metavar="K",
                    help="also the start from each row's K largest 64-key tile maxima (a certified bound)")
    ap.add_argument("--tile-max-newton", type=int, default=0, metavar="STEPS",
                    help="that start by this many Newton steps from m - 1, as a kernel makes it (0: its exact root)")
    args = ap.parse_args()
    for alpha in (float(a) for a in args.alphas.split(",")):
        res = simulate(alpha, args.mult, n=args.n, half=not args.fp32, temp=args.temp, sink=args.sink, pos=args.pos)
        if args.scan_start:
            res |= {f"{key}_scan": val for key, val in simulate(alpha, args.mult, n=args.n, half=not args.fp32,
                                                                temp=args.temp, scan_start=True,
                                                                sink=args.sink, pos=args.pos).items()}
        if args.tile_max_start:
            res |= {f"{key}_tmax": val for key, val in simulate(alpha, args.mult, n=args.n, half=not args.fp32,
                                                                temp=args.temp, sink=args.sink,
                                                                tile_max_k=args.tile_max_start, pos=args.pos,
                                                                tile_max_newton=args.tile_max_newton).items()}
        print(f"alpha {alpha:.3f} " + " ".join(f"{k} {v:.3g}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
