"""``hf-adasplash bench``: our kernels vs PyTorch SDPA (default, flash, cuDNN) vs the official AdaSplash.

Input families (as in the anchor harness): ``random`` (q, k, v ~ N(0, 1): scattered support, almost no empty
64x64 block) and ``local`` with ``pos`` 1.0 / 2.0 (q and k share a sinusoidal position code scaled by ``pos``:
attention peaks near the diagonal as in trained LMs). Every case records the exact block sparsity of its own
input: the fraction of visible 64x64 blocks (decode: 1x64 key tiles, per row and per GQA group) where exact
alpha-entmax has no nonzero probability. Times are ``triton.testing.do_bench`` medians; a backend that is missing
or fails is recorded with the reason, never fatal. Writes one JSON (device, versions, git commit, every case with
times and ratios to SDPA default) and a plot of our speed ratio vs block sparsity.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import time

import torch
import torch.nn.functional as F

SCHEMA = "hf_adasplash.bench/1"
BACKENDS = ("ours", "sdpa", "sdpa_flash", "sdpa_cudnn", "official", "ours_graph", "sdpa_graph")
FAMILIES = {"random": 0.0, "local1": 1.0, "local2": 2.0}
BLOCK = 64


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def build_parser(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--modes", type=_csv(str), default=["fwd", "fwd_bwd", "decode"], help="fwd, fwd_bwd, decode (comma list)")
    a("--backends", type=_csv(str), default=list(BACKENDS[:5]),
      help=f"subset of {','.join(BACKENDS)} (*_graph: decode replayed from a CUDA graph)")
    a("--families", type=_csv(str), default=list(FAMILIES), help="random, local1, local2")
    a("--seqlens", type=_csv(int), default=[1024, 4096, 16384, 32768], help="prefill N (B = tokens // N)")
    a("--head-dims", type=_csv(int), default=[64, 128])
    a("--causal", choices=["both", "causal", "noncausal"], default="both")
    a("--tokens", type=int, default=32768, help="B * N per prefill case")
    a("--heads", type=int, default=16)
    a("--alpha", type=float, default=1.5)
    a("--decode-nk", type=_csv(int), default=[4096, 32768], help="cache lengths of the decode cases")
    a("--decode-shape", type=_csv(int), default=[8, 32, 8, 128], help="B,Hq,Hkv,D of the decode cases")
    a("--decode-nq", type=int, default=1)
    a("--sparsity-heads", type=int, default=2, help="heads of batch 0 used to measure block sparsity")
    a("--sparsity-rows", type=int, default=2048, help="query rows per head used to measure block sparsity")
    a("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    a("--rep", type=int, default=100, help="do_bench repetitions (ms)")
    a("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    a("--device", default="cuda")
    a("--out", default="bench/results.json")
    a("--merge", default=None, help="start from the cases of this JSON (cases measured again are replaced)")
    a("--plot", default=None, help="plot path (default: --out with .png)")
    a("--plot-only", action="store_true", help="only redraw the plot from --out")


# ----------------------------------------------------------------------------------------------- inputs
def pos_code(N: int, D: int, device) -> torch.Tensor:
    i = torch.arange(N, device=device, dtype=torch.float32)[:, None]
    f = 64.0 ** (-torch.arange(D // 2, device=device, dtype=torch.float32) / (D // 2))
    a = i * f[None, :]
    return torch.cat([a.sin(), a.cos()], -1) / math.sqrt(D // 2) * math.sqrt(D)


def make_inputs(B, Hq, Hkv, Nq, Nk, D, pos, dtype, device, requires_grad=False):
    q = torch.randn(B, Hq, Nq, D, device=device)
    k = torch.randn(B, Hkv, Nk, D, device=device)
    v = torch.randn(B, Hkv, Nk, D, device=device)
    if pos:
        c = pos_code(Nk, D, device)
        q, k = q + pos * c[Nk - Nq:], k + pos * c  # queries sit at the last Nq positions
    return [t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v)]


@torch.no_grad()
def block_sparsity(q, k, alpha, causal, heads, max_rows=2048, rows_per_chunk=512):
    """Exact entmax block sparsity of batch 0 (``heads`` query heads), 64x64 blocks (decode: 1x64 tiles).

    Long sequences use ``max_rows`` query rows per head: evenly spaced 512-row chunks, the last one included.
    Returns (fraction of visible blocks with no support, mean support per row, group tile sparsity or None).
    """
    from hf_adasplash.entmax import entmax

    Hq, Nq, D = q.shape[1], q.shape[2], q.shape[3]
    Nk, G = k.shape[2], q.shape[1] // k.shape[1]
    bm = BLOCK if Nq >= BLOCK else 1
    empty = total = 0
    supp = []
    group_live = {}
    picked = torch.linspace(0, Hq - 1, min(heads, Hq)).round().long().tolist()
    if bm == 1:  # decode: every head of the picked GQA groups, since a V tile is skipped only if all of them agree
        picked = sorted({g * G + j for h in picked for g in [h // G] for j in range(G)})
    for h in picked:
        kh = k[0, h // G].float()
        starts = list(range(0, Nq, rows_per_chunk))
        n_pick = max(1, max_rows // rows_per_chunk)
        if len(starts) > n_pick:
            starts = [starts[round(i * (len(starts) - 1) / (n_pick - 1))] for i in range(n_pick)] if n_pick > 1 \
                else starts[-1:]
        for r0 in starts:
            qs = q[0, h, r0:r0 + rows_per_chunk].float()
            s = (qs @ kh.T) * D**-0.5
            qi = torch.arange(r0, r0 + qs.shape[0], device=q.device)[:, None] + (Nk - Nq)
            vis = torch.arange(Nk, device=q.device)[None, :] <= qi if causal else torch.ones_like(s, dtype=torch.bool)
            p = entmax(s.masked_fill(~vis, float("-inf")), alpha, dim=-1)
            supp.append((p > 0).sum(-1).float())
            nb = math.ceil(Nk / BLOCK)
            pad = nb * BLOCK - Nk
            on = F.pad(p > 0, (0, pad)).reshape(-1, bm, nb, BLOCK).any(3).any(1)
            seen = F.pad(vis, (0, pad)).reshape(-1, bm, nb, BLOCK).any(3).any(1)
            empty += (seen & ~on).sum().item()
            total += seen.sum().item()
            if bm == 1:
                g = group_live.setdefault(h // G, torch.zeros(nb, dtype=torch.bool, device=q.device))
                g |= on.any(0)
    bsp = empty / max(total, 1)
    group = None
    if group_live:
        group = 1.0 - sum(g.float().mean().item() for g in group_live.values()) / len(group_live)
    return round(bsp, 4), round(torch.cat(supp).mean().item(), 1), None if group is None else round(group, 4)


# ----------------------------------------------------------------------------------------------- backends
def _official():
    import adasplash

    return adasplash


def attention_fn(backend, q, k, v, causal, alpha):
    """A zero-argument callable for one backend, or raise with the reason it is not available."""
    gqa = q.shape[1] != k.shape[1]
    if backend == "ours":
        import hf_adasplash

        if q.shape[2] <= 16 < k.shape[2]:
            try:
                import hf_adasplash.ops.attention  # noqa: F401  (the dispatcher routes Nq <= 16 to decode)
            except ImportError:
                from hf_adasplash.ops.decode import adasplash_decode_triton

                return lambda: adasplash_decode_triton(q, k, v, alpha, is_causal=causal)
        return lambda: hf_adasplash.adasplash_attention(q, k, v, alpha, is_causal=causal, backend="triton")
    if backend.startswith("sdpa"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        sel = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}.get(backend)
        Nq, Nk = q.shape[2], k.shape[2]
        kw = {"is_causal": causal, "enable_gqa": gqa}
        if causal and Nq != Nk:
            # SDPA's is_causal is top-left aligned; a KV-cache step is bottom-right (one query sees every key)
            from hf_adasplash.masks import visibility_mask

            kw = {"enable_gqa": gqa}
            if Nq > 1:
                kw["attn_mask"] = visibility_mask(1, Nq, Nk, q.device, is_causal=True)[:, None]

        def fn():
            if sel is None:
                return F.scaled_dot_product_attention(q, k, v, **kw)
            with sdpa_kernel([sel]):
                return F.scaled_dot_product_attention(q, k, v, **kw)

        return fn
    if backend == "official":
        if q.shape[2] != k.shape[2] or gqa:
            raise NotImplementedError("not supported (needs Nq == Nk and Hq == Hkv)")
        ada = _official()
        return lambda: ada.adasplash(q, k, v, alpha=alpha, is_causal=causal)
    if backend.endswith("_graph"):
        # the step captured once in a CUDA graph and replayed, as serving engines run decode: GPU time only
        if q.device.type != "cuda" or q.requires_grad:
            raise NotImplementedError("CUDA graphs are timed for inference on CUDA only")
        step = attention_fn(backend[: -len("_graph")], q, k, v, causal, alpha)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()  # compile and warm up off the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        return lambda: (graph.replay(), out)[1]
    raise ValueError(f"unknown backend {backend!r}")


def _timer(args):
    if torch.device(args.device).type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")

    def cpu_median(fn, n=3):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return sorted(ts)[n // 2]

    return cpu_median


def measure(backend, q, k, v, causal, alpha, modes, timer, cuda):
    """{'fwd_ms', 'fwd_bwd_ms', 'peak_gib'} for one backend; reasons instead of numbers on failure."""
    res = {}
    try:
        fn = attention_fn(backend, q, k, v, causal, alpha)
        with torch.no_grad():
            out = fn()
        if not torch.isfinite(out).all():
            return {"error": "non-finite output"}
    except Exception as e:
        return {"error": f"not available: {type(e).__name__}: {str(e)[:160]}"}
    if "fwd" in modes or "decode" in modes:
        with torch.no_grad():
            res["fwd_ms"] = round(timer(fn), 4)
    if "fwd_bwd" in modes:
        try:
            g = torch.randn_like(out)

            def fb():
                for t in (q, k, v):
                    t.grad = None
                fn().backward(g)

            fb()
            res["fwd_bwd_ms"] = round(timer(fb), 4)
            if cuda:
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fb()
                res["peak_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 3)
        except Exception as e:
            res["fwd_bwd_error"] = f"{type(e).__name__}: {str(e)[:160]}"
    elif cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            fn()
        res["peak_gib"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 3)
    return res


def _ratios(results):
    ref = results.get("sdpa", {})
    out = {}
    for key in ("fwd_ms", "fwd_bwd_ms"):
        if key not in ref:
            continue
        out[key] = {b: round(r[key] / ref[key], 3) for b, r in results.items() if key in r and b != "sdpa"}
    og, sg = results.get("ours_graph", {}), results.get("sdpa_graph", {})
    if "fwd_ms" in og and "fwd_ms" in sg:  # both replayed from CUDA graphs: GPU time against GPU time
        out["graph_fwd_ms"] = {"ours_graph": round(og["fwd_ms"] / sg["fwd_ms"], 3)}
    return out


# ----------------------------------------------------------------------------------------------- cases
def prefill_cases(args):
    causals = {"both": [True, False], "causal": [True], "noncausal": [False]}[args.causal]
    train = [m for m in ("fwd", "fwd_bwd") if m in args.modes]
    if not train:
        return
    for N in args.seqlens:
        for D in args.head_dims:
            for fam in args.families:
                for causal in causals:
                    yield {"mode": "+".join(train), "family": fam, "pos": FAMILIES[fam], "N": N,
                           "B": max(1, args.tokens // N), "H": args.heads, "Hkv": args.heads, "D": D, "causal": causal}


def decode_cases(args):
    if "decode" not in args.modes:
        return
    B, Hq, Hkv, D = args.decode_shape
    for Nk in args.decode_nk:
        for fam in args.families:
            yield {"mode": "decode", "family": fam, "pos": FAMILIES[fam], "N": Nk, "Nq": args.decode_nq, "B": B,
                   "H": Hq, "Hkv": Hkv, "D": D, "causal": True}


def run_case(case, args, timer):
    dtype = getattr(torch, args.dtype)
    cuda = torch.device(args.device).type == "cuda"
    decode = case["mode"] == "decode"
    Nq = case.get("Nq", case["N"]) if decode else case["N"]
    torch.manual_seed(0)
    q, k, v = make_inputs(case["B"], case["H"], case["Hkv"], Nq, case["N"], case["D"], case["pos"], dtype,
                          args.device, requires_grad=not decode)
    bsp, supp, group = block_sparsity(q.detach(), k.detach(), args.alpha, case["causal"], args.sparsity_heads,
                                      args.sparsity_rows)
    row = dict(case, alpha=args.alpha, dtype=args.dtype, block_sparsity=bsp, mean_support=supp)
    if decode:
        row["group_tile_sparsity"] = group
        row["kv_read_floor_ms_at_3TBps"] = round(2 * k.numel() * k.element_size() / 3.0e12 * 1e3, 4)
    modes = ["decode"] if decode else case["mode"].split("+")
    results = {}
    for b in args.backends:
        results[b] = measure(b, q, k, v, case["causal"], args.alpha, modes, timer, cuda)
        if cuda:
            torch.cuda.empty_cache()
    if decode and "fwd_ms" in results.get("ours", {}):
        # decode shapes are small enough for a dense check of what was timed
        from hf_adasplash.reference import attention_reference

        with torch.no_grad():
            out = attention_fn("ours", q, k, v, case["causal"], args.alpha)()
            ref = attention_reference(q.float(), k.float(), v.float(), args.alpha, is_causal=case["causal"])
        results["ours"]["max_abs_err_vs_fp32"] = float(f"{(out.float() - ref).abs().max().item():.3g}")
    row["results"] = results
    row["ratio_vs_sdpa"] = _ratios(results)
    return row


def _case_key(r):
    return (r["mode"], r["family"], r["N"], r.get("Nq"), r["B"], r["H"], r["Hkv"], r["D"], r["causal"], r["alpha"])


def _git_commit():
    """The checkout's commit: the package's own directory (an editable install), else the working directory's (a
    package installed into site-packages and run from its checkout)."""
    for where in (os.path.dirname(os.path.abspath(__file__)), os.getcwd()):
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                    timeout=10).stdout.strip()
        except Exception:
            commit = ""
        if commit:
            return commit
    return None


def _env(args):
    import triton

    cuda = torch.device(args.device).type == "cuda"
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "git_commit": os.environ.get("HF_ADASPLASH_COMMIT") or _git_commit(),
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }


# ----------------------------------------------------------------------------------------------- plot
def plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    style = {"fwd_ms": ("o", "forward"), "fwd_bwd_ms": ("s", "forward+backward"), "decode": ("^", "decode"),
             "graph_fwd_ms": ("v", "decode, both CUDA graphs")}
    colors = {64: "tab:blue", 128: "tab:orange"}
    seen = set()
    for r in data["cases"]:
        for key, rat in r.get("ratio_vs_sdpa", {}).items():
            for backend, fill in (("ours", True), ("official", False), ("ours_graph", True)):
                if backend not in rat:
                    continue
                mk = "decode" if r["mode"] == "decode" and key == "fwd_ms" else key
                marker, label = style[mk]
                c = colors.get(r["D"], "tab:green")
                lab = f"{'ours' if fill else 'official'} {label}, D={r['D']}"
                x = r["group_tile_sparsity"] if r["mode"] == "decode" else r["block_sparsity"]
                ax.scatter(x, rat[backend], marker=marker, s=36, edgecolors=c, facecolors=c if fill else "none",
                           label=None if lab in seen else lab)
                seen.add(lab)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("exact block sparsity of the input (64x64 blocks; decode: 64-key tiles per GQA group)")
    ax.set_ylabel("time / SDPA default time")
    ax.set_title(f"alpha-entmax attention vs SDPA ({data.get('device', '?')}, {data['args'].get('dtype', '')})")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- entry
def _write_json(data, path):
    """Atomic replace, so a run killed mid-write never leaves a truncated file for the next ``--merge``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def run(args) -> int:
    plot_path = args.plot or os.path.splitext(args.out)[0] + ".png"
    if args.plot_only:
        with open(args.out) as f:
            plot(json.load(f), plot_path)
        print(f"wrote {plot_path}")
        return 0
    bad = [b for b in args.backends if b not in BACKENDS] + [f for f in args.families if f not in FAMILIES]
    bad += [m for m in args.modes if m not in ("fwd", "fwd_bwd", "decode")]
    if bad:
        raise SystemExit(f"unknown backend/family/mode: {bad}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device cpu (tiny shapes only, Triton interpreter)")
    data = _env(args)
    cases = {}
    if args.merge and os.path.exists(args.merge):
        with open(args.merge) as f:
            cases = {_case_key(r): r for r in json.load(f).get("cases", [])}
    timer = _timer(args)
    for case in list(decode_cases(args)) + list(prefill_cases(args)):
        t0 = time.time()
        row = run_case(case, args, timer)
        old = cases.get(_case_key(row))
        if old is not None:  # a run with other backends adds to the case instead of replacing it
            row["results"] = {**old["results"], **row["results"]}
            row["ratio_vs_sdpa"] = _ratios(row["results"])
        cases[_case_key(row)] = row
        short = {b: {k: v for k, v in r.items() if k.endswith("ms") or k == "error"} for b, r in row["results"].items()}
        print(json.dumps({k: row[k] for k in ("mode", "family", "N", "D", "causal", "block_sparsity")} | {
            "ratio": row["ratio_vs_sdpa"], "ms": short, "s": round(time.time() - t0, 1)}), flush=True)
        data["cases"] = list(cases.values())
        _write_json(data, args.out)  # after every case: a run cut short keeps what it measured
    data["cases"] = list(cases.values())
    _write_json(data, args.out)
    if data["cases"]:
        try:
            plot(data, plot_path)
        except ImportError as e:
            print(f"no plot ({e})")
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hf-adasplash bench", description=__doc__.splitlines()[0])
    build_parser(parser)
    return run(parser.parse_args(argv))
