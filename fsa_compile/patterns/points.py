"""Evaluate a graph one element at a time, without materialising any tensor.

A pattern must prove that a subgraph computes selected attention, whatever spelling the user
chose for the token indices, the gathers and the masks. Instead of matching spellings, we evaluate
the subgraph *at single coordinates*: index arithmetic and masks give concrete numbers and
booleans (the selection tensor is replaced by a random table of its shape), while the data
tensors (q, k, v, and anything else we cannot see through) stay symbolic as :class:`Leaf` (which
element of which tensor is read). A matrix product gives a :class:`Dot` whose two sides are again
evaluated lazily. Sizes are the example sizes of the graph (hints of symbolic sizes).

The evaluator mimics eager's failures where they matter for the contract: an index outside a
dimension raises :class:`OutOfBounds` (eager raises there too), so a pattern can tell a gather
that would fail on an out-of-range block from one that clamps and masks it.
"""
from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx

from .ops import INPLACE, Call, canon, concrete, dtype_of, example_value, shape_of

NEG_INF = float("-inf")


# node.meta key of nodes the evaluator must not look into (the output of an earlier rewrite)
OPAQUE = "fsa_compile_opaque"


class Unsupported(Exception):
    """The evaluator cannot follow this node; the message says which, for near-miss reports."""


class OutOfBounds(Exception):
    """Eager code would fail with an index error here."""


@dataclass(frozen=True)
class Leaf:
    node: fx.Node
    coords: tuple


@dataclass(frozen=True)
class Scaled:
    coef: float
    value: Any


@dataclass
class Dot:
    """``sum_i left(i) * right(i)`` over ``size`` terms, both sides evaluated on demand."""

    left: Callable[[int], Any]
    right: Callable[[int], Any]
    size: int


def mutations(node: Any) -> list:
    """The in-place updates of ``node`` (``mask.scatter_(...)``), in graph order."""
    if not isinstance(node, fx.Node):
        return []
    return [u for u in node.users if _is_update(u) and u.args[0] is node]


def _is_update(node: fx.Node) -> bool:
    return bool(node.args) and (
        (node.op == "call_method" and node.target in INPLACE)
        or (node.op == "call_function" and node.target is operator.setitem)
    )


def read_before_update(node: fx.Node, muts: list) -> fx.Node | None:
    """A read of ``node``, or of one of its updates ``muts``, that comes before the last update:
    the evaluator gives an updated tensor its value after every update, so such a read is not
    followed. None where every read comes after."""
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    last = order[muts[-1]]
    for u in list(node.users) + [r for m in muts for r in m.users]:
        if u not in muts and order[u] < last:
            return u
    return None


def attribute(module: torch.nn.Module, target: str) -> Any:
    """What a ``get_attr`` node of ``module`` reads (``target`` is a dotted path)."""
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _mutated_base(node: fx.Node):
    """The tensor an in-place update writes into, if ``node`` is one."""
    if _is_update(node) and isinstance(node.args[0], fx.Node):
        return node.args[0]
    return None


# Ops whose result may share memory with their first argument: an in-place update of one is
# seen through the others. Generous on purpose (``reshape`` may copy, ``to`` may not): a wrong
# "aliases" only turns a rewrite into a near miss.
# (PyTorch's view ops, those that may return a view, and the casts that may return self)
_ALIAS_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "ravel", "unsqueeze", "squeeze",
    "transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t", "adjoint", "expand",
    "expand_as", "broadcast_to", "narrow", "select", "as_strided", "unfold", "diagonal", "chunk",
    "split", "split_with_sizes", "tensor_split", "hsplit", "vsplit", "dsplit", "unbind", "contiguous",
    "detach", "to", "type", "type_as", "float", "half", "bfloat16", "double", "long", "int", "bool",
    "view_as_real", "view_as_complex", "real", "imag",
}
_ALIAS_FUNCTIONS = {
    operator.getitem, getattr, torch.reshape, torch.flatten, torch.unflatten, torch.ravel, torch.unsqueeze,
    torch.squeeze, torch.transpose, torch.swapaxes, torch.swapdims, torch.permute, torch.movedim,
    torch.moveaxis, torch.t, torch.adjoint, torch.broadcast_to, torch.narrow, torch.select, torch.as_strided,
    torch.diagonal, torch.chunk, torch.split, torch.tensor_split, torch.hsplit, torch.vsplit, torch.dsplit,
    torch.unbind, torch.detach, torch.view_as_real, torch.view_as_complex, torch.real, torch.imag,
    torch._C._autograd._get_data_attr,  # x.data
}
_IOPS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.imatmul,
}


_IMETHODS = {f"__i{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or",
                                     "xor", "lshift", "rshift", "matmul")}


def _alias_source(node: fx.Node):
    """The tensor ``node``'s result may share memory with: the view ops, ``x.data`` and attribute
    views (``x.mT``), and an in-place op's result (the tensor it wrote)."""
    if node.op not in ("call_method", "call_function") or not node.args:
        return None
    src = node.args[0]
    if not isinstance(src, fx.Node) or not isinstance(example_value(src), (torch.Tensor, tuple, list)):
        return None  # (a tuple: the pieces of x.split(...), read by getitem)
    if _writes_in_place(node):
        return write_target(node)
    known = (node.op == "call_method" and node.target in _ALIAS_METHODS) or (
        node.op == "call_function" and node.target in _ALIAS_FUNCTIONS)
    return src if known else None


def _writes_in_place(node: fx.Node) -> bool:
    """Whether ``node`` writes into its first argument (or into ``out=``)."""
    if node.op not in ("call_method", "call_function") or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_function" and node.target in _IOPS:
        # in place on a tensor (a buffer's get_attr node may carry no example value), not on a number
        ev = example_value(node.args[0])
        return not isinstance(ev, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool))
    if node.op == "call_function" and getattr(node.target, "__module__", "") in ("_operator", "operator"):
        return False  # operator.and_ / or_ are not in place (their names end in "_")
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name in _IMETHODS:
        return True
    return (isinstance(name, str) and name.endswith("_") and not name.startswith("__")) or bool(
        node.kwargs.get("inplace")) or "out" in node.kwargs


def write_target(node: fx.Node) -> fx.Node:
    """The tensor an in-place op writes: its ``out=`` argument, else its first argument."""
    out = node.kwargs.get("out")
    return out if isinstance(out, fx.Node) else node.args[0]


class Aliases:
    """Which nodes of a graph may share memory: each node's alias source (:func:`_alias_source`)
    read once, as a forest whose roots are the tensors that own their memory."""

    def __init__(self, graph: fx.Graph):
        self.parent, self.children = {}, {}
        for n in graph.nodes:
            src = _alias_source(n)
            if src is not None:
                self.parent[n] = src
                self.children.setdefault(src, []).append(n)

    def root(self, n: fx.Node) -> fx.Node:
        while n in self.parent:
            n = self.parent[n]
        return n

    def below(self, n: fx.Node) -> set:
        """``n`` and every view of it, transitively."""
        out, stack = set(), [n]
        while stack:
            x = stack.pop()
            if x not in out:
                out.add(x)
                stack.extend(self.children.get(x, ()))
        return out

    def members(self, n: fx.Node) -> set:
        """Every node that may share ``n``'s memory (its root and the root's views)."""
        return self.below(self.root(n))


def is_write(node: fx.Node) -> bool:
    """Whether ``node`` updates a tensor in place (followed by the evaluator or not)."""
    return _writes_in_place(node) or _is_update(node)


# ops whose result is new memory (a write into it is invisible once nothing reads it)
_FRESH = {"matmul", "einsum", "softmax", "arange", "add", "sub", "mul", "div", "floordiv", "mod", "truncdiv", "fmod", "neg",
          "gt", "lt", "ge", "le", "eq", "ne", "and", "or", "not", "where", "masked_fill", "clamp",
          "clamp_min", "clamp_max", "gather", "take_along_dim", "index_select", "repeat_interleave",
          "exp", "amax", "max", "sum", "full_like", "zeros_like", "ones_like", "zeros", "ones", "full",
          "tril", "triu", "abs", "minimum", "maximum", "scatter", "pad", "repeat", "baddbmm", "logsumexp",
          "sqrt", "rsqrt", "tensor"}


def _fresh(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target == "clone":
        return True
    call = canon(node)
    return call is not None and call.name in _FRESH and not _writes_in_place(node)


def remove_dead_code(graph: fx.Graph) -> None:
    """``graph.eliminate_dead_code()``, except that an in-place update stays while what it writes
    can be seen: an input, a buffer, or a temporary something still reads (FX counts a method
    call without users as dead, and so dropped ``cache.copy_(v)`` and ``steps.add_(1)``)."""
    changed = True
    while changed:
        changed = False
        aliases = Aliases(graph)  # erasing nodes leaves it valid: an erased node had no users
        for node in reversed(list(graph.nodes)):
            if node.op in ("placeholder", "output") or node.users:
                continue
            if is_write(node):
                target = write_target(node)
                if not _fresh(aliases.root(target)):  # an input, a buffer, or memory of unknown origin
                    continue
                readers = [u for a in aliases.members(target) for u in a.users
                           if u is not node and not (is_write(u) and not u.users)]
                if readers:
                    continue
            elif node.is_impure():
                continue
            graph.erase_node(node)
            changed = True


def unfollowed_reads(graph: fx.Graph) -> dict:
    """Nodes that read a tensor after an in-place update the evaluator does not follow: reading
    them would give the value before the update. Node -> the reason, for the near miss.

    Followed are the updates :func:`mutations` lists (``mask.scatter_(...)``), read through the
    updated tensor itself and its views; every other in-place op (``v.add_(1)``, ``s.div_(c)``,
    ``x += y`` seen from another name of ``x``) and every update seen through another view of the
    same memory makes the reads after it unfollowable.
    """
    nodes = list(graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    aliases = Aliases(graph)
    stale: dict = {}
    for m in nodes:
        if not is_write(m):
            continue
        x = write_target(m)
        # what reads the update's own result (and its views) gets the updated value, which the
        # evaluator computes; what reads x's other names would get the old one
        alias = aliases.members(x) - aliases.below(m)
        if _is_update(m):  # followed through x and its views; not through x's other aliases
            alias -= aliases.below(x)
        what = m.target if isinstance(m.target, str) else getattr(m.target, "__name__", str(m.target))
        for a in sorted(alias, key=order.get):
            for r in a.users:
                if r is not m and order[r] > order[m] and r not in stale:
                    stale[r] = (f"{r.name} reads {a.name} after the in-place update {m.name} ({what}) of "
                                f"{x.name}, which the pattern does not follow")
    return stale


def reads_after_float_writes(graph: fx.Graph) -> frozenset:
    """Nodes that read floating-point memory after an in-place write to it (a KV cache's
    ``cache[:, pos] = k``, then ``cache[:, :pos + 1]``), the writes themselves left out.

    Read as data (leaves), such a node's values are whatever the memory holds where it runs,
    and so are the op's where it runs at the attention output, as long as no write comes in
    between (which the matcher checks for q, k and v). The evaluator cannot follow most such
    writes, and needs not to: it keeps q, k and v symbolic anyway."""
    nodes = list(graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    aliases = Aliases(graph)
    out = set()
    for w in nodes:
        if not is_write(w):
            continue
        dt = dtype_of(write_target(w))
        if dt is None or not dt.is_floating_point:
            continue
        for a in aliases.members(write_target(w)):
            for r in a.users:
                if order[r] > order[w] and r.op != "output" and not is_write(r):
                    out.add(r)
    # the first reads only (``cache[:, :pos + 1]``, not the gathers from it, which may alias it too)
    return frozenset(r for r in out if not any(i in out for i in r.all_input_nodes))


def is_symbolic(x: Any) -> bool:
    return isinstance(x, (Leaf, Scaled, Dot))


def _bcast(coords: tuple, shape: tuple) -> tuple:
    """Coordinates of a broadcast operand of ``shape`` inside an output indexed by ``coords``."""
    key = (len(coords), shape)
    try:
        pick = _PICKS[key]
    except KeyError:
        pick = _PICKS[key] = _pick(*key)
    return pick(coords)


def _getter(positions: list) -> Callable[[tuple], tuple]:
    """``t -> tuple(t[p] for p in positions)``, in C."""
    if not positions:
        return lambda t: ()
    get = operator.itemgetter(*positions)
    return (lambda t: (get(t),)) if len(positions) == 1 else get


_PICKS: dict = {}  # (rank of the coordinates, operand shape) -> :func:`_pick`; the evaluator's hottest helper


def _pick(rank: int, shape: tuple) -> Callable[[tuple], tuple]:
    """``coords -> coordinates in an operand of shape`` for coordinates of ``rank`` entries, worked
    out once per (rank, shape): a size-1 dim reads 0, the others their aligned coordinate."""
    if len(shape) > rank:
        return lambda c: tuple(0 if s == 1 else x for x, s in zip(c[rank - len(shape):] if shape else (), shape))
    if not shape:
        return lambda c: ()
    off = rank - len(shape)
    if 1 not in shape:
        return tuple if off == 0 else (lambda c: tuple(c[off:]))
    # coordinate ``rank`` of ``(*c, 0)`` is the 0 a broadcast dim reads
    get = _getter([rank if s == 1 else off + d for d, s in enumerate(shape)])
    return lambda c: get((*c, 0))


def _broadcast(*shapes: tuple) -> tuple:
    """torch.broadcast_shapes for plain ints, without its symbolic-shape machinery."""
    n = max((len(s) for s in shapes), default=0)
    out = [1] * n
    for s in shapes:
        for d, size in enumerate(s, start=n - len(s)):
            if size != 1:
                if out[d] != 1 and out[d] != size:
                    raise Unsupported(f"shapes {shapes} do not broadcast")
                out[d] = size
    return tuple(out)


def _unravel(lin: int, shape: tuple) -> tuple:
    out = []
    for s in reversed(shape):
        out.append(lin % s if s else 0)
        lin = lin // s if s else 0
    return tuple(reversed(out))


def _ravel(coords: tuple, shape: tuple) -> int:
    lin = 0
    for c, s in zip(coords, shape):
        lin = lin * s + c
    return lin


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _scalar_arith(name: str, a: Any, b: Any) -> Any:
    if name == "add":
        if is_symbolic(a) or is_symbolic(b):
            x, c = (a, b) if is_symbolic(a) else (b, a)
            if is_symbolic(c):
                raise Unsupported("sum of two data terms")
            if c == 0:
                return x
            if c == NEG_INF:
                return NEG_INF
            raise Unsupported("a data term shifted by a constant")
        return a + b
    if name == "sub":
        if is_symbolic(a) or is_symbolic(b):
            if not is_symbolic(a) or is_symbolic(b):
                raise Unsupported("difference of data terms")
            if b == 0:
                return a
            if b == math.inf:
                return NEG_INF
            raise Unsupported("a data term shifted by a constant")
        return a - b
    if name == "mul":
        if is_symbolic(a) and is_symbolic(b):
            raise Unsupported("product of two data terms outside a matrix product")
        if is_symbolic(a) or is_symbolic(b):
            x, c = (a, b) if is_symbolic(a) else (b, a)
            if isinstance(c, bool):
                c = float(c)
            return Scaled(float(c), x) if c != 1 else x
        return a * b
    if name == "div":
        if is_symbolic(b):
            raise Unsupported("division by a data term")
        if is_symbolic(a):
            return Scaled(1.0 / float(b), a)
        return a / b
    if is_symbolic(a) or is_symbolic(b):
        raise Unsupported(f"{name} of a data term")
    if name in ("floordiv", "mod", "truncdiv", "fmod"):
        return _ON_NUMBERS[name](a, b)
    if name == "gt":
        return a > b
    if name == "lt":
        return a < b
    if name == "ge":
        return a >= b
    if name == "le":
        return a <= b
    if name == "eq":
        return a == b
    if name == "ne":
        return a != b
    if name in ("and", "or"):
        return _ON_NUMBERS[name](a, b)
    raise Unsupported(name)


def _truncdiv(a, b):
    """``torch.div(a, b, rounding_mode="trunc")``: rounded toward zero."""
    if type(a) in (int, bool) and type(b) in (int, bool):
        q = abs(int(a)) // abs(int(b))
        return q if (a >= 0) == (b > 0) else -q
    return float(math.trunc(a / b))


def _fmod(a, b):
    """``torch.fmod``: the remainder with the sign of the dividend (``%`` takes the divisor's)."""
    if type(a) in (int, bool) and type(b) in (int, bool):
        return int(a) - int(b) * _truncdiv(a, b)
    return math.fmod(a, b)


_BINARY = {"add", "sub", "mul", "div", "floordiv", "mod", "truncdiv", "fmod", "gt", "lt", "ge", "le", "eq", "ne",
           "and", "or"}
# :func:`_scalar_arith` of two numbers, without its tests for data terms
_ON_NUMBERS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "floordiv": operator.floordiv, "mod": operator.mod, "truncdiv": _truncdiv, "fmod": _fmod,
    "gt": operator.gt, "lt": operator.lt, "ge": operator.ge, "le": operator.le, "eq": operator.eq, "ne": operator.ne,
    "and": lambda a, b: bool(a) and bool(b), "or": lambda a, b: bool(a) or bool(b),  # (integers: _binary)
}
_NUMBERS = frozenset({int, float, bool})
_DATA_ARITH = {"add", "sub", "mul", "div"}  # of data, gives data (comparisons give masks: not data)
_VIEWS = {"reshape", "flatten", "unsqueeze", "squeeze"}


# kinds of the steps of :meth:`Evaluator._index_plan`
_ADVANCED, _SLICE, _SLICE_OF_NODES, _NUMBER = range(4)


class Evaluator:
    """Point evaluation of FX nodes.

    ``tables`` maps integer leaf nodes (the block selection) to concrete tensors of their shape;
    ``leaves`` are nodes to keep symbolic even if the evaluator could see through them (e.g. the
    softmax of the pattern); ``module`` resolves ``get_attr`` constants.
    """

    def __init__(self, tables: dict, leaves: set = frozenset(), module: torch.nn.Module | None = None,
                 stale: dict | None = None):
        self.tables = tables
        self.leaves = set(leaves)
        self.module = module
        self.stale = stale or {}  # :func:`unfollowed_reads`
        self.cache: dict = {}
        self.entered: set = set()  # every node evaluated, also those whose evaluation raised
        self._shapes: dict = {}  # node -> shape: sizes are read for every point, and SymInt hints are slow
        self._mutations: dict = {}
        self._early_reads: dict = {}  # updated tensor -> :func:`read_before_update`
        self._calls: dict = {}
        self._einsums: dict = {}  # einsum node -> :meth:`_einsum_plan`
        self._index_plans: dict = {}  # indexing node -> :meth:`_index_plan`
        self._state: dict = {}  # tensor updated in place -> getter of its value before the update being evaluated
        self._steps: dict = {}  # node -> :meth:`_step`

    # -- values of non-tensor arguments ---------------------------------------------------------
    def scalar(self, x: Any) -> Any:
        if isinstance(x, fx.Node):
            ev = example_value(x)
            if isinstance(ev, torch.Tensor):
                if ev.dim() == 0:
                    return self.at(x, ())
                raise Unsupported(f"tensor {x.name} used where a number was expected")
            if ev is None:
                raise Unsupported(f"no example value for {x.name}")
            return concrete(ev)
        if isinstance(x, (list, tuple)):
            return type(x)(self.scalar(a) for a in x)
        return concrete(x)

    @staticmethod
    def _memo(cache: dict, node: Any, compute: Callable) -> Any:
        try:
            return cache[node]
        except KeyError:
            value = cache[node] = compute(node)
            return value

    def shape_or_none(self, node: Any) -> tuple | None:
        if not isinstance(node, fx.Node):
            return shape_of(node)
        return self._memo(self._shapes, node, shape_of)

    def mutations(self, node: Any) -> list:
        return self._memo(self._mutations, node, mutations)

    def shape(self, node: Any) -> tuple:
        s = self.shape_or_none(node)
        if s is None:
            raise Unsupported(f"{getattr(node, 'name', node)} is not a tensor")
        return s

    # -- the evaluation ---------------------------------------------------------------------------
    def at(self, x: Any, coords: tuple) -> Any:
        if not isinstance(x, fx.Node):
            if isinstance(x, torch.Tensor):
                return x[_bcast(coords, tuple(x.shape))].item() if x.dim() else x.item()
            return concrete(x)
        key = (x, coords)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        val = self._at(x, coords)
        self.cache[key] = val
        return val

    def _leaf(self, node: fx.Node, coords: tuple) -> Any:
        table = self.tables.get(node)
        if table is not None:
            return int(table[coords])
        ev = example_value(node)
        if isinstance(ev, torch.Tensor) and not (ev.dtype.is_floating_point or ev.dtype.is_complex):
            raise Unsupported(f"integer tensor {node.name} comes from an operation the pattern cannot read")
        return Leaf(node, coords)

    def _at(self, node: fx.Node, coords: tuple) -> Any:
        try:
            step = self._steps[node]
        except KeyError:
            step = self._steps[node] = self._step(node)
        return step(node, coords)

    def _step(self, node: fx.Node) -> Callable:
        """What :meth:`_at` does at every point of ``node``, decided once: all it tests is fixed
        for the evaluator's life except the in-place state, which only a tensor updated in place
        and its updates read."""
        self.entered.add(node)
        if node in self.stale:
            why = self.stale[node]

            def stale(node, coords):
                raise Unsupported(why)

            return stale
        step = self._static_step(node)
        base = _mutated_base(node)
        if base is not None:
            def update(node, coords):
                if base not in self._state:
                    return self.at(base, coords)  # an update's result is its tensor, read after all updates
                return step(node, coords)

            return update
        if self.mutations(node):
            def updated(node, coords):
                if node not in self._state:
                    return self._updated(node, coords)
                return step(node, coords)

            return updated
        return step

    def _static_step(self, node: fx.Node) -> Callable:
        if node in self.tables or node in self.leaves or node.op == "placeholder" or node.meta.get(OPAQUE):
            return self._leaf
        if node.op == "get_attr" and self.module is not None:
            return self._attr
        call = self._memo(self._calls, node, canon)
        if call is None:
            return self._leaf
        handler = getattr(self, "_op_" + call.name, None)
        if handler is None and call.name in _BINARY:
            handler = self._binary
        if handler is None:
            return self._leaf
        return lambda node, coords: handler(node, call, coords)

    def _attr(self, node: fx.Node, coords: tuple) -> Any:
        t = attribute(self.module, node.target)
        if isinstance(t, torch.Tensor) and not t.dtype.is_floating_point:
            return t[_bcast(coords, tuple(t.shape))].item()
        return Leaf(node, coords)

    def _updated(self, node: fx.Node, coords: tuple) -> Any:
        """A tensor updated in place: its value after every update (all reads must follow them)."""
        muts = self.mutations(node)
        if self._memo(self._early_reads, node, lambda n: read_before_update(n, muts)) is not None:
            raise Unsupported(f"{node.name} is read before its in-place update {muts[-1].name}")

        def state(i, c):  # value after the first i updates
            prev = self._state.get(node, "unset")
            try:
                if i == 0:
                    self._state[node] = None
                    return self._at(node, c)
                self._state[node] = lambda c2: state(i - 1, c2)
                upd = muts[i - 1]
                call = canon(upd)
                handler = getattr(self, "_op_" + call.name, None) if call is not None else None
                if handler is None:
                    raise Unsupported(f"in-place {upd.target}")
                return handler(upd, call, c)
            finally:
                if prev == "unset":
                    del self._state[node]
                else:
                    self._state[node] = prev

        return state(len(muts), coords)

    def _self(self, x: Any, coords: tuple) -> Any:
        """The first argument of an op, which may be a tensor being updated in place."""
        getter = self._state.get(x) if isinstance(x, fx.Node) else None
        if getter is not None:
            return getter(coords)
        return self._operand(x, coords)

    def _arg(self, call, i, name, default=None):
        if len(call.args) > i:
            return call.args[i]
        return call.kwargs.get(name, default)

    def _operand(self, x: Any, coords: tuple) -> Any:
        if isinstance(x, fx.Node):
            shape = self.shape_or_none(x)
            if shape is not None:
                return self.at(x, _bcast(coords, shape))
        return self.scalar(x)

    def _binary(self, node, call, coords):
        a = self._operand(call.args[0], coords)
        if type(a) in _NUMBERS and "alpha" not in call.kwargs:
            b = self._operand(self._arg(call, 1, "other"), coords)
            if type(b) in _NUMBERS:  # index arithmetic and masks: most of the evaluator's points
                if call.name in ("and", "or") and dtype_of(node) is not None and dtype_of(node) != torch.bool:
                    return (int(a) & int(b)) if call.name == "and" else (int(a) | int(b))  # of integers: bitwise
                return _ON_NUMBERS[call.name](a, b)
        return self._binary_terms(node, call, coords, a)

    def _binary_terms(self, node, call, coords, a):
        if isinstance(a, Leaf) and node.op == "call_function" and node.target in _IOPS:
            # `q *= c` on a tensor read as data: the op must read the updated tensor (this node),
            # not q with c folded into the scale (q itself holds the update by then)
            return Leaf(node, coords)
        b = self._operand(self._arg(call, 1, "other"), coords)
        alpha = call.kwargs.get("alpha")
        try:
            if alpha is not None:
                b = _scalar_arith("mul", b, self.scalar(alpha))
            return _scalar_arith(call.name, a, b)
        except Unsupported:
            dt = dtype_of(node)
            if call.name in _DATA_ARITH and dt is not None and dt.is_floating_point and all(
                    self._is_data_term(x) for x in (a, b) if is_symbolic(x)):
                # Arithmetic on plain data (a RoPE's q * cos + rotate_half(q) * sin, a norm's
                # q * rsqrt(..)) is new data: read this node as a tensor, as an op the pass does
                # not follow is read. Terms of the attention itself (a score, the softmax) stay
                # unsupported, so changing them remains a near miss.
                return Leaf(node, coords)
            raise

    def _is_data_term(self, x: Any) -> bool:
        """A value that is data read from a tensor (maybe scaled), not a product or a pattern leaf."""
        while isinstance(x, Scaled):
            x = x.value
        return isinstance(x, Leaf) and x.node not in self.leaves

    # elementwise ----------------------------------------------------------------------------------
    def _op_identity(self, node, call, coords):
        return self.at(call.args[0], coords)

    def _op_detach(self, node, call, coords):
        # Index arithmetic passes through; data stops here, so that a rewrite reads the detached
        # tensor (and, like the user's code, sends it no gradient).
        v = self.at(call.args[0], coords)
        return Leaf(node, coords) if is_symbolic(v) else v

    def _op_cast(self, node, call, coords):
        v = self.at(call.args[0], coords)
        ev = example_value(node)
        dt = ev.dtype if isinstance(ev, torch.Tensor) else None
        if is_symbolic(v) or (isinstance(v, float) and (dt is None or dt.is_floating_point)):
            return v
        if dt == torch.bool:
            return bool(v)
        if dt is not None and dt.is_floating_point and not isinstance(v, bool):
            return float(v)
        if dt is not None and not dt.is_complex and dt != torch.bool and not isinstance(v, bool):
            # to an integer dtype: a float rounds toward zero, and a narrow type wraps, as in eager
            v = int(v)
            bits = torch.iinfo(dt).bits
            lo = torch.iinfo(dt).min
            v = (v - lo) % (1 << bits) + lo
        return v

    def _op_neg(self, node, call, coords):
        v = self.at(call.args[0], coords)
        return _scalar_arith("mul", v, -1) if is_symbolic(v) else -v

    def _op_abs(self, node, call, coords):
        v = self.at(call.args[0], coords)
        if is_symbolic(v):
            raise Unsupported("abs of a data term")
        return abs(v)

    def _op_sqrt(self, node, call, coords):
        try:
            v = self.at(call.args[0], coords)
        except Unsupported:
            v = None
        if v is None or is_symbolic(v):  # of data (an RMS norm's rsqrt): data, as before it was read
            return self._leaf(node, coords)
        root = math.sqrt(v) if v >= 0 else math.nan
        return root if call.name == "sqrt" else (1.0 / root if root else math.inf)

    _op_rsqrt = _op_sqrt

    def _op_tensor(self, node, call, coords):
        # torch.tensor(number or nested lists of numbers): a constant made in the graph (a scale
        # written ``/ torch.sqrt(torch.tensor(d))``)
        value = self.scalar(call.args[0])
        for c in coords:
            if not isinstance(value, (list, tuple)):
                raise Unsupported("torch.tensor of an unexpected shape")
            value = value[c]
        if not isinstance(value, (bool, int, float)):
            raise Unsupported("torch.tensor of something other than numbers")
        dt = dtype_of(node)
        if dt is not None and dt.is_floating_point:
            return float(value)
        return value

    def _op_minimum(self, node, call, coords):
        a = self._operand(call.args[0], coords)
        b = self._operand(call.args[1], coords)
        if is_symbolic(a) or is_symbolic(b):
            raise Unsupported(f"{call.name} of a data term")
        return min(a, b) if call.name == "minimum" else max(a, b)

    _op_maximum = _op_minimum

    def _op_not(self, node, call, coords):
        v = self.at(call.args[0], coords)
        dt = dtype_of(node)
        if dt is not None and dt != torch.bool and not dt.is_floating_point and type(v) in (int, bool):
            return ~int(v)  # bitwise_not / ~ of an integer tensor
        return not v

    def _op_where(self, node, call, coords):
        if len(call.args) < 3:
            raise Unsupported("torch.where with one argument")
        cond = self._operand(call.args[0], coords)
        return self._operand(call.args[1] if cond else call.args[2], coords)

    def _op_masked_fill(self, node, call, coords):
        inner = self._self(call.args[0], coords)  # evaluated first, as eager would
        cond = self._operand(self._arg(call, 1, "mask"), coords)
        return self.scalar(self._arg(call, 2, "value")) if cond else inner

    def _clamp(self, v, lo, hi):
        if is_symbolic(v):
            raise Unsupported("clamp of a data term")
        if lo is not None:
            v = max(v, lo)
        if hi is not None:
            v = min(v, hi)
        return v

    def _op_clamp(self, node, call, coords):
        lo = self._arg(call, 1, "min")
        hi = self._arg(call, 2, "max")
        lo = None if lo is None else self._operand(lo, coords)
        hi = None if hi is None else self._operand(hi, coords)
        return self._clamp(self.at(call.args[0], coords), lo, hi)

    def _op_clamp_min(self, node, call, coords):
        return self._clamp(self.at(call.args[0], coords), self._operand(call.args[1], coords), None)

    def _op_clamp_max(self, node, call, coords):
        return self._clamp(self.at(call.args[0], coords), None, self._operand(call.args[1], coords))

    def _op_full_like(self, node, call, coords):
        if node.op == "call_method" and node.target == "new_full":
            return self.scalar(call.args[2] if len(call.args) > 2 else call.kwargs["fill_value"])
        return self.scalar(self._arg(call, 1, "fill_value"))

    def _op_zeros_like(self, node, call, coords):
        return 0

    def _op_ones_like(self, node, call, coords):
        return 1

    _op_zeros = _op_zeros_like
    _op_ones = _op_ones_like

    def _op_full(self, node, call, coords):
        return self.scalar(self._arg(call, 1, "fill_value"))

    def _op_fill(self, node, call, coords):
        return self.scalar(self._arg(call, 1, "value"))

    def _op_tril(self, node, call, coords):
        diag = self.scalar(self._arg(call, 1, "diagonal", 0))
        keep = coords[-1] - coords[-2] <= diag if call.name == "tril" else coords[-1] - coords[-2] >= diag
        val = self._self(call.args[0], coords)
        if keep:
            return val
        return False if isinstance(val, bool) else 0

    _op_triu = _op_tril

    # reductions of index arithmetic and masks -------------------------------------------------------
    def _reduced_points(self, node, call, coords):
        """The input coordinates a reduction ``x.any(dim, keepdim)`` combines at output ``coords``."""
        src = call.args[0]
        shape = self.shape(src)
        dim = self._arg(call, 1, "dim")
        keep = bool(self.scalar(self._arg(call, 2, "keepdim", False)))
        dims = range(len(shape)) if dim is None else self.scalar(dim)
        dims = sorted({_dim(d, len(shape)) for d in (dims if isinstance(dims, (list, tuple, range)) else (dims,))})
        outer = iter(coords)  # a kept dim has coordinate 0 there
        base = []
        for d in range(len(shape)):
            if d in dims:
                if keep:
                    next(outer)
                base.append(None)
            else:
                base.append(next(outer))
        for combo in itertools.product(*(range(shape[d]) for d in dims)):
            c, it = list(base), iter(combo)
            for d in dims:
                c[d] = next(it)
            yield tuple(c)

    def _reduced_values(self, node, call, coords):
        src = call.args[0]
        values = [self.at(src, c) for c in self._reduced_points(node, call, coords)]  # every one, as eager
        if any(is_symbolic(x) for x in values):
            raise Unsupported(f"{call.name} of a data term")
        return values

    def _op_any(self, node, call, coords):
        values = self._reduced_values(node, call, coords)
        return any(values) if call.name == "any" else all(values)

    _op_all = _op_any

    def _op_sum(self, node, call, coords):
        """A count (a sum of integers or booleans), or a product spelled out: ``(a * b).sum(dim)``
        over one dim of an elementwise product of two tensors. Any other floating-point sum stays
        data."""
        dt = dtype_of(node)
        if dt is None or dt.is_floating_point or dt.is_complex or "dtype" in call.kwargs:
            product = self._summed_product(node, call, coords)
            return self._leaf(node, coords) if product is None else product
        return sum(int(x) for x in self._reduced_values(node, call, coords))

    def _summed_product(self, node, call, coords):
        src = call.args[0]
        inner = canon(src) if isinstance(src, fx.Node) else None
        dim = self._arg(call, 1, "dim")
        if inner is None or inner.name != "mul" or "dtype" in call.kwargs or dim is None or src.users.keys() != {node}:
            return None
        dims = self.scalar(dim)
        if isinstance(dims, (list, tuple)) and len(dims) != 1:
            return None
        a, b = inner.args[0], inner.args[1]
        sa, sb = self.shape_or_none(a), self.shape_or_none(b)
        if sa is None or sb is None or a is b:
            return None
        points = list(self._reduced_points(node, call, coords))
        return self._dot(lambda i: self.at(a, _bcast(points[i], sa)), lambda i: self.at(b, _bcast(points[i], sb)),
                         len(points))

    def _op_one_hot(self, node, call, coords):
        index = call.args[0]
        classes = self.shape(node)[-1]
        i = self.at(index, coords[:-1])
        if is_symbolic(i):
            raise Unsupported("one_hot of a data term")
        if not 0 <= int(i) < classes:
            raise OutOfBounds(f"one_hot of {int(i)} with {classes} classes")
        return int(int(i) == coords[-1])

    def _op_scatter(self, node, call, coords):
        """``self.scatter(dim, index, src)``: element ``c`` is ``src[p]`` for an index position ``p``
        of the same row with ``index[p] == c[dim]``, else ``self[c]``. The whole index row is read,
        as eager does (an entry out of range fails there)."""
        src = self._arg(call, 3, "src", call.kwargs.get("value"))
        if "reduce" in call.kwargs or len(call.args) > 4:
            raise Unsupported("scatter with a reduction")
        index = self._arg(call, 2, "index")
        out_shape = self.shape(node)
        dim = _dim(self.scalar(self._arg(call, 1, "dim")), len(out_shape))
        ishape = self.shape(index)
        if len(ishape) != len(out_shape):
            raise Unsupported("scatter with an index of another rank")
        written = []
        if all(c < s for d, (c, s) in enumerate(zip(coords, ishape)) if d != dim):
            for i in range(ishape[dim]):
                p = list(coords)
                p[dim] = i
                p = tuple(p)
                j = self._checked(self.at(index, p), out_shape[dim], allow_negative=False)
                if j == coords[dim]:
                    tensor_src = isinstance(src, fx.Node) and self.shape_or_none(src) is not None
                    written.append(self.at(src, p) if tensor_src else self.scalar(src))
        if not written:
            return self._self(call.args[0], coords)
        if any(is_symbolic(w) for w in written) or len(set(written)) > 1:
            raise Unsupported("scatter of different values to one place")
        return written[0]

    def _op_pad(self, node, call, coords):
        """Constant padding: the source element, or the fill value outside the source."""
        src, pad = call.args[0], self.scalar(self._arg(call, 1, "pad"))
        mode = self._arg(call, 2, "mode", "constant")
        if mode != "constant":
            raise Unsupported(f"{mode} padding")
        value = self._arg(call, 3, "value", None)
        value = 0.0 if value is None else self.scalar(value)
        shp = self.shape(src)
        c = list(coords)
        for i in range(len(pad) // 2):
            d = len(shp) - 1 - i
            c[d] -= pad[2 * i]
            if not 0 <= c[d] < shp[d]:
                return value
        return self.at(src, tuple(c))

    def _op_setitem(self, node, call, coords):
        """``x[i0, i1, ..] = value`` with one integer index tensor per dim (an index assignment of a
        mask): element ``c`` is written if some index position ``p`` has ``i_d[p] == c[d]`` for
        every dim ``d``. The positions are found by a join over the index tensors, smallest first,
        so a query reads about ``sum of their sizes`` entries, not their broadcast product. (Like
        scatter here, only the entries of the queried row are read: an out-of-range entry is seen
        when a row holding one is sampled.)"""
        base, idx, value = call.args
        shape = self.shape(base)
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) != len(shape) or not all(isinstance(i, fx.Node) and self.shape_or_none(i) is not None for i in idx):
            raise Unsupported("an index assignment other than one integer index tensor per dim")
        if any(example_value(i).dtype == torch.bool for i in idx):
            raise Unsupported("an index assignment by boolean mask")
        bshape = tuple(_broadcast(*(self.shape_or_none(i) for i in idx)))
        partial = [dict()]
        order = sorted(range(len(idx)), key=lambda d: math.prod(self.shape_or_none(idx[d])))
        for d in order:
            ishape = (1,) * (len(bshape) - len(self.shape_or_none(idx[d]))) + self.shape_or_none(idx[d])
            own = [a for a, sz in enumerate(ishape) if sz > 1]
            grown = []
            for asg in partial:
                free = [a for a in own if a not in asg]
                for vals in itertools.product(*(range(bshape[a]) for a in free)):
                    full = {**asg, **dict(zip(free, vals))}
                    p = tuple(full.get(a, 0) if ishape[a] > 1 else 0 for a in range(len(bshape)))
                    j = self._checked(self.at(idx[d], p[len(bshape) - len(self.shape_or_none(idx[d])):]), shape[d], allow_negative=True)
                    if j == coords[d]:
                        grown.append(full)
            partial = grown
            if not partial:
                return self._self(base, coords)
        tensor_value = isinstance(value, fx.Node) and self.shape_or_none(value) is not None
        vals = set()
        for asg in partial:
            p = tuple(asg.get(a, 0) for a in range(len(bshape)))
            vals.add(self.at(value, _bcast(p, self.shape_or_none(value))) if tensor_value else self.scalar(value))
        if len(vals) > 1 or any(is_symbolic(v) for v in vals):
            raise Unsupported("an index assignment of different values to one place")
        return vals.pop()

    # attention in one call ----------------------------------------------------------------------------
    def _sdpa_args(self, node):
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        a = dict(zip(names, node.args))
        a.update(node.kwargs)
        if self.scalar(a.get("dropout_p", 0.0)):
            raise Unsupported("scaled_dot_product_attention with dropout")
        return a

    def _kv_batch(self, a, batch, which="key"):
        """The batch coordinates of ``a[which]`` (key or value) read for query batch ``batch``:
        with ``enable_gqa`` each of the two by its own head count."""
        ks = self.shape(a[which])
        kb = list(_bcast(batch, ks[:-2]))
        if a.get("enable_gqa") and len(kb) >= 1:
            qs = self.shape(a["query"])
            kb[-1] = batch[-1] // (qs[-3] // ks[-3])
        return tuple(kb)

    def _op_sdpa(self, node, call, coords):
        """``softmax(scale * q k^T + mask) @ v`` at one output element: a product whose left side
        is the (opaque) probability row ``Leaf(node, (..., t, s))``."""
        a = self._sdpa_args(node)
        batch, t, d = coords[:-2], coords[-2], coords[-1]
        v = a["value"]
        vb = self._kv_batch(a, batch, "value")
        S = self.shape(v)[-2]
        return self._dot(lambda i: Leaf(node, batch + (t, i)), lambda i: self.at(v, vb + (i, d)), S)

    def sdpa_score(self, node, coords):
        """The masked, scaled score of an SDPA node at ``(..., t, s)``."""
        a = self._sdpa_args(node)
        batch, t, s = coords[:-2], coords[-2], coords[-1]
        q, k = a["query"], a["key"]
        E = self.shape(q)[-1]
        scale = a.get("scale")
        scale = E ** -0.5 if scale is None else self.scalar(scale)
        if self.scalar(a.get("is_causal", False)) and s > t:
            return NEG_INF
        qb = _bcast(batch, self.shape(q)[:-2])
        kb = self._kv_batch(a, batch)
        score = Scaled(float(scale), self._dot(lambda i: self.at(q, qb + (t, i)), lambda i: self.at(k, kb + (s, i)), E))
        mask = a.get("attn_mask")
        if mask is None:
            return score
        m = self._operand(mask, coords)
        ev = example_value(mask)
        if isinstance(ev, torch.Tensor) and ev.dtype == torch.bool:
            return score if m else NEG_INF
        return _scalar_arith("add", score, m)

    def _op_arange(self, node, call, coords):
        args = [self.scalar(a) for a in call.args]
        start = call.kwargs.get("start")
        end = call.kwargs.get("end")
        step = call.kwargs.get("step")
        if len(args) == 1:
            start, end = 0, args[0]
        elif len(args) >= 2:
            start, end = args[0], args[1]
            if len(args) > 2:
                step = args[2]
        start = self.scalar(start) if start is not None else 0
        step = self.scalar(step) if step is not None else 1
        return start + coords[0] * step

    # views ------------------------------------------------------------------------------------------
    def _op_reshape(self, node, call, coords):
        src = call.args[0]
        return self.at(src, _unravel(_ravel(coords, self.shape(node)), self.shape(src)))

    _op_flatten = _op_unsqueeze = _op_squeeze = _op_reshape

    def _op_transpose(self, node, call, coords):
        rank = len(coords)
        d0, d1 = (_dim(self.scalar(d), rank) for d in call.args[1:3])
        c = list(coords)
        c[d0], c[d1] = c[d1], c[d0]
        return self.at(call.args[0], tuple(c))

    def _op_permute(self, node, call, coords):
        dims = call.args[1:] if len(call.args) > 2 else call.args[1] if len(call.args) == 2 else call.kwargs["dims"]
        dims = [_dim(self.scalar(d), len(coords)) for d in dims]
        c = [0] * len(coords)
        for out_d, in_d in enumerate(dims):
            c[in_d] = coords[out_d]
        return self.at(call.args[0], tuple(c))

    def _op_expand(self, node, call, coords):
        src = call.args[0]
        return self.at(src, _bcast(coords, self.shape(src)))

    _op_expand_as = _op_expand

    def _op_repeat_interleave(self, node, call, coords):
        src = call.args[0]
        reps = self._arg(call, 1, "repeats")
        dim = self._arg(call, 2, "dim")
        if dim is None or isinstance(reps, fx.Node) and self.shape_or_none(reps) is not None:
            raise Unsupported("repeat_interleave without a dim or with tensor repeats")
        reps = self.scalar(reps)
        dim = _dim(self.scalar(dim), len(coords))
        c = list(coords)
        c[dim] //= reps
        return self.at(src, tuple(c))

    def _op_repeat(self, node, call, coords):
        # Tensor.repeat / torch.tile: the source tiled along every dim, new dims in front
        src = call.args[0]
        shape = self.shape(src)
        extra = len(coords) - len(shape)
        return self.at(src, tuple(c % s for c, s in zip(coords[extra:], shape)))

    # indexing ---------------------------------------------------------------------------------------
    def _checked(self, i, size, allow_negative):
        if is_symbolic(i):
            raise Unsupported("an index computed from data")
        i = int(i)
        if i < 0 and allow_negative:
            i += size
        if not 0 <= i < size:
            raise OutOfBounds(f"index {i} out of range for a dim of size {size}")
        return i

    def _op_gather(self, node, call, coords):
        src, dim, index = call.args[0], self._arg(call, 1, "dim"), self._arg(call, 2, "index")
        src_shape = self.shape(src)
        dim = _dim(self.scalar(dim), len(src_shape))
        c = list(coords)
        c[dim] = self._checked(self.at(index, coords), src_shape[dim], allow_negative=False)
        return self.at(src, tuple(c))

    def _op_take_along_dim(self, node, call, coords):
        src, index, dim = call.args[0], self._arg(call, 1, "indices"), self._arg(call, 2, "dim")
        if dim is None:
            raise Unsupported("take_along_dim without a dim")
        src_shape = self.shape(src)
        dim = _dim(self.scalar(dim), len(src_shape))
        c = list(_bcast(coords, src_shape))
        i = self.at(index, _bcast(coords, self.shape(index)))
        c[dim] = self._checked(i, src_shape[dim], allow_negative=False)
        return self.at(src, tuple(c))

    def _op_index_select(self, node, call, coords):
        src, dim, index = call.args[0], self._arg(call, 1, "dim"), self._arg(call, 2, "index")
        src_shape = self.shape(src)
        dim = _dim(self.scalar(dim), len(src_shape))
        c = list(coords)
        c[dim] = self._checked(self.at(index, (coords[dim],)), src_shape[dim], allow_negative=False)
        return self.at(src, tuple(c))

    def _op_getitem(self, node, call, coords):
        src, idx = call.args
        if self.shape_or_none(src) is None:  # a tuple result (topk, max, ...): the element is an opaque leaf
            return self._leaf(node, coords)
        if not isinstance(idx, tuple):
            idx = (idx,)
        return self.at(src, self._index_coords(node, src, idx, coords))

    def _index_coords(self, node, src, idx, coords):
        """Source coordinates of ``src[idx]`` (the value of ``node``) at output ``coords``
        (torch indexing rules)."""
        try:
            steps, a0, alen = self._index_plans[node]
        except KeyError:
            steps, a0, alen = self._index_plans[node] = self._index_plan(src, idx)
        adv = coords[a0: a0 + alen]
        out = []
        for step in steps:
            kind = step[0]
            if kind == _ADVANCED:
                out.append(self._checked(self.at(step[1], _bcast(adv, step[2])), step[3], allow_negative=True))
            elif kind == _SLICE:
                out.append(step[2] + coords[step[1]] * step[3])
            elif kind == _SLICE_OF_NODES:
                i, out_d, size = step[1:]
                start, stop, stride = (self.scalar(v) if v is not None else None for v in (i.start, i.stop, i.step))
                start, _, stride = slice(start, stop, stride).indices(size)
                out.append(start + coords[out_d] * stride)
            else:
                out.append(self._checked(self.scalar(step[1]), step[2], allow_negative=True))
        return tuple(out)

    def _index_plan(self, src, idx):
        """What :meth:`_index_coords` does at every point, worked out once per indexing node:
        steps in source-dim order, and where the advanced indices' coordinates sit in the output."""
        src_shape = self.shape(src)
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        expanded = []
        for i in idx:
            if i is Ellipsis:
                expanded.extend([slice(None)] * (len(src_shape) - n_real))
            else:
                expanded.append(i)
        while sum(1 for i in expanded if i is not None) < len(src_shape):
            expanded.append(slice(None))
        adv_pos = [p for p, i in enumerate(expanded) if isinstance(i, fx.Node) and self.shape_or_none(i) is not None]
        for p in adv_pos:
            ev = example_value(expanded[p])
            if ev.dtype == torch.bool:
                raise Unsupported("boolean mask indexing")
        adv_shape: tuple = ()
        if adv_pos:
            shapes = [self.shape_or_none(expanded[p]) for p in adv_pos]
            adv_shape = tuple(_broadcast(*shapes))
        contiguous = not adv_pos or adv_pos == list(range(adv_pos[0], adv_pos[-1] + 1))
        out_first = adv_pos[0] if adv_pos and contiguous else 0
        # Walk the index tuple and assign output dims to source dims.
        steps = []
        out_d = a0 = 0
        if adv_pos and not contiguous:
            out_d = len(adv_shape)  # the advanced dims come first
        adv_done = False
        sdim = 0
        for p, i in enumerate(expanded):
            if adv_pos and contiguous and p == out_first and not adv_done:
                a0 = out_d
                out_d += len(adv_shape)
                adv_done = True
            if i is None:
                out_d += 1
                continue
            size = src_shape[sdim]
            if p in adv_pos:
                steps.append((_ADVANCED, i, self.shape_or_none(i), size))
            elif isinstance(i, slice):
                if any(isinstance(v, fx.Node) for v in (i.start, i.stop, i.step)):
                    steps.append((_SLICE_OF_NODES, i, out_d, size))
                else:
                    start, stop, stride = (concrete(v) if v is not None else None for v in (i.start, i.stop, i.step))
                    start, _, stride = slice(start, stop, stride).indices(size)
                    steps.append((_SLICE, out_d, start, stride))
                out_d += 1
            else:
                steps.append((_NUMBER, i, size))
            sdim += 1
        return steps, a0, len(adv_shape)

    # products -------------------------------------------------------------------------------------
    def _dot(self, left, right, size):
        # Eager evaluates both operands everywhere, so an out-of-range gather fails even where the
        # result is masked later: touch one element of each side now to reproduce that.
        left(0), right(0)
        return Dot(left, right, size)

    def _op_matmul(self, node, call, coords):
        a, b = call.args[0], call.args[1]
        sa, sb = self.shape(a), self.shape(b)
        if len(sa) < 2 or len(sb) < 2:
            raise Unsupported("matrix product of a vector")
        batch = coords[:-2]
        m, n = coords[-2], coords[-1]
        ba, bb = _bcast(batch, sa[:-2]), _bcast(batch, sb[:-2])
        return self._dot(lambda i: self.at(a, ba + (m, i)), lambda i: self.at(b, bb + (i, n)), sa[-1])

    def _op_baddbmm(self, node, call, coords):
        # beta * input + alpha * (batch1 @ batch2); with beta = 0 the input is not read (torch
        # does not propagate its NaN or inf either)
        bias, a, b = (self._arg(call, i, name) for i, name in enumerate(("input", "batch1", "batch2")))
        beta, alpha = self.scalar(call.kwargs.get("beta", 1)), self.scalar(call.kwargs.get("alpha", 1))
        term = _scalar_arith("mul", self._op_matmul(node, Call("matmul", (a, b), {}), coords), alpha)
        if beta == 0:
            return term
        return _scalar_arith("add", term, _scalar_arith("mul", self._operand(bias, coords), beta))

    def _op_einsum(self, node, call, coords):
        try:
            operands, sources, size = self._einsums[node]
        except KeyError:
            operands, sources, size = self._einsums[node] = self._einsum_plan(call)

        def side(k):
            a, pick = operands[k], sources[k]
            return lambda i: self.at(a, pick((*coords, i, 0)))

        return self._dot(side(0), side(1), size)

    def _einsum_plan(self, call):
        """The two operands, where each of their dims reads its coordinate from (None: 0, a size-1
        dim broadcast against the output; -1: the summed index; else an output dim), and the
        summed size, worked out once per einsum node."""
        eq = call.args[0]
        operands = call.args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
        if len(operands) != 2 or "->" not in eq:
            raise Unsupported("einsum with other than two operands or without '->'")
        lhs, out = eq.replace(" ", "").split("->")
        ins = lhs.split(",")
        if "..." in eq:  # name the broadcast dims (right-aligned) with letters the equation does not use
            spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in eq]
            n_ell = max(len(self.shape(o)) - (len(spec) - 3) for o, spec in zip(operands, ins) if "..." in spec)
            names = "".join(spare[:n_ell])
            ins = [spec.replace("...", names[n_ell - (len(self.shape(o)) - (len(spec) - 3)):]) for o, spec in zip(operands, ins)]
            out = out.replace("...", names)
        summed = [c for c in dict.fromkeys(ins[0] + ins[1]) if c not in out]
        if len(summed) != 1 or not all(summed[0] in s for s in ins):
            raise Unsupported("einsum that is not one contraction")
        (red,) = summed
        size = self.shape(operands[0])[ins[0].index(red)]
        shapes = [self.shape(o) for o in operands]
        # per operand dim, its coordinate in ``(*out_coords, summed index, 0)``: an output
        # coordinate, the summed index, or 0 for a size-1 dim broadcast against the output
        rank = len(out)
        sources = tuple(
            _getter([rank + 1 if sz == 1 else rank if c == red else out.index(c) for c, sz in zip(ins[k], shapes[k])])
            for k in range(2))
        return operands, sources, size
