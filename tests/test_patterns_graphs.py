"""Training graphs and graph hygiene: the op's backward replaces the eager one, no graph breaks,
no recompilation per sequence length under dynamic shapes, and baked sizes are guarded."""
import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

from fsa_compile import backend
from fsa_compile.patterns.forms import FORMS, to_layout
from fsa_compile.testing import RewriteCounter, Shape, make_inputs

FAST = {"inner": "aot_eager"}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles the shared forms afresh (Dynamo's per-function recompile limit)."""
    torch._dynamo.reset()
    yield
# what materialises the [B, T, H, n*bs, D] gathers, the [T, T] scores or their gradients
HEAVY = {"index", "gather", "index_select", "index_put", "_unsafe_index_put", "scatter_add", "bmm", "mm",
         "_unsafe_index", "index_add", "_softmax", "_softmax_backward_data"}


def _args(form, shape, kind="unique", seed=0, grad=True):
    if form.layout == "thd":
        shape = Shape(1, shape.T, shape.H, shape.G, shape.D, shape.block_size, shape.n, shape.dtype)
    q, k, v, idx, bs = make_inputs(shape, kind, seed, requires_grad=grad)
    return (*to_layout(form.layout, q, k, v, idx), bs)


def _aten_names(gm):
    out = set()
    for n in gm.graph.nodes:
        if n.op == "call_function" and hasattr(n.target, "_opname"):
            out.add(n.target._opname if not hasattr(n.target, "_schema") else n.target._schema.name.split("::")[-1])
    return out


@pytest.mark.parametrize("name", sorted(FORMS))
def test_training_graph_has_only_the_op(name):
    form = FORMS[name]
    graphs = {}

    def fw(gm, _):
        graphs["fw"] = gm
        return gm.forward

    def bw(gm, _):
        graphs["bw"] = gm
        return gm.forward

    inner = aot_autograd(fw_compiler=fw, bw_compiler=bw)

    def fsa_then_capture(gm, example_inputs):
        result = backend.rewrite_graph(gm)
        assert len(result.rewrites) == 1, [str(m) for m in result.misses]
        return inner(gm, example_inputs)

    torch._dynamo.reset()
    args = _args(form, Shape(1, 24, 2, 2, 8, 4, 3))
    out = torch.compile(form.fn, backend=fsa_then_capture, fullgraph=True)(*args)
    out.sum().backward()
    fw_ops, bw_ops = _aten_names(graphs["fw"]), _aten_names(graphs["bw"])
    assert "selected_attention" in fw_ops and "selected_attention_backward" in bw_ops, (fw_ops, bw_ops)
    assert not (fw_ops & HEAVY), fw_ops & HEAVY
    assert not (bw_ops & HEAVY), bw_ops & HEAVY


@pytest.mark.parametrize("name", sorted(FORMS))
def test_no_graph_breaks(name):
    form = FORMS[name]
    args = _args(form, Shape(2, 20, 2, 2, 8, 4, 2), grad=False)
    torch._dynamo.reset()
    with RewriteCounter() as c:
        f = torch.compile(form.fn, backend="fsa", options=FAST, fullgraph=True)
        f(*args)
    assert len(c.results) == 1 and len(c.rewrites) == 1


@pytest.mark.parametrize("name", ["gather_index_einsum", "gather_take_per_token", "mask_scatter_index_pos", "gather_unbatched"])
def test_varying_T_does_not_recompile_under_dynamic_shapes(name):
    form = FORMS[name]
    torch._dynamo.reset()
    f = torch.compile(form.fn, backend="fsa", options=FAST, dynamic=True)
    with RewriteCounter() as c:
        for T in (24, 33, 40, 57):
            args = _args(form, Shape(2, T, 2, 2, 8, 8, 3), kind="padding", seed=T, grad=False)
            torch.testing.assert_close(f(*args), form.fn(*args), equal_nan=True, rtol=1e-4, atol=1e-5)
    assert len(c.results) == 1, f"compiled {len(c.results)} times"
    assert len(c.rewrites) == 1


def test_varying_T_recompiles_at_most_once_with_automatic_dynamic_shapes():
    form = FORMS["gather_index_einsum"]
    torch._dynamo.reset()
    f = torch.compile(form.fn, backend="fsa", options=FAST)
    with RewriteCounter() as c:
        for T in (24, 33, 40, 57):
            args = _args(form, Shape(1, T, 2, 2, 8, 8, 3), kind="padding", seed=T, grad=False)
            torch.testing.assert_close(f(*args), form.fn(*args), equal_nan=True, rtol=1e-4, atol=1e-5)
    assert len(c.results) <= 2 and all(len(r.rewrites) == 1 for r in c.results)


def test_baked_sizes_are_guarded_under_dynamic_shapes():
    """block size, head dim (the scale) and heads are baked into the rewrite: changing them must
    recompile (and stay correct), not reuse the graph."""
    form = FORMS["gather_index_einsum"]
    torch._dynamo.reset()
    f = torch.compile(form.fn, backend="fsa", options=FAST, dynamic=True)
    shapes = [Shape(2, 40, 2, 2, 16, 8, 3), Shape(2, 40, 2, 2, 32, 8, 3), Shape(2, 40, 3, 1, 32, 8, 3),
              Shape(2, 40, 3, 1, 32, 4, 5), Shape(2, 40, 3, 1, 32, 5, 5)]
    with RewriteCounter() as c:
        for s in shapes:
            args = _args(form, s, kind="padding", seed=s.D + s.block_size, grad=False)
            torch.testing.assert_close(f(*args), form.fn(*args), equal_nan=True, rtol=1e-4, atol=1e-5)
    assert len(c.results) == len(shapes) and all(len(r.rewrites) == 1 for r in c.results)


def test_code_that_is_selected_attention_only_at_the_example_length_fixes_T():
    """A sliding window wider than the example sequence masks nothing there, so the code verifies
    as selected attention at T=32; at T=100 it is not. The match is re-verified at a longer T:
    it fails there, so T is guarded and T=100 recompiles (and is left alone) instead of reusing."""
    from test_patterns_misses import variant

    def windowed(*a):
        return variant(*a, change="sliding_window")

    f = torch.compile(windowed, backend="fsa", options=FAST, dynamic=True)
    with RewriteCounter() as c:
        for T in (32, 100):
            q, k, v, idx, bs = make_inputs(Shape(1, T, 2, 2, 8, 16, 3), "padding", T)
            torch.testing.assert_close(f(q, k, v, idx, bs), windowed(q, k, v, idx, bs), equal_nan=True, rtol=1e-4, atol=1e-5)
    assert [len(r.rewrites) for r in c.results] == [1, 0]
    assert "not the causal (or full) keys" in c.results[1].misses[0].reason


def test_separate_length_symbols_are_unified():
    """With automatic dynamic shapes q, k, v and the selection get their own length symbols (the
    gather code never compares them); the rewrite guards them equal and keeps T dynamic."""
    form = FORMS["gather_index_einsum"]
    f = torch.compile(form.fn, backend="fsa", options=FAST)
    with RewriteCounter() as c:
        for T in (24, 33, 40, 57):
            args = _args(form, Shape(1, T, 2, 2, 8, 8, 3), kind="padding", seed=T, grad=False)
            f(*args)
    assert len(c.results) == 2 and all(len(r.rewrites) == 1 for r in c.results)
