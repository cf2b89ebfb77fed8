"""The test matrix: shapes, head dims, dtypes, alphas, extreme scores, masking and memory layouts, per backend.

Every case is compared with an independent float64 truth (the entmax library's bisection, masks written out here).
Low precision follows FlashAttention's rule: the backend's error must be at most twice the error of a dense PyTorch
implementation in the same dtype (matmuls in that dtype, probabilities in float32 then cast, as HF's eager
attention does), plus the rounding of the output itself. Gradients (dq, dk, dv) follow the same rule.
"""

from __future__ import annotations

import importlib.util
import os
import zlib
from dataclasses import dataclass, field

import entmax as entmax_lib
import pytest
import torch

from hf_adasplash import adasplash_attention, adasplash_varlen_attention

ALPHAS = [1.0, 1.0001, 1.25, 1.5, 1.999, 2.0]
MIXES = [[1.0, 1.25, 1.5, 2.0], [1.0001, 1.999, 1.5, 1.0]]
DTYPES = {"f64": torch.float64, "f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
HAS_TRITON = importlib.util.find_spec("hf_adasplash.ops.attention") is not None
ON_GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass
class Case:
    B: int = 2
    Hq: int = 4
    Hkv: int = 2
    Nq: int = 5
    Nk: int = 5
    D: int = 32
    dtype: str = "f32"
    alpha: float | list = 1.5
    causal: bool = False
    score_scale: float = 1.0  # q scaled so that |scores| reach ~score_scale
    padding: str = "none"  # "none" | "some" | "batch" (batch 1 sees no key at all)
    layout: str = "contiguous"  # "contiguous" | "transposed" ([B, N, H, D] storage) | "expanded" (stride-0 batch)
    grads: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def id(self):
        a = "mix" + str(MIXES.index(self.alpha)) if isinstance(self.alpha, list) else f"a{self.alpha}"
        parts = [f"B{self.B}H{self.Hq}-{self.Hkv}", f"q{self.Nq}k{self.Nk}", f"d{self.D}", self.dtype, a,
                 "causal" if self.causal else "full"]
        parts += [f"s{self.score_scale:g}"] if self.score_scale != 1 else []
        parts += [f"pad-{self.padding}"] if self.padding != "none" else []
        parts += [self.layout] if self.layout != "contiguous" else []
        return "-".join(parts)


def _cases() -> list[Case]:
    cases, i = [], 0
    for n in (1, 2, 63, 64, 65):
        for d in (32, 64, 80, 96, 128, 256):
            for dt in DTYPES:
                alpha = MIXES[i % 2] if i % 7 == 3 else ALPHAS[i % len(ALPHAS)]
                cases.append(Case(Nq=n, Nk=n, D=d, dtype=dt, alpha=alpha, causal=bool(i % 2)))
                i += 1
    for dt in DTYPES:  # N = 1000, small in B and H (the square case in two dtypes: its float64 truth is slow)
        if dt in ("f32", "bf16"):
            cases.append(Case(B=1, Hq=1, Hkv=1, Nq=1000, Nk=1000, D=64, dtype=dt, alpha=1.5, causal=True, grads=False))
        cases.append(Case(B=1, Hq=4, Hkv=2, Nq=17, Nk=1000, D=80, dtype=dt, alpha=MIXES[0], causal=True))
    for nq, nk in ((1, 65), (63, 64), (65, 2), (2, 63)):  # Nq != Nk, bottom-right causal
        for dt in ("f64", "f32", "bf16"):
            cases.append(Case(Nq=nq, Nk=nk, D=64, dtype=dt, alpha=1.25, causal=True))
            cases.append(Case(Nq=nq, Nk=nk, D=64, dtype=dt, alpha=2.0, causal=False))
    for dt in DTYPES:
        for a in (1.0, 1.0001, 1.5, 2.0):  # scores up to +-1e4: fp16 overflow territory
            cases.append(Case(Nq=33, Nk=33, D=64, dtype=dt, alpha=a, causal=True, score_scale=1e4))
        for pad in ("some", "batch"):  # masked keys, fully masked rows (Nq > Nk causal) and a fully masked batch
            cases.append(Case(Nq=9, Nk=7, D=32, dtype=dt, alpha=MIXES[1], causal=True, padding=pad))
        for layout in ("transposed", "expanded"):
            cases.append(Case(Nq=65, Nk=65, D=80, dtype=dt, alpha=MIXES[0], causal=True, layout=layout))
    return cases


def _triton_cases() -> list[Case]:
    """A tiny slice for the interpreter on CPU (the GPU runs every case)."""
    cases, i = [], 0
    for n in (1, 2, 63, 64, 65):
        for d in (32, 64):
            for dt in ("f32", "f16"):
                alpha = MIXES[i % 2] if i % 3 == 2 else ALPHAS[i % len(ALPHAS)]
                cases.append(Case(B=1, Hq=4, Hkv=2, Nq=n, Nk=n, D=d, dtype=dt, alpha=alpha, causal=bool(i % 2)))
                i += 1
    cases.append(Case(B=2, Hq=4, Hkv=2, Nq=9, Nk=7, D=32, alpha=MIXES[1], causal=True, padding="batch"))
    cases.append(Case(B=1, Hq=4, Hkv=2, Nq=5, Nk=40, D=32, alpha=MIXES[0], causal=True))
    cases.append(Case(B=1, Hq=2, Hkv=2, Nq=33, Nk=33, D=64, alpha=1.5, causal=True, score_scale=1e4))
    cases.append(Case(B=1, Hq=4, Hkv=2, Nq=20, Nk=20, D=32, alpha=1.25, causal=True, layout="transposed"))
    cases.append(Case(B=2, Hq=4, Hkv=2, Nq=20, Nk=20, D=32, alpha=1.25, causal=True, layout="expanded"))
    return cases


# ---- the float64 truth and the same-dtype baseline, written independently of hf_adasplash ----


def _visible(c: Case, kpm):
    qp = torch.arange(c.Nq)[:, None] + c.Nk - c.Nq
    kp = torch.arange(c.Nk)[None]
    vis = (kp <= qp) if c.causal else torch.ones(c.Nq, c.Nk, dtype=torch.bool)
    vis = vis[None, None].expand(c.B, 1, c.Nq, c.Nk)
    return vis & kpm[:, None, None, :] if kpm is not None else vis


def _probs(s: torch.Tensor, alpha, vis, n_iter: int) -> torch.Tensor:
    """entmax per head with the entmax library (softmax at alpha = 1); rows without a visible key are zero."""
    dead = ~vis.any(-1, keepdim=True)
    s = s.masked_fill(~vis, float("-inf")).masked_fill(dead, 0.0)
    alphas = alpha if isinstance(alpha, list) else [alpha] * s.shape[1]
    heads = []
    for h, a in enumerate(alphas):
        sh = s[:, h]
        heads.append(torch.softmax(sh, -1) if a == 1.0 else entmax_lib.entmax_bisect(sh, a, -1, n_iter=n_iter))
    return torch.stack(heads, 1).masked_fill(dead, 0.0)


def _dense(c: Case, q, k, v, kpm, dtype, case_dtype=torch.float64):
    """Dense attention with matmuls in ``dtype`` and probabilities in max(float32, dtype) (K/V repeated for GQA).

    Bisection halves a bracket of width <= 1: 64 steps reach float64 precision, 40 are plenty for a truth that
    checks a low-precision backend, 32 reach float32's.
    """
    g = c.Hq // c.Hkv
    q, k, v = q.to(dtype), k.to(dtype).repeat_interleave(g, 1), v.to(dtype).repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * c.D**-0.5
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    n_iter = 32 if pdt == torch.float32 else 64 if case_dtype == torch.float64 else 40
    p = _probs(s.to(pdt), c.alpha, _visible(c, kpm), n_iter).to(dtype)
    return p @ v


def _inputs(c: Case):
    g = torch.Generator().manual_seed(zlib.crc32(c.id.encode()))  # stable across processes (unlike hash())
    q = torch.randn(c.B, c.Hq, c.Nq, c.D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(c.B, c.Hkv, c.Nk, c.D, generator=g, dtype=torch.float64) for _ in range(2))
    if c.score_scale != 1:  # |q.k| * D^-0.5 ~ score_scale
        q = q / q.norm(dim=-1, keepdim=True) * c.score_scale * c.D**0.5 / k.norm(dim=-1).mean()
    dt = DTYPES[c.dtype]
    q, k, v = (t.to(dt).to(torch.float64) for t in (q, k, v))  # the truth sees exactly the rounded inputs
    kpm = None
    if c.padding != "none":
        kpm = torch.rand(c.B, c.Nk, generator=g) > 0.3
        kpm[0, 0] = True
        if c.padding == "batch":
            kpm[-1] = False
    dout = torch.randn(c.B, c.Hq, c.Nq, c.D, generator=g, dtype=torch.float64)
    return q, k, v, kpm, dout


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "transposed":  # HF's [B, N, H, D] storage seen as [B, H, N, D]
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "expanded":  # one batch row broadcast with stride 0
        return t[:1].expand_as(t)
    return t


def _grads(fn, q, k, v, dout, dtype, expand=False):
    """Output and input gradients; with ``expand`` the leaves are batch row 0, seen by ``fn`` with batch stride 0."""
    leaves = [(t[:1] if expand else t).detach().to(dtype).requires_grad_() for t in (q, k, v)]
    ins = [x.expand(q.shape[0], *x.shape[1:]) if expand else x for x in leaves]
    out = fn(*ins)
    out.backward(dout.to(dtype))
    return out.detach().double(), [t.grad.double() for t in leaves]


def _check(c: Case, backend: str, device: str = "cpu"):
    q, k, v, kpm, dout = _inputs(c)
    alpha = torch.tensor(c.alpha, dtype=torch.float64) if isinstance(c.alpha, list) else c.alpha
    if backend == "triton" and c.dtype == "f64":
        # the documented outcome: the kernels accumulate in fp32, float64 is the reference backend's job
        with pytest.raises(TypeError, match='backend="triton" supports float16/bfloat16/float32'):
            adasplash_attention(q.to(device), k.to(device), v.to(device), alpha, is_causal=c.causal, backend=backend)
        return
    expand = c.layout == "expanded"
    if expand:
        q, k, v = (_layout(t, "expanded") for t in (q, k, v))
        kpm = None if kpm is None else kpm[:1].expand_as(kpm)
    dt = DTYPES[c.dtype]

    def run(q_, k_, v_):
        if c.layout == "transposed":
            q_, k_, v_ = (_layout(t, c.layout) for t in (q_, k_, v_))
        q_, k_, v_ = (t.to(device) for t in (q_, k_, v_))
        m = None if kpm is None else kpm.to(device)
        return adasplash_attention(q_, k_, v_, alpha, is_causal=c.causal, key_padding_mask=m, backend=backend).cpu()

    if c.grads:
        truth_out, truth_g = _grads(lambda *t: _dense(c, *t, kpm, torch.float64, dt), q, k, v, dout, torch.float64,
                                    expand)
        out, g = _grads(run, q, k, v, dout, dt, expand)
    else:
        with torch.no_grad():
            truth_out, truth_g = _dense(c, q, k, v, kpm, torch.float64, dt), None
            out, g = run(q.to(dt), k.to(dt), v.to(dt)).double(), None
    assert out.dtype == torch.float64 and torch.isfinite(out).all(), "non-finite output"
    if dt == torch.float64:
        base_out, base_g = truth_out, truth_g
        floor = 1e-10
    else:
        if c.grads:
            base_out, base_g = _grads(lambda *t: _dense(c, *t, kpm, dt), q, k, v, dout, dt, expand)
        else:
            with torch.no_grad():
                base_out, base_g = _dense(c, q, k, v, kpm, dt).double(), None
        floor = 4 * torch.finfo(dt).eps
    _within(out, truth_out, base_out, floor * (1 + v.abs().max().item()), "out")
    if kpm is not None:  # rows without a visible key are exactly zero
        dead = ~_visible(c, kpm).any(-1).expand(c.B, c.Hq, c.Nq)
        assert (out[dead] == 0).all()
    if g is not None:
        # rounding floor: a few ulps of the largest gradient (dq can be ~0 where rows are one-hot, dv never is)
        gmax = max(t.abs().max().item() for t in truth_g)
        for name, a, t, b in zip("qkv", g, truth_g, base_g):
            assert torch.isfinite(a).all(), f"non-finite d{name}"
            _within(a, t, b, floor * (1 + gmax), f"d{name}")


def _within(x, truth, base, floor, what):
    err = (x - truth).abs().max().item()
    base_err = (base - truth).abs().max().item()
    if not torch.isfinite(torch.tensor(base_err)):
        base_err = 0.0  # the same-dtype baseline overflowed (|scores| ~ 1e4 in fp16): only the floor applies
    assert err <= 2 * base_err + floor, f"{what}: error {err:.3e} > 2 x baseline {base_err:.3e} + {floor:.1e}"


CASES = _cases()
TRITON_CASES = _triton_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reference(case):
    _check(case, "reference")


# Known kernel defects found by this matrix, kept visible: strict xfail turns into a failure once fixed.
ONE_HOT_DK = ("one-hot rows at |s|~1e4: dS = u (dP - dO.O2) does not cancel exactly, |q|~1e4 amplifies it: dk "
              "error ~2e-3 where the truth (and the reference) is exactly 0")
KNOWN_TRITON = {
    "B1H2-2-q33k33-d64-f32-a1.5-causal-s10000": ONE_HOT_DK,
}


def _known_on_gpu(c: Case) -> str | None:
    """The same defect in the GPU slice (found there on an H100), by rule rather than by id. (The fp32 alpha = 1.0001
    cases, once marked here too, pass on the GPU since ``near1_anchor``: the whole GPU matrix at 89c698a.)"""
    alphas = c.alpha if isinstance(c.alpha, list) else [c.alpha]
    if c.dtype == "f32" and c.score_scale >= 1e4 and min(alphas) > 1.01:  # near 1 the rows are not one-hot
        return ONE_HOT_DK
    return None


def _gpu_marked(cases):
    # not strict: on the GPU some of these cases sit right at the bound (N = 1 rows, for instance, now pass)
    return [pytest.param(c, id=c.id, marks=pytest.mark.xfail(strict=False, reason=_known_on_gpu(c)))
            if _known_on_gpu(c) else pytest.param(c, id=c.id) for c in cases]


def _marked(cases):
    return [pytest.param(c, id=c.id, marks=pytest.mark.xfail(strict=True, reason=KNOWN_TRITON[c.id]))
            if c.id in KNOWN_TRITON else pytest.param(c, id=c.id) for c in cases]


@pytest.mark.skipif(not HAS_TRITON or ON_GPU or not INTERPRET, reason="Triton interpreter slice (CPU only)")
@pytest.mark.parametrize("case", _marked(TRITON_CASES))
def test_triton_interpreter(case):
    _check(case, "triton")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRITON, reason="hf_adasplash.ops.attention is not built yet")
@pytest.mark.parametrize("case", _gpu_marked(CASES))
def test_triton_gpu(case):
    _check(case, "triton", "cuda")


VARLEN = [([3, 0, 5, 1], [4, 0, 5, 2]), ([0, 7], [0, 9]), ([63, 1, 64], [63, 0, 65]), ([2, 3], [0, 3])]


@pytest.mark.parametrize("backend,dtype", [("reference", "f64"), ("reference", "f32"), ("reference", "f16"),
                                           ("triton", "f32"), ("triton", "f16")])
@pytest.mark.parametrize("lens", VARLEN, ids=lambda lens: "q" + "_".join(map(str, lens[0])) + "-k" +
                         "_".join(map(str, lens[1])))
def test_varlen_empty_segments(lens, dtype, backend):
    if backend == "triton" and (not HAS_TRITON or not (ON_GPU or INTERPRET)):
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if backend == "triton" and ON_GPU else "cpu"
    lq, lk = lens
    dt = DTYPES[dtype]
    cq, ck = (torch.tensor([0, *torch.tensor(x).cumsum(0).tolist()]) for x in lens)
    g = torch.Generator().manual_seed(len(lq) * 100 + sum(lq))
    q = torch.randn(sum(lq), 4, 32, generator=g, dtype=torch.float64).to(dt)
    k, v = (torch.randn(sum(lk), 2, 32, generator=g, dtype=torch.float64).to(dt) for _ in range(2))
    alpha = torch.tensor(MIXES[0])
    out = adasplash_varlen_attention(q.to(device), k.to(device), v.to(device), cq.to(device), ck.to(device),
                                     max(lq), max(lk), alpha, is_causal=True, backend=backend).cpu().double()
    assert torch.isfinite(out).all()
    for i in range(len(lq)):
        sq, sk = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        if lq[i] == 0:
            continue
        if lk[i] == 0:
            assert (out[sq] == 0).all()
            continue
        c = Case(B=1, Hq=4, Hkv=2, Nq=lq[i], Nk=lk[i], D=32, dtype=dtype, alpha=MIXES[0], causal=True)
        seg = [t[s].transpose(0, 1)[None].double() for t, s in ((q, sq), (k, sk), (v, sk))]
        truth = _dense(c, *seg, None, torch.float64, dt)[0].transpose(0, 1)
        base = _dense(c, *seg, None, dt)[0].transpose(0, 1).double()
        floor = 1e-10 if dt == torch.float64 else 4 * torch.finfo(dt).eps
        _within(out[sq], truth, base, floor * (1 + seg[2].abs().max().item()), f"segment {i}")
