"""Code the pass once rewrote into something else, found by an adversarial review (2026-12-01).

Each test runs the user's code eagerly and compiled with ``backend="fsa"`` and asserts that the
two agree (outputs and gradients), and, where the pass can still rewrite, that it does.
"""
import pytest
import torch

import fsa_compile
from fsa_compile.testing import RewriteCounter

FAST = {"inner": "aot_eager"}
NEG_INF = float("-inf")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield


def _positions(bi, bs, T):
    """The gather form's start: the padding and causal mask on token positions, the clamped
    positions, and the batch / head index tensors for ``k[b, safe, h]``."""
    B, H = bi.shape[0], bi.shape[2]
    tok = (bi.unsqueeze(-1) * bs + torch.arange(bs)).flatten(-2)
    masked = (bi < 0).repeat_interleave(bs, -1) | (tok > torch.arange(T).view(1, T, 1, 1))
    return masked, tok.clamp(0, T - 1), torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, 1, H, 1)


def _gather(q, k, v, bi, bs, T, window=None):
    """The gather form on ``[B, T, H, D]`` tensors (G = 1), with an optional sliding window."""
    B, H, D = q.shape[0], k.shape[2], q.shape[-1]
    tok = (bi.unsqueeze(-1) * bs + torch.arange(bs)).flatten(-2)
    t_pos = torch.arange(T).view(1, T, 1, 1)
    masked = (bi < 0).repeat_interleave(bs, -1) | (tok > t_pos)
    if window is not None:
        masked = masked | (tok < t_pos - window)
    safe = tok.clamp(0, T - 1)
    b, h = torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, 1, H, 1)
    s = torch.einsum("bthd,bthsd->bths", q, k[b, safe, h]) * D**-0.5
    return torch.einsum("bths,bthsd->bthd", torch.softmax(s.masked_fill(masked, NEG_INF), -1), v[b, safe, h])


def _train_both(f, bi, B, T, H, D):
    """``f`` run eagerly and compiled on the same random q, k, v ``[B, T, H, D]`` (leaves), each
    with a squared-sum loss where the output records gradients: (eager leaves, compiled leaves,
    the compile's rewrite counter)."""
    base = [torch.randn(B, T, H, D) for _ in range(3)]
    eager = [x.clone().requires_grad_() for x in base]
    comp = [x.clone().requires_grad_() for x in base]
    out_e = f(*eager, bi)
    with RewriteCounter() as c:
        out_c = torch.compile(f, backend="fsa", options=FAST)(*comp, bi)
    if out_e.requires_grad:
        out_e.square().sum().backward()
        out_c.square().sum().backward()
    return eager, comp, c


def _own_and_previous(B, T, H, bs):
    t = torch.arange(T).view(1, T, 1)
    return torch.stack([t // bs, t // bs - 1], -1).expand(B, T, H, 2).contiguous()


def test_a_topk_over_more_columns_than_blocks_is_checked_not_trusted():
    """A top-k over nb + 1 columns (a spare "null" column) can give the entry nb, which this code
    drops (its keys are past the end); the op must drop it too, not assert."""
    B, T, H, D, bs, n = 1, 64, 1, 16, 16, 2
    nb = T // bs

    def f(q, k, v, block_scores):
        return _gather(q, k, v, block_scores.topk(n, -1).indices, bs, T)

    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    scores = torch.randn(B, T, H, nb + 1)
    scores[..., 0], scores[..., nb] = 10.0, 5.0  # every row picks block 0 and the spare column
    rep = fsa_compile.explain(f, q, k, v, scores, options=FAST)
    assert len(rep.rewrites) == 1 and "on_out_of_range=drop" in str(rep), str(rep)
    torch.testing.assert_close(rep.output, f(q, k, v, scores))


def test_a_topk_index_wrapped_into_range_is_a_near_miss():
    """``topk(...).indices % nb`` over a longer row maps past-the-end entries onto real blocks."""
    B, T, H, D, bs, n = 1, 64, 1, 16, 16, 2
    nb = T // bs

    def f(q, k, v, block_scores):
        return _gather(q, k, v, block_scores.topk(n, -1).indices % nb, bs, T)

    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    scores = torch.randn(B, T, H, nb + 3)
    rep = fsa_compile.explain(f, q, k, v, scores, options=FAST)
    assert rep.rewrites == [] and "neither rejected nor dropped" in rep.misses[0].reason, str(rep)
    torch.testing.assert_close(rep.output, f(q, k, v, scores), equal_nan=True)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_a_detached_input_gets_no_gradient(which):
    B, T, H, D, bs = 1, 64, 1, 16, 16

    def f(q, k, v, bi):
        q, k, v = (x.detach() if name == which else x for name, x in zip("qkv", (q, k, v)))
        return _gather(q, k, v, bi, bs, T)

    eager, comp, c = _train_both(f, _own_and_previous(B, T, H, bs), B, T, H, D)
    assert len(c.rewrites) == 1
    for name, e, x in zip("qkv", eager, comp):
        if name == which:
            assert e.grad is None and x.grad is None
        else:
            torch.testing.assert_close(x.grad, e.grad)


def test_transposed_inputs_train_under_inductor():
    """q, k, v that are ``[B, H, T, D]`` memory seen as ``[B, T, H, D]``: the op's gradients are
    contiguous, as its fake implementation tells Inductor (it used to promise q's strides)."""
    B, T, H, D, bs = 1, 64, 2, 16, 16
    bi = _own_and_previous(B, T, H, bs)

    def leaves():
        torch.manual_seed(1)
        return [torch.randn(B, H, T, D).transpose(1, 2).requires_grad_() for _ in range(3)]

    eager, comp = leaves(), leaves()
    _gather(*eager, bi, bs, T).sum().backward()
    with RewriteCounter() as c:
        torch.compile(lambda q, k, v, bi: _gather(q, k, v, bi, bs, T), backend="fsa")(*comp, bi).sum().backward()
    assert len(c.rewrites) == 1
    for e, x in zip(eager, comp):
        torch.testing.assert_close(x.grad, e.grad)


@pytest.mark.parametrize("window", [150.5, 5000])
def test_a_window_longer_than_the_example_is_not_assumed_away(window):
    """Under dynamic shapes a match is checked again at a length past the constants the checks
    read (a float window, or one past 4096, used to be skipped): at T = 300 the float window
    hides keys, and the compiled call must agree with eager there."""
    B, H, D, bs = 1, 1, 16, 16

    def f(q, k, v, bi):
        return _gather(q, k, v, bi, bs, q.shape[1], window=window)

    g = torch.compile(f, backend="fsa", dynamic=True, options=FAST)
    for T in (40, 300):
        q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
        t = torch.arange(T).view(1, T, 1)
        bi = torch.stack([t // bs, torch.zeros_like(t), t // bs - 1], -1).view(B, T, H, 3)
        torch.testing.assert_close(g(q, k, v, bi), f(q, k, v, bi), equal_nan=True)


@pytest.mark.parametrize("detached", ["row_max", "denominator"])
def test_a_spelled_out_softmax_with_a_detached_part(detached):
    """``exp(s - s.amax().detach()) / sum``: the detached row max changes nothing (rewritten); a
    detached denominator is another function of s for the gradients (left alone)."""
    B, T, H, D, bs = 1, 64, 1, 16, 16

    def f(q, k, v, bi):
        masked, safe, b, h = _positions(bi, bs, T)
        s = (torch.einsum("bthd,bthsd->bths", q, k[b, safe, h]) * D**-0.5).masked_fill(masked, NEG_INF)
        e = torch.exp(s - s.amax(-1, keepdim=True).detach())
        den = (e.detach() if detached == "denominator" else e).sum(-1, keepdim=True)
        return torch.einsum("bths,bthsd->bthd", e / den, v[b, safe, h])

    eager, comp, c = _train_both(f, _own_and_previous(B, T, H, bs), B, T, H, D)
    assert len(c.rewrites) == (1 if detached == "row_max" else 0)
    for e, x in zip(eager, comp):
        torch.testing.assert_close(x.grad, e.grad)


# -- a second review (2026-12-01) --------------------------------------------------------------------


def _bi(B, T, H, n, bs, seed=0):
    g = torch.Generator().manual_seed(seed)
    bi = torch.stack([torch.randperm(T // bs, generator=g)[:n] for _ in range(B * T * H)]).view(B, T, H, n)
    bi[..., 0] = (torch.arange(T) // bs).view(1, T, 1)
    return bi


def test_in_place_writes_beside_a_rewrite_still_happen():
    """A KV-cache write and a step counter next to the attention: FX's dead-code pass counts a
    method call without users as dead, and the rewrite's clean-up dropped both."""
    from fsa_compile.patterns.forms import gather_index_einsum

    def prefill(q, k, v, bi, bs, k_cache, v_cache, steps):
        T = q.shape[1]
        k_cache[:, :T] = k
        v_cache[:, :T].copy_(v)
        steps.add_(1)
        return gather_index_einsum(q, k, v, bi, bs)

    B, T, H, G, D, bs = 1, 64, 2, 2, 16, 16
    q, k, v = torch.randn(B, T, H * G, D), torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    bi = _bi(B, T, H, 2, bs)
    kc, vc, steps = torch.zeros(B, 128, H, D), torch.zeros(B, 128, H, D), torch.zeros((), dtype=torch.long)
    with RewriteCounter() as c:
        out = torch.compile(prefill, backend="fsa", options=FAST)(q, k, v, bi, bs, kc, vc, steps)
    assert len(c.rewrites) == 1
    assert torch.equal(kc[:, :T], k) and torch.equal(vc[:, :T], v) and steps.item() == 1
    torch.testing.assert_close(out, gather_index_einsum(q, k, v, bi, bs))


def test_an_input_updated_between_its_read_and_the_output_is_a_near_miss():
    """``k.mul_(2)`` after the gather: eager's keys are the old ones, an op placed at the output
    would read the new ones."""
    B, T, H, D, bs = 1, 64, 1, 16, 16

    def f(q, k, v, bi):
        masked, safe, b, h = _positions(bi, bs, T)
        rows = ((b * T + safe) * H + h).flatten()
        ks = k.reshape(B * T * H, D).index_select(0, rows).view(B, T, H, -1, D)  # a copy, not a view
        k.mul_(2)
        s = torch.einsum("bthd,bthsd->bths", q, ks) * D**-0.5
        return torch.einsum("bths,bthsd->bthd", torch.softmax(s.masked_fill(masked, NEG_INF), -1), v[b, safe, h])

    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    bi = _own_and_previous(B, T, H, bs)
    k_eager, k_comp = k.clone(), k.clone()
    rep = fsa_compile.explain(f, q, k_comp, v, bi, options=FAST)
    assert rep.rewrites == [] and "updated in place" in rep.misses[0].reason, str(rep)
    torch.testing.assert_close(rep.output, f(q, k_eager, v, bi))
    torch.testing.assert_close(k_comp, k_eager)


@pytest.mark.parametrize("part", ["attention", "key_gather"])
def test_no_grad_inside_the_attention_is_a_near_miss(part):
    B, T, H, D, bs = 1, 64, 1, 16, 16

    def f(q, k, v, bi):
        masked, safe, b, h = _positions(bi, bs, T)
        with torch.no_grad():
            ks = k[b, safe, h]
            if part == "attention":
                s = torch.einsum("bthd,bthsd->bths", q, ks) * D**-0.5
                o = torch.einsum("bths,bthsd->bthd", torch.softmax(s.masked_fill(masked, NEG_INF), -1), v[b, safe, h])
        if part == "key_gather":
            s = torch.einsum("bthd,bthsd->bths", q, ks) * D**-0.5
            o = torch.einsum("bths,bthsd->bthd", torch.softmax(s.masked_fill(masked, NEG_INF), -1), v[b, safe, h])
        return o.reshape(B, T, H * D) * 1.0

    eager, comp, c = _train_both(f, _own_and_previous(B, T, H, bs), B, T, H, D)
    assert c.rewrites == [] and "torch.no_grad()" in c.misses[0].reason
    for e, x in zip(eager, comp):
        assert (e.grad is None) == (x.grad is None)
        if e.grad is not None:
            torch.testing.assert_close(x.grad, e.grad)


@pytest.mark.parametrize("odd_head", [0, 5, 11])
def test_a_mask_wrong_for_one_head_of_sixteen_is_seen(odd_head):
    """One bidirectional head among 16 causal ones: the checked rows cover every head."""
    B, T, H, D, bs, n = 1, 288, 16, 8, 16, 4

    def f(q, k, v, bi):
        tok = (bi.unsqueeze(-1) * bs + torch.arange(bs)).flatten(-2)
        future = (tok > torch.arange(T).view(1, T, 1, 1)) & (torch.arange(H) != odd_head).view(1, 1, H, 1)
        masked = (bi < 0).repeat_interleave(bs, -1) | future | (tok >= T)
        safe = tok.clamp(0, T - 1)
        b, h = torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, 1, H, 1)
        s = torch.einsum("bthd,bthsd->bths", q, k[b, safe, h]) * D**-0.5
        return torch.einsum("bths,bthsd->bthd", s.masked_fill(masked, NEG_INF).softmax(-1), v[b, safe, h])

    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    bi = _bi(B, T, H, n, bs)
    rep = fsa_compile.explain(f, q, k, v, bi, options=FAST)
    assert rep.rewrites == [], str(rep)
    torch.testing.assert_close(rep.output, f(q, k, v, bi))


def test_sdpa_values_with_their_own_head_count():
    """``enable_gqa=True`` with v expanded to all query heads in ``repeat`` order (head hq reads
    v[hq % H]) while k has H heads: values were read at the keys' head hq // G."""
    import torch.nn.functional as F

    from fsa_compile.patterns import forms

    B, T, H, G, D, bs = 1, 64, 2, 2, 16, 16

    def f(q, k, v, bi):
        blocks = forms._block_mask_scatter(bi, T, bs).transpose(1, 2)  # [B, H, T, nb]
        allowed = blocks.repeat_interleave(bs, -1)[..., :T] & torch.ones(T, T, dtype=torch.bool).tril()
        v_all = v[:, None].expand(B, G, H, T, D).reshape(B, H * G, T, D)
        return F.scaled_dot_product_attention(q, k, v_all, attn_mask=allowed.repeat_interleave(G, 1), enable_gqa=True)

    q, k, v = torch.randn(B, H * G, T, D), torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    bi = _bi(B, T, H, 2, bs)
    rep = fsa_compile.explain(f, q, k, v, bi, options=FAST)
    torch.testing.assert_close(rep.output, f(q, k, v, bi))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_block_indices_in_a_dtype_that_overflows_are_a_near_miss(dtype):
    """``bi * bs`` stays uint8 / int8 in eager and wraps; the checks' integers do not."""
    from fsa_compile.patterns.forms import gather_index_einsum

    B, T, H, D, bs = 1, 288, 1, 16, 32
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    bi = _bi(B, T, H, 2, bs).to(dtype)
    rep = fsa_compile.explain(gather_index_einsum, q, k, v, bi, bs, options=FAST)
    assert rep.rewrites == [] and "overflow" in rep.misses[0].reason, str(rep)
    torch.testing.assert_close(rep.output, gather_index_einsum(q, k, v, bi, bs))


# -- a third review (2026-12-01): writes through other names, and the new checks' false misses -----


def _before(write):
    """The gather form with ``write(q, k, v)`` (an in-place update) before the attention."""
    def f(q, k, v, bi):
        write(q, k, v)
        return _gather(q, k, v, bi, 16, q.shape[1])
    return f


def _v_split_zeroed_after_gather(q, k, v, bi):
    T = q.shape[1]
    masked, safe, b, h = _positions(bi, 16, T)
    v_sel = v[b, safe, h]
    v.tensor_split(2, 1)[0].zero_()  # v updated after its gather, before the output
    s = torch.einsum("bthd,bthsd->bths", q, k[b, safe, h]) * q.shape[-1] ** -0.5
    return torch.einsum("bths,bthsd->bthd", torch.softmax(s.masked_fill(masked, NEG_INF), -1), v_sel)


WRITES = {
    "ravel": _before(lambda q, k, v: k.ravel().mul_(2)),
    "mT": _before(lambda q, k, v: v.mT.mul_(2)),
    "data": _before(lambda q, k, v: k.data.mul_(2)),
    "out=": _before(lambda q, k, v: torch.mul(torch.ones_like(k), 3.0, out=k)),
    "split_after_gather": _v_split_zeroed_after_gather,
}


@pytest.mark.parametrize("name", sorted(WRITES))
def test_writes_through_other_names_are_followed_or_left_alone(name):
    """A write into q, k or v through a view the alias analysis once did not know (`ravel`,
    `mT`, `.data`, `out=`, a piece of `tensor_split`): the compiled call must give eager's output
    and leave the inputs as eager does."""
    B, T, H, D = 1, 64, 1, 16
    f = WRITES[name]
    base = [torch.randn(B, T, H, D) for _ in range(3)]
    bi = _own_and_previous(B, T, H, 16)
    e_in, c_in = [x.clone() for x in base], [x.clone() for x in base]
    expected = f(*e_in, bi)
    with RewriteCounter():
        actual = torch.compile(f, backend="fsa", options=FAST)(*c_in, bi)
    torch.testing.assert_close(actual, expected)
    for e, c in zip(e_in, c_in):
        torch.testing.assert_close(c, e)


def test_a_query_scaled_in_place_is_still_rewritten():
    """``q *= c`` on a projection: the op reads the updated q (not q with c folded in again)."""
    B, T, H, D, bs = 1, 64, 1, 16, 16
    w = torch.randn(D, D)

    def f(x, k, v, bi):
        q = torch.nn.functional.linear(x, w)
        q *= 0.5
        return _gather(q, k, v, bi, bs, T)

    args = [torch.randn(B, T, H, D) for _ in range(3)] + [_own_and_previous(B, T, H, bs)]
    with RewriteCounter() as c:
        out = torch.compile(f, backend="fsa", options=FAST)(*args)
    assert len(c.rewrites) == 1, [m.reason for m in c.misses]
    torch.testing.assert_close(out, f(*args))


def test_a_buffer_written_through_data_or_iadd_beside_a_rewrite():
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("cache", torch.zeros(1, 128, 1, 16))
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))

        def forward(self, q, k, v, bi):
            self.cache.data[:, : q.shape[1]] = k
            self.steps.__iadd__(1)
            return _gather(q, k, v, bi, 16, q.shape[1])

    B, T, H, D = 1, 64, 1, 16
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    eager, comp = Layer(), Layer()
    expected = eager(q, k, v, _own_and_previous(B, T, H, 16))
    with RewriteCounter() as c:
        actual = torch.compile(comp, backend="fsa", options=FAST)(q, k, v, _own_and_previous(B, T, H, 16))
    assert len(c.rewrites) == 1
    torch.testing.assert_close(actual, expected)
    assert torch.equal(comp.cache, eager.cache) and comp.steps.item() == eager.steps.item() == 1


def test_inference_mode_inside_the_attention_is_a_near_miss():
    B, T, H, D, bs = 1, 64, 1, 16, 16

    def f(q, k, v, bi):
        masked, safe, b, h = _positions(bi, bs, T)
        with torch.inference_mode():
            ks = k[b, safe, h]
        ks = ks.clone()
        s = torch.einsum("bthd,bthsd->bths", q, ks) * D**-0.5
        return torch.einsum("bths,bthsd->bthd", torch.softmax(s.masked_fill(masked, NEG_INF), -1), v[b, safe, h])

    eager, comp, c = _train_both(f, _own_and_previous(B, T, H, bs), B, T, H, D)
    assert c.rewrites == [] and "torch.no_grad()" in c.misses[0].reason
    assert eager[1].grad is None and comp[1].grad is None


# -- a third review (2026-12-03) ---------------------------------------------------------------------


def _block_mask_bhtd(bi, bs, T):
    """``[B, H, T_q, T]`` booleans: the keys of each row's selected blocks (padding selects none)."""
    nb = (T + bs - 1) // bs
    idx = bi.masked_fill(bi < 0, nb)
    blocks = torch.zeros(*idx.shape[:-1], nb + 1, dtype=torch.bool).scatter_(-1, idx, True)[..., :nb]
    return blocks.repeat_interleave(bs, -1)[..., :T]


def _sdpa_at(q, k, v, bi, rows):
    """Masked SDPA over ``[B, H, T, D]`` keys, query rows at the key positions ``rows``
    (broadcast against ``[B, H, T_q, 1]``)."""
    T = k.shape[2]
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=_block_mask_bhtd(bi, 16, T) & (torch.arange(T) <= rows))


ROWS_AT_OTHER_ENTRIES = {
    # (B, H, T_q, rows from the [T_q] tensor cp): none of them reads row i at cp[i]
    "every_row_at_the_first": (1, 1, 2, lambda cp, B, H, Tq: cp[0]),
    "first_and_last_swapped": (1, 1, 5, lambda cp, B, H, Tq: cp[torch.tensor([4, 1, 2, 3, 0])].view(1, 1, Tq, 1)),
    "one_per_batch_item": (2, 1, 2, lambda cp, B, H, Tq: cp.view(B, 1, 1, 1)),
    "one_per_head": (1, 2, 2, lambda cp, B, H, Tq: cp.view(1, H, 1, 1)),
}


@pytest.mark.parametrize("name", sorted(ROWS_AT_OTHER_ENTRIES))
def test_rows_at_other_entries_of_a_positions_tensor_are_near_misses(name):
    """A ``[T_q]`` integer tensor read as something else than row i's position (its first entry
    for every row, entries swapped, a ``[B]`` or ``[H]`` tensor as long as the rows): the checks'
    random positions tables once always had their first entry equal to their last, so these were
    rewritten as ``q_positions`` and gave other results."""
    B, H, Tq, rows = ROWS_AT_OTHER_ENTRIES[name]
    T, D = 64, 16

    def f(q, k, v, bi, cp):
        return _sdpa_at(q, k, v, bi, rows(cp, B, H, Tq))

    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(B, H, Tq, D, generator=g), torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)
    bi = torch.arange(4).expand(B, H, Tq, 4).contiguous()  # every block: only the positions matter
    cp = torch.tensor([60, 20, 33, 41, 10][:Tq])
    rep = fsa_compile.explain(f, q, k, v, bi, cp, options=FAST)
    if name == "first_and_last_swapped":  # read where computed: the permuted tensor is the positions
        assert len(rep.rewrites) == 1 and "rows=getitem[i]" in str(rep), str(rep)
    else:
        assert rep.rewrites == [] and len(rep.misses) == 1, str(rep)
    torch.testing.assert_close(rep.output, f(q, k, v, bi, cp))


def test_the_rows_own_positions_are_still_rewritten():
    """The same SDPA with row i at ``cp[i]``, at each of the shapes above."""
    T, D = 64, 16
    for B, H, Tq in ((1, 1, 2), (1, 1, 5), (2, 1, 2), (1, 2, 2)):
        torch._dynamo.reset()

        def f(q, k, v, bi, cp, Tq=Tq):
            return _sdpa_at(q, k, v, bi, cp.view(1, 1, Tq, 1))

        g = torch.Generator().manual_seed(2)
        q, k, v = torch.randn(B, H, Tq, D, generator=g), torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)
        bi = torch.randint(-1, 4, (B, H, Tq, 3), generator=g)
        cp = torch.tensor([60, 20, 33, 41, 10][:Tq])
        rep = fsa_compile.explain(f, q, k, v, bi, cp, options=FAST)
        assert len(rep.rewrites) == 1 and "rows=" in str(rep), str(rep)
        torch.testing.assert_close(rep.output, f(q, k, v, bi, cp), equal_nan=True)


def _batch_inputs(B, T=96, H=1, D=16, bs=16):
    g = torch.Generator().manual_seed(B)
    q, k, v = (torch.randn(B, T, H, D, generator=g) for _ in range(3))
    return q, k, v, _own_and_previous(B, T, H, bs)


@pytest.mark.parametrize("depends", ["scale", "block_size", "none"])
def test_a_meaning_that_depends_on_the_batch_size_is_checked_at_another_one(depends):
    """Code that computes its scale or block size from ``q.shape[0]`` was verified at the example's
    B only, and after Dynamo made B symbolic the graph ran at other B with the first one's numbers.
    The pass now checks a match again at another B and guards B where it does not hold there;
    code that does not compute with B still runs every B through one graph."""
    def f(q, k, v, bi):
        B, T, H, D = q.shape
        bs = 16 * B if depends == "block_size" else 16
        scale = 0.1 * B if depends == "scale" else D**-0.5
        masked, safe, b, h = _positions(bi, bs, T)
        s = torch.einsum("bthd,bthsd->bths", q, k[b, safe, h]) * scale
        return torch.einsum("bths,bthsd->bthd", torch.softmax(s.masked_fill(masked, NEG_INF), -1), v[b, safe, h])

    cf = torch.compile(f, backend="fsa", options=FAST)
    compiles = 0
    for B in (1, 2, 3, 4):
        args = _batch_inputs(B)
        if depends == "block_size":
            args = (*args[:3], _own_and_previous(B, 96, 1, 16 * B))
        with RewriteCounter() as c:
            out = cf(*args)
        compiles += bool(c.results)
        assert all(len(r.rewrites) == 1 for r in c.results), [str(r) for r in c.results]
        torch.testing.assert_close(out, f(*args), msg=f"B={B}")
    assert compiles == (2 if depends == "none" else 4)


def _rounding(where, dt=torch.bfloat16):
    """The gather form in float32 with one value rounded to ``dt`` and back (``where``)."""
    bs = 16

    def f(q, k, v, bi):
        B, T, H, D = q.shape
        masked, safe, b, h = _positions(bi, bs, T)
        if where == "q":
            q = q.to(dt).float()
        if where == "k_and_v":
            k, v = k.to(dt).float(), v.to(dt).float()
        k_sel = k[b, safe, h]
        if where == "gathered_keys":
            k_sel = k_sel.to(dt).float()
        s = torch.einsum("bthd,bthsd->bths", q, k_sel) * D**-0.5
        if where == "scores":
            s = s.to(dt).float()
        s = s.masked_fill(masked, NEG_INF)
        p = torch.softmax(s, -1, dtype=torch.float16).float() if where == "softmax_dtype" else torch.softmax(s, -1)
        if where == "probabilities":
            p = p.to(dt).float()
        o = torch.einsum("bths,bthsd->bthd", p, v[b, safe, h])
        return o.to(dt).float() if where == "output" else o

    return f


@pytest.mark.parametrize("where", ["q", "k_and_v", "gathered_keys", "output"])
def test_rounding_of_an_input_or_of_the_output_is_kept(where):
    """``q.to(bfloat16).float()`` beside float32 k and v: the op runs in float32 on q's rounded
    values (it took q unrounded, 5e-3 off); the output rounded on its way out likewise."""
    B, T, H, D = 1, 64, 1, 16
    f = _rounding(where)
    q, k, v, bi = _batch_inputs(B, T, H, D)
    rep = fsa_compile.explain(f, q, k, v, bi, options=FAST)
    assert len(rep.rewrites) == 1 and "dtype=float32" in str(rep), str(rep)
    torch.testing.assert_close(rep.output, f(q, k, v, bi), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["scores", "softmax_dtype", "probabilities"])
def test_rounding_of_scores_or_probabilities_is_a_near_miss(where):
    """The op keeps scores and probabilities in float32: code that rounds them to a narrower
    dtype than the rest of it computes in is left alone."""
    B, T, H, D = 1, 64, 1, 16
    f = _rounding(where)
    q, k, v, bi = _batch_inputs(B, T, H, D)
    rep = fsa_compile.explain(f, q, k, v, bi, options=FAST)
    assert rep.rewrites == [] and "rounds the attention's intermediate values" in rep.misses[0].reason, str(rep)
    torch.testing.assert_close(rep.output, f(q, k, v, bi))


def test_bf16_inputs_with_a_float32_softmax_cast_back_are_still_rewritten():
    """Rounding to the dtype the op computes in is not a miss (``gather_index_select``'s spelling:
    bf16 products, softmax in float32 cast back to bf16)."""
    from fsa_compile.patterns.forms import FORMS

    f = FORMS["gather_index_select"].fn
    B, T, H, G, D, bs = 1, 64, 1, 2, 16, 16
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, T, H * G, D, generator=g).bfloat16()
    k, v = (torch.randn(B, T, H, D, generator=g).bfloat16() for _ in range(2))
    rep = fsa_compile.explain(f, q, k, v, _own_and_previous(B, T, H, bs), bs, options=FAST)
    assert len(rep.rewrites) == 1 and "dtype=bfloat16" in str(rep), str(rep)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_softmax_without_the_row_max_is_a_near_miss(dtype):
    """``exp(s) / exp(s).sum()`` overflows (NaN rows) where the op's softmax does not: with large
    scores the rewrite returned finite values where eager has NaN."""
    B, T, H, D, bs = 1, 64, 1, 16, 16

    def f(q, k, v, bi):
        masked, safe, b, h = _positions(bi, bs, T)
        s = (torch.einsum("bthd,bthsd->bths", q, k[b, safe, h]) * D**-0.5).masked_fill(masked, NEG_INF)
        e = torch.exp(s)
        return torch.einsum("bths,bthsd->bthd", e / e.sum(-1, keepdim=True), v[b, safe, h])

    g = torch.Generator().manual_seed(4)
    mult = 8.0 if dtype == torch.float32 else 2.0
    q, k = ((torch.randn(B, T, H, D, generator=g) * mult).to(dtype) for _ in range(2))
    v = torch.randn(B, T, H, D, generator=g).to(dtype)
    bi = _own_and_previous(B, T, H, bs)
    want = f(q, k, v, bi)
    assert want.isnan().any()  # the code overflows here
    rep = fsa_compile.explain(f, q, k, v, bi, options=FAST)
    assert rep.rewrites == [] and "row max" in rep.misses[0].reason, str(rep)
    torch.testing.assert_close(rep.output, want, equal_nan=True)


def test_probabilities_rounded_to_the_outputs_dtype_are_not_a_miss():
    """float32 q beside bf16 k and v (the op computes in float32), probabilities cast to bf16 for a
    bf16 output product: the rounding is no narrower than the output's own, so it is rewritten,
    as close to a float32 result as eager is."""
    B, T, H, D, bs = 1, 64, 1, 16, 16

    def f(q, k, v, bi):
        masked, safe, b, h = _positions(bi, bs, T)
        s = torch.einsum("bthd,bthsd->bths", q, k[b, safe, h].float()) * D**-0.5
        p = torch.softmax(s.masked_fill(masked, NEG_INF), -1).to(torch.bfloat16)
        return torch.einsum("bths,bthsd->bthd", p, v[b, safe, h])

    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, T, H, D, generator=g)
    k, v = (torch.randn(B, T, H, D, generator=g).bfloat16() for _ in range(2))
    bi = _own_and_previous(B, T, H, bs)
    rep = fsa_compile.explain(f, q, k, v, bi, options=FAST)
    assert len(rep.rewrites) == 1 and "dtype=float32" in str(rep), str(rep)
    truth = _gather(q, k.float(), v.float(), bi, bs, T)
    eager = f(q, k, v, bi)
    assert rep.output.dtype == eager.dtype == torch.bfloat16
    assert (rep.output.float() - truth).abs().max() <= (eager.float() - truth).abs().max() + 1e-3


# -- a fourth review (2026-12-03): the evaluator's arithmetic, the scale, rows the code singles out ---


def _gather_hooked(T, bs=16, extra=None, safe_of=None, v_pos=None, scale=None, later=None):
    """The gather form (G = 1, ``[B, T, H, D]``) with hooks: ``later(tok, t)`` the keys masked as
    later than the query (``tok > t``), ``extra(tok, t)`` more masked keys,
    ``safe_of(safe)`` the token positions the gathers read, ``v_pos(tok)`` the values' positions."""
    def f(q, k, v, bi):
        B, H, D = q.shape[0], k.shape[2], q.shape[-1]
        tok = (bi.unsqueeze(-1) * bs + torch.arange(bs)).flatten(-2)
        t_pos = torch.arange(T).view(1, T, 1, 1)
        masked = (bi < 0).repeat_interleave(bs, -1) | (tok > t_pos if later is None else later(tok, t_pos))
        if extra is not None:
            masked = masked | extra(tok, t_pos)
        safe = tok.clamp(0, T - 1)
        ks = safe if safe_of is None else safe_of(safe)
        vs = ks if v_pos is None else v_pos(tok).clamp(0, T - 1)
        b, h = torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, 1, H, 1)
        s = torch.einsum("bthd,bthsd->bths", q, k[b, ks, h]) * (D**-0.5 if scale is None else scale)
        return torch.einsum("bths,bthsd->bthd", torch.softmax(s.masked_fill(masked, NEG_INF), -1), v[b, vs, h])

    return f


def _sel(T, bs=16, n=3, H=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T).view(1, T, 1, 1)
    bi = torch.minimum(torch.randint(0, T // bs, (1, T, H, n), generator=g), t // bs)
    bi[..., 0] = (t // bs).squeeze(-1)
    return bi


NOT_SELECTED_ATTENTION = {
    # torch.div with a rounding mode is not true division: a query sees its whole own block
    "div_floor_whole_block": (64, dict(later=lambda tok, t: torch.div(tok, 16, rounding_mode="floor")
                                       > torch.div(t, 16, rounding_mode="floor"))),
    "div_trunc_whole_block": (64, dict(later=lambda tok, t: torch.div(tok, 16, rounding_mode="trunc")
                                       > torch.div(t, 16, rounding_mode="trunc"))),
    # fmod keeps the dividend's sign, % the divisor's: causal under remainder, nothing under fmod
    "fmod": (64, dict(later=lambda tok, t: torch.fmod(t - tok, 4 * 64) > t - tok)),
    # & of integers is bitwise: keys with bit 2 set are hidden too
    "bitwise_and": (64, dict(extra=lambda tok, t: (tok & 4) == 4)),
    "bitwise_not": (64, dict(extra=lambda tok, t: (~tok & 1) == 1)),
    # a narrow integer cast wraps in eager: positions >= 128 read keys from the end
    "int8_positions": (200, dict(safe_of=lambda safe: safe.to(torch.int8).long())),
    # one query row, one key, two keys' values: what random rows rarely meet
    "one_row_misses_its_key": (64, dict(extra=lambda tok, t: (t == 37) & (tok == 37))),
    "one_key_never_visible": (256, dict(extra=lambda tok, t: tok == 130)),
    "two_values_swapped": (256, dict(v_pos=lambda tok: torch.where(tok == 129, 130, torch.where(tok == 130, 129, tok)))),
}


@pytest.mark.parametrize("name", sorted(NOT_SELECTED_ATTENTION))
def test_code_that_differs_in_arithmetic_or_at_one_number_is_left_alone(name):
    """Each was rewritten before this review: the evaluator read ``torch.div(rounding_mode=...)`` as
    true division, ``fmod`` as ``%``, integer ``&`` / ``~`` as logical and / not, and a cast to int8
    without wrapping; and the random rows rarely met the one row or key the code singles out by a
    number (now some rows sit at the code's numbers, selecting the block that holds them)."""
    T, hooks = NOT_SELECTED_ATTENTION[name]
    f = _gather_hooked(T, **hooks)
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, T, 2, 16, generator=g) for _ in range(3))
    bi = _sel(T)
    rep = fsa_compile.explain(f, q, k, v, bi, options=FAST)
    assert rep.rewrites == [] and len(rep.misses) == 1, str(rep)
    torch.testing.assert_close(rep.output, f(q, k, v, bi), equal_nan=True)


@pytest.mark.parametrize("name, hooks", [
    ("remainder", dict(later=lambda tok, t: torch.remainder(t - tok, 4 * 64) > t - tok)),  # = tok > t
    ("div_floor_blocks", dict(safe_of=lambda safe: torch.div(safe, 16, rounding_mode="floor") * 16 + safe % 16)),
    ("int16_positions", dict(safe_of=lambda safe: safe.to(torch.int16).long())),  # no wrap below 32768
])
def test_the_same_arithmetic_spelled_exactly_is_still_rewritten(name, hooks):
    T = 64
    f = _gather_hooked(T, **hooks)
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, T, 2, 16, generator=g) for _ in range(3))
    bi = _sel(T)
    rep = fsa_compile.explain(f, q, k, v, bi, options=FAST)
    assert len(rep.rewrites) == 1, str(rep)
    torch.testing.assert_close(rep.output, f(q, k, v, bi), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [7.77e-13, 1.2345678e-9])
def test_a_tiny_scale_is_kept_to_its_significant_digits(scale):
    """The scale was rounded to 12 decimal places (7.77e-13 became 1e-12), so the op ran with
    another one; now to 12 significant digits."""
    T = 64
    f = _gather_hooked(T, scale=scale)
    g = torch.Generator().manual_seed(9)
    q, k = ((torch.randn(1, T, 2, 16, generator=g) * 2e5 * (scale * 1e12) ** -0.5) for _ in range(2))
    v = torch.randn(1, T, 2, 16, generator=g)
    bi = _sel(T)
    want = f(q, k, v, bi)
    rep = fsa_compile.explain(f, q, k, v, bi, options=FAST)
    assert len(rep.rewrites) == 1, str(rep)
    torch.testing.assert_close(rep.output, want, rtol=1e-5, atol=1e-5)


def test_an_unsorted_topk_is_left_to_torch():
    """``topk(sorted=False)``: eager's order is its own (the row kernel returns them sorted), and
    code may read the result by position; the call stays ``torch.topk``."""
    def f(x):
        vals, idx = torch.topk(x, 3, sorted=False)
        return vals, idx

    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(10))
    rep = fsa_compile.explain(f, x, options=FAST)
    assert rep.others == [], str(rep)
    for a, b in zip(rep.output, f(x)):
        assert torch.equal(a, b)


# -- a fifth review (2026-12-03): the output's strides, T read through a remainder -------------------


def _attn_bhtd(q, k, v, bi, bs=16):
    """The gather form on ``[B, H, T, D]`` tensors, output ``[B, H, T, D]`` (contiguous in eager)."""
    B, H, T, D = q.shape
    tok = (bi.unsqueeze(-1) * bs + torch.arange(bs)).flatten(-2)
    masked = (bi < 0).repeat_interleave(bs, -1) | (tok > torch.arange(T).view(T, 1))
    safe = tok.clamp(0, T - 1)
    b, h = torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, H, 1, 1)
    s = (q.unsqueeze(-2) @ k[b, h, safe].transpose(-1, -2)).squeeze(-2) * D**-0.5
    return (s.masked_fill(masked, NEG_INF).softmax(-1).unsqueeze(-2) @ v[b, h, safe]).squeeze(-2)


AFTER_THE_OUTPUT = {
    "view": lambda o: o.view(o.shape[0], -1, o.shape[-1]),
    "contiguous_then_view": lambda o: o.contiguous().view(o.shape[0], -1, o.shape[-1]),
    "as_strided": lambda o: o.as_strided((o.shape[0], o.shape[1] * o.shape[2], o.shape[3]),
                                         (o.shape[1] * o.shape[2] * o.shape[3], o.shape[3], 1)),
    "write_through_reshape": lambda o: (o.reshape(-1)[: o.shape[2] * o.shape[3]].zero_(), o)[1],
}


@pytest.mark.parametrize("name", sorted(AFTER_THE_OUTPUT))
def test_the_output_keeps_the_strides_of_the_code(name):
    """The op's output viewed back to ``[B, H, T, D]`` was a transposed view, where eager's is
    contiguous: a ``view`` after it failed the compile, ``as_strided`` read other elements and a
    write through ``reshape`` (a view in eager, a copy of the transposed tensor) was lost. The
    rewrite now lays its output out as the replaced node is."""
    after = AFTER_THE_OUTPUT[name]

    def f(q, k, v, bi):
        return after(_attn_bhtd(q, k, v, bi))

    B, H, T, D, bs = 1, 2, 64, 16, 16
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    bi = torch.stack([torch.arange(T) // bs, torch.arange(T) // bs - 1], -1).view(1, 1, T, 2).expand(B, H, T, 2)
    bi = bi.contiguous()
    want = f(q, k, v, bi)
    for inner in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        with RewriteCounter() as c:
            got = torch.compile(f, backend="fsa", options={"inner": inner})(q, k, v, bi)
        assert len(c.rewrites) == 1, inner
        assert got.stride() == want.stride(), inner
        torch.testing.assert_close(got, want, equal_nan=True, msg=inner)


def test_a_meaning_that_reads_t_through_a_remainder_is_checked_at_two_lengths():
    """A scale from ``(T // bs) % 2`` held at T = 64 and at the one longer length checked (129):
    the graph then ran T = 80 with T = 64's scale. Two lengths a block and a key apart now."""
    bs = 16

    def f(q, k, v, bi):
        T, D = q.shape[1], q.shape[-1]
        masked, safe, b, h = _positions(bi, bs, T)
        s = torch.einsum("bthd,bthsd->bths", q * ((T // bs) % 2 + 1), k[b, safe, h]) * D**-0.5
        return torch.einsum("bths,bthsd->bthd", torch.softmax(s.masked_fill(masked, NEG_INF), -1), v[b, safe, h])

    cf = torch.compile(f, backend="fsa", options=FAST, dynamic=True)
    for T in (64, 80, 96):
        q, k, v, bi = _batch_inputs(1, T=T)
        torch.testing.assert_close(cf(q, k, v, bi), f(q, k, v, bi), msg=f"T={T}")
