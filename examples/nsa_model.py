"""A small Llama-style language model with Native Sparse Attention, in plain PyTorch.

No fsa_compile import: this is the code a user writes. Each attention layer has NSA's three
branches, mixed by per-head sigmoid gates:

- compressed: queries attend to block summaries of the keys/values (blocks of ``cmp_block``
  tokens every ``cmp_stride`` tokens, summarised by a learned linear map), causally at block
  granularity, plus a learned null key so that no query is left without keys;
- selected: each query token picks ``n`` blocks of ``block_size`` keys per KV head (top-n of
  compressed scores, the first block and the local block forced in) and attends to them
  (``nsa_selected.selected_attention_gather``, the gather form);
- sliding window: the last ``window`` tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nsa_layer import select_blocks
from nsa_selected import selected_attention_gather


@dataclass
class NSAConfig:
    vocab: int = 256
    dim: int = 256
    layers: int = 2
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 32
    block_size: int = 64
    n: int = 16
    window: int = 512
    cmp_block: int = 32
    cmp_stride: int = 16
    # How the sliding branch is cut into SDPA calls (speed only, same result): query chunks, each
    # against window + chunk keys. Shorter chunks waste less of each call on masked keys but make
    # more calls: measured (one H100/H200), 128 is faster without gradients (32K prefill 9.11 ->
    # 9.03 ms), 256 with them (forward + backward 2.16 against 2.33 ms per layer).
    win_chunk: int = 256  # when gradients are recorded (training)
    win_chunk_no_grad: int = 128  # under torch.no_grad() / inference_mode (prefill)
    mlp_mult: int = 4
    max_seq: int = 131072  # longest sequence the rotary tables cover
    attention: str = "nsa"  # "dense": causal SDPA instead of the three NSA branches (the baseline)


def rope_tables(max_seq: int, head_dim: int, base: float = 10000.0):
    """cos and sin of the rotary angles, ``[max_seq, head_dim / 2]`` each.

    Computed once when the model is built: recomputing them inside the forward pass means every
    element of q and k pays for its own pow, cos and sin (a compiler inlines the table into each
    consumer), which cost ~0.7 ms per layer at T = 32K on an H100.
    """
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(max_seq, dtype=torch.float64)[:, None] * inv
    return ang.cos().float(), ang.sin().float()


def rope(x, cos, sin):
    """Rotary position embedding on the last dim of ``x [B, T, H, D]`` (tables ``[>= T, D / 2]``)."""
    T, D = x.shape[1], x.shape[-1]
    cos, sin = cos[None, :T, None, :].float(), sin[None, :T, None, :].float()
    x1, x2 = x.float()[..., : D // 2], x.float()[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class NSAAttention(nn.Module):
    def __init__(self, c: NSAConfig):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.wq = nn.Linear(c.dim, c.heads * hd, bias=False)
        self.wk = nn.Linear(c.dim, c.kv_heads * hd, bias=False)
        self.wv = nn.Linear(c.dim, c.kv_heads * hd, bias=False)
        self.wo = nn.Linear(c.heads * hd, c.dim, bias=False)
        self.gate = nn.Linear(c.dim, 3 * c.heads)
        self.cmp_k = nn.Linear(c.cmp_block * hd, hd, bias=False)
        self.cmp_v = nn.Linear(c.cmp_block * hd, hd, bias=False)
        self.cmp_pos = nn.Parameter(torch.zeros(c.cmp_block, hd))
        self.null_kv = nn.Parameter(torch.zeros(2, c.kv_heads, hd))

    def compressed(self, q, k, v):
        """Attention over block summaries; returns the output [B, T, HQ, D].

        Query t sees the null key and every summary whose block ends at or before t. Those sets
        grow by one summary every ``cmp_stride`` tokens, so the queries fall into groups of
        ``cmp_stride`` consecutive tokens that see the same keys, and group g sees the null key
        and the first g summaries. Folding a group's tokens into the head dim makes that plain
        causal attention of groups over [null, summaries]: one ``is_causal`` SDPA call, no mask,
        no masked-out work. The first ``cmp_block - 1 - cmp_stride`` tokens see only the null key,
        so their output is its value.
        """
        c = self.c
        B, T, HQ, D = q.shape
        if T >= c.cmp_block:
            kb = k.unfold(1, c.cmp_block, c.cmp_stride).transpose(-1, -2)  # [B, Tc, H, cmp_block, D]
            vb = v.unfold(1, c.cmp_block, c.cmp_stride).transpose(-1, -2)
            kc = self.cmp_k((kb + self.cmp_pos).flatten(-2))  # [B, Tc, H, D]
            vc = self.cmp_v((vb + self.cmp_pos).flatten(-2))
        else:
            kc = k.new_zeros(B, 0, c.kv_heads, D)
            vc = kc
        nk = self.null_kv[0].expand(B, 1, -1, -1).to(k.dtype)
        nv = self.null_kv[1].expand(B, 1, -1, -1).to(v.dtype)
        kc, vc = torch.cat([nk, kc], 1), torch.cat([nv, vc], 1)  # [B, S, H, D], key 0 is the null key
        S, st = kc.shape[1], c.cmp_stride
        # token t sees keys j <= (t - off) // st: summary j - 1 ends at st * (j - 1) + cmp_block - 1
        off = c.cmp_block - 1 - st
        early = min(T, max(off, 0))  # tokens before the first group: the null key only
        front = max(-off, 0)  # empty rows in front, so that token off + st * g starts group g
        # S groups in all (the last token's group is S - 1), so the causal mask is square
        qg = F.pad(q[:, early:], (0, 0, 0, 0, front, S * st - front - (T - early)))
        qg = qg.view(B, S, st, HQ, D).permute(0, 3, 2, 1, 4).reshape(B, HQ * st, S, D)
        o = F.scaled_dot_product_attention(qg, kc.transpose(1, 2), vc.transpose(1, 2), is_causal=True,
                                           enable_gqa=True)
        o = o.view(B, HQ, st, S, D).permute(0, 3, 2, 1, 4).reshape(B, S * st, HQ, D)[:, front:front + T - early]
        return torch.cat([nv.repeat_interleave(HQ // c.kv_heads, 2).expand(B, early, HQ, D), o], 1)

    def sliding(self, q, k, v):
        """Causal attention over the last ``window`` keys; returns [B, T, HQ, D].

        The first ``window`` tokens see every token up to themselves: plain causal attention. The
        later ones go in chunks of ``win_chunk`` queries (``win_chunk_no_grad`` when no gradient
        is recorded), each against the ``window + win_chunk`` keys that end with it, as one SDPA
        call with the chunks in the batch dim; every chunk then has the same band mask, one
        ``[win_chunk, window + win_chunk]`` pattern broadcast over the chunks rather than a mask
        per chunk.
        """
        c = self.c
        B, T, HQ, D = q.shape
        W = c.window

        def heads(x):  # [B, T', H, D] -> [B, H, T', D]
            return x.transpose(1, 2)

        head = min(T, W)
        o_head = F.scaled_dot_product_attention(heads(q[:, :head]), heads(k[:, :head]), heads(v[:, :head]),
                                                is_causal=True, enable_gqa=True).transpose(1, 2)
        if T == head:
            return o_head
        qc = min(c.win_chunk if torch.is_grad_enabled() else c.win_chunk_no_grad, T - W)
        L = W + qc
        pad = (-(T - W)) % qc
        nc = (T - W + pad) // qc
        # chunk i: queries are tokens W + i*qc + r, keys tokens i*qc + j; key j is in query r's
        # window iff r < j <= r + W
        qs = F.pad(q[:, W:], (0, 0, 0, 0, 0, pad)).view(B * nc, qc, HQ, D).transpose(1, 2)

        def keys(x):  # [B, T, H, D] -> [B * nc, H, L, D]
            x = F.pad(x, (0, 0, 0, 0, 0, pad))
            w = x.unfold(1, L, qc).transpose(-1, -2).reshape(B * nc, c.kv_heads, L, D)
            # The windows overlap in memory. Saved for the backward as such, they keep torch 2.11's
            # CUDA graphs (mode="reduce-overhead") off the whole backward ("complex memory
            # overlap"), so with gradients they are copied (3x the bytes of K and V).
            return w.contiguous() if torch.is_grad_enabled() else w

        r = torch.arange(qc, device=q.device).view(qc, 1)
        j = torch.arange(L, device=q.device).view(1, L)
        band = ((j > r) & (j <= r + W)).view(1, 1, qc, L)
        o = F.scaled_dot_product_attention(qs, keys(k), keys(v), attn_mask=band, enable_gqa=True)
        return torch.cat([o_head, o.transpose(1, 2).reshape(B, nc * qc, HQ, D)[:, : T - W]], 1)

    def forward(self, x, cos, sin):
        c = self.c
        B, T, _ = x.shape
        q = rope(self.wq(x).view(B, T, c.heads, c.head_dim), cos, sin)
        k = rope(self.wk(x).view(B, T, c.kv_heads, c.head_dim), cos, sin)
        v = self.wv(x).view(B, T, c.kv_heads, c.head_dim)
        if c.attention == "dense":
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
            ).transpose(1, 2)
            return self.wo(o.reshape(B, T, c.heads * c.head_dim))
        with torch.no_grad():
            idx = select_blocks(q, k, c.block_size, c.n)
        o_sel = selected_attention_gather(q, k, v, idx, c.block_size)
        o_cmp = self.compressed(q, k, v)
        o_win = self.sliding(q, k, v)
        g = torch.sigmoid(self.gate(x)).view(B, T, c.heads, 3, 1).to(q.dtype)
        o = g[..., 0, :] * o_cmp + g[..., 1, :] * o_sel + g[..., 2, :] * o_win
        return self.wo(o.reshape(B, T, c.heads * c.head_dim))


class Block(nn.Module):
    def __init__(self, c: NSAConfig):
        super().__init__()
        self.n1, self.n2 = RMSNorm(c.dim), RMSNorm(c.dim)
        self.attn = NSAAttention(c)
        hidden = c.mlp_mult * c.dim
        self.w1 = nn.Linear(c.dim, hidden, bias=False)
        self.w3 = nn.Linear(c.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, c.dim, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.n1(x), cos, sin)
        h = self.n2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class NSAModel(nn.Module):
    def __init__(self, c: NSAConfig):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab, c.dim)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.dim)
        self.head = nn.Linear(c.dim, c.vocab, bias=False)
        cos, sin = rope_tables(c.max_seq, c.head_dim)
        # buffers (not saved in checkpoints): they follow the model's device and dtype
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens):
        if tokens.shape[1] > self.c.max_seq:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens is longer than max_seq={self.c.max_seq} "
                             "(the rotary tables' length): raise NSAConfig.max_seq")
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x, self.rope_cos, self.rope_sin)
        return self.head(self.norm(x))

    def loss(self, tokens):
        logits = self(tokens[:, :-1])
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(c: NSAConfig) -> float:
    """Rough training FLOPs per token (6 x parameters of the dense parts), for reporting only."""
    per_layer = 2 * c.dim * (c.heads + 2 * c.kv_heads) * c.head_dim + 3 * c.dim * c.mlp_mult * c.dim
    return 6 * (c.layers * per_layer + c.vocab * c.dim)


__all__ = ["NSAConfig", "NSAModel", "num_params", "flops_per_token"]
