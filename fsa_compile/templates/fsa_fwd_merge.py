"""One launch that runs chunk ``c``'s inverted-loop programs and chunk ``c - 1``'s merge programs.

The inverted loop's main kernel is bound by its chains of dependent memory round trips and the
merge by HBM bandwidth. As two launches they never share the machine: each fills every SM until
its last programs retire (measured: a merge on a second stream did not overlap, NOTES v9). Here
one grid holds both kinds of program, the merge programs spread evenly among the main ones, so
that the merge's streaming reads run while main programs wait on their gathers. The two halves
use different partial buffers (double buffering), so no program of the launch waits on another.

Program ``p`` of ``P = N_MAIN + N_MERGE`` is merge program ``floor(p * N_MERGE / P)`` when
``floor((p + 1) * N_MERGE / P)`` is larger, otherwise main program ``p - floor((p + 1) * N_MERGE
/ P)``; main program ``m`` is program ``m % MAIN0`` of ``(b, h) = m // MAIN0`` (the main kernel's
grid is ``(MAIN0, B * H)``), merge program ``i`` is program ``i % MERGE0`` of batch ``i // MERGE0``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .fsa_fwd import fsa_fwd_program
from .merge import merge_fwd_program


@triton.jit
def fsa_fwd_merge_kernel(
    # chunk c's main programs (see fsa_fwd.fsa_fwd_kernel)
    Q, K, V, OFFS, ENTRIES, TOFFS, TMAP, PO, PL,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    T, H, C, c0, NCHUNK, chunk, NB, ELEN, MAXT, scale_log2,
    # chunk c - 1's merge programs (see merge.merge_fwd_kernel), reading the other buffers
    PO_M, PL_M, IDX, O, LSE,
    sib, sit, sih, sis,
    sob, sot, soh, sod,
    c0_m, HQ,
    MAIN0, N_MAIN, MERGE0, N_MERGE,
    G: tl.constexpr, N_SEL: tl.constexpr, TILE_Q: tl.constexpr, TPP: tl.constexpr,
    PREFETCH: tl.constexpr, TILE_MAP: tl.constexpr, ENT_ALL: tl.constexpr,
    Q_EVICT: tl.constexpr, P_EVICT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BS: tl.constexpr, BLOCK_N: tl.constexpr, SEARCH: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_SEL: tl.constexpr, BLOCK_M: tl.constexpr, M_EVICT: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    total = N_MAIN + N_MERGE
    before = (p * N_MERGE) // total
    upto = ((p + 1) * N_MERGE) // total
    if upto > before:
        i = before.to(tl.int32)
        merge_fwd_program(i % MERGE0, i // MERGE0, PO_M, PL_M, IDX, O, LSE,
                          sib, sit, sih, sis, sob, sot, soh, sod, T, C, c0_m, HQ,
                          G, N_SEL, BLOCK_SEL, BLOCK_M, DV, BLOCK_DV, M_EVICT)
    else:
        m = (p - upto).to(tl.int32)
        fsa_fwd_program(
            m % MAIN0, m // MAIN0,
            Q, K, V, OFFS, ENTRIES, TOFFS, TMAP, PO, PL,
            sqb, sqt, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd,
            T, H, C, c0, NCHUNK, chunk, NB, ELEN, MAXT, scale_log2,
            G, N_SEL, TILE_Q, TPP, PREFETCH, TILE_MAP, ENT_ALL, Q_EVICT, P_EVICT, BLOCK_R,
            BS, BLOCK_N, SEARCH, D, BLOCK_D, DV, BLOCK_DV, CAUSAL, PRECISION, UPCAST,
        )
