"""Replace a verified match by one call of ``torch.ops.fsa.selected_attention``."""
from __future__ import annotations

import operator

import torch
from torch import fx

from . import layouts as L
from .ops import canon, dtype_of
from .points import OPAQUE

# Importing the op module registers torch.ops.fsa.*; patterns refer to the op only by name.
from .. import op as _op  # noqa: F401


def apply(graph: fx.Graph, m, strategy: str = "auto", q_offset: fx.Node | None = None) -> fx.Node:
    """Insert the op before ``m.output`` and route the output's users to it. ``q_offset``: an
    int input of the graph that q's rows' offset follows (else the match's number is used).

    A row with no visible key is NaN in the matched eager code (softmax over -inf), and
    ``o = 0, lse = -inf`` in the op, so the rewrite turns those rows back into NaN.
    """
    out = m.output
    before = set(graph.nodes)
    dtype = input_dtype(m)
    with graph.inserting_before(out):
        q, k, v = (
            _cast(graph, L.to_bthd(graph, leaf, m.layouts[name][1], m.D, m.H, m.G), leaf, dtype)
            for name, leaf in (("q", m.q), ("k", m.k), ("v", m.v))
        )
        sel = L.to_bthd(graph, m.selection, m.layouts["selection"][1])
        offset = ()  # (the op's default: q's rows are the last ones)
        if m.rows_from is not None:
            # a chunk of queries: the output's rows of q and of the selection, at their positions
            q, sel = (graph.call_method("narrow", (x, 1, m.rows_from, m.Tq)) for x in (q, sel))
            offset = (m.rows_from,)
        elif q_offset is not None:
            offset = (q_offset,)  # q's rows at the position an int input gives
        elif m.q_first is not None:
            offset = (m.q_first,)  # q's rows at fixed positions other than the last ones
        if m.positions is not None:
            offset = (None, m.positions)  # each row at the position the tensor gives
            if m.positions_outside == "assert":
                inside = graph.call_function(torch.ge, (m.positions, 0))
                below = graph.call_function(torch.lt, (m.positions, graph.call_method("size", (k, 1))))  # (T may be symbolic)
                inside = graph.call_function(torch.logical_and, (inside, below))
                graph.call_function(torch._assert_async, (graph.call_method("all", (inside,)),
                                    f"fsa_compile: {m.positions.name} holds a row position outside [0, T) (T: the "
                                    "number of keys), where the rewritten code's result differs from the op's"))
        res = graph.call_function(
            torch.ops.fsa.selected_attention.default,
            (q, k, v, sel, m.block_size, float(m.scale), m.causal, m.count_duplicates, m.on_out_of_range, strategy,
             *offset),
        )
        o = graph.call_function(operator.getitem, (res, 0))
        lse = graph.call_function(operator.getitem, (res, 1))
        if m.empty_rows == "nan":
            empty = graph.call_function(torch.isneginf, (lse,))
            empty = graph.call_method("unsqueeze", (empty, -1))
            o = graph.call_function(torch.where, (empty, float("nan"), o))
        dt = dtype_of(out)
        if dt is not None:
            o = graph.call_method("to", (o, dt))
        o = L.from_bthd(graph, o, m.layouts["o"][1], m.H, m.G)
    out.replace_all_uses_with(o)
    o.meta[OPAQUE] = True  # a later pattern reads this output as data, like any tensor it cannot see into
    _fake_values([n for n in graph.nodes if n not in before], [m.q, m.k, m.v])
    return o


def _cast(graph: fx.Graph, node: fx.Node, leaf: fx.Node, dtype) -> fx.Node:
    if dtype is None or dtype_of(leaf) == dtype:
        return node
    return graph.call_method("to", (node, dtype))


def _narrowest_on_path(leaf: fx.Node, sinks: list) -> torch.dtype | None:
    """The narrowest floating dtype ``leaf``'s values pass through before a matrix product.

    The point evaluator sees through casts, so the matched leaf can be wider than what the
    products read (an fp32 RoPE output cast to bf16, then upcast for the scores). Casting the
    leaf to the narrowest dtype on its way reproduces the rounding the user's code applies;
    the upcasts after it are exact. A product whose result is narrower than what it reads ran
    under ``torch.autocast``, which rounds the operands to the result's dtype first: that
    rounding counts too, so autocast code runs the op (and its kernels) in autocast's dtype.
    """
    ancestors, stack = set(), list(sinks)
    while stack:
        n = stack.pop()
        if isinstance(n, fx.Node) and n not in ancestors:
            ancestors.add(n)
            stack.extend(a for a in n.all_input_nodes)
    best = dtype_of(leaf)
    seen, stack = {leaf}, [leaf]
    while stack:
        n = stack.pop()
        call = canon(n)
        if n is not leaf and call is not None and call.name in ("matmul", "baddbmm", "einsum", "sdpa"):
            continue  # what happens to the product's result is not the input's rounding
        for u in n.users:
            if u in ancestors and u not in seen:
                seen.add(u)
                dt = dtype_of(u)
                if dt is not None and dt.is_floating_point and best is not None and dt.itemsize < best.itemsize:
                    best = dt
                stack.append(u)
    return best


def input_dtype(m) -> torch.dtype | None:
    """One dtype for q, k, v that loses nothing the matched code keeps (usually bf16/fp16)."""
    dts = [_narrowest_on_path(leaf, [m.softmax, m.output]) for leaf in (m.q, m.k, m.v)]
    if any(d is None for d in dts):
        return None
    out = dts[0]
    for d in dts[1:]:
        out = torch.promote_types(out, d)
    return out


def _fake_values(nodes, inputs) -> None:
    """Give the inserted nodes example values (as Dynamo's nodes have), so that another pattern
    reading them (a second attention layer fed by this one) sees their shapes."""
    from torch.utils._pytree import tree_map

    def val(a):
        return a.meta.get("example_value", a.meta.get("val")) if isinstance(a, fx.Node) else a

    # the mode the graph's own example values live in (the backend's context may hold another)
    mode = getattr(val(inputs[0]), "fake_mode", None)
    if mode is None:
        return
    try:
        with mode:
            for n in nodes:
                args, kwargs = tree_map(val, n.args), tree_map(val, n.kwargs)
                if n.op == "call_function":
                    n.meta["example_value"] = n.target(*args, **kwargs)
                elif n.op == "call_method":
                    n.meta["example_value"] = getattr(args[0], n.target)(*args[1:], **kwargs)
    except Exception:  # without example values a later pattern just cannot read these nodes
        for n in nodes:
            n.meta.pop("example_value", None)
