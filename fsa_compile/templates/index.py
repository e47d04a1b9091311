"""The inverted index: for every (batch, KV head, KV block), which (query token, slot) selected it.

Shared by the forward and backward inverted-loop kernels. The layout is CSR per (batch, head):

- ``offsets [B, H, NB + 1]`` int32: entries of block ``j`` are ``entries[b, h, offsets[b,h,j] :
  offsets[b,h,j+1]]``;
- ``entries [B, H, T * n]`` int32: ``t * n + slot`` of each selection, grouped by block, in
  increasing ``t`` inside a block (the sort is stable); the tail past ``offsets[b,h,NB]`` holds
  the padding entries (negative indices) and must not be read;
- ``tile_offsets [B, H, chunks, NB + 1]`` int32: per chunk of query tokens, prefix sum of
  ``ceil(count_jc / tile)`` (``count_jc``: block ``j``'s entries in chunk ``c``) so that a grid of
  :func:`max_tiles` programs per (b, h) can find its (block, tile) by a search, with no host sync.

Built on the device (a Triton kernel for the sort keys, torch's sort, three Triton kernels for the
rest), with no host sync; the grid sizes it implies are upper bounds known from the static shapes
alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import triton
import triton.language as tl


@dataclass
class BlockIndex:
    offsets: torch.Tensor
    entries: torch.Tensor
    tile_offsets: torch.Tensor
    tile: int
    num_blocks: int
    # optional (``tile_map=True``): ``[B, H, chunks, max_tiles]`` int32, the block of every tile
    # id (``num_blocks`` past the last real tile), so a program finds its block with one load
    tile_block: torch.Tensor | None = None
    # with ``chunk``: ``[B, H, (num_blocks + 1) * chunks + 1]`` int32, where the entries of
    # (block j, chunk c) start: ``bin_offsets[b, h, j * chunks + c]`` (they end where the next
    # bin starts); without chunks it is ``offsets`` plus the padding's end
    bin_offsets: torch.Tensor | None = None
    chunks: int = 1
    chunk_entries: int = 0  # (token, slot) entries of one chunk: chunk * n

    @property
    def max_tiles(self) -> int:
        """The tiles of one chunk at most (the grid of a launch over one chunk)."""
        return max_tiles(self.chunk_entries, self.num_blocks, self.tile)


def max_tiles(num_entries: int, num_blocks: int, tile: int) -> int:
    """An upper bound on ``sum_j ceil(count_j / tile)`` given ``sum_j count_j <= num_entries``."""
    return num_entries // tile + min(num_blocks, num_entries)


def build_block_index(idx: torch.Tensor, num_blocks: int, tile: int, tile_map: bool = False,
                      chunk: int = 0) -> BlockIndex:
    """``idx``: canonical ``[B, T, H, n]`` int32 indices (negative = nothing, all < num_blocks).

    One flat stable sort of the keys ``segment * (num_blocks + 1) + block`` (a segment is one
    ``(b, h)``; 16-bit where they fit, else 32-bit; a flat sort of 32-bit keys measured on the
    H100 ~2-3x faster than a segmented sort of 64-bit keys). A block's entries are contiguous
    and in increasing ``t``, so chunk boundaries are found by a search and the same index serves
    the forward (tiles per chunk of ``chunk`` query tokens) and the backward (its own tiles,
    :func:`retile`).
    """
    B, T, H, n = idx.shape
    L = T * n
    nseg = B * H
    nb1 = num_blocks + 1
    nc = -(-T // chunk) if chunk else 1
    nbin = nb1 * nc
    dev = idx.device
    nkey = nseg * nb1
    if nkey < 2**31:
        # 16-bit keys where they fit: the radix sort then makes 2 passes instead of 4
        flat = torch.empty(nseg * L, dtype=torch.int16 if nkey <= 2**15 else torch.int32, device=dev)
        if flat.numel():
            _sort_keys_kernel[(triton.cdiv(L, 1024), nseg)](
                idx, flat, *idx.stride(), H, num_blocks, L, N=n, BLOCK=1024)
    else:  # pragma: no cover - enormous B*H*NB
        # Padding sorts last in its segment: it is given the key num_blocks, past every real block.
        key = torch.where(idx < 0, torch.full_like(idx, num_blocks), idx).long()
        seg = torch.arange(nseg, device=dev, dtype=torch.int64).view(nseg, 1)
        flat = (key.permute(0, 2, 1, 3).reshape(nseg, L) + seg * nb1).reshape(-1)
    keys, order = torch.sort(flat, stable=True)
    # The rest is three launches (it was ~30 small torch ops: their launches and gaps cost more
    # than their work). The entries, then where each (block, chunk) bin starts: the stable sort
    # leaves a block's entries t * n + slot in increasing order, so chunk c of block j starts at
    # the first (key, entry) pair >= (key of j, c * chunk * n), found by a binary search. (Counting
    # with atomics instead meets every query's block 0 on one counter per segment.)
    entries = torch.empty(nseg * L, dtype=torch.int32, device=dev)
    bin_offsets = torch.empty(nseg, nbin + 1, dtype=torch.int32, device=dev)
    offsets = torch.empty(nseg, nb1, dtype=torch.int32, device=dev)
    tile_offsets = torch.empty(nseg, nc, nb1, dtype=torch.int32, device=dev)
    chunk_entries = chunk * n if nc > 1 else L
    mt = max_tiles(chunk_entries, num_blocks, tile)
    tile_block = torch.empty(nseg, nc, mt, dtype=torch.int32, device=dev) if tile_map else None
    if nseg:
        if L:
            _entries_kernel[(triton.cdiv(L, 1024), nseg)](order, entries, L, BLOCK=1024)
        # 128 bins per program, one per thread: a search is ~20 dependent loads, so its time is
        # their latency; spread over many programs they are in flight together (measured H200,
        # T=32K: 50 us per call with 1024 bins per program). On CPU tensors the kernels run in
        # the interpreter, which pays per program, so there it takes 1024.
        per = 1024 if dev.type == "cpu" else 128
        _bins_kernel[(triton.cdiv(nbin + 1, per), nseg)](
            keys, entries, bin_offsets, offsets, L, nb1, nc, chunk_entries,
            max(1, L.bit_length()), BLOCK=per, num_warps=4)
        _tiles_kernel[(nc, nseg)](
            bin_offsets, tile_offsets, tile_block if tile_map else tile_offsets, num_blocks, nc, tile, mt,
            max(1, num_blocks.bit_length()), TILE_MAP=tile_map, BLOCK=1024)
    return BlockIndex(offsets.view(B, H, nb1), entries.view(B, H, L), tile_offsets.view(B, H, nc, nb1), tile,
                      num_blocks, tile_block.view(B, H, nc, mt) if tile_map else None,
                      bin_offsets.view(B, H, nbin + 1), nc, chunk_entries)


def retile(offsets: torch.Tensor, tile: int) -> torch.Tensor:
    """``tile_offsets [B, H, NB + 1]`` for tiles of ``tile`` entries over a block CSR's
    ``offsets [B, H, NB + 1]`` (all of T, no chunks): what the backward needs of the index the
    forward saved."""
    counts = offsets[..., 1:] - offsets[..., :-1]
    out = torch.zeros_like(offsets)
    torch.cumsum((counts + (tile - 1)) // tile, -1, dtype=torch.int32, out=out[..., 1:])
    return out


@triton.jit
def _sort_keys_kernel(IDX, KEYS, sib, sit, sih, sis, H, NB, L, N: tl.constexpr, BLOCK: tl.constexpr):
    """``KEYS[seg * L + t * N + slot] = seg * (NB + 1) + block`` for segment ``seg = b * H + h``,
    padding (negative) counted as block ``NB`` so that it sorts last; written in KEYS' dtype."""
    seg = tl.program_id(1)
    b = seg // H
    h = seg % H
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = p < L
    t = p // N
    v = tl.load(IDX + b.to(tl.int64) * sib + t.to(tl.int64) * sit + h * sih + (p % N) * sis,
                mask=ok, other=-1)
    v = tl.where(v < 0, NB, v)
    tl.store(KEYS + seg.to(tl.int64) * L + p, (seg * (NB + 1) + v).to(KEYS.dtype.element_ty), mask=ok)


@triton.jit
def _entries_kernel(ORDER, ENTRIES, L, BLOCK: tl.constexpr):
    """The entries ``t * n + slot`` (int32, relative to their segment) from the sort's permutation."""
    seg = tl.program_id(1)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = p < L
    at = seg.to(tl.int64) * L + p
    e = tl.load(ORDER + at, mask=ok, other=0) - seg.to(tl.int64) * L
    tl.store(ENTRIES + at, e.to(tl.int32), mask=ok)


@triton.jit
def _bins_kernel(KEYS, ENTRIES, BINS, OFFS, L, NB1, NC, CHUNK_ENTRIES, STEPS, BLOCK: tl.constexpr):
    """``BINS[seg, r]``: where bin ``r = j * NC + c`` starts in segment ``seg``'s sorted entries, the
    first ``(key, entry) >= (seg * NB1 + j, c * CHUNK_ENTRIES)`` (``BINS[seg, NB1 * NC] = L``);
    ``OFFS[seg, j]`` = ``BINS[seg, j * NC]``. A binary search of ``STEPS >= log2(L + 1)`` halvings."""
    seg = tl.program_id(1)
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    nbin = NB1 * NC
    ok = r <= nbin
    j = r // NC
    c = r % NC
    kb = seg.to(tl.int64) * NB1 + j
    te = c * CHUNK_ENTRIES
    base = seg.to(tl.int64) * L
    lo = tl.zeros([BLOCK], dtype=tl.int32)
    hi = tl.where(r < nbin, L, 0).to(tl.int32)
    for _ in range(STEPS):
        live = lo < hi
        mid = (lo + hi) // 2
        key = tl.load(KEYS + base + mid, mask=live, other=0).to(tl.int64)
        ent = tl.load(ENTRIES + base + mid, mask=live, other=0)
        less = (key < kb) | ((key == kb) & (ent < te))
        lo = tl.where(live & less, mid + 1, lo)
        hi = tl.where(live & (~less), mid, hi)
    start = tl.where(r < nbin, lo, L)
    tl.store(BINS + seg.to(tl.int64) * (nbin + 1) + r, start, mask=ok)
    tl.store(OFFS + seg.to(tl.int64) * NB1 + j, start, mask=ok & (c == 0) & (j < NB1))


@triton.jit
def _tiles_kernel(BINS, TOFFS, TMAP, NB, NC, TILE, MT, STEPS, TILE_MAP: tl.constexpr, BLOCK: tl.constexpr):
    """For one (segment, chunk): ``TOFFS[seg, c, :]`` = 0 then the running sum over blocks ``j < NB``
    of ``ceil(count(j, c) / TILE)``; with ``TILE_MAP`` also ``TMAP[seg, c, p]`` = the block of tile
    ``p`` (``NB`` past the last tile), by a binary search of the offsets this program just wrote."""
    c = tl.program_id(0)
    seg = tl.program_id(1)
    nbin = (NB + 1) * NC
    bins = BINS + seg.to(tl.int64) * (nbin + 1)
    row = TOFFS + (seg * NC + c).to(tl.int64) * (NB + 1)
    tl.store(row, 0)
    carry = tl.full([], 0, tl.int32)
    for j0 in range(0, NB, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        ok = j < NB
        r = j * NC + c
        cnt = tl.load(bins + r + 1, mask=ok, other=0) - tl.load(bins + r, mask=ok, other=0)
        t = tl.where(ok, (cnt + TILE - 1) // TILE, 0)
        tl.store(row + 1 + j, carry + tl.cumsum(t, axis=0), mask=ok)
        carry += tl.sum(t, axis=0)
    if TILE_MAP:
        tl.debug_barrier()  # the offsets above, stored by this program's threads, are read below
        out = TMAP + (seg * NC + c).to(tl.int64) * MT
        for p0 in range(0, MT, BLOCK):
            p = p0 + tl.arange(0, BLOCK)
            # the number of j' in [1, NB] with TOFFS[j'] <= p
            lo = tl.zeros([BLOCK], dtype=tl.int32)
            hi = tl.zeros([BLOCK], dtype=tl.int32) + NB
            for _ in range(STEPS):
                live = lo < hi
                mid = (lo + hi) // 2
                le = tl.load(row + 1 + mid, mask=live, other=0) <= p
                lo = tl.where(live & le, mid + 1, lo)
                hi = tl.where(live & (~le), mid, hi)
            tl.store(out + p, lo, mask=p < MT)
