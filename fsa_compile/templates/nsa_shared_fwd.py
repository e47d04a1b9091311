"""Query-major (NSA-order) forward for tiles of ``TOK`` tokens that share some of their blocks.

NSA puts block 0 and the token's local blocks into every selection, so consecutive tokens list
several blocks in common. Each program takes ``TOK`` consecutive tokens of one KV head and:

1. finds, from the tile's ``TOK x n`` selection, the blocks that every token of the tile lists
   exactly once (a block that some token lists twice is not shared, so duplicates keep their
   count-twice meaning) and writes its block lists, shared and per token, to a scratch buffer
   ``LST`` of its own, so that its loops read one block index per step;
2. attends to the shared blocks with one tile of ``TOK * G`` rows: one K/V load per shared block
   instead of ``TOK``. That state leaves through ``o`` / ``lse`` (normalised, so in ``o``'s
   dtype: one more rounding of the shared blocks' part, as the inverted loop's partials have);
3. per token, takes its rows of that state back and walks its own slots with a ``G``-row tile,
   as the one-token kernel does, and writes the final ``o`` / ``lse``.

Each token's result is the online softmax over exactly its own slots, only in another order.
``G`` is a power of two >= 16 (a token's tile is then a whole matrix-product tile).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import block_tile, mma, softmax_probs, store_rows


@triton.jit
def _kv_tiles(K_DESC, V_DESC, k_base, v_base, b, h, blk, T, skt, skd, svt, svd,
              BS: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
              DV: tl.constexpr, BLOCK_DV: tl.constexpr, TMA: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    kpos = blk * BS + offs_n
    kmask = (offs_n < BS) & (kpos < T) & (kpos >= 0)
    kpos64 = kpos.to(tl.int64)
    k = block_tile(K_DESC, k_base, b, h, blk * BS, kpos64, kmask, skt, skd, D, BLOCK_N, BLOCK_D, TMA)
    v = block_tile(V_DESC, v_base, b, h, blk * BS, kpos64, kmask, svt, svd, DV, BLOCK_N, BLOCK_DV, TMA)
    return k, v, kpos, kmask


@triton.jit
def _attend(q, k, v, m_i, l_i, acc, kpos, kmask, tok, row_ok, scale_log2,
            CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    s = mma(q, tl.trans(k), PRECISION, UPCAST) * scale_log2
    valid = row_ok[:, None] & kmask[None, :]
    if CAUSAL:
        valid = valid & (kpos[None, :] <= tok[:, None])
    s = tl.where(valid, s, float("-inf"))
    m_i, l_i, alpha, p = softmax_probs(s, m_i, l_i, l_i, False)
    return m_i, l_i, acc * alpha[:, None] + mma(p.to(v.dtype), v, PRECISION, UPCAST)


@triton.jit
def nsa_shared_fwd_kernel(
    Q, K, V, IDX, O, LSE, LST, K_DESC, V_DESC,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sob, sot, soh, sod,
    sib, sit, sih, sis,
    T, TK, QOFF, H, NB, NT, scale_log2,
    G: tl.constexpr, TOK: tl.constexpr, N_SEL: tl.constexpr, BLOCK_SEL: tl.constexpr,
    BS: tl.constexpr, BLOCK_N: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    b64 = b.to(tl.int64)
    t0 = pid_t * TOK
    offs_s = tl.arange(0, BLOCK_SEL)
    offs_j = tl.arange(0, TOK)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    s_ok = offs_s < N_SEL
    i_base = IDX + b64 * sib + h * sih
    k_base = K + b64 * skb + h * skh
    v_base = V + b64 * svb + h * svh
    # this program's lists: the shared blocks, then each token's own ones, BLOCK_SEL apart
    lst = LST + (pid_bh.to(tl.int64) * NT + pid_t) * ((TOK + 1) * BLOCK_SEL)

    # The shared blocks: entries of token 0 that every token of the tile lists exactly once.
    tj = t0 + offs_j
    sel = tl.load(i_base + tj.to(tl.int64)[:, None] * sit + offs_s[None, :] * sis,
                  mask=(tj < T)[:, None] & s_ok[None, :], other=-1)
    e0 = tl.load(i_base + t0.to(tl.int64) * sit + offs_s * sis, mask=s_ok & (t0 + offs_s * 0 < T), other=-1)
    hits = tl.sum((sel[:, :, None] == e0[None, None, :]).to(tl.int32), axis=1)
    shared = (tl.min(hits, axis=0) == 1) & (tl.max(hits, axis=0) == 1) & (e0 >= 0) & (e0 < NB)
    if CAUSAL:  # a block no token of the tile can see is left to the (skipping) own lists
        shared = shared & (e0 * BS <= tl.minimum(t0 + TOK, T) - 1 + QOFF)
    shv = tl.where(shared, e0, -2)  # -2: never a listed block that an own list takes
    n_sh = tl.sum(shared.to(tl.int32), axis=0)
    tl.store(lst + tl.cumsum(shared.to(tl.int32), axis=0) - 1, e0, mask=shared)
    # Each token's own slots: the rest, less padding, out-of-range and (causal) future blocks.
    in_sh = tl.sum((sel[:, :, None] == shv[None, None, :]).to(tl.int32), axis=2)
    own = s_ok[None, :] & (sel >= 0) & (sel < NB) & (in_sh == 0)
    if CAUSAL:  # a block wholly after the token adds nothing: not loaded at all
        own = own & (sel * BS <= tj[:, None] + QOFF)
    tl.store(lst + (offs_j[:, None] + 1) * BLOCK_SEL + tl.cumsum(own.to(tl.int32), axis=1) - 1, sel,
             mask=own)
    n_own = tl.sum(own.to(tl.int32), axis=1)

    # Phase 1: all TOK * G rows against each shared block; the state goes out through o / lse
    # (normalised), where phase 2 picks up each token's rows.
    rows = tl.arange(0, TOK * G)
    tok1 = t0 + rows // G
    hq1 = h * G + rows % G
    ok1 = tok1 < T
    tl.debug_barrier()  # the lists, written by other threads of this program
    if n_sh > 0:
        q1 = tl.load(Q + b64 * sqb + tok1.to(tl.int64)[:, None] * sqt + hq1[:, None] * sqh
                     + offs_d[None, :] * sqd, mask=ok1[:, None] & (offs_d[None, :] < D), other=0.0)
        m1 = tl.full([TOK * G], float("-inf"), tl.float32)
        l1 = tl.zeros([TOK * G], tl.float32)
        a1 = tl.zeros([TOK * G, BLOCK_DV], tl.float32)
        # A few steps: not pipelined, so that the kernel needs no more shared memory than the
        # one-token kernel (3 programs per SM on Hopper). Pipelined 2 deep at tok 4 it took 82 KB,
        # 2 programs per SM, and was 15% slower at G = 16 (benchmarks/NOTES.md).
        for i in tl.range(0, n_sh, num_stages=1):
            blk = tl.load(lst + i)
            k, v, kpos, kmask = _kv_tiles(K_DESC, V_DESC, k_base, v_base, b, h, blk, TK, skt, skd, svt,
                                          svd, BS, BLOCK_N, D, BLOCK_D, DV, BLOCK_DV, TMA)
            m1, l1, a1 = _attend(q1, k, v, m1, l1, a1, kpos, kmask, tok1 + QOFF, ok1, scale_log2,
                                 CAUSAL, PRECISION, UPCAST)
        store_rows(O, LSE, b64, tok1, hq1, ok1, m1, l1, a1, T, H, sob, sot, soh, sod, G, DV, BLOCK_DV)
    tl.debug_barrier()  # phase 1's o / lse rows, read back by other threads

    # Phase 2: each token from its rows of that state, over its own slots.
    rows2 = tl.arange(0, G)
    hq2 = h * G + rows2
    for j in tl.static_range(TOK):
        tok = t0 + j
        tokv = tok + rows2 * 0
        okv = tokv < T
        tok64 = tok.to(tl.int64)
        o_ptrs = O + b64 * sob + tok64 * sot + hq2[:, None] * soh + offs_dv[None, :] * sod
        start = okv & (rows2 * 0 + n_sh > 0)
        lse0 = tl.load(LSE + (b64 * T + tok64) * (H * G) + hq2, mask=start, other=float("-inf"))
        seen = lse0 > float("-inf")
        m_i = tl.where(seen, lse0 * 1.4426950408889634, float("-inf"))
        l_i = tl.where(seen, 1.0, 0.0)
        acc = tl.load(o_ptrs, mask=(start & seen)[:, None] & (offs_dv[None, :] < DV), other=0.0).to(tl.float32)
        q = tl.load(Q + b64 * sqb + tok64 * sqt + hq2[:, None] * sqh + offs_d[None, :] * sqd,
                    mask=okv[:, None] & (offs_d[None, :] < D), other=0.0)
        cnt = tl.sum(tl.where(offs_j == j, n_own, 0), axis=0)
        for i in range(0, cnt):
            blk = tl.load(lst + (j + 1) * BLOCK_SEL + i)
            k, v, kpos, kmask = _kv_tiles(K_DESC, V_DESC, k_base, v_base, b, h, blk, TK, skt, skd, svt,
                                          svd, BS, BLOCK_N, D, BLOCK_D, DV, BLOCK_DV, TMA)
            m_i, l_i, acc = _attend(q, k, v, m_i, l_i, acc, kpos, kmask, tokv + QOFF, okv, scale_log2,
                                    CAUSAL, PRECISION, UPCAST)
        store_rows(O, LSE, b64, tokv, hq2, okv, m_i, l_i, acc, T, H, sob, sot, soh, sod, G, DV, BLOCK_DV)

