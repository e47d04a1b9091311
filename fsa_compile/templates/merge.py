"""Reduction / softmax merge of the inverted loop's partials: no atomics, deterministic.

One program per ``BLOCK_M`` rows (a few) of a chunk, a row being ``(t_local, hq)``. For each row the
``n`` partials ``(o_s, lse_s)`` written by :mod:`.fsa_fwd` are combined as
``lse = log2sumexp_s(lse_s)``, ``o = sum_s 2^(lse_s - lse) o_s``, in slot order (a fixed order, so
the result is deterministic). Slots whose index is negative were never written and are not read;
a row with nothing visible gets ``o = 0`` and ``lse = -inf``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import mma


@triton.jit
def _store_rows(O, LSE, acc, l, m_use, b64, tok64, hq, offs_dv, row_ok, T, HQ, sob, sot, soh, sod,
                DV: tl.constexpr):
    """Normalise merged rows (sum of weights ``l``, base-2 max ``m_use``) and store ``o``, ``lse``."""
    has = l > 0
    o = acc / tl.where(has, l, 1.0)[:, None]
    lse = tl.where(has, (m_use + tl.log2(tl.where(has, l, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(O + b64 * sob + tok64[:, None] * sot + hq[:, None] * soh + offs_dv[None, :] * sod,
             o.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + (b64 * T + tok64) * HQ + hq, lse, mask=row_ok)


@triton.jit
def merge_fwd_kernel(
    PO, PL, IDX, O, LSE,
    sib, sit, sih, sis,
    sob, sot, soh, sod,
    T, C, c0, HQ,
    G: tl.constexpr, N_SEL: tl.constexpr, BLOCK_SEL: tl.constexpr, BLOCK_M: tl.constexpr,
    DV: tl.constexpr, BLOCK_DV: tl.constexpr, P_EVICT: tl.constexpr = "",
):
    """``BLOCK_M`` rows per program; all ``n`` partial rows of a row are loaded at once as one
    ``[BLOCK_M, BLOCK_SEL, BLOCK_DV]`` tile (every load in flight together)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    b64 = b.to(tl.int64)
    r = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    t_loc = r // HQ
    hq = r % HQ
    tok = c0 + t_loc
    row_ok = (t_loc < C) & (tok < T)
    h = hq // G
    tok64 = tok.to(tl.int64)
    offs_s = tl.arange(0, BLOCK_SEL)
    sel = tl.load(IDX + b64 * sib + tok64[:, None] * sit + h[:, None] * sih + offs_s[None, :] * sis,
                  mask=row_ok[:, None] & (offs_s[None, :] < N_SEL), other=-1)
    used = sel >= 0
    prow = ((b64 * C + t_loc) * N_SEL)[:, None] * HQ + offs_s[None, :] * HQ + hq[:, None]
    ls = tl.load(PL + prow, mask=used, other=float("-inf"), eviction_policy=P_EVICT)
    m = tl.max(ls, axis=1)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(ls - m_use[:, None])
    l = tl.sum(w, axis=1)
    offs_dv = tl.arange(0, BLOCK_DV)
    ok = used & (w > 0)
    o_s = tl.load(PO + prow[:, :, None] * DV + offs_dv[None, None, :],
                  mask=ok[:, :, None] & (offs_dv[None, None, :] < DV), other=0.0,
                  eviction_policy=P_EVICT)
    acc = tl.sum(w[:, :, None] * o_s.to(tl.float32), axis=1)
    _store_rows(O, LSE, acc, l, m_use, b64, tok64, hq, offs_dv, row_ok, T, HQ, sob, sot, soh, sod, DV)


@triton.jit
def merge_local_fwd_kernel(
    Q, K, V, PO, PL, IDX, O, LSE,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sib, sit, sih, sis,
    sob, sot, soh, sod,
    T, C, c0, H, scale_log2,
    G: tl.constexpr, TOKM: tl.constexpr, BLOCK_R: tl.constexpr,
    N_SEL: tl.constexpr, BLOCK_SEL: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Merge fused with the *local* selections, for tiles of ``TOKM`` tokens x ``G`` heads.

    A selection ``(t, slot)`` of block ``u`` is local when ``u`` is block 0, the block holding
    ``t`` or the one before (NSA always selects these, and every token of a tile shares them). The
    inverted loop skips local selections (the lowering builds its index without them); this
    kernel attends to them directly, each row weighing a block by how many of its slots name it,
    then folds in the partials of the row's other (non-local) slots.
    """
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    b64 = b.to(tl.int64)
    rows = tl.arange(0, BLOCK_R)
    t_loc = pid_t * TOKM + rows // G
    hq = h * G + rows % G
    tok = c0 + t_loc
    row_ok = (rows < TOKM * G) & (t_loc < C) & (tok < T)
    tok64 = tok.to(tl.int64)
    offs_s = tl.arange(0, BLOCK_SEL)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    sel = tl.load(IDX + b64 * sib + tok64[:, None] * sit + h * sih + offs_s[None, :] * sis,
                  mask=row_ok[:, None] & (offs_s[None, :] < N_SEL), other=-1)
    cur = (tok // BS)[:, None]
    is_loc = (sel >= 0) & ((sel == 0) | (sel == cur) | (sel == cur - 1))
    used = (sel >= 0) & (~is_loc)

    # local blocks: 0, then (first token's block - 1) .. (last token's block)
    t_first = c0 + pid_t * TOKM
    t_last = tl.minimum(tl.minimum(t_first + TOKM - 1, T - 1), c0 + C - 1)
    lo = tl.maximum(t_first // BS - 1, 1)
    nloop = 1 + tl.maximum(t_last // BS - lo + 1, 0)
    q = tl.load(Q + b64 * sqb + tok64[:, None] * sqt + hq[:, None] * sqh + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_DV], tl.float32)
    for it in range(0, nloop):
        blk = tl.where(it == 0, 0, lo + it - 1)
        w = tl.sum((is_loc & (sel == blk)).to(tl.float32), axis=1)
        kpos = blk * BS + offs_n
        kmask = (offs_n < BS) & (kpos < T)
        kpos64 = kpos.to(tl.int64)
        k = tl.load(K + b64 * skb + h * skh + kpos64[:, None] * skt + offs_d[None, :] * skd,
                    mask=kmask[:, None] & (offs_d[None, :] < D), other=0.0)
        s = mma(q, tl.trans(k), PRECISION, UPCAST) * scale_log2
        valid = (w > 0)[:, None] & kmask[None, :]
        if CAUSAL:
            valid = valid & (kpos[None, :] <= tok[:, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None]) * w[:, None]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(V + b64 * svb + h * svh + kpos64[:, None] * svt + offs_dv[None, :] * svd,
                    mask=kmask[:, None] & (offs_dv[None, :] < DV), other=0.0)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new

    # the partials of the other slots
    HQ = H * G
    prow = ((b64 * C + t_loc) * N_SEL)[:, None] * HQ + offs_s[None, :] * HQ + hq[:, None]
    ls = tl.load(PL + prow, mask=used, other=float("-inf"))
    m = tl.maximum(m_i, tl.max(ls, axis=1))
    m_use = tl.where(m == float("-inf"), 0.0, m)
    alpha = tl.exp2(m_i - m_use)
    w = tl.exp2(ls - m_use[:, None])
    l = l_i * alpha + tl.sum(w, axis=1)
    acc = acc * alpha[:, None]
    for s_ in range(N_SEL):
        ws = tl.sum(tl.where(offs_s[None, :] == s_, w, 0.0), axis=1)
        ok = row_ok & (ws > 0)
        pr = ((b64 * C + t_loc) * N_SEL + s_) * HQ + hq
        o_s = tl.load(PO + pr[:, None] * DV + offs_dv[None, :],
                      mask=ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        acc += ws[:, None] * o_s.to(tl.float32)
    _store_rows(O, LSE, acc, l, m_use, b64, tok64, hq, offs_dv, row_ok, T, HQ, sob, sot, soh, sod, DV)
