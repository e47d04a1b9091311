"""Selected attention written as ``softmax(mask(scale * q @ k_sel^T)) @ v_sel``.

This one family covers the gather form (keys and values gathered from block indices by
indexing, ``torch.gather`` or ``index_select``) and the dense-mask form (a ``[.., T, T]`` or
``[.., T, T/bs]`` boolean mask built from the selection), in any spelling of the masks
(``masked_fill``, ``torch.where``, an added ``-inf`` bias) and of the products (``@``,
``matmul``, ``einsum``), because it does not match spellings: it finds a softmax between two
matrix products and then *checks what the subgraph computes* with the point evaluator
(:mod:`.points`), against the contract, on random selections:

1. structure: the product after the softmax reads the softmax row and a value tensor; the
   softmax input is a scaled product of a query tensor and a key tensor, or ``-inf``;
2. layouts: which dims of q, k, v, the output and the selection are batch, token, head, dim;
3. semantics: for sampled query rows, the multiset of visible key positions equals the one the
   contract gives (causal or not, duplicates counted or not), the values are read at the same
   positions as the keys, and the scale is one constant;
4. edge cases: padding entries (negative), out-of-range entries (eager fails -> the op asserts;
   eager drops them -> the op drops them), else the rewrite does not fire.

Every failed check is a near miss with a reason a user can act on.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import product

import torch
from torch import fx

from . import layouts as L
from .memo import Memo
from .ops import canon, concrete, dtype_of, example_value, flat_args, shape_of
from .points import (NEG_INF, Dot, Evaluator, Leaf, OutOfBounds, Scaled, Unsupported, is_symbolic, mutations,
                     reads_after_float_writes, unfollowed_reads)

log = logging.getLogger("fsa_compile")

FAMILY = "softmax-attention"


class NearMiss(Exception):
    """The subgraph looks like selected attention but a check failed; the message says which."""


class LayoutMiss(NearMiss):
    """The candidate output's dims could not be read as a layout (another candidate may fit)."""


class KeysMiss(NearMiss):
    """The keys a query attends to are not its selected blocks' (at the rows' assumed positions)."""


# the block size a re-check takes as read (see :func:`block_size_known`)
_KNOWN_BLOCK_SIZE: list = []


@contextlib.contextmanager
def block_size_known(block_size: int):
    """Analyses inside take ``block_size`` as the only one to try: a match checked again where
    its rows cannot tell block sizes apart (a query at position 0 sees one key whatever they are)."""
    _KNOWN_BLOCK_SIZE.append(block_size)
    try:
        yield
    finally:
        _KNOWN_BLOCK_SIZE.pop()


# q holding fewer rows than the keys is read at the last positions, then at up to this many
# other fixed positions from the graph's constants: each is a full check, paid only on a miss
MAX_ROW_POSITIONS = 4


@dataclass
class Match:
    family: str
    output: fx.Node
    softmax: fx.Node
    q: fx.Node
    k: fx.Node
    v: fx.Node
    selection: fx.Node
    layouts: dict
    B: int
    T: int
    H: int
    G: int
    D: int
    n: int
    block_size: int
    scale: float
    causal: bool
    count_duplicates: bool
    on_out_of_range: str
    form: str
    notes: list = field(default_factory=list)
    empty_rows: str = "nan"  # what the matched code gives a query with no visible key: "nan" or "zero"
    # the nodes the checks evaluated (with the in-place updates of them): what the verified meaning
    # depends on, so their constants bound the lengths at which it was seen to hold
    visited: frozenset = frozenset()
    # the output's rows (T counts the keys): fewer after a KV cache (q's rows are then the last Tq
    # keys') or for a chunk of queries (q and the selection hold all T rows, of which row t of the
    # output reads row t + rows_from)
    Tq: int = 0
    rows_from: int | None = None  # where the output's rows start in q's, when q holds all T rows
    # the key position of the output's first row when q holds just those rows; None: the last Tq
    q_first: int | None = None
    # an integer tensor ([Tq] or [B, Tq]) that gives each output row's key position (a cache's
    # cache_position), when the rows are read from one
    positions: fx.Node | None = None
    # what the rewrite does with positions outside [0, T): pass them ("any": the code gives what
    # the op does there) or assert ("assert": the code fails there, or gives something else)
    positions_outside: str = "any"

    def __post_init__(self):
        self.Tq = self.Tq or self.T

    @property
    def q_holds_rows_only(self) -> bool:
        """q (and the selection) hold just the output's Tq rows, fewer than the T keys."""
        return self.Tq != self.T and self.rows_from is None


# -- finding candidates -------------------------------------------------------------------------------

_PASSTHROUGH = {"cast", "identity"}
_VIEWS = {"reshape", "flatten", "unsqueeze", "squeeze", "transpose", "permute"}


@dataclass
class Anchor:
    """Where a candidate's probabilities come from.

    ``kind="softmax"``: ``node`` is a softmax (a call, or ``exp(x - max) / sum`` spelled out)
    of ``pre`` along ``dim``, and ``outputs`` are the nodes that may be the attention output
    (the product after the softmax, then the views and casts that follow it, furthest first).
    ``kind="sdpa"``: ``node`` is ``F.scaled_dot_product_attention`` with a mask; it is its own
    output, and its probabilities and scores are evaluated by the point evaluator.
    """

    kind: str
    node: fx.Node
    pre: fx.Node | None
    dim: int
    outputs: list


def _dim_arg(call, i=1):
    d = call.args[i] if len(call.args) > i else call.kwargs.get("dim")
    if isinstance(d, (list, tuple)) and len(d) == 1:
        d = d[0]
    return d if isinstance(d, int) else None


def _keepdim(call, i=2):
    return bool(call.args[i] if len(call.args) > i else call.kwargs.get("keepdim", False))


def _strip(node, through_detach=False):
    """Skip clone/contiguous, and detach where it changes nothing (a row max's gradient through
    the softmax is zero; a detached denominator is another function, so not there)."""
    names = ("identity", "detach") if through_detach else ("identity",)
    while canon(node) is not None and canon(node).name in names:
        node = node.args[0]
    return node


def _row_max_of(node, x, dim, rank):
    """Whether ``node`` is ``x.amax(dim, keepdim=True)`` or ``x.max(dim, keepdim=True)[0]``."""
    node = _strip(node, through_detach=True)
    call = canon(node)
    if call is None:
        return False
    if call.name == "getitem" and node.args[1] == 0:
        inner = canon(node.args[0])
        if inner is None or inner.name != "max" or len(node.args[0].args) < 1:
            return False
        node, call = node.args[0], inner
    elif call.name != "amax":
        return False
    d = _dim_arg(call)
    return call.args[0] is x and d is not None and d % rank == dim and _keepdim(call)


def _manual_softmax_parts(node: fx.Node):
    """``(exponent, dim, shifted)`` if ``node`` is ``exp(e) / exp(e).sum(dim, keepdim=True)``, with
    ``shifted`` the x of ``e = x - rowmax(x)`` (else None), or None."""
    call = canon(node)
    if call is None or call.name != "div" or not all(isinstance(a, fx.Node) for a in node.args[:2]):
        return None
    e, total = node.args[0], node.args[1]
    tc, ec = canon(total), canon(e)
    if tc is None or tc.name != "sum" or ec is None or ec.name != "exp" or _strip(total.args[0]) is not e:
        return None
    shp = shape_of(node)
    if shp is None:
        return None
    rank = len(shp)
    dim = _dim_arg(tc)
    if dim is None or not _keepdim(tc):
        return None
    dim %= rank
    arg = e.args[0]
    ac = canon(arg)
    if ac is not None and ac.name == "sub" and isinstance(arg.args[0], fx.Node) and _row_max_of(arg.args[1], arg.args[0], dim, rank):
        return arg, dim, arg.args[0]
    return arg, dim, None


def manual_softmax(node: fx.Node):
    """``(x, dim)`` if ``node`` is ``exp(x - rowmax(x)) / exp(...).sum(dim, keepdim=True)``, else
    None. Without the row max it is a candidate too (``x`` the exponent), which the matcher then
    reports as a near miss (:func:`unshifted_softmax`)."""
    parts = _manual_softmax_parts(node)
    if parts is None:
        return None
    arg, dim, shifted = parts
    return (arg if shifted is None else shifted), dim


def unshifted_softmax(node: fx.Node) -> str | None:
    """Why ``node``, a spelled-out softmax, is not one the op computes, if its exponent is not
    shifted by the row max: ``exp(s) / exp(s).sum()`` overflows to inf (a NaN row) or underflows
    to 0 where the op's softmax does not, so the results differ on large scores (in float16 from
    scores of about 11)."""
    parts = _manual_softmax_parts(node)
    if parts is None or parts[2] is not None:
        return None
    return (f"the softmax {node.name} is exp(s) / exp(s).sum() without subtracting the row max: it overflows "
            "(inf / inf = NaN) or underflows where the op's softmax does not, so the results would differ on "
            "large scores; subtract s.amax(dim, keepdim=True) inside the exp")


def logsumexp_softmax(node: fx.Node):
    """``(x, dim)`` if ``node`` is ``exp(x - logsumexp(x, dim, keepdim=True))`` or
    ``exp(log_softmax(x, dim))``, else None (a row that sees nothing is NaN there too)."""
    call = canon(node)
    if call is None or call.name != "exp" or not isinstance(node.args[0], fx.Node):
        return None
    arg = node.args[0]
    ac = canon(arg)
    shp = shape_of(node)
    if ac is not None and ac.name == "log_softmax" and shp is not None and "dtype" not in ac.kwargs:
        dim = _dim_arg(ac)
        return None if dim is None else (arg.args[0], dim % len(shp))
    if ac is None or ac.name != "sub" or not all(isinstance(a, fx.Node) for a in arg.args[:2]):
        return None
    x, lse = arg.args[0], _strip(arg.args[1], through_detach=False)
    lc = canon(lse)
    if lc is None or lc.name != "logsumexp" or shp is None or lse.args[0] is not x or not _keepdim(lc):
        return None
    dim = _dim_arg(lc)
    return None if dim is None else (x, dim % len(shp))


def _output_chain(product_node):
    """The product, then the single-user views and casts after it; furthest first."""
    chain = [product_node]
    cur = product_node
    while len(cur.users) == 1:
        (user,) = cur.users
        uc = canon(user)
        if uc is None or (uc.name not in _VIEWS and uc.name not in _PASSTHROUGH) or user.args[0] is not cur:
            break
        chain.append(user)
        cur = user
    return chain[::-1]


def candidates(graph: fx.Graph):
    """An :class:`Anchor` for every softmax that feeds a matrix product, and every masked SDPA."""
    for node in graph.nodes:
        call = canon(node)
        if call is None:
            continue
        if call.name == "sdpa":
            yield Anchor("sdpa", node, None, -1, _output_chain(node))  # (a per-token SDPA is squeezed after)
            continue
        if call.name == "softmax":
            dim = _dim_arg(call)
            pre = node.args[0]
        elif call.name in ("div", "exp"):
            found = manual_softmax(node) if call.name == "div" else logsumexp_softmax(node)
            if found is None:
                continue
            pre, dim = found
        else:
            continue
        if dim is None:
            continue
        # the product after the softmax, through views and casts, or (a near miss the checks will
        # explain) through a few other elementwise ops
        frontier, out, hops = [(node, 0)], None, 3
        while frontier and out is None:
            cur, depth = frontier.pop(0)
            for user in cur.users:
                uc = canon(user)
                if uc is not None and (uc.name in ("matmul", "einsum") or uc.name == "sum" and depth > 0):
                    out = user  # (a sum: (p.unsqueeze(-1) * v).sum(-2), if the evaluator reads it so)
                    break
                if uc is not None and (uc.name in _PASSTHROUGH or uc.name in _VIEWS):
                    frontier.append((user, depth))
                elif depth < hops and user.op in ("call_function", "call_method"):
                    frontier.append((user, depth + 1))
        if out is not None:
            yield Anchor("softmax", node, pre, dim, _output_chain(out))


def _inputs(n: fx.Node):
    for a in list(n.args) + list(n.kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from (x for x in a if isinstance(x, fx.Node))
        elif isinstance(a, fx.Node):
            yield a


def _data_dependent(n: fx.Node, memo: dict) -> bool:
    """Whether an integer/bool tensor is computed from floating-point data (e.g. a top-k)."""
    if n in memo:
        return memo[n]
    memo[n] = False
    dt = dtype_of(n)
    if dt is not None and dt.is_floating_point:
        memo[n] = True
    else:
        memo[n] = any(_data_dependent(a, memo) for a in _inputs(n))
    return memo[n]


def _selected_from_data(n: fx.Node, memo: dict) -> bool:
    """An integer tensor made directly from data (floats, or booleans computed from data).

    Index arithmetic on such a tensor (``idx * bs + arange``) is not: the pattern follows it.
    """
    dt = dtype_of(n)
    if dt is None or dt.is_floating_point or dt.is_complex or dt == torch.bool:
        return False
    for a in _inputs(n):
        adt = dtype_of(a)
        if adt is not None and (adt.is_floating_point or (adt == torch.bool and _data_dependent(a, memo))):
            return True
    return False


def integer_leaves(output: fx.Node, anchor: Anchor, held=frozenset()) -> list[fx.Node]:
    """Integer tensors the subgraph depends on that it does not compute itself (the selection).

    An integer tensor computed from floating-point data (a top-k of scores, say) is a leaf too:
    the pattern cannot and need not see how the selection was made. So are the nodes of
    ``held`` (positions the code computes from an input, read as the rows' positions).
    """
    softmax = anchor.node if anchor.kind == "softmax" else None
    seen, leaves, stack, memo = set(), [], [output] + ([anchor.pre] if softmax is not None else []), {}
    while stack:
        n = stack.pop()
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        call = canon(n)
        opaque = n.op in ("placeholder", "get_attr") or call is None or (
            call.name == "getitem" and shape_of(n.args[0]) is None
        ) or (n is not softmax and _selected_from_data(n, memo)) or n in held
        if n is not softmax and opaque:
            dt = dtype_of(n)
            shp = shape_of(n)
            if dt is not None and shp and not dt.is_floating_point and dt != torch.bool and n.op != "get_attr":
                leaves.append(n)
            continue
        if n is softmax:
            continue
        stack.extend(_inputs(n))
        stack.extend(mutations(n))  # a tensor updated in place (mask.scatter_(...)) reads the update's inputs
    return leaves


def _topk_len(node: fx.Node):
    """The length of the rows a top-k picked ``node`` (its indices) from, or None."""
    if canon(node) is None or canon(node).name != "getitem" or node.args[1] != 1:
        return None
    src = canon(node.args[0])
    if src is None or src.name != "topk":
        return None
    top = node.args[0]
    shp = shape_of(top.args[0])
    dim = top.args[2] if len(top.args) > 2 else top.kwargs.get("dim", -1)
    if shp is None or not isinstance(dim, int):
        return None
    return shp[dim]


# -- the checks -------------------------------------------------------------------------------------------


def _unscale(x):
    coef = 1.0
    while isinstance(x, Scaled):
        coef *= x.coef
        x = x.value
    return coef, x


class _Probe:
    """Point evaluation of one candidate under one selection table."""

    def __init__(self, gm, anchor, output, selection, table, leaves=frozenset(), stale=None, positions=None):
        self.anchor, self.softmax, self.output = anchor, anchor.node, output
        self.pre = anchor.pre
        self.dims_checked = False
        tables = {selection: table, **({positions[0]: positions[1]} if positions is not None else {})}
        if anchor.kind == "sdpa":
            self.dim = len(shape_of(anchor.node)) - 1
            self.ev = Evaluator(tables, leaves=leaves, module=gm, stale=stale)
        else:
            self.dim = anchor.dim % len(shape_of(anchor.node))
            self.ev = Evaluator(tables, leaves={anchor.node, *leaves}, module=gm, stale=stale)

    def product(self, point):
        val = self.ev.at(self.output, point)
        if not isinstance(val, Dot):
            raise NearMiss("the product after the softmax is not a matrix product of its row and a value tensor")
        return val

    def prob(self, dot, kk):
        coef, p = _unscale(dot.left(kk))
        if not isinstance(p, Leaf) or p.node is not self.softmax:
            raise NearMiss("the left side of the output product is not the softmax row")
        if coef != 1.0:
            raise NearMiss(
                f"the softmax probabilities are multiplied by {coef:g} before the output product: "
                "only views and casts may sit between the softmax and the product")
        return p.coords

    def value(self, dot, kk):
        coef, v = _unscale(dot.right(kk))
        if not isinstance(v, Leaf) or coef != 1.0:
            raise NearMiss("the right side of the output product is not a (gathered) value tensor")
        return v

    def score(self, row, j):
        c = list(row)
        c[self.dim] = j
        if self.anchor.kind == "sdpa":
            val = self.ev.sdpa_score(self.softmax, tuple(c))
        else:
            val = self.ev.at(self.pre, tuple(c))
        if val == NEG_INF:
            return None
        if not is_symbolic(val):
            raise NearMiss(
                f"masked scores are filled with {val!r}, not -inf: a row with nothing visible would "
                "average the masked keys instead of giving NaN; use float('-inf')"
            )
        coef, dot = _unscale(val)
        if isinstance(dot, Leaf) and dot.node.op in ("call_function", "call_method"):
            t = dot.node.target
            raise NearMiss(
                f"the scores pass through {getattr(t, '__name__', t)} ({dot.node.name}) between the score "
                "product and the softmax: only a constant scale and -inf masks may sit there"
            )
        if not isinstance(dot, Dot):
            raise NearMiss("the softmax input is not a scaled product of queries and keys")
        return coef, dot


def _leaf_of(x, what):
    coef, leaf = _unscale(x)
    if not isinstance(leaf, Leaf):
        raise NearMiss(f"the {what} side of the score product is not read from one tensor")
    return coef, leaf


def _first_distinct(values, count: int) -> tuple:
    out: list = []
    for c in values:
        if 1 <= c <= 1 << 16 and c not in out:
            out.append(c)
            if len(out) == count:
                break
    return tuple(out)


class Analysis:
    def __init__(self, gm: fx.GraphModule, anchor: Anchor, output: fx.Node, seed: int = 0, leaves=frozenset(),
                 memo: Memo | None = None, positions_at=None):
        self.gm, self.anchor, self.softmax, self.output = gm, anchor, anchor.node, output
        self.leaves = frozenset(leaves)  # nodes read as tensors even where the evaluator could see through them
        self.seed, self.memo = seed, memo
        self.q_first = None  # q's rows' offset when not the last rows (see _semantics_at_some_rows)
        self.entered: set = set()  # every node an evaluator entered: what the result depends on
        self.block_size_reads: list = []  # ((S, n, T), block sizes tried, whether that was all of them)
        self.swapped = False  # the score product has the keys on the left
        self.rng = random.Random(seed)
        self.stale = unfollowed_reads(gm.graph)
        self.visited: set = set()
        self._next_head = 0  # the (batch, query head) the next sampled row takes
        self._targets = None  # the key positions the code names (_key_targets), found once
        self._aiming = False  # the table being checked is the one aimed at them
        # positions_at: a node computed from the rows' positions input, read as the positions
        found = integer_leaves(output, anchor, frozenset() if positions_at is None else {positions_at})
        leaves = [n for n in found if len(shape_of(n)) in (3, 4)]
        if not leaves:
            raise LookupError("no block selection")  # not selected attention: leave it silently
        if len(leaves) > 1:
            raise NearMiss("more than one integer tensor feeds the attention: " + ", ".join(n.name for n in leaves))
        self.selection = leaves[0]
        # a [Tq] or [B, Tq] integer tensor besides: maybe the rows' positions (checked as such)
        rows = [n for n in found if len(shape_of(n)) in (1, 2)]
        if len(rows) > 1:
            raise NearMiss("more than one small integer tensor feeds the attention (row positions?): "
                           + ", ".join(n.name for n in rows))
        self.positions = rows[0] if rows else None
        self._pos_table = None  # the positions of the table being checked
        self.sel_shape = shape_of(self.selection)
        self.out_shape = shape_of(output)
        self.topk_len = _topk_len(self.selection)

    # Output row t is the query at key position t + q_offset, read from q's (and the selection's)
    # row t + q_shift: q holds the last Tq rows (shift 0), or all of them (shift rows_from).
    @property
    def q_shift(self) -> int:
        return self.rows_from or 0

    @property
    def q_offset(self) -> int:
        if self.rows_from is not None:
            return self.rows_from
        return self.T - self.Tq if self.q_first is None else self.q_first

    @property
    def trusted(self) -> bool:
        """Block indices from a top-k over at most ``ceil(T / bs)`` columns: in range, distinct.
        (A top-k over more columns can give entries past the last block: those are checked.)"""
        return self.topk_len is not None and self.topk_len <= math.ceil(self.T / self.block_size)

    # stage 1 + 2: structure and layouts, on an all-zeros selection (block 0 only)
    def structure(self):
        if self.positions is None:
            return self._structure(None)
        # every row past the keys (T is not known yet), so that each sees block 0; code that
        # indexes by the positions fails there: then at the largest size of a float input, less one
        try:
            return self._structure(1 << 20)
        except OutOfBounds:
            sizes = [s for n in self.gm.graph.nodes if n.op == "placeholder"
                     and (dtype_of(n) or torch.bool).is_floating_point for s in (shape_of(n) or ())]
            if not sizes:
                raise
            return self._structure(int(max(concrete(x) for x in sizes)) - 1)

    def _structure(self, at):
        zeros = torch.zeros(self.sel_shape, dtype=torch.long)
        last = None if at is None else (self.positions, torch.full(shape_of(self.positions), at, dtype=torch.long))
        probe = _Probe(self.gm, self.anchor, self.output, self.selection, zeros, self.leaves, self.stale, last)
        samples = []
        for _ in range(6):
            point = tuple(self.rng.randrange(s) for s in self.out_shape)
            dot = probe.product(point)
            S = dot.size
            row = probe.prob(dot, 0)
            for j in range(S):
                if probe.prob(dot, j)[probe.dim] != j or [c for d, c in enumerate(probe.prob(dot, j)) if d != probe.dim] != [c for d, c in enumerate(row) if d != probe.dim]:
                    raise NearMiss("the output product does not walk along the softmax row")
                sc = probe.score(row, j)
                if sc is None:
                    continue
                coef, sdot = sc
                dd = self.rng.randrange(sdot.size)
                (qc, ql), (kc, kl) = self._query_key(sdot, dd)
                vl = probe.value(dot, j)
                samples.append((point, dd, ql, kl, vl, sdot.size, S, coef * qc * kc))
                break
        self._seen(probe)
        if not samples:
            raise NearMiss("no query sees block 0 through this code (is the mask inverted?)")
        if self.anchor.kind == "softmax" and shape_of(self.softmax)[probe.dim] != samples[0][6]:
            raise NearMiss(
                f"the output product reads {samples[0][6]} of the softmax row's {shape_of(self.softmax)[probe.dim]} "
                "entries: the others (an attention sink, say) take probability the contract does not give")
        nodes = {(s[2].node, s[3].node, s[4].node) for s in samples}
        if len(nodes) != 1:
            raise NearMiss("queries, keys or values come from different tensors at different positions")
        (self.q, self.k, self.v) = nodes.pop()
        self.D, self.S = samples[0][5], samples[0][6]
        try:
            self.layout_options = self._layouts(samples)
        except LayoutMiss as miss:
            # Maybe the scores were written keys first (k_sel @ q): read the product the other way.
            self.swapped = True
            self.q, self.k = self.k, self.q
            try:
                self.layout_options = self._layouts([(p, dd, kl, ql, *rest) for p, dd, ql, kl, *rest in samples])
            except LayoutMiss:
                self.swapped = False
                self.q, self.k = self.k, self.q
                raise miss from None

    def _query_key(self, sdot, dd):
        """(coef, leaf) of the query and of the key side of one term of a score product."""
        a, b = sdot.left(dd), sdot.right(dd)
        if self.swapped:
            a, b = b, a
        return _leaf_of(a, "query"), _leaf_of(b, "key")

    def _layouts(self, samples):
        """Every assignment of layouts consistent with the samples (when sizes coincide, e.g.
        T == heads, several are; the semantic check picks the one that is the contract)."""
        options, shifted = [], False
        qs, ks, vs = shape_of(self.q), shape_of(self.k), shape_of(self.v)
        for (kn, kl), (vn, vl), (qn, ql), (on, ol), (sn, sl) in product(
            L.KEY.items(), L.KEY.items(), L.QUERY.items(), L.QUERY.items(), L.SELECTION.items()
        ):
            if len(kl) != len(ks) or len(vl) != len(vs) or len(ql) != len(qs) or len(ol) != len(self.out_shape):
                continue
            kz, vz = L.sizes(kl, ks, self.D), L.sizes(vl, vs, self.D)
            B, T, H = kz["b"], kz["t"], kz["h"]
            if kz["d"] != self.D or (vz["b"], vz["t"], vz["h"]) != (B, T, H):
                continue
            qz = L.sizes(ql, qs, self.D)
            if "hq" in qz:
                if qz["hq"] % H:
                    continue
                G = qz["hq"] // H
            else:
                if qz["h"] != H:
                    continue
                G = qz["g"]
            # The output's rows may be fewer than the keys: q (and the selection) then hold just
            # those rows (a decode step after a KV cache: the last Tq positions), or all T rows of
            # which the output reads a contiguous range (a chunk of queries: row t reads q's row
            # t + shift).
            oz = L.sizes(ol, self.out_shape, vz["d"])
            Tq = oz["t"]
            if (qz["b"], qz["d"]) != (B, self.D) or Tq > T or qz["t"] not in (Tq, T):
                continue
            if (oz["b"], oz.get("hq", oz.get("h", 0) * oz.get("g", 0))) != (B, H * G) or oz["d"] != vz["d"]:
                continue
            sz = L.sizes(sl, self.sel_shape)
            if (sz["b"], sz["t"], sz["h"]) != (B, qz["t"], H) or len(sl) != len(self.sel_shape):
                continue
            # None: q holds just the output's rows
            shift = self._row_shift(samples[0], ql, ol, G, H, vz["d"]) if qz["t"] != Tq else None
            if shift is not None and not 0 <= shift <= T - Tq:
                continue
            if all(self._consistent(s, kl, vl, ql, ol, G, H, shift=shift or 0) for s in samples):
                layouts = {"q": (qn, ql), "k": (kn, kl), "v": (vn, vl), "o": (on, ol), "selection": (sn, sl)}
                options.append((layouts, (B, T, H, G, vz["d"], sz["i"], Tq, shift)))
            elif all(self._consistent(s, kl, vl, ql, ol, G, H, same_v=False, shift=shift or 0) for s in samples):
                shifted = True
        if options:
            return options
        if shifted:
            raise NearMiss("values are not read at the same positions as the keys")
        raise LayoutMiss(
            "could not read q, k, v and the output as [B, T, H, D] or [B, H, T, D] tensors "
            f"(q {list(qs)}, k {list(ks)}, v {list(vs)}, output {list(self.out_shape)}, "
            f"selection {list(self.sel_shape)})"
        )

    def _row_shift(self, s, ql, ol, G, H, Dv):
        """q's row minus the output's row in one sample (a chunk of a full-length q)."""
        point, dd, qleaf = s[:3]
        try:
            return L.decode(ql, qleaf.coords, G, self.D, H)["t"] - L.decode(ol, point, G, Dv, H)["t"]
        except (KeyError, IndexError, ValueError, ZeroDivisionError):
            return None

    def _consistent(self, s, kl, vl, ql, ol, G, H, same_v=True, shift=0):
        point, dd, qleaf, kleaf, vleaf = s[:5]
        D, Dv = self.D, L.sizes(vl, shape_of(self.v), self.D)["d"]
        o = L.decode(ol, point, G, Dv, H)
        q = L.decode(ql, qleaf.coords, G, D, H)
        k = L.decode(kl, kleaf.coords, 1, D)
        v = L.decode(vl, vleaf.coords, 1, Dv)
        return (
            q["d"] == dd and k["d"] == dd
            and (q["b"], q["t"] - shift, q["hq"]) == (o["b"], o["t"], o["hq"])
            and k["b"] == o["b"] == v["b"] and k["h"] == o["hq"] // G
            and v["d"] == o["d"] and ((v["t"], v["h"]) == (k["t"], k["h"]) or not same_v)
        )

    # stage 3 + 4: what each query attends to, on random selections
    def _table(self, kind):
        sl = self.layouts["selection"][1]
        nb = math.ceil(self.T / self.block_size)
        shape = self.sel_shape
        g = torch.Generator().manual_seed(self.rng.randrange(2**31))
        t_axis = sl.index("t")
        if self.positions is not None:
            # every row's position drawn at random (unsorted, repeated; outside [0, T) for that kind)
            self._pos_table = self._positions_table(g, kind == "positions")
            rows = self._pos_table.view(-1, self.Tq).expand(self.B, self.Tq).clamp(0, self.T - 1)
            tpos = rows.view([self.B if r == "b" else self.Tq if r == "t" else 1 for r in sl]).expand(shape)
        else:
            # the selection rows' key positions: the last Tq of the T keys, or all T (a chunk's q)
            first = self.q_offset - self.q_shift
            tpos = torch.arange(first, first + shape[t_axis]).view([-1 if d == t_axis else 1 for d in range(len(shape))]).expand(shape)
        table = torch.randint(0, nb, shape, generator=g)
        local = torch.rand(shape, generator=g) < 0.3
        table = torch.where(local, (tpos // self.block_size - torch.randint(0, 2, shape, generator=g)).clamp(0, nb - 1), table)
        if self.trusted:  # topk over at most nb columns: in range, no duplicates within a row
            if shape[-1] > nb:
                return table
            # n distinct blocks per row, in random order, without a [rows, nb] tensor (nb is large
            # when a match is checked again at a long T)
            n = shape[-1]
            picks = torch.randint(0, nb - n + 1, shape, generator=g).sort(-1).values + torch.arange(n)
            return self._aim_at_numbers(picks.gather(-1, torch.rand(shape, generator=g).argsort(-1)), tpos)
        dup = torch.rand(shape, generator=g) < 0.2
        table = torch.where(dup, table.roll(1, -1), table)
        if kind in ("padding", "out_of_range"):
            if kind == "padding":
                odd = torch.full_like(table, -1)
                table = torch.where(torch.rand(shape, generator=g) < 0.3, odd, table)
                # every negative entry is padding, not only -1 (code that tests `== -1` differs)
                forced = -torch.randint(2, nb + 3, shape, generator=g)
            else:
                odd = nb + torch.randint(0, 3, shape, generator=g)
                table = torch.where(torch.rand(shape, generator=g) < 0.25, odd, table)
                forced = odd
            # at least one such entry in every row: the few rows sampled must meet one (a code that
            # clamps instead of dropping differs only where the entry is visible, e.g. at t = T-1)
            slot = torch.randint(0, shape[-1], (*shape[:-1], 1), generator=g)
            table = table.scatter(-1, slot, forced.gather(-1, slot))
            table = self._aim_at_numbers(table, tpos, slot)
        elif kind == "positions":
            # the last block in every row (its keys past T are what a row past the keys would see
            # first), and where the code drops entries past the last block, one of those too
            slot = torch.randint(0, shape[-1], (*shape[:-1], 1), generator=g)
            table = table.scatter(-1, slot, torch.full_like(slot, nb - 1))
            if self.on_out_of_range == "drop" and shape[-1] > 1:
                other = (slot + 1) % shape[-1]
                table = table.scatter(-1, other, nb + torch.randint(0, 3, other.shape, generator=g))
        elif kind == "duplicates" and shape[-1] > 1:
            # two slots of every row hold the query's own block, which it always sees
            slots = torch.rand(shape, generator=g).argsort(-1)[..., :2]
            own = (tpos // self.block_size).gather(-1, slots)
            table = table.scatter(-1, slots, own)
        else:
            table = self._aim_at_numbers(table, tpos)
        return table

    def _key_targets(self) -> list:
        """Key positions the code names: the integer numbers in ``[0, T)`` of the subgraph's nodes
        (at most 32, in the order met), where code singling out one query or key would show."""
        if self._targets is None:
            found = []
            for node in _walk(self.output, lambda n: list(_inputs(n))):
                for a in flat_args(list(node.args) + list(node.kwargs.values())):
                    if type(a) is int and 0 <= a < self.T and a not in found:
                        found.append(a)
            self._targets = found[:32]
        return self._targets

    def _aim_at_numbers(self, table, tpos, avoid=None):
        """The table with the rows at a number of the code (and the next one) selecting the block
        that holds it, in one slot (not ``avoid``, a slot the table's kind needs), where they do
        not already: so that a sampled row at that number sees that key. Only in the one more
        table of each kind that :meth:`_check` draws for it (``_aiming``): the random tables keep
        those rows' random blocks, which are evidence too."""
        n = table.shape[-1]
        if not self._aiming or not self._key_targets() or (avoid is not None and n < 2):
            return table
        at = tpos[..., :1]
        slot = torch.zeros_like(at) if avoid is None else (avoid + 1) % n
        for c in self._key_targets():
            want = torch.full_like(at, c // self.block_size)
            rows = ((at == c) | (at == min(c + 1, self.T - 1))) & ~(table == want).any(-1, keepdim=True)
            table = torch.where(rows, table.scatter(-1, slot, want), table)
        return table

    def _positions_table(self, g, outside: bool):
        """Positions for the rows' tensor: random keys, some at the first and the last, and in
        about half of the tables two rows alike; with ``outside`` also before 0 and past the last
        key. Every entry is drawn on its own, so that no two of them are equal in every table:
        code that reads the rows at other entries than their own (the first row's position for
        every row, the positions reversed, a ``[B]`` or ``[H]`` tensor of the same length as the
        rows) meets tables where those entries differ."""
        shape = shape_of(self.positions)
        pos = torch.randint(0, self.T, shape, generator=g)
        u = torch.rand(shape, generator=g)
        pos = torch.where(u < 0.15, self.T - 1, torch.where(u < 0.25, 0, pos))
        if outside:  # past the last key (past the last block's end, too) and before the first
            u = torch.rand(shape, generator=g)
            pos = torch.where(u < 0.35, self.T + self.block_size + torch.randint(0, 3, shape, generator=g), pos)
            pos = torch.where((u >= 0.35) & (u < 0.5), self.T + torch.randint(0, 3, shape, generator=g), pos)
            pos = torch.where((u >= 0.5) & (u < 0.7), -torch.randint(1, 4, shape, generator=g), pos)
        if self.Tq > 1 and bool(torch.rand((), generator=g) < 0.5):
            i, j = torch.randperm(self.Tq, generator=g)[:2].tolist()
            flat = pos.view(-1, self.Tq)
            flat[:, i] = flat[:, j]
        return pos

    def _row_position(self, o) -> int:
        """The key position of the output row ``o`` (decoded coordinates)."""
        if self.positions is None:
            return o["t"] + self.q_offset
        pt = self._pos_table.view(-1, self.Tq)
        return int(pt[o["b"] if pt.shape[0] > 1 else 0, o["t"]])

    def _rows(self, count):
        """``count`` output rows. Their (batch, query head) rotate over the tables of a check
        (:meth:`_check` asks for enough rows, at most 16 a table, that each kind of table meets
        every one, or the next ones where there are more): a mask that is wrong for one head or
        one batch item shows in that head's rows only."""
        ol = self.layouts["o"][1]
        heads = self.B * self.H * self.G
        points = []
        for r in range(count):
            p = [self.rng.randrange(s) for s in self.out_shape]
            t_dim = ol.index("t")
            if r % 3 == 1:
                p[t_dim] = self.Tq - 1
            elif r % 3 == 2:
                p[t_dim] = self.rng.randrange(min(self.Tq, 2 * self.block_size))
            if self._aiming and self.positions is None:
                # every row at a number of the code (or the next one): code can single out a query
                # or a key only through a number, and a random row rarely meets it
                targets = self._key_targets()
                t = targets[(r // 2) % len(targets)] + r % 2 - self.q_offset
                if 0 <= t < self.Tq:
                    p[t_dim] = t
            b, hq = divmod(self._next_head % heads, self.H * self.G)
            self._next_head += 1
            points.append(L.with_head(ol, tuple(p), b, hq, self.G, self.Dv, self.H))
        return points

    def _form_keys(self, probe, point):
        """Visible key positions (with multiplicity) of one output row, and the scale."""
        ol, kl, vl, ql = (self.layouts[x][1] for x in ("o", "k", "v", "q"))
        o = L.decode(ol, point, self.G, self.Dv, self.H)
        dot = probe.product(point)
        if dot.size != self.S:
            raise NearMiss("the output product's length differs between rows")
        row = probe.prob(dot, 0)
        keys, scales = Counter(), set()
        first = not probe.dims_checked  # once per table: a permuted head dim shows in any row
        probe.dims_checked = True
        for j in range(self.S):
            pc = probe.prob(dot, j)
            if pc[probe.dim] != j or any(pc[d] != row[d] for d in range(len(row)) if d != probe.dim):
                raise NearMiss("the output product does not walk along the softmax row")
            sc = probe.score(row, j)
            if sc is None:
                continue
            coef, sdot = sc
            # every head-dim coordinate at the table's first visible key, the two ends elsewhere
            for dd in range(self.D) if first else {0, self.D - 1}:
                (qc, ql_), (kc, kl_) = self._query_key(sdot, dd)
                q = L.decode(ql, ql_.coords, self.G, self.D, self.H)
                k = L.decode(kl, kl_.coords, 1, self.D)
                if ql_.node is not self.q or kl_.node is not self.k:
                    raise NearMiss("scores read other tensors than the matched q and k")
                if (q["b"], q["t"] - self.q_shift, q["hq"], q["d"]) != (o["b"], o["t"], o["hq"], dd) or (
                    k["b"], k["h"], k["d"]) != (o["b"], o["hq"] // self.G, dd):
                    raise NearMiss("the score product does not pair a query with keys of its own head and batch")
            scales.add(float(f"{coef * qc * kc:.12g}"))  # (to 12 significant digits: a tiny scale is one too)
            v = L.decode(vl, probe.value(dot, j).coords, 1, self.Dv)
            if (v["b"], v["h"], v["t"], v["d"]) != (o["b"], o["hq"] // self.G, k["t"], o["d"]):
                raise NearMiss("values are not read at the same positions as the keys")
            if first:
                for d in range(self.Dv):
                    vd = L.decode(vl, probe.value(probe.product(L.with_d(ol, point, d, self.Dv)), j).coords, 1, self.Dv)
                    if (vd["b"], vd["h"], vd["t"], vd["d"]) != (v["b"], v["h"], v["t"], d):
                        raise NearMiss("the output's head dim does not read the values' head dim in order")
            first = False
            keys[k["t"]] += 1
        return o, keys, scales

    def _contract_keys(self, table, o, causal, count_duplicates, drop_oob):
        sl = self.layouts["selection"][1]
        h = o["hq"] // self.G
        coords = [0] * len(sl)
        keys = Counter()
        nb = math.ceil(self.T / self.block_size)
        entries = []
        for i in range(self.n):
            for role, val in (("b", o["b"]), ("t", o["t"] + self.q_shift), ("h", h), ("i", i)):
                if role in sl:
                    coords[sl.index(role)] = val
            e = int(table[tuple(coords)])
            if e < 0 or (e >= nb and drop_oob):
                continue
            entries.append(e)
        if not count_duplicates:
            entries = list(dict.fromkeys(entries))
        pos = self._row_position(o)
        for e in entries:
            for s in range(e * self.block_size, (e + 1) * self.block_size):
                if s < self.T and (not causal or s <= pos):
                    keys[s] += 1
        return keys

    def _check(self, kind, options, rows):
        """Options (causal, count_duplicates) consistent with every sampled row of one table kind.

        Small graphs have few distinct rows, so they get more random tables: the evidence is
        (table, row) pairs, and a wrong reading (a block size, a mask) must fail on some of them.
        Returns the surviving options, or the string "raises" if eager fails on a table.
        """
        n_rows = math.prod(self.out_shape) // max(1, self.out_shape[-1])
        reps = 1 if n_rows >= 1024 else 2 if n_rows >= 128 else 6
        rows = max(rows, math.ceil(min(self.B * self.H * self.G, 16 * reps) / reps))  # <= 16 a table
        survivors = list(options)
        for _ in range(reps):
            survivors = self._check_table(kind, survivors, rows)
            if survivors == "raises" or not survivors:
                return survivors
        if self._key_targets():  # one more, its rows at the code's numbers selecting their blocks
            self._aiming = True
            try:
                survivors = self._check_table(kind, survivors, max(rows, 2 * len(self._key_targets())))
            finally:
                self._aiming = False
        return survivors

    def _seen(self, probe):
        self.entered |= probe.ev.entered
        for node, _ in probe.ev.cache:
            if node not in self.visited:
                self.visited.add(node)
                self.visited.update(mutations(node))

    def _check_table(self, kind, options, rows):
        table = self._table(kind)
        pos = (self.positions, self._pos_table) if self.positions is not None else None
        probe = _Probe(self.gm, self.anchor, self.output, self.selection, table, self.leaves, self.stale, pos)
        try:
            return self._check_rows(kind, options, rows, table, probe)
        finally:
            self._seen(probe)

    def _check_rows(self, kind, options, rows, table, probe):
        survivors = list(options)
        example = None
        for point in self._rows(rows):
            try:
                o, keys, scales = self._form_keys(probe, point)
            except OutOfBounds:
                return "raises"
            self.scales |= scales
            kept = [
                opt for opt in survivors
                if self._contract_keys(table, o, opt[0], opt[1], kind == "out_of_range") == keys
            ]
            if not kept and example is None:
                example = (o, keys)
            survivors = kept
            if not survivors:
                break
        if not survivors and example is not None:
            o, keys = example
            exp = self._contract_keys(table, o, True, True, True)
            at = f" at key position {self._row_position(o)}" if self.Tq != self.T or self.positions is not None else ""
            self.last_failure = (
                f"query t={o['t']}{at} (batch {o['b']}, head {o['hq']}) attends to {sum(keys.values())} keys, "
                f"the contract gives {sum(exp.values())} for its selected blocks"
            )
        return survivors

    def _block_sizes(self):
        return self.block_sizes_for(self.S, self.n, self.T)

    def block_sizes_for(self, S, n, T):
        """Block sizes to try: ``S / n`` (the gather form's row holds n blocks), then the integer
        constants of the graph (a dense mask's row holds all T keys; its block size is one of the
        constants its construction uses); each is verified, none is assumed. Inside
        :func:`block_size_known`, only that one (so that the memo reuses such verdicts only there)."""
        if _KNOWN_BLOCK_SIZE:
            return [_KNOWN_BLOCK_SIZE[-1]]
        out = []
        if S % n == 0 and S != T:
            out.append(S // n)
        index_ops, other = (list(c) for c in self._graph_constants())
        if S % n == 0 and S == T:
            index_ops.append(S // n)  # a row of T keys: a gather of n blocks that fill T, or a mask
        for c in index_ops + other:
            if 1 <= c <= 1 << 16 and c not in out:
                out.append(c)
        return out[:12]

    def _graph_constants(self) -> tuple:
        """The first distinct integers in range of the graph's index ops (and integer inputs), and
        of its other ops: all :meth:`block_sizes_for` reads of the graph."""
        if getattr(self, "_constants", None) is None:
            index_ops, other = [], []
            for node in self.gm.graph.nodes:
                call = canon(node)
                bucket = index_ops if call is not None and call.name in (
                    "floordiv", "repeat_interleave", "mul", "div", "arange", "add") else other
                for a in list(node.args) + list(node.kwargs.values()):
                    for x in (a if isinstance(a, (list, tuple)) else (a,)):
                        if isinstance(x, int) and not isinstance(x, bool):
                            bucket.append(x)
                if node.op == "placeholder" and isinstance(example_value(node), (int, torch.SymInt)):
                    index_ops.append(int(concrete(example_value(node))))
            self._constants = tuple(_first_distinct(c, 13) for c in (index_ops, other))
        return self._constants

    def _semantics_at_some_rows(self, T, Tq, shift) -> bool:
        """The semantics with q's rows at the last Tq key positions, else (when the keys each
        query attends to say the positions are other ones) at a few other fixed positions the
        graph's constants name, each verified like the first. False and ``_miss`` set if none."""
        self._miss, tried = None, []
        if self.positions is not None:
            return self._semantics_at_positions(T, Tq, shift)
        for at in self._row_positions(T, Tq, shift):
            self.q_first = at
            try:
                self.semantics()
                return True
            except NearMiss as e:
                self._miss = self._miss or e
                if not isinstance(e, KeysMiss):
                    break  # a miss that the rows' positions cannot explain
                if at is not None:
                    tried.append(at)
        self.q_first = None
        if tried and isinstance(self._miss, KeysMiss):
            self._miss = KeysMiss(f"{self._miss}; with q's rows starting at key position "
                                  f"{', '.join(map(str, tried))} instead (numbers in the graph) it does not fit either")
        return False

    def _semantics_at_positions(self, T, Tq, shift) -> bool:
        """The semantics with each row at the position the positions tensor gives (random ones,
        then ones outside the keys as well). False and ``_miss`` set if it does not hold."""
        shape = tuple(shape_of(self.positions))
        if shift is not None or shape not in ((Tq,), (1, Tq), (self.B, Tq)):
            self._miss = NearMiss(
                f"integer tensor {self.positions.name} {list(shape)} feeds the attention besides the selection: "
                f"it is not the output rows' positions ([T_q] = [{Tq}] or [B, T_q] = [{self.B}, {Tq}])")
            return False
        try:
            self.semantics()
        except NearMiss as e:
            self._miss = NearMiss(f"{e} (each row at the position {self.positions.name} gives)")
            return False
        return True

    def _row_positions(self, T, Tq, shift):
        yield None  # the last Tq positions: a decode step, a chunk after a KV cache
        if shift is not None or Tq == T:
            return
        # numbers of the attention's own subgraph, positions' likely makers first: the start of an
        # `arange(start, stop)`, of a slice (a mask's rows), an operand of index arithmetic
        found = []

        def reads(node):  # (what a slice holds as well, and in-place updates)
            return [x for x in flat_args(list(node.args) + list(node.kwargs.values())) if isinstance(x, fx.Node)] \
                + list(mutations(node))

        for node in _walk(self.output, reads):
            call = canon(node)
            name = call.name if call is not None else ""
            args = list(node.args) + list(node.kwargs.values())
            ranked = []
            if name == "arange" and len(node.args) >= 2:
                ranked.append((0, node.args[0]))
            for a in args:
                if isinstance(a, slice):
                    ranked.append((1, a.start))
                elif isinstance(a, (list, tuple)):
                    ranked.extend((1, x.start) for x in a if isinstance(x, slice))
            ranked.extend((2 if name in ("add", "sub") else 3, x) for x in flat_args(args))
            for r, x in ranked:
                if isinstance(x, fx.Node):
                    if not isinstance(example_value(x), torch.SymInt):
                        continue
                    x = int(concrete(example_value(x)))  # (matcher._specialize guards what the match read)
                if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < T - Tq:
                    found.append((r, x))
        ordered = [x for _, x in sorted(found, key=lambda f: f[0])]
        yield from list(dict.fromkeys([0] + ordered))[:MAX_ROW_POSITIONS]

    def semantics(self):
        first = None
        sizes, tried = self._block_sizes(), []
        try:
            for bs in sizes:
                tried.append(bs)
                self.block_size = bs
                try:
                    return self._semantics()
                except NearMiss as e:
                    first = first or e
        finally:
            # what the verdict read of the graph's constants (:class:`.memo.Memo` compares it)
            self.block_size_reads.append(((self.S, self.n, self.T), tuple(tried), len(tried) == len(sizes)))
        raise first or NearMiss("could not find the block size")

    def _check_valid(self, kind, options, rows):
        """The options that survive tables of valid selections (``kind`` "valid" or "duplicates"),
        or the near miss that says why none does."""
        surv = self._check(kind, options, rows)
        if surv == "raises":
            raise NearMiss("the code fails (index out of range) on valid block indices")
        if not surv:
            raise KeysMiss(
                "the keys each query attends to are not the causal (or full) keys of its selected blocks: "
                + self.last_failure
            )
        return surv

    def _out_of_range(self, surv, rows, why):
        """Sets what the code does with entries >= ceil(T / bs) (fails: the op asserts; drops:
        the op drops) and returns the surviving options, or raises the near miss."""
        oob = self._check("out_of_range", surv, rows)
        if oob == "raises":
            self.on_out_of_range = "assert"
            return surv
        if oob:
            self.on_out_of_range = "drop"
            return oob
        raise NearMiss(f"block indices >= ceil(T / block_size){why} are neither rejected nor dropped by this code")

    def _semantics(self):
        self.scales = set()
        self.last_failure = ""
        dt = dtype_of(self.selection)
        if dt is not None and dt.itemsize < 4:
            # the evaluator's integers do not wrap; eager's int8/uint8/int16 arithmetic does
            top = torch.iinfo(dt).max
            if (math.ceil(self.T / self.block_size) + 3) * self.block_size > top:
                raise NearMiss(
                    f"block indices are {dt}: token positions up to {self.T} overflow it in the index "
                    "arithmetic; give block indices the dtype torch.int32 or torch.long")
        rows = 8 if self.S <= 256 else 4
        options = list(product((True, False), (True, False)))
        surv = self._check_valid("valid", options, rows)
        if self.topk_len is not None and not self.trusted:
            # a top-k gives no negative entries, but may give entries past the last block
            surv = self._out_of_range(surv, rows, f" (this top-k runs over {self.topk_len} columns)")
        elif not self.trusted:
            pad = self._check("padding", surv, rows)
            if pad == "raises":
                raise NearMiss("negative (padding) block indices make this code index out of range")
            if not pad:
                raise NearMiss(
                    "negative (padding) block indices are not masked out: mask them, e.g. "
                    "masked_fill(~(block_indices >= 0)...), or select with torch.topk"
                )
            surv = self._out_of_range(pad, rows, "")
        else:
            self.on_out_of_range = "assert"
        if {o[1] for o in surv} == {True, False} and not self.trusted and self.n > 1:
            # no sampled row met a visible duplicate: ask again with tables where every row has one
            surv = self._check_valid("duplicates", surv, rows)
        self.positions_outside = "any"
        if self.positions is not None:
            # Rows before the first key see none, rows past the last all keys of their blocks: where
            # the code fails there or gives something else, the rewrite asserts 0 <= position < T
            out = self._check("positions", surv, rows)
            if out == "raises" or not out:
                self.positions_outside = "assert"
            else:
                surv = out
        if len(self.scales) != 1:
            raise NearMiss(f"the score scale is not one constant (saw {sorted(self.scales)[:3]})")
        self.scale = self.scales.pop()
        self.causal = surv[0][0]
        self.count_duplicates = surv[0][1] if not self.trusted else True
        if {o[1] for o in surv} == {True, False} and not self.trusted and self.n > 1:
            # (with one slot per row there are no duplicates, so both readings agree)
            raise NearMiss("could not tell whether duplicate block indices count once or twice")

    def run(self) -> Match:
        recalled, check = self.memo.recall(self) if self.memo is not None else (None, False)
        if recalled is not None and not check:
            return recalled
        match = self._run() if recalled is not None else self._run_announced()
        if self.memo is not None:
            if recalled is not None:
                self.memo.compare(recalled, match)
            else:
                self.memo.remember(self, match)
        return match

    def _run_announced(self) -> Match:
        # the checks of a new subgraph take seconds (tens at long T on a slow host): say so first
        log.info("fsa_compile: checking the softmax at %s against the selected-attention contract "
                 "on random selections (once per distinct layer) ...", self.output.name)
        start = time.perf_counter()
        try:
            return self._run()
        finally:
            log.info("fsa_compile: checked %s in %.1f s", self.output.name, time.perf_counter() - start)

    def _run(self) -> Match:
        self.structure()
        first = None
        for layouts, (B, T, H, G, Dv, n, Tq, shift) in self.layout_options:
            self.layouts = layouts
            self.B, self.T, self.H, self.G, self.Dv, self.n, self.Tq = B, T, H, G, Dv, n, Tq
            self.rows_from = shift  # None: q holds the output's rows only
            if self._semantics_at_some_rows(T, Tq, shift):
                break
            first = first or self._miss
        else:
            raise first
        if self.anchor.kind == "sdpa":
            form = "sdpa"
        else:
            form = "gather" if self.S == self.n * self.block_size and self.S != self.T else "dense-mask"
        return Match(
            FAMILY, self.output, self.softmax, self.q, self.k, self.v, self.selection, self.layouts,
            self.B, self.T, self.H, self.G, self.D, self.n, self.block_size, self.scale, self.causal,
            self.count_duplicates, self.on_out_of_range, form,
            empty_rows="zero" if self.anchor.kind == "sdpa" else "nan", visited=frozenset(self.visited),
            Tq=self.Tq, rows_from=self.rows_from, q_first=self.q_first, positions=self.positions,
            positions_outside=self.positions_outside if self.positions is not None else "any",
        )


def _walk(root: fx.Node, reads):
    """``root`` and every node it reads, transitively (``reads(node)``: the nodes ``node`` reads)."""
    seen, stack = set(), [root]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        yield n
        stack.extend(reads(n))


def _float_index_casts(output: fx.Node) -> list[fx.Node]:
    """Casts from floating point to an integer dtype among the ancestors of ``output``."""
    found = []
    for n in _walk(output, _inputs):
        call = canon(n)
        if call is not None and call.name == "cast" and isinstance(n.args[0], fx.Node):
            dt, src = dtype_of(n), dtype_of(n.args[0])
            if dt is not None and src is not None and src.is_floating_point and not dt.is_floating_point and dt != torch.bool:
                found.append(n)
    return found


def _float_index_miss(output, casts) -> NearMiss:
    c = casts[0]
    return NearMiss(
        f"an index is computed in floating point ({c.args[0].name}: {dtype_of(c.args[0])}, cast to "
        f"{dtype_of(c)} by {c.name}): give block indices an integer dtype (torch.long or torch.int32)"
    )


_RESHAPES = ("reshape", "flatten", "unflatten")


def _view_users(nodes) -> frozenset:
    """For tensors the layouts cannot read, the view each one is read through, if it has exactly
    one (``torch.stack([x1, x2], -1).flatten(-2)`` in an interleaved RoPE: q is the flattened view,
    not the 5-D stack)."""
    out = set()
    for n in nodes:
        views = [u for u in n.users if (c := canon(u)) is not None and c.name in _RESHAPES]
        if len(views) == 1:
            out.add(views[0])
    return frozenset(out)


def _computed_positions(gm: fx.GraphModule, anchor: Anchor, output: fx.Node):
    """An integer node the code computes from a ``[T_q]`` / ``[B, T_q]`` integer input beside the
    selection, of the same shape, that the attention reads it through (``cp.clamp(0, T - 1)``,
    ``cp + 1``): the one such user, or None."""
    found = [n for n in integer_leaves(output, anchor) if len(shape_of(n)) in (1, 2)]
    if len(found) != 1:
        return None
    inside = set(_walk(output, lambda n: list(_inputs(n))))
    users = [u for u in found[0].users if u in inside and canon(u) is not None and dtype_of(u) is not None
             and dtype_of(u) != torch.bool and not dtype_of(u).is_floating_point and shape_of(u) == shape_of(found[0])]
    return users[0] if len(users) == 1 else None


def analyze(gm: fx.GraphModule, anchor: Anchor, output: fx.Node, memo: Memo | None = None) -> Match:
    """A verified match, or raises NearMiss (with the reason) / LookupError (not attention).
    ``memo``: the verified matches of this pass, reused where a candidate reads the same.

    Where q's rows' positions come from an input through an integer op of the same shape (a clamp,
    a shift), and the reading of the input itself fails or needs the assertion, the op's result is
    read as the positions instead: what the code computes from them is then the op's to the
    letter, inside the keys or not."""
    try:
        m = _analyze(gm, anchor, output, memo)
    except NearMiss as miss:
        at = _computed_positions(gm, anchor, output)
        if at is None:
            raise
        try:
            return Analysis(gm, anchor, output, memo=memo, positions_at=at).run()
        except (NearMiss, LookupError, Unsupported, LayoutMiss):
            raise miss from None
    if m.positions is not None and m.positions_outside == "assert":
        at = _computed_positions(gm, anchor, output)
        if at is not None and at is not m.positions:
            try:
                m2 = Analysis(gm, anchor, output, memo=memo, positions_at=at).run()
                if m2.positions_outside == "any":
                    return m2
            except (NearMiss, LookupError, Unsupported, LayoutMiss):
                pass
    return m


def _analyze(gm: fx.GraphModule, anchor: Anchor, output: fx.Node, memo: Memo | None = None) -> Match:
    try:
        try:
            analysis = Analysis(gm, anchor, output, memo=memo)
            return analysis.run()
        except Unsupported:
            # Reads of memory written in place (a KV cache filled before it is attended to): as
            # data, where the evaluator could not follow the write. Only as a fallback, for the
            # same reason as the views below; the first reason stands if this fails too.
            written = reads_after_float_writes(gm.graph)
            if not written:
                raise
            try:
                return Analysis(gm, anchor, output, leaves=written, memo=memo).run()
            except (NearMiss, LookupError, Unsupported):
                pass
            raise
        except LayoutMiss as miss:
            # Tensors built by an op the evaluator does not follow (stack, cat) and then viewed:
            # read them as their views. Only as a fallback, since seeing through a view is what
            # makes merged layouts such as [B, T, H*D] readable.
            lifted = _view_users({getattr(analysis, a, None) for a in "qkv"} - {None})
            if not lifted:
                raise
            try:
                return Analysis(gm, anchor, output, leaves=lifted, memo=memo).run()
            except (NearMiss, LookupError, Unsupported):
                raise miss from None  # the first reading's reason (and the matcher tries the next output)
    except Unsupported as e:
        casts = _float_index_casts(output)
        if casts:
            raise _float_index_miss(output, casts) from None
        raise NearMiss(f"cannot follow the subgraph: {e}") from None
    except LookupError:
        casts = _float_index_casts(output)
        if casts:
            raise _float_index_miss(output, casts) from None
        raise
