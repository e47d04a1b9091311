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


@pytest.mark.parametrize("layout", ["bt(gh)d", "b(gh)td", "bthd", "bthgd"])
def test_query_head_coordinates_round_trip(layout):
    """A query head placed into a layout's coordinates (``with_head``) reads back as itself
    (``decode``), in both GQA groupings; a g-major layout puts head ``h * G + g`` at ``g * H + h``."""
    from fsa_compile.patterns import layouts as L
    roles = L.QUERY[layout]
    G, H, D = 3, 2, 4
    for hq in range(G * H):
        coords = L.with_head(roles, (0,) * len(roles), 0, hq, G, D, H)
        assert L.decode(roles, coords, G, D, H)["hq"] == hq
        if "qg" in roles:
            assert coords[roles.index("qg")] == hq % G * H + hq // G
