"""Row top-k launches: the Triton template for short rows on a kernel device, torch.topk otherwise."""
from __future__ import annotations

import torch

from .. import templates  # noqa: F401  (sets the interpreter switch before triton is imported)
from .plan import kernels_available

# Rows up to this long are held whole in registers; longer rows, larger k or other dtypes go to
# torch.topk (what the user's code called).
MAX_ROW = 4096
MAX_K = 64
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def uses_kernel(x: torch.Tensor, k: int) -> bool:
    L = x.shape[-1] if x.dim() else 1
    return (kernels_available(x.device) and x.dtype in DTYPES and x.dim() >= 1 and 0 < k <= min(L, MAX_K)
            and L <= MAX_ROW and x.numel() > 0)


def describe(L, k: int, dtype, device) -> str:
    """The plan of a row top-k over rows of ``L`` (an int, or a symbolic size) on ``device``."""
    if not kernels_available(device):
        return "torch.topk (Triton kernels need CUDA or FSA_COMPILE_INTERPRET=1)"
    if dtype not in DTYPES or k > MAX_K:
        return f"torch.topk (the kernel takes k <= {MAX_K} of float16/bfloat16/float32 rows)"
    if not isinstance(L, int):
        return f"kernel for rows up to {MAX_ROW} (the row length is symbolic), torch.topk above"
    if L > MAX_ROW:
        return f"torch.topk (rows longer than {MAX_ROW})"
    block_l, rows, warps, group = tiles(L)
    levels = f", groups of {group}" if group < block_l else ""
    return f"kernel: {rows} rows x {block_l} per program{levels}, warps {warps}"


# Two-level launch table (BLOCK_L -> ROWS, num_warps, GROUP), measured on the H200 (see tiles()).
_TWO_LEVEL = {256: (8, 2, 8), 512: (16, 2, 8), 1024: (8, 2, 16)}


def tiles(L: int, two_level: bool | None = None) -> tuple[int, int, int, int]:
    """(BLOCK_L, ROWS, num_warps, GROUP).

    By default two levels for rows of 256 to 1024 (measured H100, ms, one level -> two levels:
    bf16 [131072, 512] top-16 0.289 -> 0.153, [262144, 1024] 1.083 -> 0.481, [131072, 256]
    0.138 -> 0.093; float32 0.973 -> 0.274, 3.12 -> 1.04, 0.516 -> 0.165); one level for shorter
    rows (bf16 [16384, 64] 0.015 -> 0.023) and longer ones, where few rows per program leave the
    reloads' latency exposed (bf16 [1000, 4096] top-64 0.065 -> 0.082). One level holds about 4K
    keys per program.

    Two levels: a step is a chain of dependent reductions and one reload, so the kernel is bound
    by latency, and narrow groups (short reloads) on 2 warps (more programs per SM) pay. The
    table is the best of 4-32 rows x 2 or 4 warps x groups of 8-32, measured on the H200 at
    bf16 top-16 (`benchmarks/topk_knobs_gpu.py`, ms, the previous default -> this one): 256
    columns [65536, 256] 0.0512 -> 0.0463, 512 [131072, 512] 0.150 -> 0.109, 1024 [262144, 1024]
    0.478 -> 0.347.
    """
    block_l = max(16, 1 << max(0, (L - 1).bit_length()))
    if two_level is None:
        two_level = block_l in _TWO_LEVEL
    if two_level and block_l in _TWO_LEVEL:
        return (block_l, *_TWO_LEVEL[block_l])
    rows = max(1, min(32, 4096 // block_l))
    group = 1 << ((block_l.bit_length() - 1) // 2) if two_level else block_l
    return block_l, rows, 4 if block_l * rows <= 4096 else 8, group


def row_topk(x: torch.Tensor, k: int, largest: bool = True, out=None,
             two_level: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(x, k, dim=-1, largest=largest, sorted=True)``; among equal values the lower
    index comes first (torch.topk leaves that order open). ``out``: (values, indices) to write,
    contiguous, of the result's shape (tests pass poisoned ones). ``two_level``: which way the
    kernel takes the keys (None: by row length, see :func:`tiles`)."""
    if not uses_kernel(x, k):
        if out is not None:
            return torch.topk(x, k, dim=-1, largest=largest, sorted=True, out=out)
        return torch.topk(x, k, dim=-1, largest=largest, sorted=True)
    from ..templates.row_topk import row_topk_kernel

    L = x.shape[-1]
    rows2d = x.reshape(-1, L)
    if rows2d.stride(-1) != 1:
        rows2d = rows2d.contiguous()
    R = rows2d.shape[0]
    shape = (*x.shape[:-1], k)
    if out is None:
        out = (x.new_empty(shape), x.new_empty(shape, dtype=torch.int64))
    values, indices = out
    block_l, rows, warps, group = tiles(L, two_level)
    grid = (-(-R // rows),)
    row_topk_kernel[grid](rows2d, values, indices, R, L, rows2d.stride(0), K=k, LARGEST=largest,
                          NARROW=x.dtype != torch.float32, ROWS=rows, BLOCK_L=block_l, GROUP=group,
                          num_warps=warps)
    return values, indices
