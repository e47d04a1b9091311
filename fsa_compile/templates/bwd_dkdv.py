"""Inverted-loop backward: one program owns a (KV block, key sub-block, tile of the queries that
selected the block), and the dK/dV reduction over the tiles of one block.

``bwd_inverted_kernel``
    Grid ``(max_tiles, B * H * NSUB)``, an upper bound known from the static shapes: program
    ``pid`` finds its KV block ``j`` by a binary search of ``tile_offsets`` (no host sync) and
    exits when ``pid`` is past the real tile count. It loads the block's ``BLOCK_N`` keys and
    values once, then walks its (at most ``CH``) index entries ``TILE_T`` tokens at a time; the
    rows of a tile are (token, query head of the group), ``TILE_T * G`` of them, so the tile is
    full whatever ``G`` is; with ``ENT_NEXT`` a tile's index entries are loaded with the previous
    tile's gathers. Per tile it recomputes ``p = exp2(s - lse2)`` (causal and padding
    masked), and accumulates ``dV += p^T dO`` and ``dK += dS^T Q`` in float32 registers, with
    ``dS = p * (dO V^T - delta)``. The dQ contribution of the block, ``dS K``, is written to a
    partial buffer indexed by (token, slot, key sub-block, head) that ``bwd_dq`` sums.
    The block's dK/dV partial goes to slot ``pid`` of a float32 partial buffer, or, with
    ``DIRECT`` and a block that has only this one program in this query chunk, straight to dK/dV
    (last chunk) or to the float32 running totals. ``ST`` computes the scores transposed (``[BLOCK_N, M]``).

``bwd_dkdv_reduce_kernel``
    Grid ``(num_blocks, B * H * NSUB)``: sums the partials of block ``j`` in tile order (so the
    result is deterministic, no atomics), plus a float32 running total when the backward is
    processed in query chunks, and writes dK/dV (zero for a block nobody selected).
"""
from __future__ import annotations

from .bwd_common import tl, triton
from .common import row_position


@triton.jit
def bwd_inverted_kernel(
    Q, K, V, DO, LSE2, DELTA,
    START, END, ENTRIES, TILE_OFFSETS,
    DK_PART, DV_PART, DQ_PART, DK, DV, DK_ACC, DV_ACC,
    s_q_b, s_q_t, s_q_h, s_q_d,
    s_k_b, s_k_t, s_k_h, s_k_d,
    s_v_b, s_v_t, s_v_h, s_v_d,
    s_do_b, s_do_t, s_do_h, s_do_d,
    s_dk_b, s_dk_t, s_dk_h, s_dk_d,
    s_dv_b, s_dv_t, s_dv_h, s_dv_d,
    T, TK, QOFF, POS, s_pos_b, s_pos_t, t0, ent_t0, Tc, NB, E, MAX_TILES, n_sel, sm_scale,
    H: tl.constexpr, G: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
    NSUB: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, TILE_T: tl.constexpr,
    CH: tl.constexpr, LOG_NB: tl.constexpr, CAUSAL: tl.constexpr, WRITE_DQ: tl.constexpr,
    PREC: tl.constexpr, DOT_F32: tl.constexpr, ST: tl.constexpr, DIRECT: tl.constexpr,
    USE_ACC: tl.constexpr, LAST: tl.constexpr, EV_KEEP: tl.constexpr, EV_STREAM: tl.constexpr,
    IDX64: tl.constexpr, ENT_NEXT: tl.constexpr, M_PAD: tl.constexpr, HAS_POS: tl.constexpr = False,
):
    # M_PAD: TILE_T * G rows padded to a power of two (tl.arange's shape), the rest masked off
    # DOT_F32: the Triton interpreter (3.9) multiplies bfloat16 tiles wrongly, so there the
    # operands are widened to float32 after being rounded exactly as on the GPU.
    LOG2E: tl.constexpr = 1.4426950408889634
    M: tl.constexpr = TILE_T * G
    HQ: tl.constexpr = H * G
    pid = tl.program_id(0)
    bhs = tl.program_id(1)
    bh = bhs // NSUB
    sub = bhs % NSUB
    b = bh // H
    h = bh % H
    if IDX64:  # tensors past 2**31 elements: 64-bit address arithmetic
        b = b.to(tl.int64)
        bhs = bhs.to(tl.int64)

    to_base = TILE_OFFSETS + bh * (NB + 1)
    total = tl.load(to_base + NB)
    if pid < total:
        # Largest j with tile_offsets[j] <= pid (tile_offsets[0] = 0 <= pid < tile_offsets[NB]).
        lo = pid * 0
        hi = lo + NB
        for _ in range(LOG_NB):
            mid = (lo + hi) // 2
            go = tl.load(to_base + mid) <= pid
            lo = tl.where(go, mid, lo)
            hi = tl.where(go, hi, mid)
        j = lo
        tile = pid - tl.load(to_base + j)
        e_start = tl.load(START + bh * NB + j) + tile * CH
        e_end = tl.minimum(e_start + CH, tl.load(END + bh * NB + j))

        koff = sub * BLOCK_N + tl.arange(0, BLOCK_N)
        kpos = j * BS + koff
        if IDX64:
            kpos = kpos.to(tl.int64)
        kvalid = (koff < BS) & (kpos < TK)
        d = tl.arange(0, D_PAD)
        dmask = d < D
        kvm = kvalid[:, None] & dmask[None, :]
        k = tl.load(K + b * s_k_b + kpos[:, None] * s_k_t + h * s_k_h + d[None, :] * s_k_d,
                    mask=kvm, other=0.0)
        v = tl.load(V + b * s_v_b + kpos[:, None] * s_v_t + h * s_v_h + d[None, :] * s_v_d,
                    mask=kvm, other=0.0)
        ELT = k.dtype
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk_scale = sm_scale * LOG2E
        dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
        r = tl.arange(0, M_PAD)
        r_ok = r < M
        g = r % G
        hq = h * G + g
        ent_base = ENTRIES + bh * E
        if ENT_NEXT:
            ei = e_start + r // G
            ent_nx = tl.load(ent_base + ei, mask=ei < e_end, other=0)
        for e0 in range(e_start, e_end, TILE_T):
            ei = e0 + r // G
            rvalid = (ei < e_end) & r_ok
            if ENT_NEXT:
                # this tile's entries came with the previous tile, so its gathers wait for one
                # round trip to memory, not two; the next tile's are requested now
                ent = ent_nx
                en = ei + TILE_T
                ent_nx = tl.load(ent_base + en, mask=en < e_end, other=0)
            else:
                ent = tl.load(ent_base + ei, mask=rvalid, other=0)
            t = ent_t0 + ent // n_sel
            if IDX64:
                t = t.to(tl.int64)
            slot = ent % n_sel
            t_loc = t - t0
            if HAS_POS:  # each row's position from the tensor (q_positions)
                tq = row_position(POS, b * s_pos_b + t * s_pos_t, rvalid, TK)
            else:
                tq = t + QOFF
            rm = rvalid[:, None] & dmask[None, :]
            # Q/dO rows are gathered n times each (once per selected block): keep them in L2;
            # the dQ partials are written once and read once much later: stream them.
            q = tl.load(Q + b * s_q_b + t[:, None] * s_q_t + hq[:, None] * s_q_h
                        + d[None, :] * s_q_d, mask=rm, other=0.0, eviction_policy=EV_KEEP)
            do = tl.load(DO + b * s_do_b + t[:, None] * s_do_t + hq[:, None] * s_do_h
                         + d[None, :] * s_do_d, mask=rm, other=0.0, eviction_policy=EV_KEEP)
            if DOT_F32:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            stat = (bh * T + t) * G + g
            lse2 = tl.load(LSE2 + stat, mask=rvalid, other=float("inf"))
            delta = tl.load(DELTA + stat, mask=rvalid, other=0.0)
            if ST:
                # Scores transposed, [BLOCK_N, M]: p^T and dS^T are the register (A) operands
                # of the two dK/dV products, so only the dQ product needs a transpose.
                st = tl.dot(k, tl.trans(q), input_precision=PREC)
                pt = tl.exp2(st * qk_scale - lse2[None, :])
                vis = kvalid[:, None] & rvalid[None, :]
                if CAUSAL:
                    vis = vis & (kpos[:, None] <= tq[None, :])
                pt = tl.where(vis, pt, 0.0)
                dv += tl.dot(pt.to(ELT).to(do.dtype), do, input_precision=PREC)
                dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
                dst_ = (pt * (dpt - delta[None, :])).to(ELT).to(q.dtype)
                dk += tl.dot(dst_, q, input_precision=PREC)
                if WRITE_DQ:
                    dq = tl.dot(tl.trans(dst_), k, input_precision=PREC) * sm_scale
            else:
                s = tl.dot(q, tl.trans(k), input_precision=PREC)
                p = tl.exp2(s * qk_scale - lse2[:, None])
                vis = rvalid[:, None] & kvalid[None, :]
                if CAUSAL:
                    vis = vis & (kpos[None, :] <= tq[:, None])
                p = tl.where(vis, p, 0.0)
                p_lo = p.to(ELT).to(do.dtype)
                dv += tl.dot(tl.trans(p_lo), do, input_precision=PREC)
                dp = tl.dot(do, tl.trans(v), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                ds_lo = ds.to(ELT).to(q.dtype)
                dk += tl.dot(tl.trans(ds_lo), q, input_precision=PREC)
                if WRITE_DQ:
                    dq = tl.dot(ds_lo, k, input_precision=PREC) * sm_scale
            if WRITE_DQ:
                dst = ((b * Tc + t_loc) * (n_sel * NSUB) + slot * NSUB + sub) * HQ + hq
                tl.store(DQ_PART + dst[:, None] * D + d[None, :],
                         dq.to(DQ_PART.dtype.element_ty), mask=rm, eviction_policy=EV_STREAM)
        dk = dk * sm_scale
        rows = tl.arange(0, BLOCK_N)
        single = False
        if DIRECT:
            single = (tl.load(to_base + j + 1) - tl.load(to_base + j)) == 1
        if single:
            # The block's only program in this chunk: no partial and no reduction; it adds the
            # running total of the earlier chunks itself (only this program touches it now).
            aoff = (bhs * NB + j) * (BLOCK_N * D) + rows[:, None] * D + d[None, :]
            am = (rows[:, None] < BLOCK_N) & dmask[None, :]
            if USE_ACC:
                dk += tl.load(DK_ACC + aoff, mask=am, other=0.0)
                dv += tl.load(DV_ACC + aoff, mask=am, other=0.0)
            if LAST:
                om = kvalid[:, None] & dmask[None, :]
                tl.store(DK + b * s_dk_b + kpos[:, None] * s_dk_t + h * s_dk_h + d[None, :] * s_dk_d,
                         dk.to(DK.dtype.element_ty), mask=om)
                tl.store(DV + b * s_dv_b + kpos[:, None] * s_dv_t + h * s_dv_h + d[None, :] * s_dv_d,
                         dv.to(DV.dtype.element_ty), mask=om)
            else:
                tl.store(DK_ACC + aoff, dk, mask=am)
                tl.store(DV_ACC + aoff, dv, mask=am)
        else:
            pbase = (bhs * MAX_TILES + pid) * (BLOCK_N * D)
            pm = (rows[:, None] < BLOCK_N) & dmask[None, :]
            poff = pbase + rows[:, None] * D + d[None, :]
            tl.store(DK_PART + poff, dk, mask=pm)
            tl.store(DV_PART + poff, dv, mask=pm)


@triton.jit
def bwd_dkdv_reduce_kernel(
    DK_PART, DV_PART, TILE_OFFSETS, DK_ACC, DV_ACC, DK, DV,
    s_dk_b, s_dk_t, s_dk_h, s_dk_d,
    s_dv_b, s_dv_t, s_dv_h, s_dv_d,
    T, NB, MAX_TILES,
    H: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr, NSUB: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, USE_ACC: tl.constexpr, LAST: tl.constexpr,
    DIRECT: tl.constexpr, IDX64: tl.constexpr,
):
    j = tl.program_id(0)
    bhs = tl.program_id(1)
    bh = bhs // NSUB
    sub = bhs % NSUB
    b = bh // H
    h = bh % H
    if IDX64:
        b = b.to(tl.int64)
        bhs = bhs.to(tl.int64)
    i0 = tl.load(TILE_OFFSETS + bh * (NB + 1) + j)
    i1 = tl.load(TILE_OFFSETS + bh * (NB + 1) + j + 1)
    work = LAST or (i1 > i0)
    if DIRECT:
        work = (i1 - i0 != 1) & (LAST or (i1 > i0))  # a one-program block was done by it
    if work:
        rows = tl.arange(0, BLOCK_N)
        d = tl.arange(0, D_PAD)
        pm = (rows[:, None] < BLOCK_N) & (d[None, :] < D)
        tile_off = rows[:, None] * D + d[None, :]
        aoff = (bhs * NB + j) * (BLOCK_N * D) + tile_off
        if USE_ACC:
            dk = tl.load(DK_ACC + aoff, mask=pm, other=0.0)
            dv = tl.load(DV_ACC + aoff, mask=pm, other=0.0)
        else:
            dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
            dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
        for i in range(i0, i1):
            poff = (bhs * MAX_TILES + i) * (BLOCK_N * D) + tile_off
            dk += tl.load(DK_PART + poff, mask=pm, other=0.0)
            dv += tl.load(DV_PART + poff, mask=pm, other=0.0)
        if LAST:
            koff = sub * BLOCK_N + rows
            kpos = j * BS + koff
            if IDX64:
                kpos = kpos.to(tl.int64)
            om = ((koff < BS) & (kpos < T))[:, None] & (d[None, :] < D)
            tl.store(DK + b * s_dk_b + kpos[:, None] * s_dk_t + h * s_dk_h + d[None, :] * s_dk_d,
                     dk.to(DK.dtype.element_ty), mask=om)
            tl.store(DV + b * s_dv_b + kpos[:, None] * s_dv_t + h * s_dv_h + d[None, :] * s_dv_d,
                     dv.to(DV.dtype.element_ty), mask=om)
        else:
            tl.store(DK_ACC + aoff, dk, mask=pm)
            tl.store(DV_ACC + aoff, dv, mask=pm)
