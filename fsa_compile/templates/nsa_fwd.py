"""Query-major (NSA-order) forward: one program per (tile of TOK query tokens x G heads, KV head).

The tile's rows are ``TOK`` consecutive query tokens times the ``G`` query heads of one KV head
(``row = token * G + head``), padded to ``BLOCK_R >= 16`` rows. The program walks a list of KV
blocks with an online softmax:

- ``TOK == 1`` and ``UNION == False``: the list is the token's own ``n`` selected slots, in order;
  a block listed twice is processed twice (so counted twice), a negative slot is skipped by masks.
- ``UNION == True``: the list is the sorted set of distinct blocks the tile's tokens selected
  (built by :func:`tile_block_union`); every row weighs a block by how many times its own token
  selected it (0 = masked, 2 = a duplicate), which is exactly the contract's duplicate rule. Tokens
  that share blocks (block 0, the local blocks, popular blocks) then share one K/V load and one
  larger matrix product.

Scores are kept in the log2 domain (``scale * log2(e)`` folded into one multiplier).

With ``TMA`` the K and V tiles come by bulk tensor copies through descriptors over ``[B, T, H, D]``
(``K_DESC``, ``V_DESC``, built by the lowering only for power-of-two block sizes): rows before 0
(a padding slot) or past T and columns past D read as zeros, as the masked loads do.

``T`` counts q's rows, ``TK`` the keys; query row ``t`` is at key position ``QOFF + t``, or with
``HAS_POS`` at ``POS[b, t]`` (int32 or int64, strides ``spb``, ``spt``; one-token tiles only).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import block_tile, mma, row_position, softmax_probs, store_rows


@triton.jit
def nsa_fwd_kernel(
    Q, K, V, IDX, ULIST, UCNT, O, LSE, K_DESC, V_DESC,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sob, sot, soh, sod,
    sib, sit, sih, sis,
    T, TK, QOFF, POS, spb, spt, H, NT, ULEN, scale_log2,
    G: tl.constexpr, TOK: tl.constexpr, SEQ: tl.constexpr, BLOCK_R: tl.constexpr,
    N_SEL: tl.constexpr, BLOCK_SEL: tl.constexpr,
    BS: tl.constexpr, BLOCK_N: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, UNION: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    TMA: tl.constexpr = False, HAS_POS: tl.constexpr = False,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    # SEQ consecutive tiles one after the other: blocks they share (block 0, the local blocks)
    # are then re-read from this SM's L1 rather than from L2
    for si in range(SEQ):
        pt = pid_t * SEQ + si
        if pt < NT:
            t0 = pt * TOK

            rows = tl.arange(0, BLOCK_R)
            tok = t0 + rows // G
            hq = h * G + rows % G
            row_ok = (rows < TOK * G) & (tok < T)
            offs_d = tl.arange(0, BLOCK_D)
            offs_n = tl.arange(0, BLOCK_N)

            b64 = b.to(tl.int64)
            tok64 = tok.to(tl.int64)
            q_ptrs = (Q + b64 * sqb + tok64[:, None] * sqt + hq[:, None] * sqh
                      + offs_d[None, :] * sqd)
            q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)

            m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_R], tl.float32)
            acc = tl.zeros([BLOCK_R, BLOCK_DV], tl.float32)

            if HAS_POS:
                qpos = row_position(POS, b64 * spb + tok64 * spt, row_ok, TK)
            else:
                qpos = tok + QOFF
            k_base = K + b64 * skb + h * skh
            v_base = V + b64 * svb + h * svh
            if UNION:
                # Every row's own selection, to weigh each listed block by its multiplicity.
                offs_s = tl.arange(0, BLOCK_SEL)
                sel = tl.load(IDX + b64 * sib + tok64[:, None] * sit + h * sih + offs_s[None, :] * sis,
                              mask=row_ok[:, None] & (offs_s[None, :] < N_SEL), other=-1)
                lst = ULIST + (pid_bh.to(tl.int64) * NT + pt) * ULEN
                count = tl.load(UCNT + pid_bh.to(tl.int64) * NT + pt)
            else:
                lst = IDX + b64 * sib + t0.to(tl.int64) * sit + h * sih
                count = N_SEL

            for i in range(0, count):
                if UNION:
                    blk = tl.load(lst + i)
                    w = tl.sum((sel == blk).to(tl.float32), axis=1)
                    row_sel = w > 0
                else:
                    blk = tl.load(lst + i * sis)
                    w = tl.full([BLOCK_R], 1.0, tl.float32)
                    row_sel = row_ok
                kpos = blk * BS + offs_n
                kmask = (offs_n < BS) & (kpos < TK) & (kpos >= 0)  # kpos < 0: padding slot
                kpos64 = kpos.to(tl.int64)
                k = block_tile(K_DESC, k_base, b, h, blk * BS, kpos64, kmask, skt, skd, D, BLOCK_N,
                               BLOCK_D, TMA)
                s = mma(q, tl.trans(k), PRECISION, UPCAST) * scale_log2
                valid = row_sel[:, None] & kmask[None, :]
                if CAUSAL:
                    valid = valid & (kpos[None, :] <= qpos[:, None])
                s = tl.where(valid, s, float("-inf"))
                m_i, l_i, alpha, p = softmax_probs(s, m_i, l_i, w, UNION)
                v = block_tile(V_DESC, v_base, b, h, blk * BS, kpos64, kmask, svt, svd, DV, BLOCK_N,
                               BLOCK_DV, TMA)
                acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PRECISION, UPCAST)

            store_rows(O, LSE, b64, tok, hq, row_ok, m_i, l_i, acc, T, H, sob, sot, soh, sod,
                       G, DV, BLOCK_DV)


def tile_block_union(idx: torch.Tensor, tok: int, block_size: int, causal: bool, q_offset: int = 0):
    """For tiles of ``tok`` consecutive tokens: the sorted distinct blocks they selected.

    ``idx`` canonical ``[B, T, H, n]``. Returns ``(ulist [B, H, NT, tok*n] int32, ucnt [B, H, NT]
    int32)``: the first ``ucnt`` entries of a row are the distinct blocks (in increasing order), the
    rest is padding never read. With ``causal``, blocks that start after the tile's last token are
    left out (no row of the tile can see them; token ``t`` is at key position ``q_offset + t``).
    Torch ops on the device, no host sync.
    """
    B, T, H, n = idx.shape
    NT = (T + tok - 1) // tok
    pad = NT * tok - T
    x = idx
    if pad:
        x = torch.cat([x, x.new_full((B, pad, H, n), -1)], 1)
    x = x.view(B, NT, tok, H, n).permute(0, 3, 1, 2, 4).reshape(B, H, NT, tok * n)
    big = torch.iinfo(torch.int32).max
    drop = x < 0
    if causal:
        last = torch.clamp(torch.arange(NT, device=idx.device) * tok + tok - 1, max=T - 1) + q_offset
        drop = drop | (x * block_size > last.view(1, 1, NT, 1))
    x = torch.where(drop, torch.full_like(x, big), x)
    x, _ = torch.sort(x, dim=-1)
    rep = torch.zeros_like(x, dtype=torch.bool)
    rep[..., 1:] = x[..., 1:] == x[..., :-1]
    x = torch.where(rep, torch.full_like(x, big), x)
    x, _ = torch.sort(x, dim=-1)
    ucnt = (x != big).sum(-1, dtype=torch.int32)
    return x.contiguous(), ucnt.contiguous()
