"""Identical layers are verified once: the pattern pass reuses a verdict only where a subgraph
reads what the verified one read. conftest sets FSA_COMPILE_MEMO_CHECK=1, so every reuse in the
suite is also checked against the subgraph's own full analysis (a difference fails the test)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fsa_compile
from fsa_compile.patterns import memo
from fsa_compile.testing import Shape, make_inputs
from test_patterns_misses import MISSES, variant

FAST = {"inner": "aot_eager"}
SHAPE = Shape(1, 40, 2, 2, 8, 8, 3)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield


def _layers(first, second, bs2=None):
    def two(q1, k1, v1, i1, q2, k2, v2, i2, bs):
        return variant(q1, k1, v1, i1, bs, change=first), variant(q2, k2, v2, i2, bs2 or bs, change=second)
    return two


def _inputs(second=None, seed=0, shape2=SHAPE):
    q1, k1, v1, i1, bs = make_inputs(SHAPE, "padding", seed)
    q2, k2, v2, i2, _ = make_inputs(shape2, "padding", seed + 1)
    if second == "float_indices":
        i2 = i2.float()
    return q1, k1, v1, i1, q2, k2, v2, i2, bs


def _explain(fn, args):
    torch._dynamo.reset()  # the test functions share code objects: keep the recompile limit away
    rep = fsa_compile.explain(fn, *args, options=FAST)
    for got, want in zip(rep.output, fn(*args)):
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-5, atol=1e-5)
    return rep


def test_the_second_identical_layer_reuses_the_first_verdict():
    rep = _explain(_layers(None, None), _inputs())
    assert len(rep.rewrites) == 2, str(rep)
    first, second = rep.rewrites
    assert first.same_as == "" and second.same_as == first.node, str(rep)
    assert (second.shapes, second.options) == (first.shapes, first.options)
    assert f"checks shared with {first.node}" in str(second)


@pytest.mark.parametrize("value, mode", [("1", "first"), ("all", "all"), ("0", None), ("", None)])
def test_check_mode_is_read_at_every_pass(monkeypatch, value, mode):
    monkeypatch.setenv("FSA_COMPILE_MEMO_CHECK", value)
    m = memo.Memo()
    m.new_pass()
    assert m.check == mode


def test_check_mode_runs_the_full_analysis_on_a_reuse(monkeypatch):
    from fsa_compile.patterns import softmax_attention

    runs = []
    full = softmax_attention.Analysis._run

    def counted(self):
        runs.append(self.output.name)
        return full(self)

    monkeypatch.setattr(softmax_attention.Analysis, "_run", counted)
    for value, analysed in (("0", 1), ("all", 2)):
        monkeypatch.setenv("FSA_COMPILE_MEMO_CHECK", value)
        memo.SHARED.forget()
        runs.clear()
        rep = _explain(_layers(None, None), _inputs())
        assert len(rep.rewrites) == 2 and rep.rewrites[1].same_as, str(rep)
        assert len(runs) == analysed, (value, runs)


@pytest.mark.parametrize("change", sorted(MISSES))
def test_a_second_layer_with_a_flaw_is_not_given_the_first_verdict(change):
    rep = _explain(_layers(None, change), _inputs(change))
    assert len(rep.rewrites) == 1 and len(rep.misses) == 1, str(rep)
    assert MISSES[change] in rep.misses[0].reason, str(rep)


def test_a_second_layer_with_another_block_size_is_verified_again():
    rep = _explain(_layers(None, None, bs2=4), _inputs())
    assert [r.shapes["block_size"] for r in rep.rewrites] == [8, 4], str(rep)
    assert rep.rewrites[1].same_as == ""


@pytest.mark.parametrize("shape2", [
    Shape(1, 40, 2, 2, 8, 8, 3, torch.float64),  # dtype
    Shape(1, 40, 2, 1, 8, 8, 3),  # group size
    Shape(1, 48, 2, 2, 8, 8, 3),  # length
])
def test_a_second_layer_of_other_sizes_or_dtype_is_verified_again(shape2):
    rep = _explain(_layers(None, None), _inputs(shape2=shape2))
    assert len(rep.rewrites) == 2 and rep.rewrites[1].same_as == "", str(rep)
    assert rep.rewrites[1].shapes["G"] == shape2.G and rep.rewrites[1].shapes["T"] == shape2.T


POOL = [None, None, "strictly_causal", "unmasked_padding", "padding_is_minus_one", "sliding_window",
        "clamp_block_indices", "finite_fill"]


@settings(max_examples=max(1, int(6 * float(os.environ.get("FSA_PROPERTY_SCALE", "1")))), deadline=None,
          suppress_health_check=list(HealthCheck), database=None,
          derandomize=os.environ.get("FSA_PROPERTY_RANDOM", "0") != "1")
@given(first=st.sampled_from(POOL), second=st.sampled_from(POOL), bs2=st.sampled_from([None, 4]),
       seed=st.integers(0, 2**16))
def test_each_layer_gets_the_verdict_it_gets_alone(first, second, bs2, seed):
    args = _inputs(second, seed)
    both = _explain(_layers(first, second, bs2), args)
    alone = []
    for change, (q, k, v, i), bs in ((first, args[0:4], args[8]), (second, args[4:8], bs2 or args[8])):
        rep = _explain(lambda *a, c=change: variant(*a, change=c), (q, k, v, i, bs))
        alone.append([(r.shapes, r.options) for r in rep.rewrites] or [m.reason for m in rep.misses])
    got = [(r.shapes, r.options) for r in both.rewrites]
    assert len(both.rewrites) + len(both.misses) == 2, str(both)
    assert got == [v[0] for v in alone if isinstance(v[0], tuple)], str(both)
    assert [m.reason for m in both.misses] == [v[0] for v in alone if isinstance(v[0], str)], str(both)


def test_the_same_model_compiled_again_reuses_the_verdicts_of_its_first_compile():
    """A prefill after training compiles the model again (no_grad: another graph); its pass
    reuses the first compile's verdicts, which name the node of the earlier graph."""
    fn, args = _layers(None, None), _inputs()
    first = _explain(fn, args)
    assert [r.same_as for r in first.rewrites] == ["", first.rewrites[0].node], str(first)
    with torch.no_grad():
        torch._dynamo.reset()
        again = fsa_compile.explain(fn, *args, options=FAST)
    assert len(again.rewrites) == 2, str(again)
    assert all(r.same_as.endswith("of an earlier graph") for r in again.rewrites), str(again)
    assert [(r.shapes, r.options) for r in again.rewrites] == [(r.shapes, r.options) for r in first.rewrites]


def test_the_memo_keeps_no_graph_alive():
    import gc
    import weakref

    fn, args = _layers(None, None), _inputs()
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(weakref.ref(gm.graph))
        from fsa_compile import backend

        backend.rewrite_graph(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=keep)(*args)
    assert memo.SHARED._entries, "nothing was remembered"
    torch._dynamo.reset()
    gc.collect()
    assert graphs and all(g() is None for g in graphs)


def _mask_form(extra_first):
    from fsa_compile.patterns import forms

    def fn(q, k, v, block_indices, block_size):
        if extra_first:  # index arithmetic with other integers, traced before the attention
            extra = (torch.arange(3) * 5).sum()
        o = forms.mask_scatter_index_pos(q, k, v, block_indices, block_size)
        if not extra_first:
            extra = (torch.arange(3) * 5).sum()
        return o, extra

    return fn


@pytest.mark.parametrize("extra_first", [True, False])
def test_a_graph_offering_other_block_sizes_first_is_verified_again(extra_first):
    """A dense mask's block size comes from the graph's constants, tried in order: a graph whose
    constants put others before the verified one is checked on its own; one that adds its
    constants after them reuses the verdict."""
    args = make_inputs(SHAPE, "padding", 0)
    first = _explain(_mask_form(False), args)
    again = _explain(_mask_form(extra_first), args)
    assert [r.shapes["block_size"] for r in first.rewrites + again.rewrites] == [8, 8], str(again)
    if extra_first:
        assert again.rewrites[0].same_as == "", str(again)
    else:
        assert again.rewrites[0].same_as.endswith("of an earlier graph"), str(again)
