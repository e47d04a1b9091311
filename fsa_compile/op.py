"""The operation: ``torch.ops.fsa.selected_attention`` and its public wrapper.

The custom op is what rewrites insert into graphs; it has a fake implementation (so graphs can be
traced with symbolic shapes) and an autograd formula whose backward is another custom op. Both
reduce their arguments to canonical indices (``reference.canonical_indices``) and hand the work
to ``fsa_compile.lowering`` (kernels) or to the reference (CPU without the interpreter).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from .checks import check_inputs
from .lowering import backward as _kernel_backward
from .lowering import choose_plan, kernels_available
from .lowering import forward as _kernel_forward
from .lowering.plan import STRATEGIES


def plan_for(q: Tensor, k: Tensor, v: Tensor, block_indices: Tensor, block_size: int, causal: bool, strategy: str):
    """The plan the op will run for these ``[B, T, H, D]`` arguments."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    # Nothing to compute (no query, or no selected block): the reference returns the empty result.
    if strategy == "reference" or not kernels_available(q.device) or q.numel() == 0 or block_indices.shape[-1] == 0:
        from .lowering.plan import Plan

        return Plan("reference")
    return choose_plan(B, T, H, HQ // H, D, v.shape[-1], block_indices.shape[-1], block_size, q.dtype, causal, strategy, q.device)


def _canonical(block_indices, T, block_size, count_duplicates, on_out_of_range):
    return reference.canonical_indices(
        block_indices, T, block_size, count_duplicates=count_duplicates, on_out_of_range=on_out_of_range
    )


@torch.library.custom_op("fsa::selected_attention", mutates_args=())
def _selected_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_indices: Tensor,
    block_size: int,
    scale: float,
    causal: bool,
    count_duplicates: bool,
    on_out_of_range: str,
    strategy: str,
) -> tuple[Tensor, Tensor]:
    T = q.shape[1]
    idx = _canonical(block_indices, T, block_size, count_duplicates, on_out_of_range)
    plan = plan_for(q, k, v, idx, block_size, causal, strategy)
    if plan.strategy == "reference":
        return reference.reference_forward(q, k, v, idx, block_size, scale, causal)
    return _kernel_forward(q, k, v, idx, block_size, scale, causal, plan)


@_selected_attention.register_fake
def _(q, k, v, block_indices, block_size, scale, causal, count_duplicates, on_out_of_range, strategy):
    B, T, HQ, _ = q.shape
    o = q.new_empty(B, T, HQ, v.shape[-1])
    lse = q.new_empty(B, T, HQ, dtype=torch.float32)
    return o, lse


@torch.library.custom_op("fsa::selected_attention_backward", mutates_args=())
def _selected_attention_backward(
    do: Tensor,
    dlse: Optional[Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    block_indices: Tensor,
    block_size: int,
    scale: float,
    causal: bool,
    count_duplicates: bool,
    strategy: str,
) -> tuple[Tensor, Tensor, Tensor]:
    T = q.shape[1]
    # The forward already applied the out-of-range policy (raised or asserted); dropping here only
    # keeps the backward from reading past the end if it was asked to run anyway.
    idx = _canonical(block_indices, T, block_size, count_duplicates, "drop")
    plan = plan_for(q, k, v, idx, block_size, causal, strategy)
    # A gradient on lse (d lse / d s = p) only shifts delta = rowsum(dO * O); both paths take it.
    if plan.strategy == "reference":
        return reference.reference_backward(do, q, k, v, o, lse, idx, block_size, scale, causal, dlse=dlse)
    return _kernel_backward(do, q, k, v, o, lse, idx, block_size, scale, causal, plan, dlse=dlse)


@_selected_attention_backward.register_fake
def _(do, dlse, q, k, v, o, lse, block_indices, block_size, scale, causal, count_duplicates, strategy):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, block_indices, block_size, scale, causal, count_duplicates, on_out_of_range, strategy = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, block_indices, o, lse)
    ctx.args = (block_size, scale, causal, count_duplicates, strategy)


def _backward(ctx, do, dlse):
    q, k, v, block_indices, o, lse = ctx.saved_tensors
    block_size, scale, causal, count_duplicates, strategy = ctx.args
    dq = dk = dv = None
    if any(ctx.needs_input_grad[:3]):
        if do is None:
            do = torch.zeros_like(o)
        dq, dk, dv = _selected_attention_backward(
            do.contiguous(), dlse, q, k, v, o, lse, block_indices, block_size, scale, causal, count_duplicates, strategy
        )
    return dq, dk, dv, None, None, None, None, None, None, None


_selected_attention.register_autograd(_backward, setup_context=_setup_context)


def selected_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_indices: Tensor,
    block_size: int,
    *,
    scale: Optional[float] = None,
    causal: bool = True,
    layout: str = "bthd",
    return_lse: bool = False,
    strategy: str = "auto",
    count_duplicates: bool = True,
    on_out_of_range: str = "raise",
):
    """NSA selected attention (DESIGN.md section 2).

    ``q [B, T, HQ, D]``, ``k, v [B, T, H, D]``, ``block_indices [B, T, H, n]`` integers (negative
    entries are padding) with ``layout="bthd"``; ``[B, H, T, D]`` / ``[B, H, T, n]`` with
    ``layout="bhtd"``. Query head ``hq`` reads key/value head ``hq // (HQ // H)``. Returns ``o``
    in the layout and dtype of ``q``, and with ``return_lse=True`` also the natural-log
    log-sum-exp ``[B, T, HQ]`` (``[B, HQ, T]`` for bhtd) in float32.

    ``count_duplicates``: a block listed twice in a row counts twice (what gathering code does);
    ``False`` counts it once (what a boolean mask does). ``on_out_of_range``: ``"raise"`` a
    ``ValueError`` for entries ``>= ceil(T / block_size)`` (a host-side check; under
    ``torch.compile`` it becomes a device-side assertion), ``"assert"``, or ``"drop"`` them.
    A query with no visible key gets ``o = 0`` and ``lse = -inf``.
    """
    check_inputs(q, k, v, block_indices, block_size, layout, scale, strategy, STRATEGIES)
    if on_out_of_range not in reference.OUT_OF_RANGE_POLICIES:
        raise ValueError(
            f"on_out_of_range must be one of {reference.OUT_OF_RANGE_POLICIES}, got {on_out_of_range!r}"
        )
    if on_out_of_range == "raise" and torch.compiler.is_compiling():
        on_out_of_range = "assert"  # a host-side check would break the graph
    if layout == "bhtd":
        q, k, v, block_indices = (t.transpose(1, 2) for t in (q, k, v, block_indices))
    if scale is None:
        scale = q.shape[-1] ** -0.5
    o, lse = _selected_attention(
        q, k, v, block_indices, block_size, float(scale), bool(causal), bool(count_duplicates), on_out_of_range, strategy
    )
    if layout == "bhtd":
        o, lse = o.transpose(1, 2), lse.transpose(1, 2)
    return (o, lse) if return_lse else o
