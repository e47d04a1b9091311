"""The inverted index: for every (batch, KV head, KV block), which (query token, slot) selected it.

Shared by the forward and backward inverted-loop kernels. The layout is CSR per (batch, head):

- ``offsets [B, H, NB + 1]`` int32: entries of block ``j`` are ``entries[b, h, offsets[b,h,j] :
  offsets[b,h,j+1]]``;
- ``entries [B, H, T * n]`` int32: ``t * n + slot`` of each selection, grouped by block, in
  increasing ``t`` inside a block (the sort is stable); the tail past ``offsets[b,h,NB]`` holds
  the padding entries (negative indices) and must not be read;
- ``tile_offsets [B, H, NB + 1]`` int32: prefix sum of ``ceil(count_j / tile)`` so that a grid of
  :func:`max_tiles` programs per (b, h) can find its (block, tile) by a search, with no host sync.

Built from torch ops on the device; the grid sizes it implies are upper bounds known from the
static shapes alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BlockIndex:
    offsets: torch.Tensor
    entries: torch.Tensor
    tile_offsets: torch.Tensor
    tile: int
    num_blocks: int
    # optional (``tile_map=True``): ``[B, H, max_tiles]`` int32, the block of every tile id
    # (``num_blocks`` past the last real tile), so a program finds its block with one load
    tile_block: torch.Tensor | None = None

    @property
    def max_tiles(self) -> int:
        return max_tiles(self.entries.shape[-1], self.num_blocks, self.tile)


def max_tiles(num_entries: int, num_blocks: int, tile: int) -> int:
    """An upper bound on ``sum_j ceil(count_j / tile)`` given ``sum_j count_j <= num_entries``."""
    return num_entries // tile + min(num_blocks, num_entries)


def build_block_index(idx: torch.Tensor, num_blocks: int, tile: int, tile_map: bool = False) -> BlockIndex:
    """``idx``: canonical ``[B, T, H, n]`` int32 indices (negative = nothing, all < num_blocks).

    One flat stable sort of 32-bit keys ``segment * (num_blocks + 1) + block`` (a segment is one
    ``(b, h)``): measured on the H100 ~2-3x faster than a segmented sort of 64-bit keys.
    """
    B, T, H, n = idx.shape
    L = T * n
    nseg = B * H
    nb1 = num_blocks + 1
    dev = idx.device
    key = idx.permute(0, 2, 1, 3).reshape(nseg, L)
    # Padding sorts last in its segment: it is given the key num_blocks, past every real block.
    key = torch.where(key < 0, torch.full_like(key, num_blocks), key)
    seg = torch.arange(nseg, device=dev, dtype=torch.int32).view(nseg, 1)
    if nseg * nb1 < 2**31:
        flat = (key.to(torch.int32) + seg * nb1).reshape(-1)
    else:  # pragma: no cover - enormous B*H*NB
        flat = (key.long() + seg.long() * nb1).reshape(-1)
    _, order = torch.sort(flat, stable=True)
    entries = (order.view(nseg, L) - seg.long() * L).to(torch.int32).view(B, H, L)
    counts = torch.zeros(nseg * nb1, dtype=torch.int32, device=dev)
    counts.scatter_add_(0, flat.long(), torch.ones_like(flat, dtype=torch.int32))
    counts = counts.view(B, H, nb1)[..., :num_blocks]
    zero = torch.zeros(B, H, 1, dtype=torch.int32, device=dev)
    offsets = torch.cat([zero, torch.cumsum(counts, -1, dtype=torch.int32)], -1)
    tiles = (counts + (tile - 1)) // tile
    tile_offsets = torch.cat([zero, torch.cumsum(tiles, -1, dtype=torch.int32)], -1)
    tile_block = None
    if tile_map:
        mt = max_tiles(L, num_blocks, tile)
        ids = torch.arange(mt, device=dev, dtype=torch.int32).expand(nseg, mt).contiguous()
        tile_block = torch.searchsorted(tile_offsets.view(nseg, nb1)[:, 1:].contiguous(), ids,
                                        right=True, out_int32=True).view(B, H, mt)
    return BlockIndex(offsets.contiguous(), entries.contiguous(), tile_offsets.contiguous(), tile,
                      num_blocks, tile_block)
