"""q's rows at positions an integer tensor gives (a KV cache's ``cache_position``, HF style):
``[T_q]`` or ``[B, T_q]`` positions compared with the key positions in the mask. Rewritten into
the op with ``q_positions``; the values are data, so a decode loop over a static cache compiles
once. Near misses where the tensor is not read as the rows' positions."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fsa_compile
from fsa_compile.testing import RewriteCounter, Shape, assert_compiled_matches_eager, make_inputs

from test_patterns_decode import _rows_at_positions

FAST = {"inner": "aot_eager"}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield


def gather_at(q, k, v, block_indices, block_size, cache_position, shift=0):
    """The gather form, query row i at key position ``cache_position[i]`` (``[T_q]``, or
    ``[B, T_q]``). ``shift`` moves the mask off the positions (a bug: a near miss)."""
    return _rows_at_positions(q, k, v, block_indices, block_size, cache_position, shift)


def _block_mask(block_indices, block_size, T):
    """``[B, H, T_q, T]`` booleans: the keys of each row's selected blocks (padding selects none)."""
    B, H, Tq, _ = block_indices.shape
    nb = (T + block_size - 1) // block_size
    idx = block_indices.masked_fill(block_indices < 0, nb)
    blocks = torch.zeros(B, H, Tq, nb + 1, dtype=torch.bool, device=idx.device).scatter_(-1, idx, True)[..., :nb]
    return blocks.repeat_interleave(block_size, -1)[..., :T]


def mask_sdpa_at(q, k, v, block_indices, block_size, cache_position):
    """``[B, H, T_q, D]`` q over a ``[B, H, T, D]`` cache, HF style: a causal mask from
    ``arange(T) <= cache_position[:, None]``, ANDed with a boolean block mask, SDPA."""
    Tq, T, G = q.shape[2], k.shape[2], q.shape[1] // k.shape[1]
    causal = torch.arange(T, device=q.device) <= cache_position.reshape(-1, 1, Tq, 1)
    allowed = (_block_mask(block_indices, block_size, T) & causal).repeat_interleave(G, 1)
    return F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=allowed)


def indexed_mask(q, k, v, block_indices, block_size, cache_position):
    """The causal rows picked out of a ``[T, T]`` ``tril`` by indexing with the positions: eager
    fails on a position past the keys, the op would not (a near miss)."""
    T, G = k.shape[2], q.shape[1] // k.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[cache_position]
    allowed = (_block_mask(block_indices, block_size, T) & causal).repeat_interleave(G, 1)
    return F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=allowed)


def _rows(positions, kind="unique", seed=0, T=70, G=2):
    """q and the selection at the rows of ``positions`` ([T_q]: alike in both batch items)."""
    q, k, v, idx, bs = make_inputs(Shape(2, T, 2, G, 16, 8, 3), kind, seed)
    pos = torch.as_tensor(positions)
    rows = pos.clamp(0, T - 1).expand(2, pos.shape[-1])
    pick = rows.view(2, -1, 1, 1)
    qr = q.gather(1, pick.expand(2, pos.shape[-1], *q.shape[2:])).contiguous()
    ir = idx.gather(1, pick.expand(2, pos.shape[-1], *idx.shape[2:])).contiguous()
    return qr, k, v, ir, bs, pos


@pytest.mark.parametrize("positions", [
    [30, 31, 32, 33],  # a chunk (what q_offset also reads)
    [33, 5, 69, 0, 5],  # unsorted, repeated, the first and the last key
    [[0, 40, 69, 7], [3, 3, 50, 69]],  # [B, T_q]
    [69],  # one decode row
])
def test_positions_tensor_is_rewritten_and_matches_eager(positions):
    *args, pos = _rows(positions, "padding", seed=len(positions))
    rep = fsa_compile.explain(gather_at, *args, pos, options=FAST)
    assert len(rep.rewrites) == 1 and rep.misses == [], str(rep)
    assert "rows=l_cache_position_[i]" in str(rep.rewrites[0]), str(rep)
    torch.testing.assert_close(rep.output, gather_at(*args, pos), equal_nan=True, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
    assert_compiled_matches_eager(gather_at, *args, pos, backend_options=FAST, expect_rewrites=1)


def test_positions_outside_the_keys_are_asserted_where_the_code_differs_there():
    """This gather form clamps token positions to the last key: a row past the keys (T = 70 is
    not a multiple of bs = 8) would see the clamped key for every token of the last block past
    T, which the op does not give. Inside [0, T) it is rewritten; outside, the rewrite fails
    loudly instead of giving another result."""
    *args, pos = _rows([12, 69, 30], "padding", seed=2)
    rep = fsa_compile.explain(gather_at, *args, pos, options=FAST)
    assert len(rep.rewrites) == 1 and "positions_outside=assert" in str(rep.rewrites[0]), str(rep)
    f = torch.compile(gather_at, backend="fsa", options=FAST)
    torch.testing.assert_close(f(*args, pos), gather_at(*args, pos), equal_nan=True, rtol=1e-5, atol=1e-6)
    for bad in ([12, 75, 30], [12, -1, 30]):
        with pytest.raises(RuntimeError, match="outside"):
            f(*args, torch.tensor(bad))


def test_positions_outside_the_keys_pass_where_the_code_gives_what_the_op_does():
    """The mask+SDPA form: a row past the keys sees all of its blocks, one before the first
    none (SDPA gives it zeros, as the rewrite does)."""
    *args, pos = _rows([[-2, 40, 100, 7], [3, 3, 50, 69]], "unique", seed=3)
    q, k, v, idx = (x.transpose(1, 2).contiguous() for x in args[:4])
    rep = fsa_compile.explain(mask_sdpa_at, q, k, v, idx, args[4], pos, options=FAST)
    assert len(rep.rewrites) == 1 and "positions_outside=any" in str(rep.rewrites[0]), str(rep)
    torch.testing.assert_close(rep.output, mask_sdpa_at(q, k, v, idx, args[4], pos), rtol=1e-5, atol=1e-6)


def test_hf_style_mask_and_sdpa_is_rewritten():
    *args, pos = _rows([12, 40, 41, 69], "unique", seed=3)
    q, k, v, idx = (x.transpose(1, 2).contiguous() for x in args[:4])
    rep = fsa_compile.explain(mask_sdpa_at, q, k, v, idx, args[4], pos, options=FAST)
    assert len(rep.rewrites) == 1 and "sdpa form" in str(rep.rewrites[0]), str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(mask_sdpa_at, q, k, v, idx, args[4], pos, backend_options=FAST, expect_rewrites=1)


def test_a_decode_loop_over_a_static_cache_compiles_once():
    """The position is data: every step of the loop runs the one graph (a Python-int position
    compiles two, tests/test_patterns_decode.py), each equal to eager."""
    from torch._dynamo.utils import counters

    q, k, v, idx, bs = make_inputs(Shape(1, 90, 2, 2, 16, 8, 3), "unique", 5)
    f = torch.compile(gather_at, backend="fsa", options=FAST)
    counters.clear()
    with RewriteCounter() as c:
        for p in (3, 40, 41, 89, 0, 64):
            args = (q[:, p:p + 1], k, v, idx[:, p:p + 1], bs, torch.tensor([p]))
            torch.testing.assert_close(f(*args), gather_at(*args), rtol=1e-5, atol=1e-6, equal_nan=True)
    assert counters["stats"]["unique_graphs"] == 1
    assert len(c.rewrites) == 1 and c.misses == []


def _through_kernels(fn, args, **tol):
    with RewriteCounter() as c:
        out = assert_compiled_matches_eager(fn, *args, expect_rewrites=1, **tol)
    assert [r.plan for r in c.rewrites] and not any(r.plan.startswith("reference") for r in c.rewrites), \
        [str(r) for r in c.rewrites]
    return out


@pytest.mark.interpret
def test_positions_through_the_interpreted_kernels_and_inductor():
    *args, pos = _rows([[40, 3, 69, 12, 12], [0, 33, 20, 69, 1]], "padding", seed=8)
    _through_kernels(gather_at, (*args, pos), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fn, says", [
    (lambda *a: gather_at(*a, shift=1), "not the causal"),  # keys one past each row's position
])
def test_positions_read_otherwise_are_near_misses(fn, says):
    """(One case for now: keys one past each row's position.)"""
    *args, pos = _rows([30, 5, 69], "unique", seed=4)
    rep = fsa_compile.explain(fn, *args, pos, options=FAST)
    assert rep.rewrites == [] and len(rep.misses) == 1, str(rep)
    assert says in rep.misses[0].reason, str(rep)
    torch.testing.assert_close(rep.output, fn(*args, pos), equal_nan=True)


def test_rows_indexed_out_of_a_mask_by_the_positions_are_rewritten_with_the_assertion():
    """``tril()[cache_position]``: eager fails past the last key (and wraps before the first),
    so the rewrite asserts 0 <= position < T; inside, equal to eager."""
    *args, pos = _rows([30, 5, 69], "unique", seed=4)
    q, k, v, idx = (x.transpose(1, 2).contiguous() for x in args[:4])
    rep = fsa_compile.explain(indexed_mask, q, k, v, idx, args[4], pos, options=FAST)
    assert len(rep.rewrites) == 1 and "positions_outside=assert" in str(rep.rewrites[0]), str(rep)
    torch.testing.assert_close(rep.output, indexed_mask(q, k, v, idx, args[4], pos), rtol=1e-5, atol=1e-6)


def _mask_sdpa_clamped(q, k, v, block_indices, block_size, cache_position):
    """The mask+SDPA form with the positions clamped into the keys by the code itself."""
    T = k.shape[2]
    return mask_sdpa_at(q, k, v, block_indices, block_size, cache_position.clamp(0, T - 1))


def _gather_shifted(q, k, v, block_indices, block_size, cache_position):
    """The gather form with each row one key further than the tensor says (``cache_position + 1``
    computed before the mask: the row is at that position, as far as the code is concerned)."""
    return gather_at(q, k, v, block_indices, block_size, cache_position + 1)


@pytest.mark.parametrize("fn, layout, node, outside", [(_mask_sdpa_clamped, "bhtd", "clamp", "any"),
                                                       (_gather_shifted, "bthd", "add", "assert")])
def test_positions_the_code_computes_from_the_input_are_read_where_computed(fn, layout, node, outside):
    """Reading the input itself fails (the shift) or needs the assertion (the clamp: a row the
    code clamps to the last key differs from one past the keys): the pass reads the op's own
    result, ``cache_position.clamp(...)`` or ``cache_position + 1``, as the rows' positions. The
    clamped mask is then the op for any input; the shifted gather form still clamps token
    positions (T = 70, bs = 8), so outside the keys its rewrite asserts, as for the input itself."""
    *args, pos = _rows([[30, 5, 68, 12], [0, 33, 20, 41]], "unique", seed=6)
    if layout == "bhtd":
        args = [*(x.transpose(1, 2).contiguous() for x in args[:4]), args[4]]
    rep = fsa_compile.explain(fn, *args, pos, options=FAST)
    assert len(rep.rewrites) == 1 and f"rows={node}[i]" in str(rep.rewrites[0]), str(rep)
    assert f"positions_outside={outside}" in str(rep.rewrites[0]), str(rep)
    torch.testing.assert_close(rep.output, fn(*args, pos), equal_nan=True, rtol=1e-5, atol=1e-6)
    f = torch.compile(fn, backend="fsa", options=FAST)
    far = torch.tensor([[-3, 5, 100, 69], [70, -1, 20, 41]])
    if outside == "any":
        torch.testing.assert_close(f(*args, far), fn(*args, far), equal_nan=True, rtol=1e-5, atol=1e-6)
    else:
        with pytest.raises(RuntimeError, match="outside"):
            f(*args, far)


def test_a_tensor_not_shaped_like_the_rows_is_a_near_miss():
    *args, pos = _rows([30, 5, 69], "unique", seed=4)

    def fn(q, k, v, i, bs, p):  # the mask reads the rows' positions from a longer tensor
        return gather_at(q, k, v, i, bs, p[1:])

    long = torch.tensor([0, 30, 5, 69])
    rep = fsa_compile.explain(fn, *args, long, options=FAST)
    assert rep.rewrites == [] and len(rep.misses) == 1, str(rep)
    torch.testing.assert_close(rep.output, fn(*args, long), equal_nan=True)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(values=st.lists(st.integers(-3, 75), min_size=1, max_size=6), per_batch=st.booleans(),
       G=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
def test_property_positions_tensor_matches_eager(values, per_batch, G, seed):
    """Random positions (any order, repeats), shared or per batch item, in two forms: one
    rewrite each, equal to eager; the gather form at positions inside the 70 keys (it asserts
    outside), the mask+SDPA form at any."""
    pos = torch.tensor([values, values[::-1]]) if per_batch else torch.tensor(values)
    *args, pos = _rows(pos, "padding", seed=seed, G=G)
    inside = pos.clamp(0, 69)
    q, k, v, idx = (x.transpose(1, 2).contiguous() for x in args[:4])
    for fn, a, p in ((gather_at, args, inside), (mask_sdpa_at, (q, k, v, idx, args[4]), pos)):
        torch._dynamo.reset()
        rep = fsa_compile.explain(fn, *a, p, options=FAST)
        assert len(rep.rewrites) == 1, str(rep)
        torch.testing.assert_close(rep.output, fn(*a, p), equal_nan=True, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_positions_on_the_gpu_run_the_kernels_and_match_eager():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    q, k, v, idx, bs = (x.cuda() if isinstance(x, torch.Tensor) else x
                        for x in make_inputs(Shape(2, 2000, 2, 4, 64, 64, 8, torch.bfloat16), "unique", 7))
    pos = torch.tensor([[5, 1999, 700, 64], [0, 1000, 1000, 1500]], device="cuda")
    rows = pos.view(2, -1, 1, 1)
    qr = q.gather(1, rows.expand(2, 4, *q.shape[2:])).contiguous()
    ir = idx.gather(1, rows.expand(2, 4, *idx.shape[2:])).contiguous()
    _through_kernels(gather_at, (qr, k, v, ir, bs, pos), rtol=2e-2, atol=2e-2)
