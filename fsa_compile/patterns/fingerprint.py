"""Fingerprints of what an analysis read, so that a model's identical layers are verified once.

The semantic checks of :mod:`.softmax_attention` evaluate thousands of points per candidate,
and a model repeats the same attention in every layer. The analysis is a deterministic function
(its random tables come from a fixed seed) of what its evaluator reads: for every node it
entered, the op, the target, the constant arguments, the example sizes, strides and dtypes, the
in-place updates and whether they come after every other read, whether the node is held as a
leaf (the selection, the softmax, an earlier rewrite's output, a read the evaluator cannot
follow); for the other arguments of those nodes, only their example values (sizes, or the
numbers of scalars); and, of the rest of the graph, the block sizes its constants offer, which
:class:`.memo.Memo` compares itself.

:func:`fingerprint` writes those reads down in the order of a walk from the roots, naming
nodes by the order the walk meets them. Two subgraphs whose fingerprints are equal are analysed
to the same result, node for node under that naming; one difference of any kind is a miss.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import fx

from .ops import concrete, example_value
from .points import OPAQUE, attribute, mutations, read_before_update

# integer constants of a module (a get_attr) are read by value: larger ones make the subgraph
# not cached rather than hashed
_MAX_CONSTANT = 1 << 16


class Uncacheable(Exception):
    """A read the fingerprint cannot write down exactly: analyse this subgraph every time."""


def _value(ev: Any) -> Any:
    """An example value as the evaluator sees it (sizes and numbers under :func:`.concrete`)."""
    if isinstance(ev, torch.Tensor):
        if ev.layout != torch.strided:
            raise Uncacheable(f"a {ev.layout} tensor")
        return ("tensor", tuple(int(concrete(s)) for s in ev.shape), ev.dtype,
                tuple(int(concrete(s)) for s in ev.stride()), ev.device.type)  # (the checks never read requires_grad)
    if isinstance(ev, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return _constant(concrete(ev))
    if isinstance(ev, (list, tuple)):
        return (type(ev).__name__, tuple(_value(x) for x in ev))
    return _constant(ev)


def _constant(x: Any) -> Any:
    if x is None or x is Ellipsis or isinstance(x, (bool, str, torch.dtype, torch.device, torch.layout,
                                                      torch.memory_format)):
        return (type(x).__name__, x)
    if isinstance(x, int):
        return ("int", x)
    if isinstance(x, float):
        return ("float", x.hex() if math.isfinite(x) else repr(x))
    raise Uncacheable(f"a constant of type {type(x).__name__}")


def _attribute(gm: fx.GraphModule, node: fx.Node) -> Any:
    t = attribute(gm, node.target)
    if isinstance(t, torch.Tensor):
        if t.dtype.is_floating_point or t.dtype.is_complex:
            return ("data", tuple(t.shape), t.dtype)  # read as a symbolic leaf
        if t.numel() > _MAX_CONSTANT:
            raise Uncacheable(f"integer constant {node.target} of {t.numel()} elements")
        return ("values", tuple(t.shape), t.dtype, tuple(t.flatten().tolist()))
    return _constant(t)


def fingerprint(gm: fx.GraphModule, roots: list, expand: Callable[[fx.Node, int], bool],
                flags: Callable[[fx.Node], tuple], expected: tuple | None = None):
    """``(entries, nodes)``: what the analysis reads, in walk order, and the nodes by label.

    The walk starts at ``roots`` (labels 0, 1, ...) and follows the arguments and in-place
    updates of every node for which ``expand(node, label)`` holds; the others are written by
    their example value only. ``flags(node)`` adds what the caller knows of an expanded node.
    With ``expected``, stops at the first entry that differs and returns ``(None, None)``.
    """
    labels: dict = {}
    nodes: list = []
    entries: list = []

    def ref(n: fx.Node) -> tuple:
        if n not in labels:
            labels[n] = len(nodes)
            nodes.append(n)
        return ("node", labels[n])

    def enc(x: Any) -> Any:
        if isinstance(x, fx.Node):
            return ref(x)
        if isinstance(x, (list, tuple)):
            return (type(x).__name__, tuple(enc(y) for y in x))
        if isinstance(x, slice):
            return ("slice", enc(x.start), enc(x.stop), enc(x.step))
        if isinstance(x, dict):
            return ("dict", tuple((k, enc(v)) for k, v in x.items()))
        return _constant(x)

    for r in roots:
        ref(r)
    i = 0
    while i < len(nodes):
        n = nodes[i]
        if not expand(n, i):
            entry = ("value", n.op, _value(example_value(n)))
        else:
            if n.op == "call_module":
                raise Uncacheable("a call_module node")
            if n.op == "get_attr":
                target = _attribute(gm, n)
            elif n.op == "call_method":
                target = n.target
            elif n.op == "call_function":
                target = n.target  # a function object: compared by identity
            else:
                target = None  # a placeholder's name says nothing of its value
            muts = mutations(n)
            entry = (n.op, target, enc(n.args), enc(n.kwargs), _value(example_value(n)),
                     bool(n.meta.get(OPAQUE)), flags(n), tuple(ref(m) for m in muts),
                     bool(muts) and read_before_update(n, muts) is not None)
        if expected is not None and (i >= len(expected) or expected[i] != entry):
            return None, None
        entries.append(entry)
        i += 1
    if expected is not None and len(entries) != len(expected):
        return None, None
    return tuple(entries), nodes

