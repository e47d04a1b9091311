"""Block-selection generators for tests and benchmarks (DESIGN.md section 5).

- :func:`uniform_selection`: per query token, block 0, the two local blocks (the block holding the
  token and the one before), the rest drawn uniformly without repetition among the earlier blocks;
- :func:`skewed_selection`: NSA-style top-n of a compressed-attention score (mean-pooled keys per
  block, ``q . kc`` softmax summed over the query heads of a group, causal block mask), with block 0
  and the local blocks forced in; concentrates queries on some blocks.

Both return canonical int32 ``[B, T, H, n]`` (no duplicates, ``-1`` where a token has fewer than
``n`` blocks to choose from) and work chunk by chunk so that ``T = 64K`` stays within a few hundred
MiB.
"""
from __future__ import annotations

import math

import torch

_CHUNK_ELEMS = 1 << 26


def _forced(t: torch.Tensor, bs: int) -> torch.Tensor:
    """``[c, 3]``: block 0, the token's block, the block before (-1 where it repeats or is < 0)."""
    cur = torch.div(t, bs, rounding_mode="floor")
    prev = cur - 1
    f = torch.stack([torch.zeros_like(cur), cur, prev], -1)
    f[:, 1] = torch.where(cur == 0, -1, f[:, 1])
    f[:, 2] = torch.where(prev <= 0, -1, f[:, 2])
    return f


def uniform_selection(B, T, H, n, bs, device=None, generator=None) -> torch.Tensor:
    nb = (T + bs - 1) // bs
    out = torch.empty(B, T, H, n, dtype=torch.int32, device=device)
    c = max(1, _CHUNK_ELEMS // max(1, B * H * nb))
    blocks = torch.arange(nb, device=device)
    for t0 in range(0, T, c):
        t1 = min(T, t0 + c)
        t = torch.arange(t0, t1, device=device)
        f = _forced(t, bs)  # [c, 3]
        nr = n - 3
        if nr > 0:
            r = torch.rand(B, t1 - t0, H, nb, device=device, generator=generator)
            # earlier blocks: 1 .. cur-2
            ok = (blocks.view(1, 1, nb) >= 1) & (blocks.view(1, 1, nb) <= (t // bs - 2).view(-1, 1, 1))
            r = torch.where(ok.unsqueeze(0), r, torch.full_like(r, -1.0))
            k = min(nr, nb)
            val, ix = torch.topk(r, k, dim=-1)
            ix = torch.where(val >= 0, ix, torch.full_like(ix, -1))
            if k < nr:
                ix = torch.cat([ix, ix.new_full((*ix.shape[:-1], nr - k), -1)], -1)
            sel = torch.cat([f.view(1, -1, 1, 3).expand(B, -1, H, 3).to(ix.dtype), ix], -1)
        else:
            sel = f.view(1, -1, 1, 3).expand(B, -1, H, 3)[..., :n]
        out[:, t0:t1] = sel.to(torch.int32)
    return out


def skewed_selection(q: torch.Tensor, k: torch.Tensor, n: int, bs: int) -> torch.Tensor:
    """``q [B,T,HQ,D]``, ``k [B,T,H,D]`` -> top-n blocks of the compressed-attention score."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    nb = (T + bs - 1) // bs
    dev = q.device
    pad = nb * bs - T
    kf = k.float()
    if pad:
        kf = torch.cat([kf, kf.new_zeros(B, pad, H, D)], 1)
    cnt = torch.full((nb,), float(bs), device=dev)
    cnt[-1] = bs - pad
    kc = kf.view(B, nb, bs, H, D).sum(2) / cnt.view(1, nb, 1, 1)  # [B, nb, H, D]
    scale = 1.0 / math.sqrt(D)
    out = torch.empty(B, T, H, n, dtype=torch.int32, device=dev)
    blocks = torch.arange(nb, device=dev)
    c = max(1, _CHUNK_ELEMS // max(1, B * HQ * nb))
    for t0 in range(0, T, c):
        t1 = min(T, t0 + c)
        t = torch.arange(t0, t1, device=dev)
        qc = q[:, t0:t1].float().view(B, t1 - t0, H, G, D)
        s = torch.einsum("bthgd,bjhd->bthgj", qc, kc) * scale
        past = blocks.view(1, -1) < (t // bs).view(-1, 1)  # compressed blocks fully in the past
        s = s.masked_fill(~past.view(1, -1, 1, 1, nb), -math.inf)
        p = torch.softmax(s, -1).nan_to_num(0.0).sum(3)  # [B, c, H, nb]
        p = torch.where(past.view(1, -1, 1, nb), p, torch.full_like(p, -1.0))
        f = _forced(t, bs)
        fm = (blocks.view(1, nb, 1) == f.view(-1, 1, 3)).any(-1)  # [c, nb]; -1 matches nothing
        p = torch.where(fm.view(1, -1, 1, nb), torch.full_like(p, 1e9), p)
        k_ = min(n, nb)
        val, ix = torch.topk(p, k_, dim=-1)
        ix = torch.where(val >= 0, ix, torch.full_like(ix, -1))
        if k_ < n:
            ix = torch.cat([ix, ix.new_full((*ix.shape[:-1], n - k_), -1)], -1)
        out[:, t0:t1] = ix.to(torch.int32)
    return out
