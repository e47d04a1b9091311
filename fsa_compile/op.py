"""The operation: ``torch.ops.fsa.selected_attention`` and its public wrapper.

The custom op is what rewrites insert into graphs; it has a fake implementation (so graphs can be
traced with symbolic shapes) and an autograd formula whose backward is another custom op. Both
reduce their arguments to canonical indices (``reference.canonical_indices``, in one launch where
the kernels run) and hand the work to ``fsa_compile.lowering`` (kernels) or to the reference (CPU
without the interpreter). Inductor's graphs call the ops' twins (``compiled_ops``).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .checks import check_inputs, check_q_offset, check_q_positions
from .compiled_ops import register_twin
from .lowering import backward as _kernel_backward
from .lowering.canonical import canonical_indices
from .lowering import choose_plan, kernels_available
from .lowering import forward as _kernel_forward
from .lowering.plan import STRATEGIES, resolve_strategy


def plan_for(q: Tensor, k: Tensor, v: Tensor, block_indices: Tensor, block_size: int, causal: bool, strategy: str,
             row_positions: bool = False):
    """The plan the op will run for these ``[B, T, H, D]`` arguments (``row_positions``: q's rows
    at positions a tensor gives)."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    # Nothing to compute (no query, or no selected block): the reference returns the empty result.
    if strategy == "reference" or not kernels_available(q.device) or q.numel() == 0 or block_indices.shape[-1] == 0:
        from .lowering.plan import Plan

        return Plan("reference")
    plan = choose_plan(B, T, H, HQ // H, D, v.shape[-1], block_indices.shape[-1], block_size, q.dtype, causal,
                       strategy, q.device)
    return plan.for_row_positions(HQ // H) if row_positions else plan


def _index_shapes(q: Tensor, k: Tensor, block_indices: Tensor, block_size: int, strategy: str):
    """Shapes of the inverted-loop index the forward returns for the backward: ``offsets
    [B, H, NB + 1]`` (NB blocks of the keys) and ``entries [B, H, T * n]`` (T query rows) when the
    plan is the inverted loop, else empty. From static facts only (not T's value), so the fake
    implementation gives the same answer."""
    B, T, HQ, _ = q.shape
    H = k.shape[2]
    n = block_indices.shape[-1]
    rows = T if isinstance(T, int) else None  # (a symbolic length is never 1)
    if n == 0 or H == 0 or q.numel() == 0 or resolve_strategy(strategy, HQ // H, q.device, rows) != "fsa":
        return (0,), (0,)
    return (B, H, (k.shape[1] + block_size - 1) // block_size + 1), (B, H, T * n)


def _offset(q: Tensor, k: Tensor, q_offset: Optional[int], q_positions: Optional[Tensor] = None):
    """The rows' positions as the lowering takes them: the first row's (an int), or with
    ``q_positions`` every row's, a ``[B, T_q]`` or ``[1, T_q]`` (every batch item alike) view of
    it, int32 or int64, unclamped. No copy where it is int32 or int64 already: each launch counts
    in a decode step, and the kernels clamp what they read to ``[-1, T_k]`` (a row at or past the
    last key sees all of its blocks' keys and one before 0 none, as unclamped)."""
    if q_positions is None:
        return check_q_offset(q_offset, q.shape[1], k.shape[1])
    check_q_positions(q_positions, q_offset, q.shape[0], q.shape[1], q.device)
    pos = q_positions if q_positions.dim() == 2 else q_positions.unsqueeze(0)
    return pos if pos.dtype in (torch.int32, torch.int64) else pos.to(torch.int64)


def _canonical(block_indices, T, block_size, count_duplicates, on_out_of_range):
    return canonical_indices(
        block_indices, T, block_size, count_duplicates=count_duplicates, on_out_of_range=on_out_of_range
    )


def _own_precision(q: Tensor):
    """The op computes in the precision its inputs set (float32 accumulation), whatever autocast
    is on around the call: an enabled autocast would otherwise reach the reference's float32
    products and round them to bf16. Casting to autocast's dtype is the caller's decision (the
    public wrapper and the rewrite make it, as eager code would). Entering the context costs more
    than the check (a decode step's host time counts), so it is entered only when needed."""
    if not torch.is_autocast_enabled(q.device.type):
        return contextlib.nullcontext()
    return torch.autocast(q.device.type, enabled=False)


def _forward_body(
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
    q_offset: Optional[int] = None,
    q_positions: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(o, lse, offsets, entries)``: the last two are the inverted loop's index of the selection
    (:func:`_index_shapes`), kept for the backward so that it does not build it again. q's rows
    are the key positions ``q_offset .. q_offset + T_q - 1`` (None: the last ``T_q``, which is
    what a rewrite passes: under dynamic shapes the offset is a difference of two sizes), or
    ``q_positions`` (an integer tensor ``[T_q]`` or ``[B, T_q]``) gives each row's position."""
    q_offset = _offset(q, k, q_offset, q_positions)
    idx = _canonical(block_indices, k.shape[1], block_size, count_duplicates, on_out_of_range)
    plan = plan_for(q, k, v, idx, block_size, causal, strategy, q_positions is not None)
    index = None
    with _own_precision(q):
        if plan.strategy == "reference":
            o, lse = reference.reference_forward(q, k, v, idx, block_size, scale, causal, q_offset)
        else:
            o, lse, index = _kernel_forward(q, k, v, idx, block_size, scale, causal, plan, keep_index=True,
                                            q_offset=q_offset)
    # contiguous whatever the inputs' strides: the fake implementation promises that to Inductor
    o, lse = o.contiguous(), lse.contiguous()
    off_shape, ent_shape = _index_shapes(q, k, block_indices, block_size, strategy)
    if off_shape == (0,):
        none = idx.new_empty(0)
        return o, lse, none, none.clone()
    if index is None or tuple(index.offsets.shape) != off_shape or tuple(index.entries.shape) != ent_shape:
        raise RuntimeError(f"fsa_compile: the forward's index does not have the shapes {off_shape}, {ent_shape}")
    return o, lse, index.offsets, index.entries


def _forward_fake(q, k, v, block_indices, block_size, scale, causal, count_duplicates, on_out_of_range, strategy,
                  q_offset=None, q_positions=None):
    B, T, HQ, _ = q.shape
    o = q.new_empty(B, T, HQ, v.shape[-1])
    lse = q.new_empty(B, T, HQ, dtype=torch.float32)
    off_shape, ent_shape = _index_shapes(q, k, block_indices, block_size, strategy)
    return o, lse, q.new_empty(off_shape, dtype=torch.int32), q.new_empty(ent_shape, dtype=torch.int32)


def _backward_body(
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
    offsets: Tensor,
    entries: Tensor,
    q_offset: Optional[int] = None,
    q_positions: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``offsets``/``entries``: the index the forward returned (empty: none, build it)."""
    q_offset = _offset(q, k, q_offset, q_positions)
    # The forward already applied the out-of-range policy (raised or asserted); dropping here only
    # keeps the backward from reading past the end if it was asked to run anyway.
    idx = _canonical(block_indices, k.shape[1], block_size, count_duplicates, "drop")
    plan = plan_for(q, k, v, idx, block_size, causal, strategy, q_positions is not None)
    # A gradient on lse (d lse / d s = p) only shifts delta = rowsum(dO * O); both paths take it.
    with _own_precision(q):
        if plan.strategy == "reference":
            grads = reference.reference_backward(do, q, k, v, o, lse, idx, block_size, scale, causal, dlse=dlse,
                                                 q_offset=q_offset)
        else:
            index = (offsets, entries) if entries.numel() else None
            grads = _kernel_backward(do, q, k, v, o, lse, idx, block_size, scale, causal, plan, dlse=dlse, index=index,
                                     q_offset=q_offset)
    # contiguous, as the fake implementation says, whatever the strides of q, k, v (a transposed
    # [B, H, T, D] input): Inductor checks a custom op's outputs against its fake strides
    return tuple(g.contiguous() for g in grads)


def _backward_fake(do, dlse, q, k, v, o, lse, block_indices, block_size, scale, causal, count_duplicates, strategy,
                   offsets, entries, q_offset=None, q_positions=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_selected_attention = torch.library.custom_op("fsa::selected_attention", _forward_body, mutates_args=())
_selected_attention.register_fake(_forward_fake)
_selected_attention_backward = torch.library.custom_op(
    "fsa::selected_attention_backward", _backward_body, mutates_args=()
)
_selected_attention_backward.register_fake(_backward_fake)
register_twin(_selected_attention, _forward_body, _forward_fake)
register_twin(_selected_attention_backward, _backward_body, _backward_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, block_indices, block_size, scale, causal, count_duplicates, on_out_of_range, strategy, *rest = inputs
    o, lse, offsets, entries = output
    # The index outputs carry no gradient, and an output nobody differentiates (usually lse) is
    # handed to the backward as None rather than as a zero tensor: no fills, and the backward
    # then skips the lse term instead of adding zeros.
    ctx.mark_non_differentiable(offsets, entries)
    ctx.set_materialize_grads(False)
    q_offset, q_positions = (list(rest) + [None, None])[:2]
    ctx.save_for_backward(q, k, v, block_indices, o, lse, offsets, entries, q_positions)
    ctx.args = (block_size, scale, causal, count_duplicates, strategy, q_offset)


def _backward(ctx, do, dlse, _d_offsets, _d_entries):
    q, k, v, block_indices, o, lse, offsets, entries, q_positions = ctx.saved_tensors
    block_size, scale, causal, count_duplicates, strategy, q_offset = ctx.args
    dq = dk = dv = None
    if any(ctx.needs_input_grad[:3]):
        if do is None:
            do = torch.zeros_like(o)
        dq, dk, dv = _selected_attention_backward(
            do.contiguous(), dlse, q, k, v, o, lse, block_indices, block_size, scale, causal, count_duplicates,
            strategy, offsets, entries, q_offset, q_positions,
        )
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


_selected_attention.register_autograd(_backward, setup_context=_setup_context)


def _autocast_inputs(q: Tensor, k: Tensor, v: Tensor):
    """Under ``torch.autocast``, wider inputs go to autocast's dtype, as for
    ``F.scaled_dot_product_attention`` (an attention product autocast runs in low precision)."""
    dev = q.device.type
    if not torch.is_autocast_enabled(dev):
        return q, k, v
    dtype = torch.get_autocast_dtype(dev)
    return tuple(t.to(dtype) if t.is_floating_point() and t.dtype.itemsize > dtype.itemsize else t for t in (q, k, v))


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
    q_offset: Optional[int] = None,
    q_positions: Optional[Tensor] = None,
):
    """NSA selected attention (DESIGN.md section 2).

    ``q [B, T, HQ, D]``, ``k, v [B, T, H, D]``, ``block_indices [B, T, H, n]`` integers (negative
    entries are padding) with ``layout="bthd"``; ``[B, H, T, D]`` / ``[B, H, T, n]`` with
    ``layout="bhtd"``. Query head ``hq`` reads key/value head ``hq // (HQ // H)``. Returns ``o``
    in the layout and dtype of ``q`` (under ``torch.autocast``, float32 inputs are first cast to
    autocast's dtype, as ``F.scaled_dot_product_attention``'s are), and with ``return_lse=True``
    also the natural-log log-sum-exp ``[B, T, HQ]`` (``[B, HQ, T]`` for bhtd) in float32.

    ``count_duplicates``: a block listed twice in a row counts twice (what gathering code does);
    ``False`` counts it once (what a boolean mask does). ``on_out_of_range``: ``"raise"`` a
    ``ValueError`` for entries ``>= ceil(T / block_size)`` (a host-side check; under
    ``torch.compile`` it becomes a device-side assertion), ``"assert"``, or ``"drop"`` them.
    A query with no visible key gets ``o = 0`` and ``lse = -inf``.

    q may hold fewer rows than k and v (decoding after a KV cache, a chunk of a prefill): its rows
    are the key positions ``q_offset .. q_offset + T_q - 1`` (``block_indices`` has q's rows; the
    blocks are the keys'), by default the last ``T_q`` positions (``q_offset = T_k - T_q``).
    ``q_positions`` (an integer tensor ``[T_q]`` or ``[B, T_q]``, instead of ``q_offset``) gives
    each row's position, any values (a KV cache's ``cache_position``): row ``i`` sees the keys
    ``<= q_positions[i]`` of its selected blocks (with ``causal``), none where that is negative.
    """
    check_inputs(q, k, v, block_indices, block_size, layout, scale, strategy, STRATEGIES)
    tdim = 1 if layout == "bthd" else 2
    if q_positions is None:
        q_offset = check_q_offset(q_offset, q.shape[tdim], k.shape[tdim])
    else:
        check_q_positions(q_positions, q_offset, q.shape[0], q.shape[tdim], q.device)
    if on_out_of_range not in reference.OUT_OF_RANGE_POLICIES:
        raise ValueError(
            f"on_out_of_range must be one of {reference.OUT_OF_RANGE_POLICIES}, got {on_out_of_range!r}"
        )
    if on_out_of_range == "raise" and torch.compiler.is_compiling():
        on_out_of_range = "assert"  # a host-side check would break the graph
    if layout == "bhtd":
        q, k, v, block_indices = (t.transpose(1, 2) for t in (q, k, v, block_indices))
    q, k, v = _autocast_inputs(q, k, v)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    o, lse, _, _ = _selected_attention(
        q, k, v, block_indices, block_size, float(scale), bool(causal), bool(count_duplicates), on_out_of_range, strategy,
        q_offset, q_positions,
    )
    if layout == "bhtd":
        o, lse = o.transpose(1, 2), lse.transpose(1, 2)
    return (o, lse) if return_lse else o
