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

    bi = _own_and_previous(B, T, H, bs)
    base = [torch.randn(B, T, H, D) for _ in range(3)]
    eager = [x.clone().requires_grad_() for x in base]
    comp = [x.clone().requires_grad_() for x in base]
    f(*eager, bi).square().sum().backward()
    with RewriteCounter() as c:
        torch.compile(f, backend="fsa", options=FAST)(*comp, bi).square().sum().backward()
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
        tok = (bi.unsqueeze(-1) * bs + torch.arange(bs)).flatten(-2)
        masked = (bi < 0).repeat_interleave(bs, -1) | (tok > torch.arange(T).view(1, T, 1, 1))
        safe = tok.clamp(0, T - 1)
        b, h = torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, 1, H, 1)
        s = (torch.einsum("bthd,bthsd->bths", q, k[b, safe, h]) * D**-0.5).masked_fill(masked, NEG_INF)
        e = torch.exp(s - s.amax(-1, keepdim=True).detach())
        den = (e.detach() if detached == "denominator" else e).sum(-1, keepdim=True)
        return torch.einsum("bths,bthsd->bthd", e / den, v[b, safe, h])

    bi = _own_and_previous(B, T, H, bs)
    base = [torch.randn(B, T, H, D) for _ in range(3)]
    eager = [x.clone().requires_grad_() for x in base]
    comp = [x.clone().requires_grad_() for x in base]
    f(*eager, bi).square().sum().backward()
    with RewriteCounter() as c:
        torch.compile(f, backend="fsa", options=FAST)(*comp, bi).square().sum().backward()
    assert len(c.rewrites) == (1 if detached == "row_max" else 0)
    for e, x in zip(eager, comp):
        torch.testing.assert_close(x.grad, e.grad)
