"""Inverted-loop (FSA) forward: one program per (KV block, tile of the queries that selected it).

Works on one chunk of query tokens ``[c0, c0 + C)`` at a time (so the partial buffer is bounded),
with the CSR index of :mod:`.index` built over all of T with chunk ``C`` (entries ``t * n + slot``,
a block's entries of chunk ``c`` a contiguous bin, tile offsets and tile map per chunk): the same
index then serves the backward, which the forward hands it.

Grid: ``(max_tiles, B * H)``, an upper bound from the static shapes. Program ``pid`` of ``(b, h)``
reads its block ``j`` from the index's tile->block map (``TILE_MAP``; otherwise it counts the
``tile_offsets[1:]`` entries ``<= pid``), no host sync, and exits at once when ``pid`` is past the
real number of tiles. It owns ``TILE_Q * TPP`` consecutive entries of block
``j``'s list (the index is built with ``tile = TILE_Q * TPP``) and walks them in ``TPP`` sub-tiles
whose rows are ``entry x G heads`` (``row = e * G + g``, ``BLOCK_R >= TILE_Q * G``). The block's
K and V are loaded once per program; for every row the program writes a *normalised* partial output
``o_j = softmax_j(s) @ v`` (in the partial dtype) and its log2-sum-exp ``lse_j`` (float32) at
``(t_local, slot, hq)``; :mod:`.merge` combines a query's partials.

Options (constexpr, from the plan): ``ENT_ALL`` loads all sub-tiles' entries at once (a sub-tile
then costs one dependent round trip, its query gather); ``Q_EVICT`` / ``P_EVICT`` are L2 eviction
hints for the gathered queries and the partial stores. (Issuing the next sub-tile's gathers before
this one's arithmetic was measured 10-15% slower, benchmarks/NOTES.md v4/v5, and its loop-carried
tiles stopped compiling with triton 3.6: removed.)
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import mma, row_position


@triton.jit
def fsa_fwd_kernel(
    Q, K, V, OFFS, ENTRIES, TOFFS, TMAP, PO, PL,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    TK, QOFF, POS, spb, spt, H, C, c0, NCHUNK, chunk, NB, ELEN, MAXT, scale_log2,
    G: tl.constexpr, N_SEL: tl.constexpr, TILE_Q: tl.constexpr, TPP: tl.constexpr,
    TILE_MAP: tl.constexpr, ENT_ALL: tl.constexpr,
    Q_EVICT: tl.constexpr, P_EVICT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BS: tl.constexpr, BLOCK_N: tl.constexpr, SEARCH: tl.constexpr,
    D: tl.constexpr, BLOCK_D: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, HAS_POS: tl.constexpr = False,
):
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    seg = b * H + h
    ib = seg * NCHUNK + chunk  # (batch, head, chunk) row of the per-chunk tile arrays
    toff = TOFFS + ib.to(tl.int64) * (NB + 1)
    if TILE_MAP:  # the index carries every tile id's block: one load
        j = tl.load(TMAP + ib.to(tl.int64) * MAXT + pid)
        live = j < NB
    else:
        live = pid < tl.load(toff + NB)
        # block j = #{j' in [1, NB] : tile_offsets[j'] <= pid}
        j = tl.full([], 0, tl.int32)
        for s0 in range(1, NB + 1, SEARCH):
            offs = s0 + tl.arange(0, SEARCH)
            to = tl.load(toff + offs, mask=offs <= NB, other=2147483647)
            j += tl.sum((to <= pid).to(tl.int32), axis=0)
    if live:
        k_in_blk = pid - tl.load(toff + j)
        # bin (j, chunk) of the index: entries [bin_offsets[bin], bin_offsets[bin + 1])
        offb = OFFS + seg.to(tl.int64) * ((NB + 1) * NCHUNK + 1) + j * NCHUNK + chunk
        start0 = tl.load(offb) + k_in_blk * (TILE_Q * TPP)
        end = tl.minimum(tl.load(offb + 1), start0 + TILE_Q * TPP)

        rows = tl.arange(0, BLOCK_R)
        hq = h * G + rows % G
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        offs_n = tl.arange(0, BLOCK_N)
        b64 = b.to(tl.int64)
        # the block's K and V: loaded once, used by all TPP sub-tiles of this program
        kpos = j * BS + offs_n
        kmask = (offs_n < BS) & (kpos < TK)
        kpos64 = kpos.to(tl.int64)
        k = tl.load(K + b64 * skb + h * skh + kpos64[:, None] * skt + offs_d[None, :] * skd,
                    mask=kmask[:, None] & (offs_d[None, :] < D), other=0.0)
        v = tl.load(V + b64 * svb + h * svh + kpos64[:, None] * svt + offs_dv[None, :] * svd,
                    mask=kmask[:, None] & (offs_dv[None, :] < DV), other=0.0)
        kt = tl.trans(k)
        nsub = (end - start0 + TILE_Q - 1) // TILE_Q
        ebase = ENTRIES + seg.to(tl.int64) * ELEN
        if ENT_ALL:
            # the entries of all TPP sub-tiles in one load; sub-tile st's are picked out of
            # registers, so a sub-tile costs one dependent round trip (its query gather), not two
            tp = tl.arange(0, TPP)
            e_all = start0 + tp[:, None] * TILE_Q + (rows // G)[None, :]
            ok_all = (rows < TILE_Q * G)[None, :] & (e_all < end)
            ent_all = tl.load(ebase + e_all, mask=ok_all, other=0)
        for st in range(0, nsub):
            e = start0 + st * TILE_Q + rows // G
            row_ok = (rows < TILE_Q * G) & (e < end)
            if ENT_ALL:
                ent = tl.sum(tl.where(tp[:, None] == st, ent_all, 0), axis=0)
            else:
                ent = tl.load(ebase + e, mask=row_ok, other=0)
            q = tl.load(Q + b64 * sqb + (ent // N_SEL).to(tl.int64)[:, None] * sqt
                        + hq[:, None] * sqh + offs_d[None, :] * sqd,
                        mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0,
                        eviction_policy=Q_EVICT)
            tok = ent // N_SEL
            slot = ent % N_SEL
            t_loc = tok - c0
            s = mma(q, kt, PRECISION, UPCAST) * scale_log2
            valid = kmask[None, :]
            if CAUSAL:
                if HAS_POS:  # each row's position from the tensor (q_positions)
                    qpos = row_position(POS, b64 * spb + tok * spt, row_ok, TK)
                else:
                    qpos = tok + QOFF
                valid = valid & (kpos[None, :] <= qpos[:, None])
            s = tl.where(valid, s, float("-inf"))
            m = tl.max(s, axis=1)
            m_use = tl.where(m == float("-inf"), 0.0, m)
            p = tl.exp2(s - m_use[:, None])
            l = tl.sum(p, axis=1)
            has = l > 0
            o = mma(p.to(v.dtype), v, PRECISION, UPCAST) / tl.where(has, l, 1.0)[:, None]
            lse2 = tl.where(has, m_use + tl.log2(tl.where(has, l, 1.0)), float("-inf"))

            # partials: PO [B, C, N_SEL, HQ, DV], PL [B, C, N_SEL, HQ]
            prow = ((b64 * C + t_loc) * N_SEL + slot) * (H * G) + hq
            tl.store(PO + prow[:, None] * DV + offs_dv[None, :], o.to(PO.dtype.element_ty),
                     mask=row_ok[:, None] & (offs_dv[None, :] < DV), eviction_policy=P_EVICT)
            tl.store(PL + prow, lse2, mask=row_ok, eviction_policy=P_EVICT)
