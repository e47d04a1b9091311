"""Spellings of the same torch operation in a Dynamo graph, reduced to one canonical name.

Dynamo records ``q @ k``, ``torch.matmul(q, k)`` and ``q.matmul(k)`` as different nodes; every
pattern reads them through :func:`canon` so that it is written once per operation.
"""
from __future__ import annotations

import operator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx

_FUNCTIONS: dict[Any, str] = {
    torch.matmul: "matmul", operator.matmul: "matmul", torch.bmm: "matmul", torch.baddbmm: "baddbmm",
    torch.einsum: "einsum",
    torch.softmax: "softmax", F.softmax: "softmax", torch.special.softmax: "softmax",
    torch.log_softmax: "log_softmax", F.log_softmax: "log_softmax",
    operator.getitem: "getitem", operator.setitem: "setitem",
    torch.arange: "arange",
    operator.add: "add", torch.add: "add", operator.iadd: "add",
    operator.sub: "sub", torch.sub: "sub", torch.subtract: "sub",
    operator.mul: "mul", torch.mul: "mul", torch.multiply: "mul", operator.imul: "mul",
    operator.truediv: "div", torch.div: "div", torch.true_divide: "div",
    operator.floordiv: "floordiv", torch.floor_divide: "floordiv",
    operator.mod: "mod", torch.remainder: "mod", torch.fmod: "fmod",
    operator.neg: "neg", torch.neg: "neg",
    operator.gt: "gt", torch.gt: "gt", torch.greater: "gt",
    operator.lt: "lt", torch.lt: "lt", torch.less: "lt",
    operator.ge: "ge", torch.ge: "ge", torch.greater_equal: "ge",
    operator.le: "le", torch.le: "le", torch.less_equal: "le",
    operator.eq: "eq", torch.eq: "eq",
    operator.ne: "ne", torch.ne: "ne",
    operator.and_: "and", torch.logical_and: "and", torch.bitwise_and: "and",
    operator.or_: "or", torch.logical_or: "or", torch.bitwise_or: "or",
    operator.invert: "not", torch.logical_not: "not", torch.bitwise_not: "not",
    torch.where: "where",
    torch.masked_fill: "masked_fill",
    torch.clamp: "clamp", torch.clip: "clamp", torch.clamp_min: "clamp_min", torch.clamp_max: "clamp_max",
    torch.gather: "gather", torch.take_along_dim: "take_along_dim",
    torch.index_select: "index_select",
    torch.repeat_interleave: "repeat_interleave", torch.tile: "repeat",
    torch.reshape: "reshape", torch.flatten: "flatten",
    torch.unsqueeze: "unsqueeze", torch.squeeze: "squeeze",
    torch.transpose: "transpose", torch.swapaxes: "transpose", torch.swapdims: "transpose",
    torch.permute: "permute",
    torch.exp: "exp", torch.amax: "amax", torch.max: "max", torch.sum: "sum", torch.logsumexp: "logsumexp",
    torch.full_like: "full_like", torch.zeros_like: "zeros_like", torch.ones_like: "ones_like",
    torch.zeros: "zeros", torch.ones: "ones", torch.full: "full",
    torch.tril: "tril", torch.triu: "triu",
    torch.abs: "abs", torch.minimum: "minimum", torch.maximum: "maximum",
    torch.sqrt: "sqrt", torch.rsqrt: "rsqrt", torch.tensor: "tensor",
    torch.scatter: "scatter",
    torch._C._nn.pad: "pad", F.pad: "pad", torch.constant_pad_nd: "pad",
    F.scaled_dot_product_attention: "sdpa",
    torch.topk: "topk", torch.detach: "detach",
    torch.any: "any", torch.all: "all", F.one_hot: "one_hot",
}

_METHODS: dict[str, str] = {
    "view": "reshape", "reshape": "reshape", "flatten": "flatten",
    "unsqueeze": "unsqueeze", "squeeze": "squeeze",
    "transpose": "transpose", "swapaxes": "transpose", "swapdims": "transpose", "permute": "permute",
    "expand": "expand", "expand_as": "expand_as",
    "contiguous": "identity", "clone": "identity", "detach": "detach",
    "float": "cast", "half": "cast", "bfloat16": "cast", "double": "cast", "to": "cast",
    "type": "cast", "type_as": "cast", "long": "cast", "int": "cast", "bool": "cast",
    "masked_fill": "masked_fill", "masked_fill_": "masked_fill",
    "repeat_interleave": "repeat_interleave", "repeat": "repeat", "tile": "repeat",
    "gather": "gather", "index_select": "index_select", "take_along_dim": "take_along_dim",
    "clamp": "clamp", "clip": "clamp", "clamp_min": "clamp_min", "clamp_max": "clamp_max",
    "softmax": "softmax", "log_softmax": "log_softmax", "matmul": "matmul", "bmm": "matmul", "baddbmm": "baddbmm",
    "exp": "exp", "amax": "amax", "max": "max", "sum": "sum", "logsumexp": "logsumexp",
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "neg": "neg",
    "floor_divide": "floordiv", "remainder": "mod", "fmod": "fmod",
    "gt": "gt", "lt": "lt", "ge": "ge", "le": "le", "eq": "eq", "ne": "ne",
    "logical_and": "and", "logical_or": "or", "logical_not": "not",
    "bitwise_and": "and", "bitwise_or": "or", "bitwise_not": "not",
    "__and__": "and", "__or__": "or", "__invert__": "not",
    # torch 2.11's Dynamo records some operators on tensors as their dunder methods (``a == b`` as
    # ``call_method __eq__``); 2.13 records ``operator.eq``. Reflected ones (``__rsub__``) swap
    # their operands and are left out.
    "__eq__": "eq", "__ne__": "ne", "__lt__": "lt", "__le__": "le", "__gt__": "gt", "__ge__": "ge",
    "__add__": "add", "__sub__": "sub", "__mul__": "mul", "__truediv__": "div",
    "__floordiv__": "floordiv", "__mod__": "mod", "__neg__": "neg", "__matmul__": "matmul",
    "size": "size", "topk": "topk", "new_full": "full_like", "new_zeros": "zeros_like",
    "new_ones": "ones_like", "zero_": "zeros_like", "fill_": "fill",
    "tril": "tril", "triu": "triu", "tril_": "tril", "triu_": "triu",
    "scatter": "scatter", "scatter_": "scatter",
    "abs": "abs", "minimum": "minimum", "maximum": "maximum", "sqrt": "sqrt", "rsqrt": "rsqrt",
    "any": "any", "all": "all",
}

# In-place methods the evaluator follows: the tensor they update is read after them.
INPLACE = {"masked_fill_", "scatter_", "fill_", "zero_", "tril_", "triu_"}


class Call(NamedTuple):
    name: str
    args: tuple
    kwargs: dict


def canon(node: Any) -> Call | None:
    """The canonical name and arguments of a node, or None for nodes no pattern reads."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_function":
        name = _FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        name = _METHODS.get(node.target)
    else:
        return None
    if name is None:
        return None
    if name == "div" and node.kwargs.get("rounding_mode") is not None:
        # torch.div(a, b, rounding_mode=...): floor division, or division rounded toward zero
        name = {"floor": "floordiv", "trunc": "truncdiv"}.get(node.kwargs["rounding_mode"])
        if name is None:
            return None
        kwargs = {k: v for k, v in node.kwargs.items() if k != "rounding_mode"}
        return Call(name, tuple(node.args), kwargs)
    return Call(name, tuple(node.args), dict(node.kwargs))


def example_value(node: Any) -> Any:
    if isinstance(node, fx.Node):
        return node.meta.get("example_value", node.meta.get("val"))
    return node


# symbol -> value overrides for :func:`concrete` (see :func:`substituted`)
_SUBST: list = []


class substituted:
    """Within ``with substituted({sym: value}):``, sizes read by the patterns take ``value`` for
    the symbol instead of its example value: a match is re-verified at another sequence length."""

    def __init__(self, values: dict):
        self.values = values

    def __enter__(self):
        _SUBST.append(self.values)

    def __exit__(self, *exc):
        _SUBST.pop()


def concrete(x: Any) -> Any:
    """A SymInt/SymFloat as the value it has for the example inputs (without adding a guard),
    or under :class:`substituted` values."""
    if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        if _SUBST:
            env = x.node.shape_env
            expr = env.replace(x.node.expr)
            known = env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val
            values = {s: _SUBST[-1].get(s, known.get(s)) for s in expr.free_symbols}
            if all(v is not None for v in values.values()):
                val = expr.xreplace(values)
                if isinstance(x, torch.SymBool):
                    return bool(val)
                return int(val) if isinstance(x, torch.SymInt) else float(val)
        hint = x.node.hint
        if hint is None:
            raise ValueError("symbolic size without a hint")
        return hint
    return x


def flat_args(x: Any):
    """The leaves of a node's arguments: through lists, tuples and slices (``x[..., :4096]``)."""
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from flat_args(y)
    elif isinstance(x, slice):
        yield from flat_args((x.start, x.stop, x.step))
    else:
        yield x


def shape_of(node: Any) -> tuple[int, ...] | None:
    ev = example_value(node)
    if isinstance(ev, torch.Tensor):
        return tuple(int(concrete(s)) for s in ev.shape)
    return None


def dtype_of(node: Any) -> torch.dtype | None:
    ev = example_value(node)
    return ev.dtype if isinstance(ev, torch.Tensor) else None


def device_of(node: Any) -> torch.device | None:
    ev = example_value(node)
    return ev.device if isinstance(ev, torch.Tensor) else None
