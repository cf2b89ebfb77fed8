"""How sparse is the attention? Per layer and head statistics of an ``"adasplash"`` model on one batch.

The probabilities are recomputed densely with the reference (same inputs, masks and alpha as the forward), so
keep batches short: this is an analysis tool, not a training-time hook.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from hf_adasplash.integrations import transformers as hf_integration
from hf_adasplash.masks import visibility_mask
from hf_adasplash.reference import attention_reference

SCHEMA_VERSION = 1


def _support_edges(max_keys: int) -> list[int]:
    """Histogram bin edges ``[0, 1, 2, 4, ..., 2^n > max_keys]``; bin i counts ``edges[i] <= support < edges[i+1]``."""
    edges, e = [0, 1], 2
    while edges[-1] <= max_keys:
        edges.append(e)
        e *= 2
    return edges


@dataclass
class SparsityStats:
    """Result of :func:`sparsity_stats`; ``to_dict()`` gives the JSON-able schema described there."""

    model_type: str
    block_size: int
    num_layers: int
    num_heads: int
    zero_fraction: float
    block_zero_fraction: float
    heads: list[dict] = field(default_factory=list)
    pattern: dict | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    def head(self, layer: int, head: int) -> dict:
        return next(h for h in self.heads if h["layer"] == layer and h["head"] == head)


class _Accumulator:
    def __init__(self, layer_of: dict[int, int], block_size: int, query_valid, pattern):
        self.layer_of, self.bs, self.query_valid, self.want = layer_of, block_size, query_valid, pattern
        self.sums: dict[int, dict] = {}
        self.pattern = None

    @torch.no_grad()
    def __call__(self, module, q, k, v, alpha, dense):
        layer = self.layer_of[id(module)]
        dense = {k_: v_ for k_, v_ in dense.items() if k_ != "backend"}
        _, p = attention_reference(q.float(), k.float(), v.float(), alpha, return_probs=True, **dense)
        B, H, Q, K = p.shape
        vis = visibility_mask(B, Q, K, q.device, is_causal=dense["is_causal"],
                              key_padding_mask=dense["key_padding_mask"], q_idx=dense["q_idx"],
                              k_idx=dense["k_idx"], window=dense["window"])
        vis = torch.ones(B, Q, K, dtype=torch.bool, device=q.device) if vis is None else vis
        qv = self.query_valid
        if qv is not None and qv.shape == (B, Q):  # drop padded query rows
            vis = vis & qv.to(vis.device).bool()[:, :, None]
        vis = vis[:, None]  # [B, 1, Q, K]
        nz = (p > 0) & vis
        # Blocks: tile [Q, K] by block_size (edges padded with invisible entries).
        bs = self.bs
        pq, pk = -Q % bs, -K % bs
        vb = torch.nn.functional.pad(vis, (0, pk, 0, pq)).reshape(B, 1, (Q + pq) // bs, bs, (K + pk) // bs, bs)
        nb = torch.nn.functional.pad(nz, (0, pk, 0, pq)).reshape(B, H, (Q + pq) // bs, bs, (K + pk) // bs, bs)
        blk_vis = vb.any(5).any(3)
        blk_zero = blk_vis & ~nb.any(5).any(3)
        rows = vis.any(-1).expand(B, H, Q)  # rows with at least one visible key
        support = nz.sum(-1)  # [B, H, Q]
        visible = vis.sum(-1).expand(B, H, Q)
        edges = torch.tensor(_support_edges(K), device=p.device)
        a = alpha.detach().float().cpu() if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha))
        a = a.expand(H) if a.dim() == 0 else a
        for h in range(H):
            s = self.sums.setdefault((layer, h), {"alpha": float(a[h]), "visible": 0, "zeros": 0, "vblocks": 0,
                                                  "zblocks": 0, "rows": 0, "support": 0, "visible_keys": 0,
                                                  "hist": {}})
            s["visible"] += int(vis.sum())
            s["zeros"] += int((vis[:, 0] & ~nz[:, h]).sum())
            s["vblocks"] += int(blk_vis.sum())
            s["zblocks"] += int(blk_zero[:, h].sum())
            r = rows[:, h]
            s["rows"] += int(r.sum())
            s["support"] += int(support[:, h][r].sum())
            s["visible_keys"] += int(visible[:, h][r].sum())
            bins = torch.bucketize(support[:, h][r], edges, right=True) - 1
            for b, c in zip(*torch.unique(bins, return_counts=True)):
                s["hist"][int(b)] = s["hist"].get(int(b), 0) + int(c)
            s["edges"] = max(s.get("edges", []), edges.tolist(), key=len)
        if self.want is not None and self.want[0] == layer:
            self.pattern = {"layer": layer, "head": int(self.want[1]), "batch_index": 0,
                            "probs": p[0, int(self.want[1])].cpu().tolist()}


@contextmanager
def _recording(rec):
    prev = hf_integration._RECORDER
    hf_integration._RECORDER = rec
    try:
        yield
    finally:
        hf_integration._RECORDER = prev


def sparsity_stats(model, batch: dict, block_size: int = 64, pattern: tuple[int, int] | None = None) -> SparsityStats:
    """Run ``model`` on ``batch`` and measure the alpha-entmax sparsity of every layer and head.

    Args:
        model: a model running ``attn_implementation="adasplash"`` (e.g. from :func:`hf_adasplash.patch`).
        batch: model inputs, e.g. ``{"input_ids": [B, T], "attention_mask": [B, T]}`` (padded, not packed).
        block_size: tile size for the block statistic (the kernels skip all-zero ``block_size^2`` tiles).
        pattern: ``(layer, head)`` whose probability matrix (batch row 0) to return for plotting.

    Returns a :class:`SparsityStats`; ``to_dict()`` is JSON-able with the schema (``schema_version`` 1)::

        {"schema_version": 1, "model_type": str, "block_size": int, "num_layers": int, "num_heads": int,
         "zero_fraction": float,        # all layers/heads: zero weights / visible entries
         "block_zero_fraction": float,  # all layers/heads: all-zero blocks / visible blocks
         "heads": [{"layer": int, "head": int, "alpha": float,
                    "zero_fraction": float,        # zero weights among visible (query, key) entries
                    "block_zero_fraction": float,  # all-zero block_size^2 tiles among tiles with a visible entry
                    "support_mean": float,         # mean number of nonzero weights per query row
                    "visible_mean": float,         # mean number of visible keys per query row
                    "support_hist": {"edges": [0, 1, 2, 4, ...], "counts": [...]},  # edges[i] <= size < edges[i+1]
                    "visible_entries": int, "visible_blocks": int, "rows": int}, ...],   # sorted by (layer, head)
         "pattern": None | {"layer": int, "head": int, "batch_index": 0, "probs": [[float] * K] * Q}}

    "Visible" means allowed by the causal/window/padding mask; padded query rows are left out.
    """
    from hf_adasplash.patching import attention_modules

    impl = getattr(model.config, "_attn_implementation", None)
    if impl != hf_integration.NAME:
        raise ValueError(f"sparsity_stats needs a model running attn_implementation='adasplash', got {impl!r} "
                         "(call hf_adasplash.patch(model) first)")
    layer_of = {id(m): i for i, (_, m) in enumerate(attention_modules(model))}
    rec = _Accumulator(layer_of, block_size, batch.get("attention_mask"), pattern)
    with torch.no_grad(), _recording(rec):
        model(**batch, use_cache=False) if _accepts_use_cache(model) else model(**batch)
    heads = []
    for (layer, h), s in sorted(rec.sums.items()):
        n_bins = len(s["edges"]) - 1
        heads.append({
            "layer": layer, "head": h, "alpha": s["alpha"],
            "zero_fraction": s["zeros"] / s["visible"] if s["visible"] else math.nan,
            "block_zero_fraction": s["zblocks"] / s["vblocks"] if s["vblocks"] else math.nan,
            "support_mean": s["support"] / s["rows"] if s["rows"] else math.nan,
            "visible_mean": s["visible_keys"] / s["rows"] if s["rows"] else math.nan,
            "support_hist": {"edges": s["edges"], "counts": [s["hist"].get(i, 0) for i in range(n_bins)]},
            "visible_entries": s["visible"], "visible_blocks": s["vblocks"], "rows": s["rows"],
        })
    tot = {k: sum(s[k] for s in rec.sums.values()) for k in ("zeros", "visible", "zblocks", "vblocks")}
    return SparsityStats(
        model_type=str(getattr(model.config, "model_type", "")),
        block_size=block_size,
        num_layers=len(layer_of),
        num_heads=max((h for _, h in rec.sums), default=-1) + 1,
        zero_fraction=tot["zeros"] / tot["visible"] if tot["visible"] else math.nan,
        block_zero_fraction=tot["zblocks"] / tot["vblocks"] if tot["vblocks"] else math.nan,
        heads=heads,
        pattern=rec.pattern,
    )


def _accepts_use_cache(model) -> bool:
    return getattr(model.config, "use_cache", None) is not None and getattr(model, "can_generate", lambda: False)()
