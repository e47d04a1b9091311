"""Twins of our custom ops for the graphs Inductor compiles.

``torch.library.custom_op`` puts a Python autograd kernel, a redispatch and a Dynamo-disabled
wrapper in front of every call. Inside a graph that Inductor compiles, AOTAutograd has already
split the forward from the backward, so nothing there is differentiated, and for a short call (a
decode step) that layer is a sizeable share of its host time (``benchmarks/NOTES.md``, 2026-12-03).
Each twin has the op's schema, body and fake implementation; its Autograd key falls through to the
body in C++. A post-grad pass of the backend (``backend._post_grad_pass``) puts the twins in
place of the ops. Nothing else may call them: nothing differentiates through a twin (its Triton
kernels leave no autograd record).
"""
from __future__ import annotations

from typing import Callable

import torch

_lib = torch.library.Library("fsa", "FRAGMENT")

# op overload -> its twin's overload, for the post-grad pass
TWINS: dict = {}


def register_twin(op_def, body: Callable, fake: Callable) -> None:
    """Define ``fsa::<name>_compiled`` for the custom op ``op_def`` (body and fake as registered
    on it) and record it in :data:`TWINS`."""
    overload = op_def._opoverload
    name = overload._schema.name.split("::", 1)[1] + "_compiled"
    signature = str(overload._schema).split("(", 1)[1]
    _lib.define(f"{name}({signature}", tags=overload.tags)
    for key in ("CPU", "CUDA"):
        _lib.impl(name, body, key)
    _lib.impl(name, torch.library.fallthrough_kernel, "Autograd")
    torch.library.register_fake(f"fsa::{name}", fake, lib=_lib)
    TWINS[overload] = getattr(torch.ops.fsa, name).default


def swap_in_twins(graph: torch.fx.Graph) -> int:
    """Point every call of one of our ops in ``graph`` at its twin; the number swapped."""
    count = 0
    for node in graph.nodes:
        twin = TWINS.get(node.target) if node.op == "call_function" else None
        if twin is not None:
            node.target = twin
            count += 1
    return count
