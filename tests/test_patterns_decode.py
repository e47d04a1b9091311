"""Selected attention whose output has fewer rows than there are keys: the newest tokens over a
longer key sequence (a decode step, a prefill chunk after a KV cache: q holds ``T_q`` rows at the
last ``T_q`` key positions), and chunks of queries sliced out of a full-length q. Rewritten into
the op with q shorter than k; near misses where the positions are not those."""
import pytest
import torch
import torch.nn.functional as F

import fsa_compile
from fsa_compile.testing import RewriteCounter, Shape, assert_compiled_matches_eager, make_inputs

FAST = {"inner": "aot_eager"}
NEG_INF = float("-inf")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield


def rows_at(q, k, v, block_indices, block_size, first):
    """The gather form for q's rows at key positions ``first ..`` (q ``[B, T_q, HQ, D]``, k, v
    ``[B, T, H, D]``, block indices ``[B, T_q, H, n]``)."""
    return _rows_at_positions(q, k, v, block_indices, block_size,
                              torch.arange(first, first + q.shape[1], device=q.device))


def _rows_at_positions(q, k, v, block_indices, block_size, positions, shift=0):
    """Row i at key position ``positions[i]`` (``[T_q]``, or ``[B, T_q]``); ``shift`` moves the
    mask off the positions."""
    B, Tq, HQ, D = q.shape
    T, H = k.shape[1], k.shape[2]
    G = HQ // H
    dev = q.device
    tok = (block_indices.unsqueeze(-1) * block_size + torch.arange(block_size, device=dev)).flatten(-2)
    pad = (block_indices < 0).unsqueeze(-1).expand(*block_indices.shape, block_size).flatten(-2)
    pos = positions.to(dev).view(-1, Tq, 1, 1)
    masked = pad | (tok > pos + shift)
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=dev).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=dev).view(1, 1, H, 1)
    k_sel = k[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    v_sel = v[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    s = torch.einsum("bthd,bthsd->bths", q, k_sel) * D**-0.5
    s = s.masked_fill(masked.repeat_interleave(G, dim=2), NEG_INF)
    return torch.einsum("bths,bthsd->bthd", torch.softmax(s, -1), v_sel)


def decode_gather(q, k, v, block_indices, block_size, shift=0):
    """q ``[B, T_q, HQ, D]``: the newest tokens; k, v ``[B, T, H, D]``: every token so far.
    ``shift`` moves the positions off the last T_q (a bug: a near miss)."""
    return rows_at(q, k, v, block_indices, block_size, k.shape[1] - q.shape[1] - shift)


def decode_mask_sdpa(q, k, v, block_indices, block_size):
    """``[B, H, T_q, D]`` q over a ``[B, H, T, D]`` cache: a boolean block mask, causal rows
    ``T - T_q ..`` of ``tril``, SDPA."""
    B, HQ, Tq, D = q.shape
    H, T = k.shape[1], k.shape[2]
    nb = (T + block_size - 1) // block_size
    idx = block_indices.masked_fill(block_indices < 0, nb)
    blocks = torch.zeros(B, H, Tq, nb + 1, dtype=torch.bool, device=q.device).scatter_(-1, idx, True)[..., :nb]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[T - Tq:]
    allowed = (blocks.repeat_interleave(block_size, -1)[..., :T] & causal).repeat_interleave(HQ // H, 1)
    G = HQ // H
    return F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=allowed)


def cached_step(q, k_new, v_new, k_cache, v_cache, block_indices, block_size, pos):
    """One decode step with a preallocated cache: write the new key/value at ``pos``, attend to
    ``cache[:, :pos + 1]``."""
    k_cache[:, pos:pos + 1] = k_new
    v_cache[:, pos:pos + 1] = v_new
    return decode_gather(q, k_cache[:, :pos + 1], v_cache[:, :pos + 1], block_indices, block_size)


def chunked_queries(q, k, v, block_indices, block_size, chunk=24, local_positions=False):
    """The gather form over chunks of ``chunk`` queries at a time (bounded memory), concatenated.
    ``local_positions`` counts each chunk's positions from 0 (a bug: a near miss past chunk 0)."""
    T = q.shape[1]
    outs = []
    for i in range(0, T, chunk):
        j = min(T, i + chunk)
        outs.append(rows_at(q[:, i:j], k, v, block_indices[:, i:j], block_size, 0 if local_positions else i))
    return torch.cat(outs, 1)


def _last_rows(tq, kind="padding", seed=0, T=70, shape=None):
    q, k, v, idx, bs = make_inputs(shape or Shape(2, T, 2, 2, 16, 8, 3), kind, seed)
    return q[:, -tq:].contiguous(), k, v, idx[:, -tq:].contiguous(), bs


@pytest.mark.parametrize("tq", [1, 5])
def test_decode_step_is_rewritten_and_matches_eager(tq):
    args = _last_rows(tq, seed=tq)
    rep = fsa_compile.explain(decode_gather, *args, options=FAST)
    assert len(rep.rewrites) == 1 and rep.misses == [], str(rep)
    assert f"T_q={tq}, T=70" in str(rep.rewrites[0]), str(rep)
    torch.testing.assert_close(rep.output, decode_gather(*args), equal_nan=True, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
    assert_compiled_matches_eager(decode_gather, *_last_rows(tq, "unique", 10 + tq), backend_options=FAST,
                                  expect_rewrites=1)


def test_mask_sdpa_decode_is_rewritten():
    q, k, v, idx, bs = (x.transpose(1, 2).contiguous() if isinstance(x, torch.Tensor) else x
                        for x in _last_rows(4, "unique", 3))
    rep = fsa_compile.explain(decode_mask_sdpa, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 1 and "sdpa form" in str(rep.rewrites[0]), str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(decode_mask_sdpa, q, k, v, idx, bs, backend_options=FAST, expect_rewrites=1)


def test_a_growing_cache_compiles_once_more_and_then_not_again():
    """Decode steps over caches of 60, 61, ... keys: the second length recompiles with a symbolic
    key length (checked again at another length by the pass), the later ones reuse that graph."""
    from torch._dynamo.utils import counters

    q, k, v, idx, bs = make_inputs(Shape(1, 90, 2, 2, 16, 8, 3), "unique", 5)
    f = torch.compile(decode_gather, backend="fsa", options=FAST)
    counters.clear()
    for T in (60, 61, 62, 75, 89):
        args = (q[:, T - 1:T], k[:, :T], v[:, :T], idx[:, T - 1:T], bs)
        torch.testing.assert_close(f(*args), decode_gather(*args), rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def decode_mask_sdpa_at(q, k, v, block_indices, block_size, first):
    """``decode_mask_sdpa`` with q's rows at key positions ``first ..`` (rows of ``tril`` sliced
    there)."""
    B, HQ, Tq, D = q.shape
    H, T = k.shape[1], k.shape[2]
    nb = (T + block_size - 1) // block_size
    idx = block_indices.masked_fill(block_indices < 0, nb)
    blocks = torch.zeros(B, H, Tq, nb + 1, dtype=torch.bool, device=q.device).scatter_(-1, idx, True)[..., :nb]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()[first:first + Tq]
    allowed = (blocks.repeat_interleave(block_size, -1)[..., :T] & causal).repeat_interleave(HQ // H, 1)
    G = HQ // H
    return F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=allowed)


def _rows_from(first, tq, kind="unique", seed=0, T=70):
    q, k, v, idx, bs = make_inputs(Shape(2, T, 2, 2, 16, 8, 3), kind, seed)
    return q[:, first:first + tq].contiguous(), k, v, idx[:, first:first + tq].contiguous(), bs


@pytest.mark.parametrize("first,tq", [(0, 6), (1, 5), (20, 3), (64, 5)])
def test_queries_at_other_fixed_positions_are_rewritten_with_their_offset(first, tq):
    """q's rows at key positions ``first ..`` of a longer k (the first rows, a chunk in the
    middle, or one row before the last ones): read at those positions and given to the op as
    ``q_offset``, equal to eager's output there."""
    args = _rows_from(first, tq, "padding", seed=first)

    def fn(q, k, v, block_indices, block_size):
        return rows_at(q, k, v, block_indices, block_size, first)

    rep = fsa_compile.explain(fn, *args, options=FAST)
    assert len(rep.rewrites) == 1 and rep.misses == [], str(rep)
    assert f"rows={first}..{first + tq - 1}" in str(rep.rewrites[0]), str(rep)
    torch.testing.assert_close(rep.output, fn(*args), equal_nan=True, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
    assert_compiled_matches_eager(fn, *_rows_from(first, tq, "unique", 30 + first), backend_options=FAST,
                                  expect_rewrites=1)


def test_mask_sdpa_at_the_first_rows_is_rewritten_with_its_offset():
    q, k, v, idx, bs = (x.transpose(1, 2).contiguous() if isinstance(x, torch.Tensor) else x
                        for x in _rows_from(0, 4, "unique", 3))

    def fn(q, k, v, block_indices, block_size):
        return decode_mask_sdpa_at(q, k, v, block_indices, block_size, 0)

    rep = fsa_compile.explain(fn, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 1 and "rows=0..3" in str(rep.rewrites[0]), str(rep)
    torch.testing.assert_close(rep.output, fn(q, k, v, idx, bs), rtol=1e-5, atol=1e-6)


def _static_step(q, k, v, block_indices, block_size, pos):
    """A decode step over a preallocated cache attended whole: unwritten slots past ``pos`` are
    masked by causality."""
    return rows_at(q, k, v, block_indices, block_size, pos)


def _compiles(f, q, k, v, idx, bs, positions, tq=1):
    from torch._dynamo.utils import counters

    counters.clear()
    for pos in positions:
        args = (q[:, pos:pos + tq], k, v, idx[:, pos:pos + tq], bs, pos)
        torch.testing.assert_close(f(*args), _static_step(*args), rtol=1e-5, atol=1e-6, equal_nan=True)
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("bs,n", [(8, 3), (16, 4)])
def test_a_static_cache_read_at_a_python_position_compiles_twice_and_then_not_again(bs, n):
    """The position a Python int: the first call is rewritten with its number; when Dynamo makes
    ``pos`` symbolic, the pass checks the match again with ``pos`` at both ends of its range (at 0
    a row sees one key whatever the block size: the match's is kept) and gives the op the input
    itself as q_offset, so later positions reuse that graph. ``n * bs == T`` (16, 4) is also
    read as a dense mask over all keys, whose block size only the graph's constants name."""
    q, k, v, idx, bs = make_inputs(Shape(1, 64, 2, 2, 16, bs, n), "unique", 12)
    f = torch.compile(_static_step, backend="fsa", options=FAST)
    assert _compiles(f, q, k, v, idx, bs, (20, 33, 47, 63, 0, 5)) == 2
    torch._dynamo.reset()  # the second example at the last position: the same
    assert _compiles(f, q, k, v, idx, bs, (20, 63, 47, 0)) == 2
    torch._dynamo.reset()
    rep = fsa_compile.explain(_static_step, q[:, 40:41], k, v, idx[:, 40:41], bs, 40, options=FAST)
    assert len(rep.rewrites) == 1 and "rows=40..40" in str(rep.rewrites[0]), str(rep)


def test_a_symbolic_position_is_guarded_inside_the_keys():
    """With 3 rows a position past T - 3 puts rows past the last key (where eager still computes
    something and the op would refuse): the graph with the symbolic position guards against it, so
    such a call recompiles and is left to the code as written."""
    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 2, 16, 8, 3), "unique", 13)
    q, idx = torch.cat([q, q[:, :4]], 1), torch.cat([idx, idx[:, :4]], 1)  # rows up to position 43
    f = torch.compile(_static_step, backend="fsa", options=FAST)
    assert _compiles(f, q, k, v, idx, bs, (5, 20, 30, 37), tq=3) == 2
    assert _compiles(f, q, k, v, idx, bs, (39,), tq=3) == 1  # rows 39..41 of 40 keys


def test_an_offset_that_stops_following_the_position_is_guarded():
    """``arange(pos, pos + 1).clamp(max=39)``: equal to ``pos`` at the example, not at the far
    end, so the offset stays a number of the rewrite and the position is guarded (recompiles);
    every output equals eager's."""
    q, k, v, idx, bs = make_inputs(Shape(1, 64, 2, 2, 16, 8, 3), "unique", 14)

    def clamped(q, k, v, block_indices, block_size, pos):
        return _rows_at_positions(q, k, v, block_indices, block_size, torch.arange(pos, pos + 1).clamp(max=39))

    from torch._dynamo.utils import counters

    f = torch.compile(clamped, backend="fsa", options=FAST)
    counters.clear()
    with RewriteCounter() as c:
        for pos in (20, 33, 50, 60):
            args = (q[:, pos:pos + 1], k, v, idx[:, pos:pos + 1], bs, pos)
            torch.testing.assert_close(f(*args), clamped(*args), rtol=1e-5, atol=1e-6)
    # 20: a number; 33 (pos now symbolic): a number again, pos guarded; 50: clamped to 39, which
    # none of the offsets tried names, a near miss (unguarded, so 60 runs that graph too)
    assert counters["stats"]["unique_graphs"] == 3
    assert [r.shapes.get("rows") for r in c.rewrites] == ["20..20", "33..33"], [str(r) for r in c.rewrites]
    assert len(c.misses) == 1


def test_positions_not_one_offset_are_near_misses():
    """Rows every other position, and rows whose last position is past the last key: neither is
    q at one fixed offset (and the op's q_offset is at most T - T_q), so both stay near misses."""
    T, tq = 70, 5
    q, k, v, idx, bs = _rows_from(10, tq, "unique", 6)

    def strided(q, k, v, block_indices, block_size):
        return _rows_at_positions(q, k, v, block_indices, block_size, torch.arange(10, 10 + 2 * tq, 2))

    def past_the_end(q, k, v, block_indices, block_size):
        return rows_at(q, k, v, block_indices, block_size, T - tq + 1)

    for fn in (strided, past_the_end):
        torch._dynamo.reset()
        rep = fsa_compile.explain(fn, q, k, v, idx, bs, options=FAST)
        assert rep.rewrites == [] and len(rep.misses) == 1, str(rep)
        assert "not the causal" in rep.misses[0].reason and "does not fit either" in rep.misses[0].reason, str(rep)
        torch.testing.assert_close(rep.output, fn(q, k, v, idx, bs), equal_nan=True)


def test_a_cache_written_in_place_then_attended_is_rewritten():
    q, k, v, idx, bs = make_inputs(Shape(1, 64, 2, 2, 16, 8, 3), "unique", 8)
    pos = 50
    kc, vc = torch.zeros(1, 64, 2, 16), torch.zeros(1, 64, 2, 16)
    kc[:, :pos], vc[:, :pos] = k[:, :pos], v[:, :pos]
    step = (q[:, pos:pos + 1], k[:, pos:pos + 1], v[:, pos:pos + 1])
    eager_kc, eager_vc = kc.clone(), vc.clone()
    want = cached_step(*step, eager_kc, eager_vc, idx[:, pos:pos + 1], bs, pos)
    comp_kc, comp_vc = kc.clone(), vc.clone()
    rep = fsa_compile.explain(cached_step, *step, comp_kc, comp_vc, idx[:, pos:pos + 1], bs, pos, options=FAST)
    assert len(rep.rewrites) == 1 and "T_q=1, T=51" in str(rep.rewrites[0]), str(rep)
    torch.testing.assert_close(rep.output, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(comp_kc, eager_kc) and torch.equal(comp_vc, eager_vc)  # the writes are kept


def test_a_cache_written_between_its_read_and_the_attention_is_a_near_miss():
    def fn(q, k_new, k_cache, v, block_indices, block_size):
        k = k_cache[:, :-1]
        k_cache[:, -1:] = k_new  # after k is read, before the attention output: the op would see it
        return decode_gather(q, k, v, block_indices, block_size) + k_cache[:, -1:].sum()

    def fn2(q, k_new, k_cache, v, block_indices, block_size):
        k_cache[:, -1:] = k_new
        k = k_cache[:, :-1]  # read after one write (as data) ...
        k_cache[:, :1] = 0.0  # ... and written again before the attention output
        return decode_gather(q, k, v, block_indices, block_size)

    q, k, v, idx, bs = _last_rows(1, "unique", 9)
    kc = torch.cat([k, torch.zeros_like(k[:, :1])], 1)
    for f, says in ((fn, "is read before its in-place update"), (fn2, "is updated in place by")):
        torch._dynamo.reset()
        rep = fsa_compile.explain(f, q, k[:, :1].clone(), kc.clone(), v, idx, bs, options=FAST)
        assert rep.rewrites == [] and len(rep.misses) == 1 and says in rep.misses[0].reason, str(rep)


def test_query_chunks_of_a_full_q_are_rewritten_each():
    """Chunks of 24 queries of a 70-token q (the last one short): each chunk is the op on q's
    rows i.. at key positions i.., and the concatenation matches eager, forward and backward."""
    q, k, v, idx, bs = make_inputs(Shape(1, 70, 2, 2, 16, 8, 3), "padding", 20)
    rep = fsa_compile.explain(chunked_queries, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 3 and rep.misses == [], str(rep)
    assert "T_q=22, rows=48..69, T=70" in str(rep), str(rep)
    torch.testing.assert_close(rep.output, chunked_queries(q, k, v, idx, bs), equal_nan=True, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
    assert_compiled_matches_eager(chunked_queries, *make_inputs(Shape(1, 70, 2, 2, 16, 8, 3), "unique", 21),
                                  backend_options=FAST, expect_rewrites=3)


def test_query_chunks_with_positions_from_zero_are_near_misses():
    """Each chunk masking with positions 0.. instead of its own: right for the first chunk only."""
    q, k, v, idx, bs = make_inputs(Shape(1, 70, 2, 2, 16, 8, 3), "unique", 22)

    def fn(q, k, v, block_indices, block_size):
        return chunked_queries(q, k, v, block_indices, block_size, local_positions=True)

    rep = fsa_compile.explain(fn, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 1 and "rows=0..23" in str(rep.rewrites[0]), str(rep)
    assert len(rep.misses) == 2 and all("not the causal" in m.reason for m in rep.misses), str(rep)
    torch.testing.assert_close(rep.output, fn(q, k, v, idx, bs), equal_nan=True, rtol=1e-5, atol=1e-6)


@pytest.mark.interpret
def test_query_chunks_through_the_interpreted_kernels():
    args = make_inputs(Shape(1, 50, 2, 2, 16, 8, 3), "unique", 23)
    rep = fsa_compile.explain(chunked_queries, *args, options=FAST)
    assert len(rep.rewrites) == 3 and all("reference" not in r.plan for r in rep.rewrites), str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(chunked_queries, *args, backend_options=FAST, expect_rewrites=3)


@pytest.mark.interpret
def test_decode_through_the_interpreted_kernels():
    args = _last_rows(3, "padding", 11)
    rep = fsa_compile.explain(decode_gather, *args, options=FAST)
    assert len(rep.rewrites) == 1 and "reference" not in rep.rewrites[0].plan, str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(decode_gather, *_last_rows(3, "unique", 12), backend_options=FAST, expect_rewrites=1)


def _static_cache_positions_through_the_kernels(q, k, v, idx, bs, positions, **tol):
    """Compiled with Inductor: each position's output and gradients against eager's; the graph
    with the symbolic position is reused (two graphs in all)."""
    from torch._dynamo.utils import counters

    f = torch.compile(_static_step, backend="fsa")
    counters.clear()
    with RewriteCounter() as c:
        for pos in positions:
            got_in = [x.detach()[:, pos:pos + 1].clone().requires_grad_() if x is q else x.detach().clone().requires_grad_()
                      for x in (q, k, v)]
            want_in = [x.detach().clone().requires_grad_() for x in got_in]
            out = f(*got_in, idx[:, pos:pos + 1], bs, pos)
            want = _static_step(*want_in, idx[:, pos:pos + 1], bs, pos)
            out.float().square().sum().backward()
            want.float().square().sum().backward()
            torch.testing.assert_close(out, want, **tol)
            for got, exp in zip(got_in, want_in):
                torch.testing.assert_close(got.grad, exp.grad, **tol)
    assert counters["stats"]["unique_graphs"] == 2
    assert len(c.rewrites) == 2 and all("reference" not in r.plan for r in c.rewrites), [str(r) for r in c.rewrites]


@pytest.mark.interpret
def test_a_static_cache_through_the_interpreted_kernels_and_inductor():
    q, k, v, idx, bs = make_inputs(Shape(1, 48, 2, 2, 16, 8, 3), "unique", 24)
    _static_cache_positions_through_the_kernels(q, k, v, idx, bs, (10, 29, 47, 3), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_a_static_cache_on_the_gpu_runs_the_kernels_and_matches_eager():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    q, k, v, idx, bs = (x.cuda() if isinstance(x, torch.Tensor) else x
                        for x in make_inputs(Shape(1, 700, 2, 4, 64, 32, 4, torch.bfloat16), "unique", 25))
    _static_cache_positions_through_the_kernels(q, k, v, idx, bs, (100, 333, 699, 0), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("G", [2, 16])
def test_decode_and_query_chunks_on_the_gpu_run_the_kernels_and_match_eager(G):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    q, k, v, idx, bs = make_inputs(Shape(1, 700, 2, G, 64, 32, 4, torch.bfloat16), "unique", 13)
    for tq in (1, 37):
        args = (q[:, -tq:].contiguous().cuda(), k.cuda(), v.cuda(), idx[:, -tq:].contiguous().cuda(), bs)
        torch._dynamo.reset()
        rep = fsa_compile.explain(decode_gather, *args)
        assert len(rep.rewrites) == 1 and "reference" not in rep.rewrites[0].plan, str(rep)
        torch._dynamo.reset()
        assert_compiled_matches_eager(decode_gather, *args, expect_rewrites=1)
    args = (q.cuda(), k.cuda(), v.cuda(), idx.cuda(), bs)
    torch._dynamo.reset()
    rep = fsa_compile.explain(lambda *a: chunked_queries(*a, chunk=256), *args)
    assert len(rep.rewrites) == 3 and all("reference" not in r.plan for r in rep.rewrites), str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(lambda *a: chunked_queries(*a, chunk=256), *args, expect_rewrites=3)
