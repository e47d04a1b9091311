"""Replace a verified match by one call of ``torch.ops.fsa.selected_attention``."""
from __future__ import annotations

import operator

import torch
from torch import fx

from . import layouts as L
from .ops import dtype_of

# Importing the op module registers torch.ops.fsa.*; patterns refer to the op only by name.
from .. import op as _op  # noqa: F401


def apply(graph: fx.Graph, m, strategy: str = "auto") -> fx.Node:
    """Insert the op before ``m.output`` and route the output's users to it.

    A row with no visible key is NaN in the matched eager code (softmax over -inf), and
    ``o = 0, lse = -inf`` in the op, so the rewrite turns those rows back into NaN.
    """
    out = m.output
    with graph.inserting_before(out):
        q = L.to_bthd(graph, m.q, m.layouts["q"][1], m.D)
        k = L.to_bthd(graph, m.k, m.layouts["k"][1], m.D)
        v = L.to_bthd(graph, m.v, m.layouts["v"][1], m.D)
        sel = L.to_bthd(graph, m.selection, m.layouts["selection"][1])
        res = graph.call_function(
            torch.ops.fsa.selected_attention.default,
            (q, k, v, sel, m.block_size, float(m.scale), m.causal, m.count_duplicates, m.on_out_of_range, strategy),
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
    return o
