"""The pattern pass: find selected attention in a Dynamo graph, rewrite it, explain the misses."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import sympy
import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import guard_bool, guard_int

from . import rewrite, softmax_attention, topk
from .memo import SHARED
from .ops import concrete, dtype_of, example_value, flat_args, substituted
from .points import Aliases, is_write, mutations, remove_dead_code, write_target

log = logging.getLogger("fsa_compile")


@dataclass
class Rewrite:
    pattern: str
    node: str
    shapes: dict
    options: dict
    plan: str = ""
    # the earlier match whose checks this one reused (its subgraph reads the same: another layer)
    same_as: str = ""

    def __str__(self) -> str:
        s = self.shapes
        shape = ", ".join(f"{k}={v}" for k, v in s.items())
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        same = f" (checks shared with {self.same_as})" if self.same_as else ""
        return f"{self.pattern} at {self.node}{same}: {shape}; {opts}; plan: {self.plan}"


@dataclass
class Miss:
    pattern: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.pattern} at {self.node}: {self.reason}"


@dataclass
class PassResult:
    rewrites: list = field(default_factory=list)  # selected attention
    misses: list = field(default_factory=list)
    others: list = field(default_factory=list)  # row top-k (the selection's top-n)
    seconds: float = 0.0  # how long the pass took


def _describe(m, offset=None) -> tuple[dict, dict]:
    """``offset``: the int input q's rows start at, where the rewrite passes one (``_offset_input``)."""
    shapes = {"B": m.B, "T": m.T, "H": m.H, "G": m.G, "D": m.D, "n": m.n, "block_size": m.block_size}
    if m.Tq != m.T:  # the output's rows: the last Tq key positions (after a KV cache), or a chunk
        first = m.rows_from if m.rows_from is not None else m.q_first
        rows = {"T_q": m.Tq} if first is None else {"T_q": m.Tq, "rows": f"{first}..{first + m.Tq - 1}"}
        if offset is not None:
            name = offset.name  # the input's name in Dynamo's graph
            rows["rows"] = name if m.Tq == 1 else f"{name}..{name}+{m.Tq - 1}"
        shapes = {"B": m.B, **rows, "T": m.T, **{k: v for k, v in shapes.items() if k not in ("B", "T")}}
    if m.positions is not None:  # each row at the position the tensor gives
        rows = {"T_q": m.Tq, "rows": f"{m.positions.name}[i]"}
        shapes = {"B": m.B, **rows, "T": m.T, **{k: v for k, v in shapes.items() if k not in ("B", "T", "T_q", "rows")}}
    options = {
        "scale": float(f"{m.scale:.6g}"), "causal": m.causal, "count_duplicates": m.count_duplicates,
        "on_out_of_range": m.on_out_of_range,
        "layouts": "/".join(m.layouts[x][0] for x in ("q", "k", "v", "o")),
        # what the op computes in: q, k, v are cast to it (the narrowest the user's products read)
        "dtype": str(rewrite.input_dtype(m) or "?").removeprefix("torch."),
    }
    if m.positions is not None:  # rows at positions outside the keys: passed to the op, or asserted against
        options["positions_outside"] = m.positions_outside
    return shapes, options


def _symints(x):
    if isinstance(x, torch.SymInt):
        yield x
    elif isinstance(x, torch.Tensor):
        yield from (s for s in x.shape if isinstance(s, torch.SymInt))


def _unify(m) -> None:
    """The match read q, k, v and the selection as one B and one T (or q and the selection as
    Tq rows, k and v as T keys); under dynamic shapes Dynamo may have given each its own symbol
    (the code never compared them): guard that they are equal, as the op assumes."""
    ref = {}
    for role in ("q", "k", "v", "selection"):
        ev = example_value(getattr(m, role))
        layout = m.layouts[role][1]
        if not isinstance(ev, torch.Tensor):
            continue
        for dim_role in ("b", "t"):
            if dim_role not in layout:
                continue
            size = ev.shape[layout.index(dim_role)]
            key = "tq" if dim_role == "t" and role in ("q", "selection") and m.q_holds_rows_only else dim_role
            if key not in ref:
                ref[key] = size
            elif isinstance(size, torch.SymInt) or isinstance(ref[key], torch.SymInt):
                guard_bool(size == ref[key])


def _k_size_symbol(m, role):
    """k's size of the dim ``role`` ("t", "b") as a symbol (None where it is a number or the
    layout has no such dim)."""
    ev = example_value(m.k)
    layout = m.layouts["k"][1]
    size = ev.shape[layout.index(role)] if isinstance(ev, torch.Tensor) and role in layout else None
    return size if isinstance(size, torch.SymInt) else None


def _t_symbol(m):
    """The keys' length as a symbol (q's rows share it unless q holds fewer rows)."""
    return _k_size_symbol(m, "t")


def _analysis_at(gm: fx.GraphModule, anchor, m, memo, symbol, value):
    """The match analysed again with ``symbol`` at ``value``, or None where it does not hold."""
    try:
        with substituted({symbol: value}):
            return softmax_attention.analyze(gm, anchor, m.output, memo)
    except Exception:
        return None


# A match is checked again at a length past the constants its checks read; past this bound the
# check's random tables get large, so T stays fixed instead (it then recompiles per length).
LONGEST_RECHECK = 1 << 16


def _constants(nodes, t_symbol) -> list:
    """Magnitudes of the numbers ``nodes`` compute with: int and finite float arguments, and the
    values of scalar inputs (a window passed as an argument) other than those made from T."""
    out = []
    for n in nodes:
        for x in list(n.args) + list(n.kwargs.values()):
            for a in flat_args(x):
                if isinstance(a, fx.Node):
                    ev = example_value(a)
                    if isinstance(ev, (torch.SymInt, torch.SymFloat)):
                        if t_symbol in ev.node.shape_env.replace(ev.node.expr).free_symbols:
                            continue
                        a = concrete(ev)
                    elif isinstance(ev, (int, float)):
                        a = ev
                    else:
                        continue
                if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
                    continue
                out.append(math.ceil(abs(a)))
    return out


# what a match checked again at another value of a symbol must read as the first one did (besides
# what that value moves: T, or q's offset)
_READING = ("q", "k", "v", "selection", "layouts", "H", "G", "D", "n", "block_size", "scale", "causal",
            "count_duplicates", "on_out_of_range", "rows_from", "positions",
            "positions_outside")


def _same_at_another_length(gm: fx.GraphModule, anchor, m, memo=None) -> bool:
    """Under dynamic shapes the graph will run at other sequence lengths: verify the match again
    at two longer ones (past every constant the checks read, so that a window of a fixed size, say,
    shows), with the sizes the graph computes from T. False if it does not hold there."""
    size = _t_symbol(m)
    if size is None:
        return True
    expr = size.node.shape_env.replace(size.node.expr)
    if not isinstance(expr, sympy.Symbol):
        return False
    dt = dtype_of(m.selection)
    if dt is not None and dt.itemsize < 4:  # a longer T may overflow an int16 index: keep T fixed
        return False
    big = max(_constants(m.visited, expr) + [m.block_size])
    if big > LONGEST_RECHECK:
        return False
    # two lengths, one block and one key apart: code that reads T through a remainder (the
    # parity of the block count, say) reads the same at one of them and not at both
    first = max(2 * m.T + 1, 2 * big + 3)
    for alt in (first, first + m.block_size + 1):
        if alt > LONGEST_RECHECK:
            return False
        m2 = _analysis_at(gm, anchor, m, memo, expr, alt)
        if m2 is None:
            return False
        rows_follow = m2.Tq == alt if m.Tq == m.T else m2.Tq == m.Tq  # q's rows: the keys' symbol or their own
        if not (m2.T == alt and rows_follow and all(getattr(m, a) == getattr(m2, a) for a in _READING + ("q_first",))):
            return False
    return True


def _b_symbol(m):
    """The batch size as a symbol (None where it is a number or the layout has no batch dim)."""
    return _k_size_symbol(m, "b")


def _same_at_another_batch(gm: fx.GraphModule, anchor, m, memo=None) -> bool:
    """Under dynamic shapes the graph will run at other batch sizes too: verify the match again at
    another one, since the code may compute with B (a scale or a mask offset from ``q.shape[0]``).
    False if it does not hold there; the batch size is then guarded."""
    size = _b_symbol(m)
    if size is None:
        return True
    expr = size.node.shape_env.replace(size.node.expr)
    t_size = _t_symbol(m)
    if not isinstance(expr, sympy.Symbol) or (
            t_size is not None and expr in t_size.node.shape_env.replace(t_size.node.expr).free_symbols):
        return False
    alt = 2 * m.B + 1
    m2 = _analysis_at(gm, anchor, m, memo, expr, alt)
    return m2 is not None and m2.B == alt and all(getattr(m, a) == getattr(m2, a) for a in _READING + ("T", "Tq", "q_first"))


def _offset_input(gm: fx.GraphModule, anchor, m, memo=None):
    """q's rows at a fixed offset (``m.q_first``, or the last rows) equal to an int input that
    Dynamo made symbolic (a cache position): the placeholder and its symbol when the match holds
    again with that input at both ends of its range, the offset following it; else None (the
    offset is then a number of the rewrite, and ``_specialize`` guards the input)."""
    first = m.q_first if m.q_first is not None else m.T - m.Tq if m.q_holds_rows_only else None
    if first is None or m.positions is not None:
        return None
    sizes = set()
    for role in ("q", "k", "v", "selection"):
        ev = example_value(getattr(m, role))
        if isinstance(ev, torch.Tensor):
            for s in _symints(ev):
                sizes |= s.node.expr.free_symbols
    limit = m.T - m.Tq
    for node in gm.graph.nodes:
        ev = example_value(node)
        if node.op != "placeholder" or not isinstance(ev, torch.SymInt) or concrete(ev) != first:
            continue
        expr = ev.node.shape_env.replace(ev.node.expr)
        if not isinstance(expr, sympy.Symbol) or expr in sizes:
            continue
        for alt in dict.fromkeys(p for p in (0, limit) if p != first):  # both ends: a clamp shows at one
            try:  # (identical layers reuse the first one's verdict here as well)
                with substituted({expr: alt}), softmax_attention.block_size_known(m.block_size):
                    m2 = softmax_attention.analyze(gm, anchor, m.output, memo)
            except Exception:
                return None
            at = m2.T - m2.Tq if m2.q_first is None else m2.q_first
            if at != alt or any(getattr(m, a) != getattr(m2, a) for a in _READING + ("B", "T", "Tq")):
                return None
        return node, expr
    return None


def _updated_before_output(graph: fx.Graph, m) -> str | None:
    """The op runs where the attention output was and reads q, k, v and the selection there; an
    in-place update of one of them (or of memory it shares) between its node and the output
    would reach the op but not the user's reads before it."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    aliases = Aliases(graph)
    for role in ("q", "k", "v", "selection", "positions"):
        node = getattr(m, role)
        if node is None:
            continue
        for a in sorted(aliases.members(node), key=order.get):
            for w in a.users:
                if is_write(w) and write_target(w) is a and order[node] < order[w] < order[m.output]:
                    return (f"{role} ({node.name}) is updated in place by {w.name} before the attention output "
                            "is computed: the rewritten op would read it after the update")
    return None


def _grad_enabled_at(graph: fx.Graph) -> dict:
    """Node -> whether gradients are recorded where it runs (Dynamo writes ``torch.no_grad()``
    and ``enable_grad()`` as ``torch._C._set_grad_enabled`` calls, the last one restoring the
    mode the graph was called in, which is also the mode before the first); None where unknown."""
    calls = [n for n in graph.nodes if n.op == "call_function" and n.target is torch._C._set_grad_enabled and n.args]
    state, out = (bool(calls[-1].args[0]) if calls else None), {}
    inference = []  # the modes `torch.inference_mode()` regions entered from
    for n in graph.nodes:
        name = getattr(n.target, "__name__", "") if n.op == "call_function" else ""
        if n.op == "call_function" and n.target is torch._C._set_grad_enabled and n.args:
            state = bool(n.args[0])
        elif name == "_enter_inference_mode":
            inference.append(state)
            state = False if (not n.args or n.args[0]) else state
        elif name == "_exit_inference_mode" and inference:
            state = inference.pop()
        out[n] = state
    return out


def _grad_mode_differs(graph: fx.Graph, m) -> str | None:
    """The op replaces the output's node, so its autograd follows the grad mode there; if the
    matched computation ran partly under another mode (a gather inside ``torch.no_grad()``),
    the gradients would differ."""
    mode = _grad_enabled_at(graph)
    at_out = mode[m.output]
    inputs = {m.q, m.k, m.v}  # their own grad mode reaches the op through their requires_grad
    for n in m.visited:
        dt = dtype_of(n)
        if n in inputs or n.op not in ("call_function", "call_method") or dt is None or not dt.is_floating_point:
            continue
        if mode.get(n) != at_out:
            return (f"{n.name} runs with gradients {'on' if mode.get(n) else 'off'} and the attention output "
                    f"{m.output.name} with them {'on' if at_out else 'off'}: torch.no_grad() / enable_grad() / inference_mode() "
                    "inside the attention is not followed")
    return None


def _specialize(gm: fx.GraphModule, m, keep_t: bool = True, offset=None, keep_b: bool = True) -> None:
    """Guard every symbolic size the match depends on, except the batch and the sequence length
    where the match was verified at another value of them (``keep_b``, ``keep_t``).

    The match was verified at the example sizes, and the rewrite bakes some numbers into the graph
    (block size, scale, heads): under dynamic shapes those must not change without a recompile,
    while T (and B) may, since the op reads them from its inputs.
    """
    free = set()
    for role in ("q", "k", "v", "selection"):
        node = getattr(m, role)
        ev = example_value(node)
        layout = m.layouts[role][1]
        # with one block (T <= block size) the sample cannot tell the block size: keep T fixed too
        roles = ("t", "b") if keep_t and m.T > m.block_size else ("b",)
        if m.q_holds_rows_only and role in ("q", "selection"):
            roles = ("b",)  # only the keys' length was checked at another value: q's rows stay fixed
        if not keep_b:
            roles = tuple(r for r in roles if r != "b")
        for dim_role in roles:
            if isinstance(ev, torch.Tensor) and dim_role in layout:
                size = ev.shape[layout.index(dim_role)]
                if isinstance(size, torch.SymInt):
                    free |= size.node.expr.free_symbols
    if offset is not None:
        # the position q's rows start at may change; the op needs it inside the keys
        node, symbol = offset
        pos = example_value(node)
        free.add(symbol)
        k_len = example_value(m.k).shape[m.layouts["k"][1].index("t")]
        q_len = example_value(m.q).shape[m.layouts["q"][1].index("t")]
        guard_bool(pos >= 0)
        guard_bool(pos + q_len <= k_len)
    # the sizes the matched subgraph computes with (its ancestors), not every input of the graph
    seen, stack = set(), [m.output]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for s in _symints(example_value(node)):
            if not s.node.expr.free_symbols <= free:
                guard_int(s)
        stack.extend(softmax_attention._inputs(node))
        stack.extend(mutations(node))


def run(gm: fx.GraphModule, strategy: str = "auto", plan_of=None, topk_plan_of=None, with_topk: bool = True) -> PassResult:
    """Rewrite every verified match in ``gm`` in place; ``plan_of(match)`` names the chosen plan
    (``topk_plan_of(match)`` for a top-k). ``with_topk``: also rewrite top-k calls."""
    start = time.perf_counter()
    result = PassResult()
    done: set = set()
    memo = SHARED
    memo.new_pass()
    for anchor in list(softmax_attention.candidates(gm.graph)):
        if anchor.node in done or anchor.node.graph is not gm.graph or anchor.node not in gm.graph.nodes:
            continue
        m, miss = None, None
        for output in anchor.outputs:
            if output not in gm.graph.nodes:
                continue
            try:
                m = softmax_attention.analyze(gm, anchor, output, memo)
                break
            except LookupError:
                break
            except softmax_attention.LayoutMiss as e:
                miss = miss or (output, e)
            except softmax_attention.NearMiss as e:
                miss = (output, e) if miss is None or isinstance(miss[1], softmax_attention.LayoutMiss) else miss
            except Exception as e:  # never fail the user's compile: leave the subgraph alone, say why
                log.debug("fsa_compile: analysis failed", exc_info=True)
                err = softmax_attention.NearMiss(f"the pattern pass could not analyse this subgraph ({type(e).__name__}: {e})")
                miss = (output, err) if miss is None or isinstance(miss[1], softmax_attention.LayoutMiss) else miss
        if m is None:
            if miss is not None:
                output, e = miss
                name = f"{softmax_attention.FAMILY}/{output.name}"
                result.misses.append(Miss(softmax_attention.FAMILY, output.name, str(e)))
                log.info("fsa_compile: not rewritten: %s: %s", name, e)
            continue
        output = m.output
        same_as = memo.reused_from.get(output.name, "")  # (before the check at another length)
        done.add(anchor.node)
        why = (_updated_before_output(gm.graph, m) or _grad_mode_differs(gm.graph, m) or rewrite.rounding_inside(m)
               or softmax_attention.unshifted_softmax(m.softmax))
        if why:
            result.misses.append(Miss(softmax_attention.FAMILY, output.name, why))
            log.info("fsa_compile: not rewritten: %s/%s: %s", softmax_attention.FAMILY, output.name, why)
            continue
        _unify(m)
        keep_t = _same_at_another_length(gm, anchor, m, memo)
        if not keep_t and _t_symbol(m) is not None:
            log.info("fsa_compile: %s holds at T=%d but not at other lengths: T is fixed for this graph", output.name, m.T)
        keep_b = _same_at_another_batch(gm, anchor, m, memo)
        if not keep_b and _b_symbol(m) is not None:
            log.info("fsa_compile: %s holds at B=%d but not at other batch sizes: B is fixed for this graph",
                     output.name, m.B)
        offset = _offset_input(gm, anchor, m, memo)
        _specialize(gm, m, keep_t, offset, keep_b)
        shapes, options = _describe(m, offset[0] if offset is not None else None)
        pattern = f"{m.family} ({m.form} form)"
        rw = Rewrite(pattern, output.name, shapes, options, plan_of(m) if plan_of else "",
                     same_as)
        rewrite.apply(gm.graph, m, strategy, offset[0] if offset is not None else None)
        result.rewrites.append(rw)
        log.info("fsa_compile: rewrote %s", rw)
    for m in topk.find(gm.graph) if with_topk else ():
        shapes = {"rows": "x".join(str(d) for i, d in enumerate(m.shape) if i != m.dim) or "1", "L": m.shape[m.dim]}
        rw = Rewrite(topk.FAMILY, m.node.name, shapes, {"k": m.k, "largest": m.largest},
                     topk_plan_of(m) if topk_plan_of else "")
        topk.apply(gm.graph, m)
        result.others.append(rw)
        log.info("fsa_compile: rewrote %s", rw)
    if result.rewrites or result.others:
        remove_dead_code(gm.graph)
        gm.graph.lint()
        gm.recompile()
    result.seconds = time.perf_counter() - start
    return result
