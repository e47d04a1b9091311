"""Merge of the inverted loop's partials fused with the local blocks' attention, query-major.

Every token selects its local blocks (block 0, its own block and the one before, in the NSA
selections; :func:`.index.is_local`), and the query tokens of one query block share them. The
inverted loop writes a partial output of ``G x Dv`` elements for each (token, block) it computes,
and this kernel reads each one back, so each local block costs it a write and a read per token. Here
they are computed where the token's output is produced instead: the index is built with
``skip_local`` (the inverted loop never sees these entries) and one program owns ``TOK`` tokens x
``G`` heads of one KV head (rows ``r = t * G + g``), loads each local block's K and V once for all
of them, runs an online softmax over the ones each row selected (a block listed twice counts twice,
like its two slots), then folds in the partials of the row's other slots and stores ``o`` and
``lse`` (``merge_local_fwd_kernel``). Or (``local_fwd_kernel``) it writes the local blocks'
result as one partial, in the slot of the row's first local block (which the inverted loop left
unwritten), for :func:`.merge.merge_fwd_kernel` with ``LOCAL`` to read with the others. Fixed
order, no atomics: deterministic.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import mma
from .index import _is_local
from .merge import _store_rows


@triton.jit
def _rows(pid, pid_bh, H, C, c0, T, G: tl.constexpr, TOK: tl.constexpr, BLOCK_R: tl.constexpr):
    b = pid_bh // H
    h = pid_bh % H
    rows = tl.arange(0, BLOCK_R)
    t_loc = pid * TOK + rows // G
    tok = c0 + t_loc
    row_ok = (rows < TOK * G) & (t_loc < C) & (tok < T)
    hq = h * G + rows % G
    return b, h, t_loc, tok, row_ok, hq


@triton.jit
def _local_attention(
    Q, K, V, sel, local, b64, h, tok, row_ok, hq, pid, c0, C, T, scale_log2,
    sqb, sqt, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd,
    TOK: tl.constexpr, BLOCK_R: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Online softmax of each row over the local blocks it selected: ``(m, l, acc)``, base 2,
    ``acc`` not normalised."""
    tok64 = tok.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(Q + b64 * sqb + tok64[:, None] * sqt + hq[:, None] * sqh + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    # The tile's local blocks: block 0, then the ones before and holding its first to last token.
    t_first = c0 + pid * TOK
    t_last = tl.minimum(t_first + TOK, tl.minimum(c0 + C, T)) - 1
    lo = tl.maximum(t_first // BS - 1, 1)
    hi = t_last // BS
    for i in range(0, hi - lo + 2):
        jb = tl.where(i == 0, 0, lo + i - 1)
        # how many of the row's slots list jb as a local block (duplicates count as in the slots)
        cnt = tl.sum((local & (sel == jb)).to(tl.float32), axis=1)
        kpos = jb * BS + offs_n
        kmask = (offs_n < BS) & (kpos < T)
        kpos64 = kpos.to(tl.int64)
        k = tl.load(K + b64 * skb + h * skh + kpos64[:, None] * skt + offs_d[None, :] * skd,
                    mask=kmask[:, None] & (offs_d[None, :] < D), other=0.0)
        v = tl.load(V + b64 * svb + h * svh + kpos64[:, None] * svt + offs_dv[None, :] * svd,
                    mask=kmask[:, None] & (offs_dv[None, :] < DV), other=0.0)
        s = mma(q, tl.trans(k), PRECISION, UPCAST) * scale_log2
        valid = (cnt > 0)[:, None] & kmask[None, :]
        if CAUSAL:
            valid = valid & (kpos[None, :] <= tok[:, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_use)
        p = tl.exp2(s - m_use[:, None]) * cnt[:, None]
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PRECISION, UPCAST)
        m = m_new
    return m, l, acc


@triton.jit
def merge_local_fwd_kernel(
    Q, K, V, PO, PL, IDX, O, LSE,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sib, sit, sih, sis,
    sob, sot, soh, sod,
    T, H, C, c0, scale_log2,
    G: tl.constexpr, TOK: tl.constexpr, BLOCK_R: tl.constexpr,
    N_SEL: tl.constexpr, BLOCK_SEL: tl.constexpr,
    BS: tl.constexpr, BLOCK_N: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, P_EVICT: tl.constexpr = "",
    UNROLL: tl.constexpr = False,
):
    pid = tl.program_id(0)
    b, h, t_loc, tok, row_ok, hq = _rows(pid, tl.program_id(1), H, C, c0, T, G, TOK, BLOCK_R)
    b64 = b.to(tl.int64)
    HQ = H * G
    tok64 = tok.to(tl.int64)
    offs_s = tl.arange(0, BLOCK_SEL)
    offs_dv = tl.arange(0, BLOCK_DV)
    sel = tl.load(IDX + b64 * sib + tok64[:, None] * sit + h * sih + offs_s[None, :] * sis,
                  mask=row_ok[:, None] & (offs_s[None, :] < N_SEL), other=-1)
    local = (sel >= 0) & _is_local(sel, tok[:, None], BS)
    far = (sel >= 0) & (~local)
    m, l, acc = _local_attention(
        Q, K, V, sel, local, b64, h, tok, row_ok, hq, pid, c0, C, T, scale_log2,
        sqb, sqt, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd,
        TOK, BLOCK_R, BS, BLOCK_N, D, BLOCK_D, DV, BLOCK_DV, CAUSAL, PRECISION, UPCAST)

    # the other slots' partials (PO [B, C, N_SEL, HQ, DV], PL [B, C, N_SEL, HQ], log2-sum-exp)
    prow = ((b64 * C + t_loc) * N_SEL)[:, None] * HQ + offs_s[None, :] * HQ + hq[:, None]
    ls = tl.load(PL + prow, mask=far, other=float("-inf"), eviction_policy=P_EVICT)
    m_all = tl.maximum(m, tl.max(ls, axis=1))
    m_use = tl.where(m_all == float("-inf"), 0.0, m_all)
    alpha = tl.exp2(m - m_use)
    acc = acc * alpha[:, None]
    w = tl.exp2(ls - m_use[:, None])
    l = l * alpha + tl.sum(w, axis=1)
    if UNROLL:
        for s_ in tl.static_range(0, N_SEL):
            ws = tl.sum(tl.where(offs_s[None, :] == s_, w, 0.0), axis=1)
            ok = row_ok & (ws > 0)
            prs = ((b64 * C + t_loc) * N_SEL + s_) * HQ + hq
            o_s = tl.load(PO + prs[:, None] * DV + offs_dv[None, :], mask=ok[:, None] & (offs_dv[None, :] < DV),
                          other=0.0, eviction_policy=P_EVICT)
            acc += ws[:, None] * o_s.to(tl.float32)
    else:
        for s_ in range(0, N_SEL):
            ws = tl.sum(tl.where(offs_s[None, :] == s_, w, 0.0), axis=1)
            ok = row_ok & (ws > 0)
            prs = ((b64 * C + t_loc) * N_SEL + s_) * HQ + hq
            o_s = tl.load(PO + prs[:, None] * DV + offs_dv[None, :], mask=ok[:, None] & (offs_dv[None, :] < DV),
                          other=0.0, eviction_policy=P_EVICT)
            acc += ws[:, None] * o_s.to(tl.float32)
    _store_rows(O, LSE, acc, l, m_use, b64, tok64, hq, offs_dv, row_ok, T, HQ, sob, sot, soh, sod, DV)


@triton.jit
def local_fwd_kernel(
    Q, K, V, PO, PL, IDX,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sib, sit, sih, sis,
    T, H, C, c0, scale_log2,
    G: tl.constexpr, TOK: tl.constexpr, BLOCK_R: tl.constexpr,
    N_SEL: tl.constexpr, BLOCK_SEL: tl.constexpr,
    BS: tl.constexpr, BLOCK_N: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    b, h, t_loc, tok, row_ok, hq = _rows(pid, tl.program_id(1), H, C, c0, T, G, TOK, BLOCK_R)
    b64 = b.to(tl.int64)
    tok64 = tok.to(tl.int64)
    offs_s = tl.arange(0, BLOCK_SEL)
    offs_dv = tl.arange(0, BLOCK_DV)
    sel = tl.load(IDX + b64 * sib + tok64[:, None] * sit + h * sih + offs_s[None, :] * sis,
                  mask=row_ok[:, None] & (offs_s[None, :] < N_SEL), other=-1)
    local = (sel >= 0) & _is_local(sel, tok[:, None], BS)
    m, l, acc = _local_attention(
        Q, K, V, sel, local, b64, h, tok, row_ok, hq, pid, c0, C, T, scale_log2,
        sqb, sqt, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd,
        TOK, BLOCK_R, BS, BLOCK_N, D, BLOCK_D, DV, BLOCK_DV, CAUSAL, PRECISION, UPCAST)
    first = tl.min(tl.where(local, offs_s[None, :], BLOCK_SEL), axis=1)
    has_local = row_ok & (first < N_SEL)
    has = l > 0
    o = acc / tl.where(has, l, 1.0)[:, None]
    m_use = tl.where(m == float("-inf"), 0.0, m)
    lse2 = tl.where(has, m_use + tl.log2(tl.where(has, l, 1.0)), float("-inf"))
    HQ = H * G
    prow = ((b64 * C + t_loc) * N_SEL + first) * HQ + hq
    tl.store(PO + prow[:, None] * DV + offs_dv[None, :], o.to(PO.dtype.element_ty),
             mask=has_local[:, None] & (offs_dv[None, :] < DV))
    tl.store(PL + prow, lse2, mask=has_local)
