"""Hypothesis properties: for any shapes and selections, compiled == eager (forward and backward),
and attention that is not selected attention is never rewritten.

Compiled functions are reused across examples (one per form and dynamic setting): Dynamo
recompiles when a guarded size changes (heads, head dim, block size, n: the rewrite bakes them).
Half of the main property runs under torch.compile's default dynamic shapes (B and T symbolic after
the first change, the rewrite re-verified at a longer T), the rest and the other properties with
static shapes, which compile about twice as fast: the suite stays under five minutes on two cores.
"""
import dataclasses
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsa_compile.patterns.forms import FORMS, from_layout, to_layout
from fsa_compile.testing import (RewriteCounter, Shape, assert_compiled_matches_eager, make_inputs, many_recompiles,
                                 shapes)

FAST = {"inner": "aot_eager"}
# CI runs a fixed set of examples (derandomized, ~3.5 min on two cores); for a longer random hunt:
# FSA_PROPERTY_SCALE=5 FSA_PROPERTY_RANDOM=1 pytest tests/test_properties.py
SCALE = float(os.environ.get("FSA_PROPERTY_SCALE", "1"))
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None,
                derandomize=os.environ.get("FSA_PROPERTY_RANDOM", "0") != "1")


def examples(n):
    return max(1, int(n * SCALE))
_COMPILED: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _many_recompiles():
    torch._dynamo.reset()
    with many_recompiles():
        yield
    torch._dynamo.reset()


def compiled(key, fn, dynamic=None):
    """One compiled function per (key, dynamic). ``dynamic=None`` is torch.compile's default
    (static first, then B and T symbolic after a change: the rewrite is re-verified at a longer T);
    ``False`` recompiles per shape, about twice as fast per compile on CPU."""
    if (key, dynamic) not in _COMPILED:
        _COMPILED[key, dynamic] = torch.compile(fn, backend="fsa", options=FAST, dynamic=dynamic)
    return _COMPILED[key, dynamic]


def _args(form, shape, kind, seed, grad):
    if form.layout == "thd":
        shape = Shape(1, *(getattr(shape, f) for f in ("T", "H", "G", "D", "block_size", "n", "dtype")))
    q, k, v, idx, bs = make_inputs(shape, kind, seed, requires_grad=grad)
    return (*to_layout(form.layout, q, k, v, idx), bs)


def _check_rewrites(counter):
    for res in counter.results:
        assert len(res.rewrites) == 1, "; ".join(str(m) for m in res.misses) or "no candidate found"


FORM_NAMES = sorted(FORMS)


@settings(max_examples=examples(120), **SETTINGS)
@given(name=st.sampled_from(FORM_NAMES), shape=shapes(), kind=st.sampled_from(["unique", "padding", "duplicates"]),
       seed=st.integers(0, 2**20), contiguous=st.booleans(), dynamic=st.sampled_from([None, False]))
def test_every_form_matches_eager_forward_and_backward(name, shape, kind, seed, contiguous, dynamic):
    form = FORMS[name]
    args = _args(form, shape, kind, seed, grad=False)
    if not contiguous:  # same values, other strides
        args = tuple(a.transpose(0, -1).contiguous().transpose(0, -1) if a.is_floating_point() else a
                     for a in args[:4]) + args[4:]
    with RewriteCounter() as c:
        assert_compiled_matches_eager(form.fn, *args, compiled=compiled(name, form.fn, dynamic), grad=True)
    _check_rewrites(c)


@settings(max_examples=examples(30), **SETTINGS)
@given(name=st.sampled_from(["gather_index_einsum", "gather_index_select", "mask_scatter_repeat", "mask_sdpa",
                             "gather_take_per_token", "gather_rope_interleaved"]),
       shape=shapes(T=(1, 32), G=(1, 4), dtypes=(torch.float16, torch.bfloat16)),
       kind=st.sampled_from(["unique", "padding", "duplicates"]), seed=st.integers(0, 2**20), autocast=st.booleans())
def test_low_precision_matches_eager_within_dtype_tolerance(name, shape, kind, seed, autocast):
    """In fp16/bf16 inputs, or (``autocast``) float32 inputs under ``torch.autocast`` to that dtype:
    then the rewrite computes in autocast's dtype, as the user's products do."""
    form = FORMS[name]
    low = shape.dtype
    if autocast:
        shape = dataclasses.replace(shape, dtype=torch.float32)
    args = _args(form, shape, kind, seed, grad=False)
    with RewriteCounter() as c, torch.autocast("cpu", dtype=low, enabled=autocast):
        assert_compiled_matches_eager(form.fn, *args, compiled=compiled(name, form.fn, False), grad=True)
    _check_rewrites(c)
    for r in c.rewrites:
        assert r.options["dtype"] == str(low).removeprefix("torch."), str(r)


@settings(max_examples=examples(30), **SETTINGS)
@given(name=st.sampled_from(FORM_NAMES), shape=shapes(T=(2, 40)), seed=st.integers(0, 2**20))
def test_rows_with_nothing_visible_match_eager(name, shape, seed):
    """NaN rows (softmax of nothing) in the softmax forms, zero rows in SDPA, exactly where eager has them."""
    form = FORMS[name]
    args = _args(form, shape, "empty_rows", seed, grad=False)
    eager = form.fn(*args)
    with RewriteCounter() as c:
        out = compiled(name, form.fn, False)(*args)
    _check_rewrites(c)
    assert torch.equal(out.isnan(), eager.isnan())
    torch.testing.assert_close(out, eager, equal_nan=True, rtol=1e-4, atol=1e-5)


# -- attention that is not selected attention -----------------------------------------------------------


def dense_causal(q, k, v, window: int, mask):
    s = torch.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    T = q.shape[1]
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhts,bshd->bthd", s.softmax(-1), v)


def sliding_window(q, k, v, window: int, mask):
    T = q.shape[1]
    pos = torch.arange(T)
    allowed = (pos.view(T, 1) >= pos.view(1, T)) & (pos.view(T, 1) - pos.view(1, T) < window)
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    s = torch.where(allowed, s, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", torch.softmax(s, dim=-1), v)


def unrelated_mask(q, k, v, window: int, mask):
    s = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2)


def sdpa_causal(q, k, v, window: int, mask):
    o = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                         is_causal=True)
    return o.transpose(1, 2)


def block_causal_by_index(q, k, v, window: int, mask):
    """Block-diagonal causal attention computed from positions (an integer tensor, but no selection)."""
    T = q.shape[1]
    pos = torch.arange(T)
    allowed = (pos.view(T, 1) // window == pos.view(1, T) // window) & (pos.view(T, 1) >= pos.view(1, T))
    s = torch.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    return torch.einsum("bhts,bshd->bthd", s.masked_fill(~allowed, float("-inf")).softmax(-1), v)


NEGATIVES = {f.__name__: f for f in (dense_causal, sliding_window, unrelated_mask, sdpa_causal, block_causal_by_index)}


@settings(max_examples=examples(40), **SETTINGS)
@given(name=st.sampled_from(sorted(NEGATIVES)), B=st.integers(1, 2), T=st.integers(1, 40), H=st.integers(1, 3),
       D=st.sampled_from([4, 8, 16]), window=st.integers(1, 16), seed=st.integers(0, 2**20))
def test_attention_that_is_not_selected_attention_is_never_rewritten(name, B, T, H, D, window, seed):
    fn = NEGATIVES[name]
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=g) for _ in range(3))
    mask = torch.rand(B, H, T, T, generator=g) < 0.6
    with RewriteCounter() as c:
        out = compiled("neg-" + name, fn)(q, k, v, window, mask)
    assert c.rewrites == [], [str(r) for r in c.rewrites]
    torch.testing.assert_close(out, fn(q, k, v, window, mask), equal_nan=True, rtol=1e-4, atol=1e-5)


# -- the published strategies, used the way a user would ---------------------------------------------------

from fsa_compile.testing import SELECTION_KINDS, nsa_inputs, selections  # noqa: E402


@settings(max_examples=examples(10), **SETTINGS)
@given(case=nsa_inputs(shapes(T=(1, 24), G=(1, 4))))
def test_user_facing_strategy_and_helper(case):
    q, k, v, idx, bs = case
    fn = FORMS["gather_index_einsum"].fn
    assert_compiled_matches_eager(fn, q, k, v, idx, bs, compiled=compiled("gather_index_einsum", fn), expect_rewrites=1)


@settings(max_examples=examples(20), **SETTINGS)
@given(data=st.data(), shape=shapes(T=(1, 40)))
def test_selection_kinds_mean_what_they_say(data, shape):
    idx = data.draw(selections(shape))
    B, T, H, n = idx.shape
    assert (B, T, H, n) == (shape.B, shape.T, shape.H, shape.n)
    assert int(idx.max()) < shape.num_blocks and int(idx.min()) >= -1
    for kind in SELECTION_KINDS:
        from fsa_compile.testing import make_selection

        sel = make_selection(shape, kind, 0)
        own = (torch.arange(T) // shape.block_size).view(1, T, 1)
        if kind != "empty_rows":  # the token's own block is always selected: no row is empty
            assert (sel == own.unsqueeze(-1)).any(-1).all()
        if kind in ("unique", "padding"):
            srt = sel.sort(-1).values
            assert not ((srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)).any()


# -- near misses never change what the code computes ---------------------------------------------------------

from test_patterns_misses import MISSES, variant  # noqa: E402

CHANGES = [None] + sorted(MISSES)
_VARIANTS = {c: (lambda *a, _c=c: variant(*a, change=_c)) for c in CHANGES}


@settings(max_examples=examples(30), **SETTINGS)
@given(change=st.sampled_from(CHANGES), shape=shapes(B=(1, 1), T=(2, 40), G=(1, 4)),
       kind=st.sampled_from(["unique", "padding", "empty_rows"]), seed=st.integers(0, 2**20))
def test_changed_code_is_either_left_alone_or_still_matches_eager(change, shape, kind, seed):
    """Whatever the pass decides about a variant of the gather form, the compiled result is eager's."""
    q, k, v, idx, bs = make_inputs(shape, kind, seed)
    if change == "float_indices":
        idx = idx.float()
    fn = _VARIANTS[change]
    with RewriteCounter() as c:
        out = compiled(("variant", change), fn, False)(q, k, v, idx, bs)
    torch.testing.assert_close(out, fn(q, k, v, idx, bs), equal_nan=True, rtol=1e-4, atol=1e-5)
    if _changes_what_is_computed(change, shape):
        assert c.rewrites == [], [str(r) for r in c.rewrites]


def _changes_what_is_computed(change, shape):
    """Some changes are no-ops at some sizes, and then rewriting is right: a window of two blocks
    masks nothing while T <= 2 * block_size, a per-head scale over one head is a plain scale, GQA
    groups tiled the other way round are the same groups where G = 1 or H = 1."""
    if change is None:
        return False
    if change == "sliding_window":
        return shape.T > 2 * shape.block_size
    if change == "per_head_scale":
        return shape.H * shape.G > 1
    if change in ("mask_grouped_other_way", "values_grouped_other_way"):  # one grouping if G or H is 1
        return shape.H > 1 and shape.G > 1
    return True


def test_unknown_selection_kinds_are_rejected():
    from fsa_compile.testing import make_selection

    with pytest.raises(ValueError, match="unknown selection kind 'padded'"):
        make_selection(Shape(1, 8, 1, 1, 4, 4, 2), "padded", 0)
    with pytest.raises(ValueError, match="unknown selection kind"):
        selections(Shape(1, 8, 1, 1, 4, 4, 2), ("duplicate",))
    with pytest.raises(ValueError, match="unknown selection kind"):
        nsa_inputs(kinds=("unique", "typo"))


def test_the_check_compiles_each_new_shape_past_dynamos_recompile_limit():
    """With Dynamo's limit at 1, a second block size would run eagerly and compare eager with
    eager; the check lifts the limit for its call, so every shape is compiled and rewritten.
    (Not pytest's monkeypatch: its undo deletes the module attributes, which hides Dynamo's
    config entries for the rest of the process.)"""
    cfg = torch._dynamo.config
    saved = {name: getattr(cfg, name) for name in many_recompiles.NAMES if hasattr(cfg, name)}
    try:
        for name in saved:
            setattr(cfg, name, 1)
        torch._dynamo.reset()
        fn = FORMS["gather_index_einsum"].fn
        compiled = torch.compile(fn, backend="fsa", options=FAST, dynamic=False)
        for bs in (4, 8, 2):
            q, k, v, idx, _ = make_inputs(Shape(1, 16, 1, 1, 4, bs, 2), "unique", bs)
            with RewriteCounter() as c:
                assert_compiled_matches_eager(fn, q, k, v, idx, bs, grad=False, expect_rewrites=1, compiled=compiled)
            assert len(c.rewrites) == 1, f"block size {bs} was not compiled"
    finally:
        for name, value in saved.items():
            setattr(cfg, name, value)
    assert all(hasattr(cfg, name) for name in saved)


@settings(max_examples=examples(20), **SETTINGS)
@given(form=st.sampled_from(["decode_gather", "decode_mask_sdpa", "chunked_queries", "rows_at", "mask_sdpa_at"]),
       shape=shapes(T=(2, 40), G=(1, 4)), rows=st.floats(0, 1), start=st.floats(0, 1),
       kind=st.sampled_from(["unique", "padding", "duplicates"]), seed=st.integers(0, 2**20))
def test_fewer_query_rows_than_keys_match_eager(form, shape, rows, start, kind, seed):
    """The last T_q rows over all T keys (a decode step; the mask form in [B, H, T, D]), chunks
    of a full-length q, or T_q rows at a fixed offset of all T keys: every rewrite matches eager,
    forward and backward."""
    from test_patterns_decode import (chunked_queries, decode_gather, decode_mask_sdpa, decode_mask_sdpa_at,
                                      rows_at)

    q, k, v, idx, bs = make_inputs(shape, kind, seed)
    tq = 1 + round(rows * (shape.T - 1))
    first = round(start * (shape.T - tq))
    if form == "rows_at":
        fn = lambda q, k, v, i, b, f=first: rows_at(q, k, v, i, b, f)  # noqa: E731
        args = (q[:, first:first + tq].contiguous(), k, v, idx[:, first:first + tq].contiguous(), bs)
    elif form == "mask_sdpa_at":
        fn = lambda q, k, v, i, b, f=first: decode_mask_sdpa_at(q, k, v, i, b, f)  # noqa: E731
        args = tuple(x.transpose(1, 2).contiguous() for x in (q[:, first:first + tq], k, v, idx[:, first:first + tq]))
        args += (bs,)
    elif form == "chunked_queries":
        fn = lambda q, k, v, i, b, c=tq: chunked_queries(q, k, v, i, b, chunk=c)  # noqa: E731
        args = (q, k, v, idx, bs)
    elif form == "decode_gather":
        fn, args = decode_gather, (q[:, -tq:].contiguous(), k, v, idx[:, -tq:].contiguous(), bs)
    else:
        fn = decode_mask_sdpa
        args = tuple(x.transpose(1, 2).contiguous() for x in (q[:, -tq:], k, v, idx[:, -tq:])) + (bs,)
    torch._dynamo.reset()
    with RewriteCounter() as c:
        assert_compiled_matches_eager(fn, *args, backend_options=FAST, grad=True)
    expect = math.ceil(shape.T / tq) if form == "chunked_queries" else 1
    assert sum(len(r.rewrites) for r in c.results) == expect, "; ".join(str(m) for r in c.results for m in r.misses)


@settings(max_examples=examples(6), **SETTINGS)
@given(shape=shapes(T=(8, 48), G=(1, 3)), data=st.data(), seed=st.integers(0, 2**20))
def test_a_static_cache_at_random_positions_matches_eager_in_two_graphs(shape, data, seed):
    """One compiled decode step over a whole static cache, called at random Python-int positions:
    equal to eager at each, at most two graphs (the first position's, then the symbolic one), each
    rewritten."""
    from torch._dynamo.utils import counters

    from test_patterns_decode import _static_step

    q, k, v, idx, bs = make_inputs(shape, "padding", seed)
    positions = data.draw(st.lists(st.integers(0, shape.T - 1), min_size=2, max_size=5), label="positions")
    torch._dynamo.reset()
    counters.clear()
    f = torch.compile(_static_step, backend="fsa", options=FAST)
    with RewriteCounter() as c:
        for pos in positions:
            args = (q[:, pos:pos + 1], k, v, idx[:, pos:pos + 1], bs, pos)
            torch.testing.assert_close(f(*args), _static_step(*args), rtol=1e-5, atol=1e-6, equal_nan=True)
    assert counters["stats"]["unique_graphs"] <= 2
    _check_rewrites(c)  # every graph compiled was rewritten
