"""Tiny model families and the equivalence checks shared by the integration tests and scripts/model_table.py.

Every check returns a max-abs logit difference (or a bool); the tests assert on it and the script tabulates it.
The truth is ``"adasplash_ref64"``: a dense float64 alpha-entmax attention registered with Transformers' own
``sdpa_mask`` (4-D boolean masks), written independently of hf_adasplash's mask conversion.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import transformers
from transformers import AttentionInterface, AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import hf_adasplash
from hf_adasplash.entmax import entmax

REF = "adasplash_ref64"
V = 128  # vocab
PAD = 0


def ref64_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Dense float64 alpha-entmax attention: the ground truth (sdpa_mask semantics for ``attention_mask``)."""
    B, Hq, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    q, k, v = (t.double() for t in (query, key, value))
    k, v = (t.repeat_interleave(Hq // Hkv, dim=1) for t in (k, v))
    s = q @ k.transpose(-1, -2) * (D**-0.5 if scaling is None else scaling)
    if kwargs.get("softcap"):
        s = kwargs["softcap"] * torch.tanh(s / kwargs["softcap"])
    is_causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
    if attention_mask is not None:
        vis = attention_mask.bool().expand(B, 1, Q, K)
    elif is_causal and Q > 1:  # sdpa's None: causal, top-left (static-cache prefill crops K to Q)
        vis = torch.ones(Q, K, dtype=torch.bool).tril()[None, None]
    else:
        vis = torch.ones(1, 1, Q, K, dtype=torch.bool)
    s = s.masked_fill(~vis, float("-inf"))
    if hasattr(module, "adasplash_alpha"):
        alpha = module.adasplash_alpha().double().reshape(1, Hq, 1, 1)
    else:
        alpha = torch.full((1, Hq, 1, 1), 1.5, dtype=torch.float64)
    p = entmax(s, alpha.expand(B, Hq, Q, 1), dim=-1)
    p = torch.nan_to_num(p) * vis.any(-1, keepdim=True)  # fully masked rows -> 0
    return (p @ v).to(query.dtype).transpose(1, 2).contiguous(), None


def register_reference() -> None:
    AttentionInterface.register(REF, ref64_attention)
    AttentionMaskInterface.register(REF, sdpa_mask)


@dataclass
class Family:
    name: str
    config_cls: str
    kwargs: dict
    decoder: bool = True
    position_ids: bool = True  # pass explicit position ids for padded batches (RoBERTa derives them itself)
    softcap: bool = False  # sdpa rejects softcap: compare alpha = 1 against eager instead
    notes: list[str] = field(default_factory=list)

    def config(self):
        return getattr(transformers, self.config_cls)(**self.kwargs)

    @property
    def dense_impl(self) -> str:
        return "eager" if self.softcap else "sdpa"


_IDS = {"pad_token_id": PAD, "bos_token_id": 1, "eos_token_id": 2}
_D = dict(_IDS, vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          max_position_embeddings=64)
_GQA = dict(_D, num_key_value_heads=2)
_ENC = dict(_D, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

FAMILIES = {f.name: f for f in [
    Family("llama", "LlamaConfig", _GQA, notes=["GQA 4/2"]),
    Family("qwen2", "Qwen2Config", dict(_GQA, use_sliding_window=True, sliding_window=5, max_window_layers=1),
           notes=["GQA 4/2", "sliding window 5 (layer 1)"]),
    Family("qwen3", "Qwen3Config", dict(_GQA, head_dim=16), notes=["GQA 4/2", "q/k norm"]),
    Family("mistral", "MistralConfig", dict(_GQA, num_key_value_heads=1, sliding_window=5),
           notes=["MQA 4/1", "sliding window 5"]),
    Family("gemma2", "Gemma2Config", dict(_GQA, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                                          attn_logit_softcapping=5.0, final_logit_softcapping=30.0),
           softcap=True, notes=["GQA 4/2", "logit softcap 5", "sliding window 4 (alternate layers)"]),
    Family("gemma3_text", "Gemma3TextConfig", dict(_GQA, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                                                   layer_types=["sliding_attention", "full_attention"]),
           notes=["GQA 4/2", "sliding window 4 (layer 0)", "q/k norm"]),
    Family("phi3", "Phi3Config", _GQA, notes=["GQA 4/2", "fused qkv"]),
    Family("gpt2", "GPT2Config", dict(_IDS, vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                      attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0),
           notes=["MHA", "absolute positions"]),
    Family("gpt_neox", "GPTNeoXConfig", dict(_D, attention_dropout=0.0, hidden_dropout=0.0),
           notes=["MHA", "partial rotary"]),
    Family("bert", "BertConfig", _ENC, decoder=False, notes=["encoder (bidirectional)"]),
    Family("roberta", "RobertaConfig", dict(_ENC, max_position_embeddings=72), decoder=False, position_ids=False,
           notes=["encoder (bidirectional)"]),
    Family("modernbert", "ModernBertConfig", dict(_D, global_attn_every_n_layers=2, local_attention=4,
                                                  cls_token_id=1, sep_token_id=2,
                                                  attention_dropout=0.0, mlp_dropout=0.0, embedding_dropout=0.0),
           decoder=False, notes=["encoder", "bidirectional local window ±2 on layer 1"]),
]}
DECODERS = [n for n, f in FAMILIES.items() if f.decoder]


def build(fam: Family, impl: str, seed: int = 0):
    """A tiny random fp32 model in eval mode (the config is copied: from_config mutates it)."""
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if fam.decoder else AutoModelForMaskedLM
    return auto.from_config(copy.deepcopy(fam.config()), attn_implementation=impl).eval()


def adasplash_model(fam: Family, alpha: float = 1.5, seed: int = 0, spread: bool = True, **patch_kw):
    """The family's model patched with per-head alpha (distinct values per head and layer when ``spread``)."""
    model = hf_adasplash.patch(build(fam, fam.dense_impl, seed), alpha=alpha, **patch_kw)
    if spread and alpha != 1.0:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in hf_adasplash.alpha_parameters(model):
                p.add_(torch.randn(p.shape, generator=g))  # alpha spread over (1.001, 2)
    return model


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (B, T), generator=g)


def _logits(model, ids, mask=None, position_ids=None, **kw):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **kw)
    return out.logits


def _max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def check_reference(fam: Family, T: int = 12) -> float:
    """adasplash vs the float64 reference attention, same weights and alpha, padded batch of 2."""
    register_reference()
    model = adasplash_model(fam)
    ids = tokens(2, T)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, -3:] = 0  # right padding in row 1
    ids[1, -3:] = PAD
    got = _logits(model, ids, mask)
    model.set_attn_implementation(REF)
    want = _logits(model, ids, mask)
    keep = mask.bool()
    return _max_diff(got[keep], want[keep])


def check_alpha_one(fam: Family, T: int = 12) -> float:
    """alpha = 1 (exact softmax) vs the built-in dense implementation."""
    model = build(fam, fam.dense_impl)
    ids = tokens(2, T)
    want = _logits(model, ids)
    hf_adasplash.patch(model, alpha=1.0)
    return _max_diff(_logits(model, ids), want)


def check_padding(fam: Family, side: str, T: int = 10, pad: int = 3, model=None) -> float:
    """A padded batch (row 0 shorter by ``pad``) vs each sequence alone, on the real tokens."""
    model = adasplash_model(fam) if model is None else model
    ids = tokens(2, T)
    alone = [_logits(model, ids[0:1, : T - pad]), _logits(model, ids[1:2])]
    batch = torch.full((2, T), PAD)
    mask = torch.zeros(2, T, dtype=torch.long)
    real = slice(0, T - pad) if side == "right" else slice(pad, T)
    batch[0, real], mask[0, real] = ids[0, : T - pad], 1
    batch[1], mask[1] = ids[1], 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0) if fam.position_ids else None
    got = _logits(model, batch, mask, pos)
    return max(_max_diff(got[0, real], alone[0][0]), _max_diff(got[1], alone[1][0]))


def check_packed(fam: Family, how: str, lens=(5, 7)) -> float:
    """Two sequences packed into one row (``position_ids`` restart, or ``cu_seq_lens_*``) vs each alone."""
    model = adasplash_model(fam)
    seqs = [tokens(1, n, seed=i + 1) for i, n in enumerate(lens)]
    alone = [_logits(model, s, use_cache=False)[0] for s in seqs]
    ids = torch.cat(seqs, dim=1)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    kw = {}
    if how == "cu_seq_lens":
        cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32)
        kw = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lens), "max_length_k": max(lens)}
    got = _logits(model, ids, None, pos, use_cache=False, **kw)[0]
    return max(_max_diff(got[: lens[0]], alone[0]), _max_diff(got[lens[0]:], alone[1]))


def check_generate(fam: Family, cache: str, new: int = 6) -> bool:
    """Greedy tokens with a KV cache (left-padded batch) equal the float64 reference run without a cache."""
    register_reference()
    model = adasplash_model(fam)
    ids = tokens(2, 8)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = PAD, 0  # left padding
    kw = {"attention_mask": mask, "max_new_tokens": new, "do_sample": False, "pad_token_id": PAD, "eos_token_id": None}
    if cache == "static":
        kw["cache_implementation"] = "static"
    with torch.no_grad():
        got = model.generate(ids, use_cache=True, **kw)
        model.set_attn_implementation(REF)
        want = model.generate(ids, use_cache=False, **kw)
    return bool(torch.equal(got, want))
