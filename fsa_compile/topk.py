"""``torch.ops.fsa.row_topk``: top-k over the last dim, what the pass puts in place of
``torch.topk`` (NSA's block selection runs it on rows of a few hundred scores, where
torch.topk's CUDA kernels take longer than the selected attention itself).

Same values as ``torch.topk(x, k, dim=-1, largest, sorted=True)`` and indices of those values;
among equal values the lower index comes first, an order torch.topk leaves open. Gradients flow
to ``x`` through the values, as with torch.topk.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .compiled_ops import register_twin
from .lowering.row_topk import row_topk as _row_topk


def _body(x: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    return _row_topk(x, k, largest)


def _fake(x, k, largest):
    shape = (*x.shape[:-1], k)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


_op = torch.library.custom_op("fsa::row_topk", _body, mutates_args=())
_op.register_fake(_fake)
register_twin(_op, _body, _fake)


def _setup(ctx, inputs, output):
    x, _, _ = inputs
    ctx.shape = x.shape
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_values, grad_indices):
    (indices,) = ctx.saved_tensors
    if grad_values is None:
        return None, None, None
    gx = grad_values.new_zeros(ctx.shape).scatter(-1, indices, grad_values)
    return gx, None, None


_op.register_autograd(_backward, setup_context=_setup)


def row_topk(x: Tensor, k: int, dim: int = -1, largest: bool = True) -> tuple[Tensor, Tensor]:
    """Top-k of ``x`` along ``dim`` (values sorted, indices int64), like ``torch.topk``."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"row_topk: k must be a non-negative int, got {k!r}")
    if x.dim() == 0:
        raise ValueError("row_topk: x must have at least one dim")
    if k > x.shape[dim]:
        raise ValueError(f"row_topk: k={k} is larger than dim {dim}'s size {x.shape[dim]}")
    last = dim in (-1, x.dim() - 1)
    v, i = torch.ops.fsa.row_topk(x if last else x.movedim(dim, -1), k, largest)
    return (v, i) if last else (v.movedim(-1, dim), i.movedim(-1, dim))
