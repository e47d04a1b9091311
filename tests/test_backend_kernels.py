"""The compiled gather form end to end through the Triton kernels (interpreted on CPU)."""
import os
import sys

import pytest
import torch

import fsa_compile
from naive import random_case

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from nsa_selected import selected_attention_gather  # noqa: E402

pytestmark = pytest.mark.interpret


def _small_case(seed, T=40, D=16, n=3):
    return random_case(T=T, D=D, bs=16, n=n, seed=seed, grad=True)


@pytest.mark.parametrize("strategy", ["fsa", "nsa"])
def test_compiled_gather_form_runs_the_kernels(strategy):
    q, k, v, idx, bs = _small_case(5)
    rep = fsa_compile.explain(selected_attention_gather, q, k, v, idx, bs,
                              options={"inner": "aot_eager", "strategy": strategy})
    assert len(rep.rewrites) == 1 and rep.rewrites[0].plan.startswith(strategy), str(rep)
    eager = selected_attention_gather(q, k, v, idx, bs)
    assert (rep.output - eager).abs().max() < 2e-4
    w = torch.randn(eager.shape, generator=torch.Generator().manual_seed(5))
    for a, b in zip(torch.autograd.grad((rep.output * w).sum(), (q, k, v)),
                    torch.autograd.grad((eager * w).sum(), (q, k, v))):
        assert (a - b).abs().max() < 2e-4


@pytest.mark.parametrize("strategy,builds", [("fsa", (1, 0)), ("nsa", (0, 1))])
def test_forward_hands_its_index_to_the_backward(strategy, builds, monkeypatch):
    """The inverted loop's forward returns its index and the backward uses it instead of sorting
    the selection again; the NSA order has none, so the backward builds it."""
    import importlib

    # (the package exports functions named like its modules: fetch the modules themselves)
    fwd_mod = importlib.import_module("fsa_compile.lowering.forward")
    index_mod = importlib.import_module("fsa_compile.templates.index")

    calls = {"forward": 0, "backward": 0}
    real = index_mod.build_block_index

    def counting(where):
        def build(*a, **kw):
            calls[where] += 1
            return real(*a, **kw)
        return build

    monkeypatch.setattr(fwd_mod, "build_block_index", counting("forward"))
    monkeypatch.setattr(index_mod, "build_block_index", counting("backward"))
    q, k, v, idx, bs = _small_case(6)
    o = fsa_compile.selected_attention(q, k, v, idx, bs, strategy=strategy)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((o * w).sum(), (q, k, v))
    assert (calls["forward"], calls["backward"]) == builds
    ref = fsa_compile.selected_attention(q, k, v, idx, bs, strategy="reference")
    assert (o - ref).abs().max() < 2e-4
    for a, b in zip(grads, torch.autograd.grad((ref * w).sum(), (q, k, v))):
        assert (a - b).abs().max() < 2e-4


@pytest.mark.parametrize("strategy,loss_on", [("fsa", "o"), ("fsa", "lse"), ("fsa", "both"), ("nsa", "lse")])
def test_an_unused_output_reaches_the_backward_as_none(strategy, loss_on, monkeypatch):
    """An output the loss does not use comes to the backward as None, not as a zero tensor (no
    fills; the lse term is skipped), and the gradients match the independent implementation for
    a loss on o, on lse, or on both. (The context is the same for both strategies; the NSA order
    once, with a loss on lse alone, where the backward gets no dO.)"""
    import importlib

    from naive import naive_selected_attention

    op_mod = importlib.import_module("fsa_compile.op")
    seen = []
    real = op_mod._kernel_backward
    monkeypatch.setattr(op_mod, "_kernel_backward",
                        lambda do, *a, dlse=None, **kw: seen.append(dlse is None) or real(do, *a, dlse=dlse, **kw))
    q, k, v, idx, bs = _small_case(12)
    o, lse = fsa_compile.selected_attention(q, k, v, idx, bs, strategy=strategy, return_lse=True)
    ro, rlse = naive_selected_attention(q, k, v, idx, bs)
    g = torch.Generator().manual_seed(12)
    w, u = torch.randn(o.shape, generator=g), torch.randn(lse.shape, generator=g)
    # rows that see nothing have lse = -inf: weight them 0 in the lse loss (their gradient is 0)
    u = torch.where(torch.isinf(lse.detach()), 0.0, u)
    terms = {"o": ((o * w).sum(), (ro * w.double()).sum()),
             "lse": ((torch.where(u != 0, lse, 0.0) * u).sum(),
                     (torch.where(u != 0, rlse, 0.0) * u.double()).sum())}
    use = ["o", "lse"] if loss_on == "both" else [loss_on]
    loss = sum(terms[t][0] for t in use)
    rloss = sum(terms[t][1] for t in use)
    grads = torch.autograd.grad(loss, (q, k, v))
    assert seen == [loss_on == "o"]  # dlse is None exactly when the loss does not use lse
    rgrads = torch.autograd.grad(rloss, (q, k, v), allow_unused=True)  # lse does not read v
    for name, a, b in zip("qkv", grads, rgrads):
        if b is None:
            assert name == "v" and loss_on == "lse" and torch.all(a == 0)
            continue
        assert a.abs().max() > 0
        assert (a.double() - b).abs().max() < 2e-4


def test_saved_index_gives_the_same_gradients_bitwise():
    """The forward's index (binned by chunk: here three chunks) in the backward gives exactly the
    gradients of the backward's own index, at every chunking of the backward."""
    import dataclasses
    import importlib

    from fsa_compile.lowering.forward import forward
    from fsa_compile.lowering.plan import choose_plan
    from fsa_compile.reference import canonical_indices

    bwd_mod = importlib.import_module("fsa_compile.lowering.backward")
    q, k, v, idx, bs = _small_case(8, T=45)
    q, k, v = (t.detach() for t in (q, k, v))
    cidx = canonical_indices(idx, 45, bs, count_duplicates=True, on_out_of_range="drop")
    plan = choose_plan(1, 45, 2, 2, 16, 16, 3, bs, q.dtype, True, "fsa", q.device, chunk=16)
    o, lse, bi = forward(q, k, v, cidx, bs, 0.25, True, plan, keep_index=True)
    assert bi.chunks == 3 and bi.entries.shape == (1, 2, 45 * 3)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(2))
    cfg = bwd_mod.backward_config(1, 45, 2, 2, 16, 3, bs, q.dtype)
    for chunk_t in (45, 20):  # one backward chunk, then three
        c = dataclasses.replace(cfg, chunk_t=chunk_t)
        own = bwd_mod.kernel_backward(do, q, k, v, o, lse, cidx, bs, 0.25, True, c)
        saved = bwd_mod.kernel_backward(do, q, k, v, o, lse, cidx, bs, 0.25, True, c,
                                        index=(bi.offsets, bi.entries))
        for a, b in zip(own, saved):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="saved index"):
        bwd_mod.kernel_backward(do, q, k, v, o, lse, cidx, bs, 0.25, True, cfg,
                                index=(bi.offsets[:, :, 1:], bi.entries))


def test_op_registration_passes_opcheck():
    """Schema, fake implementation (the index outputs' shapes included), autograd registration and
    AOT dispatch of the forward op, through the kernels."""
    q, k, v, idx, bs = _small_case(9, T=24, D=8, n=2)
    args = (q, k, v, idx, bs, 0.3, True, True, "drop", "fsa")
    torch.library.opcheck(torch.ops.fsa.selected_attention.default, args)


def test_dynamic_shapes_compile_through_the_kernels(monkeypatch):
    """torch.compile(dynamic=True): the op's fake implementation sees a symbolic T (and head
    count) and must answer without raising (a fake-tensor error is logged, not raised, and the
    graph is then traced around it); two lengths run through the compiled graph and the kernels."""
    import importlib
    import logging

    errors = []

    class Collect(logging.Handler):
        def emit(self, record):
            errors.append(record.getMessage())

    fake_log = logging.getLogger("torch._subclasses.fake_tensor")  # torch's loggers do not propagate
    handler = Collect(level=logging.ERROR)
    fake_log.addHandler(handler)
    fwd_mod = importlib.import_module("fsa_compile.lowering.forward")
    calls = []
    real = fwd_mod.build_block_index
    monkeypatch.setattr(fwd_mod, "build_block_index", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    torch._dynamo.reset()
    f = torch.compile(selected_attention_gather, backend="fsa", dynamic=True,
                      options={"inner": "aot_eager"})  # auto: the inverted loop at G = 2
    try:
        for T in (40, 56):
            q, k, v, idx, bs = _small_case(10 + T, T=T)
            out = f(q, k, v, idx, bs)
            eager = selected_attention_gather(q, k, v, idx, bs)
            assert (out - eager).abs().max() < 2e-4
            for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)),
                            torch.autograd.grad(eager.sum(), (q, k, v))):
                assert (a - b).abs().max() < 2e-4
    finally:
        fake_log.removeHandler(handler)
    assert len(calls) == 2  # the rewritten op ran the inverted loop at both lengths
    assert not errors, errors
