"""Backward launches: delta preprocessing, the inverted-loop dK/dV(+dQ partial) kernel, and the
two deterministic reductions. ``plan.strategy == "reference"`` (or a shape the templates do not
cover) runs :func:`fsa_compile.reference.reference_backward`.

Memory: the only large scratch is the dQ partial buffer (one ``[D]`` row per (token, selected
slot, key sub-block, query head), in the inputs' dtype, float32 for float32 inputs) and the
float32 dK/dV partials (one ``[BLOCK_N, D]`` tile per program). The queries are processed in
chunks of ``Tc`` tokens so that the dQ partials stay under :data:`DQ_PART_BUDGET`; with more than
one chunk, dK/dV are accumulated in float32 running totals between chunks (sequential launches,
so still deterministic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..reference import reference_backward
from .plan import interpret_mode, maxnreg_option, row_position_args

# Scratch budgets (bytes). Chosen so that T = 64K, H = 4, G <= 16, D = 128, bs = 64, n = 16 stays
# under 2 GiB of backward extra memory in total.
DQ_PART_BUDGET = 1024 * 2**20
DKV_PART_BUDGET = 512 * 2**20

# Test hook: when True, every output and scratch buffer is filled with NaN before the kernels
# run, so an element that no kernel writes (or a partial read before it is written) shows up.
POISON_FOR_TESTS = False
# Test hook: use 64-bit address arithmetic even when every tensor is small.
FORCE_IDX64 = False


def _needs_idx64(*ts) -> bool:
    """Whether an element offset of any of these tensors (or of the gradients, allocated with
    the same sizes) can reach 2**31."""
    for t in ts:
        span = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)
        if max(span, t.numel()) >= 2**31 - 1:
            return True
    return False


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


@dataclass(frozen=True)
class BwdConfig:
    block_n: int      # keys per program (a sub-block of the KV block when the block is large)
    nsub: int         # key sub-blocks per KV block
    tile_t: int       # query tokens per inner tile (rows = tile_t * G)
    ch: int           # index entries (query tokens) per program at most
    chunk_t: int      # query tokens per chunk (bounds the dQ partial buffer)
    num_warps: int
    num_stages: int
    st: int = 1       # scores computed transposed ([keys, rows])
    direct: int = 1   # a block's only program in a chunk skips the partial buffer
    evict: int = 1    # L2 hints: keep gathered Q/dO (evict_last), stream dQ partials (evict_first)
    maxnreg: int = 0  # register cap per thread for the inverted kernel (0: the compiler's choice)
    ent_next: int = 0  # the next tile's index entries are loaded with this tile's gathers

    def describe(self) -> str:
        return (f"bwd(block_n={self.block_n}, nsub={self.nsub}, tile_t={self.tile_t}, ch={self.ch}, "
                f"chunk_t={self.chunk_t}, warps={self.num_warps}, stages={self.num_stages}, st={self.st}, direct={self.direct}, evict={self.evict}"
                + (f", maxnreg={self.maxnreg}" if self.maxnreg else "")
                + (", ent_next" if self.ent_next else "") + ")")


def supported(q, k, v, idx, block_size) -> str | None:
    """None when the templates cover this call, else the reason they don't."""
    D, Dv = q.shape[-1], v.shape[-1]
    if q.numel() == 0 or idx.shape[-1] == 0:
        return "empty input or no selected blocks"
    if k.shape[-1] != D or Dv != D:
        return "value head dim differs from the query/key head dim"
    if D > 256:
        return "head dim > 256"
    if _next_pow2(block_size) > 128 and block_size & (block_size - 1):
        return "block size > 128 that is not a power of two"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype}"
    if not (q.dtype == k.dtype == v.dtype):
        return "mixed dtypes"
    dev = q.device
    if dev.type == "cpu" and not interpret_mode():
        return "CPU tensors without FSA_COMPILE_INTERPRET=1"
    if dev.type not in ("cpu", "cuda"):
        return f"device {dev.type}"
    return None


def backward_config(B, T, H, G, D, n, block_size, dtype) -> BwdConfig:
    """Tile choices for the backward, from the static shapes."""
    d_pad = max(16, _next_pow2(D))
    if block_size & (block_size - 1) == 0:
        bn_max = 64 if d_pad <= 128 else 32
        block_n = max(16, min(block_size, bn_max))
        nsub = max(1, block_size // block_n)
    else:
        block_n, nsub = max(16, _next_pow2(block_size)), 1
    # Rows (tokens x heads) per inner tile: 32. Measured on the H100 (T=64K, ms): 32 beat 64 at
    # G <= 4 (2.91 vs 3.09 at G=1, 9.77 vs 10.06 at G=4). At G >= 8, 64-row tiles spill registers
    # and 32-row ones do not; alone 32 rows were slower there (G=16 37.9 vs 36.2), but with the
    # next entries loaded ahead and 2 stages they are faster (G=8 18.67 -> 17.22, G=16 35.37 ->
    # 33.65, uniform).
    rows = 32
    tile_t = max(1, rows // G) if G < rows else 1
    # Rows per program (tokens x heads): long enough to amortise loading K/V, short enough that
    # the block every query selects (block 0) is spread over many programs.
    rows_per_prog = 4096
    ch = max(tile_t, (rows_per_prog // (G * tile_t)) * tile_t)
    elt = 4 if dtype == torch.float32 else 2
    per_token = B * n * nsub * H * G * D * elt
    chunk_t = max(1, min(T, DQ_PART_BUDGET // max(per_token, 1)))
    # dK/dV partial tiles for one chunk must also fit their budget; shrink ch if they don't.
    nb = -(-T // block_size)
    while ch > tile_t:
        tiles = (chunk_t * n) // ch + min(nb, chunk_t * n)
        if B * H * nsub * tiles * block_n * D * 4 * 2 <= DKV_PART_BUDGET:
            break
        ch = max(tile_t, ch // 2)
    # Measured (H100, bf16, T=64K): 4 warps beat 8 by 10-20% at every G for D <= 128.
    num_warps = 4 if d_pad <= 128 else 8
    # Stages of the gathers' pipeline, measured (T=64K, D=128, uniform, ms, 2 -> 3 stages):
    # G=1 2.29 -> 2.53, G=2 4.57 -> 4.68, G=4 8.87 -> 8.52, G=8 17.11 -> 15.53, G=16 33.60 ->
    # 31.76. Four would not fit two programs' shared memory on an SM (offline: 119.5 KB each).
    # Head dims over 128 keep the earlier rule, 1 stage at G >= 8 (measured at D=128 with 64-row
    # tiles, G=16: 38.2 vs 40.9 ms), since they were not timed again with 32-row tiles.
    # At D=64 (T=32K, G=4) 2 stages were faster: 2.15 vs 2.30 ms.
    if d_pad == 128:
        num_stages = 3 if G >= 4 else 2
    elif d_pad < 128:
        num_stages = 2
    else:
        num_stages = 2 if G < 8 else 1
    # Next tile's entries loaded ahead: measured H100, T=64K, uniform, ms: G=1 2.47 -> 2.28,
    # G=4 9.28 -> 8.89 (with 64-row tiles at G >= 8 it spilled and was slower: G=8 18.60 ->
    # 18.93). Not timed at head dims over 128.
    ent_next = int(d_pad <= 128)
    return BwdConfig(block_n, nsub, tile_t, ch, chunk_t, num_warps, num_stages, ent_next=ent_next)


def _alloc(shape, dtype, device, zero=False):
    if POISON_FOR_TESTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    if zero:
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def backward(do, q, k, v, o, lse, idx, block_size, scale, causal, plan, config=None, dlse=None, index=None,
             q_offset=0):
    """``index``: ``(offsets, entries)`` of the forward's inverted index of ``idx``
    (:mod:`..templates.index`), used instead of building it again; None builds it. q's rows are
    the key positions ``q_offset ..`` of k's and v's."""
    if getattr(plan, "strategy", "reference") == "reference" or supported(q, k, v, idx, block_size):
        return reference_backward(do, q, k, v, o, lse, idx, block_size, scale, causal, dlse=dlse, q_offset=q_offset)
    return kernel_backward(do, q, k, v, o, lse, idx, block_size, scale, causal, config, dlse=dlse, index=index,
                           q_offset=q_offset)


def kernel_backward(do, q, k, v, o, lse, idx, block_size, scale, causal, config=None, dlse=None, index=None,
                    q_offset=0):
    from ..templates.bwd_preprocess import bwd_preprocess_kernel
    from ..templates.bwd_dkdv import bwd_inverted_kernel, bwd_dkdv_reduce_kernel
    from ..templates.bwd_dq import bwd_dq_reduce_kernel
    from ..templates.index import build_block_index, retile

    B, T, HQ, D = q.shape
    Tk = k.shape[1]
    H = k.shape[2]
    G = HQ // H
    n = idx.shape[-1]
    dev = q.device
    cfg = config or backward_config(B, T, H, G, D, n, block_size, q.dtype)
    d_pad = max(16, _next_pow2(D))
    nb = -(-Tk // block_size)
    BH = B * H

    i64 = FORCE_IDX64 or _needs_idx64(q, k, v, do, o) or B * H * nb * block_size * D >= 2**31 - 1

    # 1. delta and base-2 lse in [B, H, T, G].
    delta = _alloc((B, H, T, G), torch.float32, dev)
    lse2 = _alloc((B, H, T, G), torch.float32, dev)
    R = B * T * HQ
    block_r = max(16, min(128, 8192 // d_pad))
    bwd_preprocess_kernel[(triton_cdiv(R, block_r),)](
        do, o, lse, lse if dlse is None else dlse, delta, lse2,
        *do.stride(), *o.stride(), *lse.stride(), *(lse if dlse is None else dlse).stride(),
        R, T, H=H, G=G, D=D, D_PAD=d_pad, BLOCK_R=block_r, HAS_DLSE=dlse is not None, IDX64=i64, num_warps=4,
    )

    dq = _alloc((B, T, HQ, D), q.dtype, dev)
    dk = _alloc((B, Tk, H, D), k.dtype, dev)
    dv = _alloc((B, Tk, H, D), v.dtype, dev)

    Tc = cfg.chunk_t
    nchunks = -(-T // Tc)
    use_acc = nchunks > 1
    bn, nsub = cfg.block_n, cfg.nsub
    max_tiles = _max_tiles(Tc * n, nb, cfg.ch)
    dk_part = _alloc((BH * nsub, max_tiles, bn, D), torch.float32, dev)
    dv_part = _alloc((BH * nsub, max_tiles, bn, D), torch.float32, dev)
    pdt = torch.float32 if q.dtype == torch.float32 else q.dtype
    dq_part = _alloc((B, Tc, n * nsub, HQ, D), pdt, dev)
    if use_acc:
        dk_acc = torch.zeros((BH * nsub, nb, bn, D), dtype=torch.float32, device=dev)
        dv_acc = torch.zeros((BH * nsub, nb, bn, D), dtype=torch.float32, device=dev)
    else:
        dk_acc = dv_acc = dk_part  # unused
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    log_nb = max(1, math.ceil(math.log2(nb + 1)) + 1)
    block_hq = min(_next_pow2(HQ), max(1, 8192 // d_pad))
    # One index over all T; a query chunk's entries of block j are the contiguous sub-range of
    # tokens [t0, t1) of block j's list (entries are in increasing t inside a block).
    if index is None:
        bi = build_block_index(idx, nb, cfg.ch)
        offsets, entries, all_tiles = bi.offsets, bi.entries, bi.tile_offsets.view(B, H, nb + 1)
    else:
        offsets, entries = index
        if tuple(offsets.shape) != (B, H, nb + 1) or tuple(entries.shape) != (B, H, T * n):
            raise ValueError(f"the saved index has shapes {tuple(offsets.shape)}, {tuple(entries.shape)}; "
                             f"expected {(B, H, nb + 1)}, {(B, H, T * n)}")
        all_tiles = retile(offsets, cfg.ch)
    E = entries.shape[-1]
    offs = offsets.view(BH, nb + 1)
    qoff, pos, s_pos_b, s_pos_t, has_pos = row_position_args(q_offset, q)
    if nchunks > 1:
        key = _chunk_search_key(offs, entries, BH, nb, E)
        qbase = torch.arange(nb, device=dev, dtype=torch.int64).view(1, nb) * E
    for c in range(nchunks):
        t0 = c * Tc
        t1 = min(T, t0 + Tc)
        if nchunks == 1:
            start, end, tile_offsets = offs[:, :-1], offs[:, 1:], all_tiles
        else:
            bounds = torch.cat([qbase + t0 * n, qbase + t1 * n], 1).expand(BH, 2 * nb).contiguous()
            se = torch.searchsorted(key, bounds).to(torch.int32)
            start, end = se[:, :nb], se[:, nb:]
            tiles = (end - start + (cfg.ch - 1)) // cfg.ch
            tile_offsets = torch.zeros(BH, nb + 1, dtype=torch.int32, device=dev)
            torch.cumsum(tiles, 1, dtype=torch.int32, out=tile_offsets[:, 1:])
        start, end = start.contiguous(), end.contiguous()
        grid = (_max_tiles((t1 - t0) * n, nb, cfg.ch), BH * nsub)
        bwd_inverted_kernel[grid](
            q, k, v, do, lse2, delta,
            start, end, entries, tile_offsets,
            dk_part, dv_part, dq_part, dk, dv, dk_acc, dv_acc,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
            T, Tk, qoff, pos, s_pos_b, s_pos_t, t0, 0, Tc, nb, E, max_tiles, n, float(scale),
            H=H, G=G, BS=block_size, BLOCK_N=bn, NSUB=nsub, D=D, D_PAD=d_pad,
            TILE_T=cfg.tile_t, CH=cfg.ch, LOG_NB=log_nb, CAUSAL=bool(causal), WRITE_DQ=True,
            PREC=prec, DOT_F32=(dev.type == "cpu"), ST=bool(cfg.st),
            DIRECT=bool(cfg.direct), USE_ACC=use_acc, LAST=(c == nchunks - 1), num_warps=cfg.num_warps,
            num_stages=cfg.num_stages, **maxnreg_option(cfg.maxnreg),
            EV_KEEP="evict_last" if cfg.evict else "", EV_STREAM="evict_first" if cfg.evict else "",
            IDX64=i64, ENT_NEXT=bool(cfg.ent_next), M_PAD=_next_pow2(cfg.tile_t * G), HAS_POS=has_pos,
        )
        bwd_dkdv_reduce_kernel[(nb, BH * nsub)](
            dk_part, dv_part, tile_offsets, dk_acc, dv_acc, dk, dv,
            *dk.stride(), *dv.stride(),
            Tk, nb, max_tiles,
            H=H, BS=block_size, BLOCK_N=bn, NSUB=nsub, D=D, D_PAD=d_pad,
            USE_ACC=use_acc, LAST=(c == nchunks - 1), DIRECT=bool(cfg.direct), IDX64=i64, num_warps=4,
        )
        bwd_dq_reduce_kernel[(t1 - t0, B, triton_cdiv(HQ, block_hq))](
            dq_part, idx, dq,
            *idx.stride(), *dq.stride(),
            t0, Tc, n,
            H=H, G=G, NSUB=nsub, D=D, D_PAD=d_pad, BLOCK_HQ=block_hq, IDX64=i64, num_warps=4,
        )
    return dq, dk, dv


def _chunk_search_key(offs, entries, BH, nb, E):
    """A sorted int64 key per index position, ``block * E + entry`` (padding tail last), so that
    a chunk's per-block entry ranges are two ``searchsorted`` calls."""
    pos = torch.arange(E, device=offs.device, dtype=torch.int32).view(1, E).expand(BH, E).contiguous()
    blk = torch.searchsorted(offs[:, 1:].contiguous(), pos, right=True).to(torch.int64)  # nb for the tail
    return blk * E + entries.reshape(BH, E).to(torch.int64)


def _max_tiles(num_entries, num_blocks, tile):
    return num_entries // tile + min(num_blocks, num_entries)


def triton_cdiv(a, b):
    return -(-a // b)


def extra_memory_bytes(B, T, H, G, D, n, block_size, dtype, config=None) -> int:
    """Scratch the kernel backward allocates beyond its three outputs (for the notes/tests)."""
    cfg = config or backward_config(B, T, H, G, D, n, block_size, dtype)
    nb = -(-T // block_size)
    elt = 4 if dtype == torch.float32 else 2
    Tc = cfg.chunk_t
    tot = 2 * B * T * H * G * 4  # delta, lse2
    tot += 2 * B * H * cfg.nsub * _max_tiles(Tc * n, nb, cfg.ch) * cfg.block_n * D * 4
    tot += B * Tc * n * cfg.nsub * H * G * D * elt
    if -(-T // Tc) > 1:
        tot += 2 * B * H * cfg.nsub * nb * cfg.block_n * D * 4
    tot += B * H * T * n * 8 * 3  # index (sort keys/order, entries) and the chunk search key
    return tot
