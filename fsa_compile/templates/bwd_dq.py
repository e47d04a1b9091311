"""dQ reduction: each query row's gradient is the sum, over its selected blocks (slots) and key
sub-blocks, of the partials the inverted-loop kernel wrote. Slots holding padding (negative
index) were never written and are skipped; the order of the sum is fixed (deterministic).

Grid ``(Tc, B, cdiv(HQ, BLOCK_HQ))``; one program owns ``BLOCK_HQ`` query heads of one token.
"""
from __future__ import annotations

from .bwd_common import tl, triton


@triton.jit
def bwd_dq_reduce_kernel(
    DQ_PART, IDX, DQ,
    s_i_b, s_i_t, s_i_h, s_i_n,
    s_dq_b, s_dq_t, s_dq_h, s_dq_d,
    t0, Tc, n_sel,
    H: tl.constexpr, G: tl.constexpr, NSUB: tl.constexpr, D: tl.constexpr,
    D_PAD: tl.constexpr, BLOCK_HQ: tl.constexpr, IDX64: tl.constexpr,
):
    HQ: tl.constexpr = H * G
    t_loc = tl.program_id(0)
    b = tl.program_id(1)
    hq = tl.program_id(2) * BLOCK_HQ + tl.arange(0, BLOCK_HQ)
    hmask = hq < HQ
    d = tl.arange(0, D_PAD)
    dmask = d < D
    t = t0 + t_loc
    if IDX64:
        b = b.to(tl.int64)
        t = t.to(tl.int64)
    acc = tl.zeros([BLOCK_HQ, D_PAD], dtype=tl.float32)
    ibase = IDX + b * s_i_b + t * s_i_t + (hq // G) * s_i_h
    for s in range(n_sel):
        sel = tl.load(ibase + s * s_i_n, mask=hmask, other=-1)
        m = (hmask & (sel >= 0))[:, None] & dmask[None, :]
        for u in tl.static_range(NSUB):
            src = ((b * Tc + t_loc) * (n_sel * NSUB) + s * NSUB + u) * HQ + hq
            acc += tl.load(DQ_PART + src[:, None] * D + d[None, :], mask=m, other=0.0).to(tl.float32)
    om = hmask[:, None] & dmask[None, :]
    tl.store(DQ + b * s_dq_b + t * s_dq_t + hq[:, None] * s_dq_h + d[None, :] * s_dq_d,
             acc.to(DQ.dtype.element_ty), mask=om)
