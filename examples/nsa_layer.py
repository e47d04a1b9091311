"""A small NSA selected-attention layer in plain PyTorch (no fsa_compile import).

Projections, block selection from compressed attention scores (mean-pooled keys per block, top-n
with the first block and the local block forced in, padding -1 where a query has fewer than n
earlier blocks), then selected attention in the gather form.
"""
import torch
from torch import nn

from nsa_selected import selected_attention_gather


def select_blocks(q, k, block_size: int, n: int):
    """Top-n blocks per (token, KV head) from compressed scores; -1 where fewer than n exist."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    nb = (T + block_size - 1) // block_size
    pad = nb * block_size - T
    kc = nn.functional.pad(k, (0, 0, 0, 0, 0, pad)).view(B, nb, block_size, H, D).mean(2)  # [B, nb, H, D]
    scores = torch.einsum("bthgd,bjhd->bthj", q.view(B, T, H, HQ // H, D), kc)  # summed over the group
    t_block = torch.arange(T, device=q.device) // block_size
    j = torch.arange(nb, device=q.device)
    future = j.view(1, 1, 1, nb) > t_block.view(1, T, 1, 1)
    forced = (j.view(1, 1, 1, nb) == 0) | (j.view(1, 1, 1, nb) == t_block.view(1, T, 1, 1))
    scores = scores.masked_fill(future, float("-inf")).masked_fill(forced, float("inf"))
    top = scores.topk(min(n, nb), dim=-1)
    idx = torch.where(torch.isinf(top.values) & (top.values < 0), -1, top.indices)
    return idx


class NSASelectedAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, block_size: int = 64, n: int = 16):
        super().__init__()
        self.h, self.hkv, self.d, self.bs, self.n = heads, kv_heads, head_dim, block_size, n
        self.wq = nn.Linear(dim, heads * head_dim, bias=False)
        self.wk = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.h, self.d)
        k = self.wk(x).view(B, T, self.hkv, self.d)
        v = self.wv(x).view(B, T, self.hkv, self.d)
        with torch.no_grad():
            idx = select_blocks(q, k, self.bs, self.n)
        o = selected_attention_gather(q, k, v, idx, self.bs)
        return self.wo(o.reshape(B, T, self.h * self.d))
