"""Backward preprocessing: ``delta = rowsum(dO * O)`` (minus ``dlse`` when the lse output has a gradient) and the base-2 log-sum-exp, per query row.

Both are written in the ``[B, H, T, G]`` layout (float32, contiguous) that the inverted-loop
kernel gathers from: the ``G`` query heads of one token are adjacent. A row with no visible key
(``lse = -inf``) gets ``lse2 = +inf`` so that every probability recomputed from it is
``exp2(s - inf) = 0`` and the row contributes no gradient.
"""
from __future__ import annotations

from .bwd_common import tl, triton


@triton.jit
def bwd_preprocess_kernel(
    DO, O, LSE, DLSE, DELTA_OUT, LSE2_OUT,
    s_do_b, s_do_t, s_do_h, s_do_d,
    s_o_b, s_o_t, s_o_h, s_o_d,
    s_l_b, s_l_t, s_l_h,
    s_dl_b, s_dl_t, s_dl_h,
    R, T,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_R: tl.constexpr, HAS_DLSE: tl.constexpr, IDX64: tl.constexpr,
):
    LOG2E: tl.constexpr = 1.4426950408889634
    HQ: tl.constexpr = H * G
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if IDX64:
        r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    hq = r % HQ
    t = (r // HQ) % T
    b = r // (HQ * T)
    d = tl.arange(0, D_PAD)
    m2 = rmask[:, None] & (d[None, :] < D)
    do = tl.load(DO + b[:, None] * s_do_b + t[:, None] * s_do_t + hq[:, None] * s_do_h
                 + d[None, :] * s_do_d, mask=m2, other=0.0).to(tl.float32)
    o = tl.load(O + b[:, None] * s_o_b + t[:, None] * s_o_t + hq[:, None] * s_o_h
                + d[None, :] * s_o_d, mask=m2, other=0.0).to(tl.float32)
    delta = tl.sum(do * o, axis=1)
    lse = tl.load(LSE + b * s_l_b + t * s_l_t + hq * s_l_h, mask=rmask, other=0.0)
    if HAS_DLSE:
        # d lse / d s = p: the lse gradient enters as ds = p * (dp - (delta - dlse)).
        dl = tl.load(DLSE + b * s_dl_b + t * s_dl_t + hq * s_dl_h, mask=rmask, other=0.0)
        delta = delta - tl.where(lse == float("-inf"), 0.0, dl.to(tl.float32))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    dst = ((b * H + hq // G) * T + t) * G + hq % G
    tl.store(DELTA_OUT + dst, delta, mask=rmask)
    tl.store(LSE2_OUT + dst, lse2, mask=rmask)
