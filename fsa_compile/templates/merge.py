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
