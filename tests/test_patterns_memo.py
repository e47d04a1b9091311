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


def test_check_mode_runs_the_full_analysis_and_agrees(monkeypatch):
    monkeypatch.setenv("FSA_COMPILE_MEMO_CHECK", "1")
    m = memo.Memo()
    assert m.check and m.mismatches == []
    monkeypatch.setenv("FSA_COMPILE_MEMO_CHECK", "0")
    assert not memo.Memo().check


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
