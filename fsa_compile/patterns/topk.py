"""Row top-k: ``torch.topk`` / ``Tensor.topk`` with a constant ``k``, put in place by one call of
``torch.ops.fsa.row_topk`` (``fsa_compile.topk``), which keeps its values and its indices'
meaning (lower index first among equal values, an order torch.topk leaves open).

Runs after the attention pass, so that pass reads the user's selection code as written.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from .ops import canon, example_value

# Importing the op module registers torch.ops.fsa.row_topk; this module refers to it by name.
from .. import topk as _op  # noqa: F401

FAMILY = "row top-k"
_PARAMS = ("k", "dim", "largest", "sorted")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class TopkMatch:
    node: fx.Node
    x: fx.Node
    k: int
    dim: int
    largest: bool
    shape: tuple


def _arguments(node: fx.Node) -> dict | None:
    call = canon(node)
    if call is None or call.name != "topk" or "out" in call.kwargs or not call.args:
        return None
    args = dict(zip(("x",) + _PARAMS, call.args))
    for name, value in call.kwargs.items():
        if name in args or name not in _PARAMS:
            return None
        args[name] = value
    return args


def find(graph: fx.Graph) -> list:
    """The top-k nodes this pass can take: constant k, dim, largest and sorted, a floating input
    of at least one dim, and results read only by indexing (values, indices)."""
    found = []
    for node in graph.nodes:
        args = _arguments(node)
        if args is None:
            continue
        x, k, dim = args["x"], args.get("k"), args.get("dim", -1)
        largest, sorted_ = args.get("largest", True), args.get("sorted", True)
        ev = example_value(x)
        if not (isinstance(x, fx.Node) and isinstance(ev, torch.Tensor) and ev.dtype in _FLOATS and ev.dim() >= 1):
            continue
        if not (type(k) is int and type(dim) is int and type(largest) is bool and type(sorted_) is bool):
            continue
        if not sorted_:  # the kernel returns them sorted, eager in an order of its own: left to torch.topk
            continue
        if not -ev.dim() <= dim < ev.dim() or not all(u.target is operator.getitem for u in node.users):
            continue
        found.append(TopkMatch(node, x, k, dim % ev.dim(), largest, tuple(ev.shape)))
    return found


def apply(graph: fx.Graph, m: TopkMatch) -> None:
    last = m.dim == len(m.shape) - 1
    with graph.inserting_before(m.node):
        x = m.x if last else graph.call_method("movedim", (m.x, m.dim, -1))
        res = graph.call_function(torch.ops.fsa.row_topk.default, (x, m.k, m.largest))
        outs = [graph.call_function(operator.getitem, (res, i)) for i in (0, 1)]
        if not last:
            outs = [graph.call_method("movedim", (o, -1, m.dim)) for o in outs]
    for user in list(m.node.users):
        user.replace_all_uses_with(outs[user.args[1] % 2])
        graph.erase_node(user)
    graph.erase_node(m.node)
