"""Replace a verified match by one call of ``torch.ops.fsa.selected_attention``."""
from __future__ import annotations

import operator

import torch
from torch import fx

from . import layouts as L
from .ops import canon, concrete, dtype_of, example_value
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
    own = _leaf_dtypes(m)
    dtype = _common_dtype(own)
    with graph.inserting_before(out):
        q, k, v = (
            _cast(graph, L.to_bthd(graph, leaf, m.layouts[name][1], m.D, m.H, m.G), leaf, dtype, leaf_dt)
            for (name, leaf), leaf_dt in zip((("q", m.q), ("k", m.k), ("v", m.v)), own)
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
        rounded = _output_rounding(m, dtype)
        if rounded is not None:  # the code rounds its output on the way to the output node
            o = graph.call_method("to", (o, rounded))
        if dt is not None:
            o = graph.call_method("to", (o, dt))
        o = L.from_bthd(graph, o, m.layouts["o"][1], m.H, m.G)
        o = _with_strides_of(graph, o, out)
    out.replace_all_uses_with(o)
    o.meta[OPAQUE] = True  # a later pattern reads this output as data, like any tensor it cannot see into
    _fake_values([n for n in graph.nodes if n not in before], [m.q, m.k, m.v])
    return o


def _with_strides_of(graph: fx.Graph, o: fx.Node, out: fx.Node) -> fx.Node:
    """``o`` laid out in memory as the replaced output ``out`` is (its dims' order by stride):
    code after it may ``view`` it, write into it through a view or read it ``as_strided``, which
    all depend on the strides, and the op's own layout (``[B, T, H, D]``, viewed back to the
    output's) differs from eager's where the code's product left another. A copy only there."""
    ev = example_value(out)
    if not isinstance(ev, torch.Tensor) or ev.dim() < 2:
        return o
    sizes, strides = [concrete(x) for x in ev.shape], [concrete(x) for x in ev.stride()]
    order = sorted(range(ev.dim()), key=lambda d: (-strides[d], -sizes[d]))  # outermost first
    span = 1
    for d in reversed(order):  # dense and without overlap: each stride the span of the dims inside
        if sizes[d] != 1 and strides[d] != span:
            return o
        span *= sizes[d]
    if order == sorted(order):
        return graph.call_method("contiguous", (o,))
    back = sorted(range(ev.dim()), key=order.__getitem__)
    o = graph.call_method("contiguous", (graph.call_method("permute", (o, *order)),))
    return graph.call_method("permute", (o, *back))


def _narrower(a, b) -> bool:
    return a is not None and b is not None and a.is_floating_point and a.itemsize < b.itemsize


def _cast(graph: fx.Graph, node: fx.Node, leaf: fx.Node, dtype, own=None) -> fx.Node:
    """``node`` (the leaf in the op's layout) in the op's ``dtype``; first rounded to ``own``, the
    narrowest dtype this leaf passes through in the user's code, where that is narrower than the
    op's (``q.to(bfloat16).float()`` beside float32 k and v: the op runs in float32 on q's bf16
    values, as the code does)."""
    if _narrower(own, dtype) and _narrower(own, dtype_of(leaf)):
        return graph.call_method("to", (graph.call_method("to", (node, own)), dtype))
    if dtype is None or dtype_of(leaf) == dtype:
        return node
    return graph.call_method("to", (node, dtype))


def _output_chain(m) -> list:
    """The casts and views between the attention's product and ``m.output``, the output included
    (what the rewrite replaces: it reads the output through them)."""
    from .softmax_attention import _PASSTHROUGH, _VIEWS

    chain, n = [], m.output
    while True:
        chain.append(n)
        call = canon(n)
        if call is None or (call.name not in _PASSTHROUGH and call.name not in _VIEWS) or not isinstance(
                n.args[0], fx.Node):
            return chain
        n = n.args[0]


def _output_rounding(m, dtype):
    """The narrowest floating dtype the attention's result passes through on its way to
    ``m.output`` when that is narrower than the op's ``dtype`` (``o.to(bfloat16).float()``), else
    None."""
    best = None
    for n in _output_chain(m):
        dt = dtype_of(n)
        if _narrower(dt, dtype) and (best is None or _narrower(dt, best)):
            best = dt
    return best


def rounding_inside(m) -> str | None:
    """Why the op cannot compute what the matched code does, if the code rounds its scores or
    probabilities to a dtype narrower than the op computes in and than its output
    (``s.to(bfloat16).float()``, a float16 ``softmax(dtype=...)`` in float32 attention): the op
    keeps those in float32. Rounding
    of q, k, v before the products and of the output after them is reproduced (``apply``)."""
    dtype = input_dtype(m)
    if dtype is None:
        return None
    sinks = [m.softmax, m.output]
    leaf_paths = set()
    for leaf in (m.q, m.k, m.v):
        leaf_paths |= _leaf_path(leaf, sinks)[1]
    data, stack = set(), [m.q, m.k, m.v]  # what the user's code computes from q, k, v
    while stack:
        n = stack.pop()
        for u in n.users:
            if u in m.visited and u not in data:
                data.add(u)
                stack.append(u)
    chain = set(_output_chain(m))
    out_dt = dtype_of(m.output)
    for n in sorted(data - leaf_paths - chain, key=lambda n: n.name):
        dt = dtype_of(n)
        # (a rounding no narrower than the output's own dtype is within what the output keeps)
        if _narrower(dt, dtype) and _narrower(dt, out_dt):
            return (f"{n.name} rounds the attention's intermediate values to {str(dt).removeprefix('torch.')} "
                    f"where the rest computes in {str(dtype).removeprefix('torch.')}: the op would keep them in "
                    "float32, so the result would differ from the code's")
    return None


def _leaf_path(leaf: fx.Node, sinks: list):
    """``(narrowest, nodes)``: the narrowest floating dtype ``leaf``'s values pass through before a
    matrix product, and the nodes on that way (the products included).

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
    return best, seen


def _narrowest_on_path(leaf: fx.Node, sinks: list) -> torch.dtype | None:
    return _leaf_path(leaf, sinks)[0]


def _leaf_dtypes(m) -> list:
    """The narrowest dtype each of q, k, v passes through on its way to the products."""
    return [_narrowest_on_path(leaf, [m.softmax, m.output]) for leaf in (m.q, m.k, m.v)]


def _common_dtype(dts) -> torch.dtype | None:
    if any(d is None for d in dts):
        return None
    out = dts[0]
    for d in dts[1:]:
        out = torch.promote_types(out, d)
    return out


def input_dtype(m) -> torch.dtype | None:
    """One dtype for q, k, v that loses nothing the matched code keeps (usually bf16/fp16)."""
    return _common_dtype(_leaf_dtypes(m))


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
