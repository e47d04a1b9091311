"""Spellings of one operation in FX graphs reduce to one canonical name (patterns/ops.py)."""
import operator

import pytest
import torch
from torch import fx

from fsa_compile.patterns.ops import canon

DUNDERS = ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__sub__", "__mul__",
           "__truediv__", "__floordiv__", "__mod__", "__matmul__"]
OPERATORS = [operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.add,
             operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.matmul]


def _node(op, target, nargs=2):
    g = fx.Graph()
    args = tuple(g.placeholder(f"x{i}") for i in range(nargs))
    return g.call_method(target, args) if op == "call_method" else g.call_function(target, args)


@pytest.mark.parametrize("dunder,op", list(zip(DUNDERS, OPERATORS)))
def test_a_dunder_method_reads_as_its_operator(dunder, op):
    """torch 2.11's Dynamo records ``a == b`` on some tensors as ``call_method __eq__`` (seen on the
    H200 host, 2026-12-02), 2.13's as ``operator.eq``: the patterns must read both alike."""
    assert canon(_node("call_method", dunder)).name == canon(_node("call_function", op)).name
    # and the tensor method of that name computes what the operator computes
    a, b = torch.randn(3, 3), torch.randn(3, 3) + 2
    torch.testing.assert_close(getattr(a, dunder)(b), op(a, b))


@pytest.mark.parametrize("reflected", ["__rsub__", "__rtruediv__", "__rfloordiv__", "__rmod__", "__rmatmul__"])
def test_reflected_dunders_are_not_read(reflected):
    """``a.__rsub__(b)`` is ``b - a``: read as ``sub`` it would swap the operands."""
    assert canon(_node("call_method", reflected)) is None
