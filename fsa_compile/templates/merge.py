"""Reduction / softmax merge of the inverted loop's partials: no atomics, deterministic.

One program per ``BLOCK_M`` rows of a chunk, a row being ``(t_local, hq)``. For each row the
``n`` partials ``(o_s, lse_s)`` written by :mod:`.fsa_fwd` are combined as
``lse = log2sumexp_s(lse_s)``, ``o = sum_s 2^(lse_s - lse) o_s``, in slot order (a fixed order, so
the result is deterministic). Slots whose index is negative were never written and are not read;
a row with nothing visible gets ``o = 0`` and ``lse = -inf``.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def merge_fwd_kernel(
    PO, PL, IDX, O, LSE,
    sib, sit, sih, sis,
    sob, sot, soh, sod,
    T, C, c0, HQ,
    G: tl.constexpr, N_SEL: tl.constexpr, BLOCK_SEL: tl.constexpr, BLOCK_M: tl.constexpr,
    DV: tl.constexpr, BLOCK_DV: tl.constexpr,
):
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
    ls = tl.load(PL + prow, mask=used, other=float("-inf"))
    m = tl.max(ls, axis=1)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(ls - m_use[:, None])
    l = tl.sum(w, axis=1)
    has = l > 0
    inv_l = 1.0 / tl.where(has, l, 1.0)
    offs_dv = tl.arange(0, BLOCK_DV)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for s in range(N_SEL):
        ws = tl.sum(tl.where(offs_s[None, :] == s, w, 0.0), axis=1)
        ok = row_ok & (ws > 0)
        pr = ((b64 * C + t_loc) * N_SEL + s) * HQ + hq
        o_s = tl.load(PO + pr[:, None] * DV + offs_dv[None, :],
                      mask=ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        acc += ws[:, None] * o_s.to(tl.float32)
    o = acc * inv_l[:, None]
    lse = tl.where(has, (m_use + tl.log2(tl.where(has, l, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(O + b64 * sob + tok64[:, None] * sot + hq[:, None] * soh + offs_dv[None, :] * sod,
             o.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + (b64 * T + tok64) * HQ + hq, lse, mask=row_ok)
