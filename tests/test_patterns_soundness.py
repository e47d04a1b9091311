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
