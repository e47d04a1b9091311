"""Canonical block indices (``reference.canonical_indices``) with the elementwise part in one
launch where the kernels run: on a short call (a decode step) the reference's four or five
elementwise launches were ~0.05 ms of host time (``benchmarks/NOTES.md``, 2026-12-02 fifth)."""
from __future__ import annotations

import torch

from .. import templates  # noqa: F401  (sets the interpreter switch before triton is imported)
import triton  # noqa: E402
from .. import reference
from ..templates.canonical import canonical_kernel
from .plan import kernels_available

_BLOCK = 1024
_INTEGERS = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def canonical_indices(block_indices: torch.Tensor, seq_len: int, block_size: int, *, count_duplicates: bool,
                      on_out_of_range: str) -> torch.Tensor:
    """Same result as ``reference.canonical_indices``. Removing duplicates (a sort per row) is
    left to the reference."""
    idx = block_indices
    dedup = not count_duplicates and idx.shape[-1] > 1
    if dedup or idx.dtype not in _INTEGERS or idx.numel() == 0 or not kernels_available(idx.device):
        return reference.canonical_indices(idx, seq_len, block_size, count_duplicates=count_duplicates,
                                           on_out_of_range=on_out_of_range)
    reference.check_out_of_range(idx, seq_len, block_size, on_out_of_range)
    src = idx.contiguous()
    out = torch.empty(idx.shape, dtype=torch.int32, device=idx.device)
    numel = idx.numel()
    canonical_kernel[(triton.cdiv(numel, _BLOCK),)](
        src, out, numel, reference.num_blocks(seq_len, block_size), DROP=on_out_of_range == "drop", BLOCK=_BLOCK,
    )
    return out
