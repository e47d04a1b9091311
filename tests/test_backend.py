"""The fsa backend end to end on the gather form (CPU path)."""
import logging
import os
import subprocess
import sys

import pytest
import torch

import fsa_compile
from naive import random_case

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from nsa_selected import selected_attention_gather  # noqa: E402

FAST = {"inner": "aot_eager"}


def dense_causal(q, k, v):
    s = torch.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    T = q.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    p = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
    return torch.einsum("bhts,bshd->bthd", p, v)


def test_backend_resolves_by_name_in_a_fresh_interpreter():
    code = (
        "import torch, sys\n"
        "f = torch.compile(lambda x: x * 2, backend='fsa', options={'inner': 'eager'})\n"
        "assert float(f(torch.ones(1))) == 2.0\n"
        "assert 'fsa_compile' in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


@pytest.mark.parametrize("G", [1, 2, 4, 8])
def test_gather_form_is_rewritten_and_matches_eager(G):
    q, k, v, idx, bs = random_case(G=G, grad=True, seed=G)
    rep = fsa_compile.explain(selected_attention_gather, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 1, str(rep)
    rw = rep.rewrites[0]
    assert rw.shapes == {"B": 1, "T": 40, "H": 2, "G": G, "D": 8, "n": 3, "block_size": 8}
    assert rw.options["causal"] is True and rw.options["count_duplicates"] is True
    assert rw.plan
    eager = selected_attention_gather(q, k, v, idx, bs)
    assert (rep.output - eager).abs().max() < 1e-5
    w = torch.randn(eager.shape)
    g_eager = torch.autograd.grad((eager * w).sum(), (q, k, v))
    g_comp = torch.autograd.grad((rep.output * w).sum(), (q, k, v))
    for a, b in zip(g_comp, g_eager):
        assert (a - b).abs().max() < 1e-4


def test_plain_causal_attention_is_left_alone():
    q, k, v, _, _ = random_case(G=1)
    rep = fsa_compile.explain(dense_causal, q, k, v, options=FAST)
    assert rep.rewrites == [] and rep.misses == []
    assert (rep.output - dense_causal(q, k, v)).abs().max() < 1e-5


def test_report_reads_well_and_rewrites_are_logged(caplog):
    q, k, v, idx, bs = random_case(seed=7)
    with caplog.at_level(logging.INFO, logger="fsa_compile"):
        rep = fsa_compile.explain(selected_attention_gather, q, k, v, idx, bs, options=FAST)
    text = str(rep)
    assert text.startswith("fsa_compile: 1 rewrite(s), 0 near miss(es)")
    assert "gather form" in text and "G=2" in text and "plan:" in text
    msgs = [r.getMessage() for r in caplog.records]
    rewrote = next(i for i, m in enumerate(msgs) if "rewrote" in m)
    # the checks, which take seconds on a real layer, are announced before they start
    checking = next(i for i, m in enumerate(msgs) if "checking the softmax at" in m)
    assert checking < rewrote and any(m.startswith("fsa_compile: checked ") for m in msgs[checking:rewrote]), msgs


def test_near_miss_has_a_reason():
    def finite_fill(q, k, v, block_indices, block_size):
        # the same code with a finite fill value: rows with nothing visible differ from the contract
        B, T, HQ, D = q.shape
        H = k.shape[2]
        G = HQ // H
        tok = (block_indices.unsqueeze(-1) * block_size + torch.arange(block_size)).flatten(-2)
        masked = (block_indices < 0).unsqueeze(-1).expand(*block_indices.shape, block_size).flatten(-2)
        masked = masked | (tok > torch.arange(T).view(1, T, 1, 1))
        safe = tok.clamp(0, T - 1)
        b = torch.arange(B).view(B, 1, 1, 1)
        h = torch.arange(H).view(1, 1, H, 1)
        ks = k[b, safe, h].repeat_interleave(G, 2)
        vs = v[b, safe, h].repeat_interleave(G, 2)
        s = torch.einsum("bthd,bthsd->bths", q, ks) * D**-0.5
        s = s.masked_fill(masked.repeat_interleave(G, 2), -1e9)
        return torch.einsum("bths,bthsd->bthd", s.softmax(-1), vs)

    q, k, v, idx, bs = random_case(seed=3)
    rep = fsa_compile.explain(finite_fill, q, k, v, idx, bs, options=FAST)
    assert rep.rewrites == []
    assert len(rep.misses) == 1 and "not -inf" in rep.misses[0].reason
    assert (rep.output - finite_fill(q, k, v, idx, bs)).abs().max() == 0


def _compiled_matches_eager(seed, **compile_kw):
    q, k, v, idx, bs = random_case(seed=seed, grad=True)
    f = torch.compile(selected_attention_gather, backend="fsa", **compile_kw)
    out = f(q, k, v, idx, bs)
    eager = selected_attention_gather(q, k, v, idx, bs)
    assert (out - eager).abs().max() < 1e-5
    gq, = torch.autograd.grad(out.sum(), (q,))
    gq_e, = torch.autograd.grad(eager.sum(), (q,))
    assert (gq - gq_e).abs().max() < 1e-4


def test_inductor_compiles_the_rewritten_graph():
    _compiled_matches_eager(11)


def test_inductor_graphs_call_the_twins_without_the_autograd_layer():
    """Inside Inductor's forward and backward graphs our ops are their twins (compiled_ops), whose
    dispatch has no Python autograd layer; gradients still come out right, a twin computes what
    its op computes, and with a post-grad pass of the user's the graphs keep the ops."""
    import re

    from torch._inductor.utils import run_and_get_code

    from fsa_compile import compiled_ops

    q, k, v, idx, bs = random_case(seed=21, grad=True)

    def called(options):
        torch._dynamo.reset()
        f = torch.compile(selected_attention_gather, backend="fsa", options=options)

        def step():
            out = f(q, k, v, idx, bs)
            return out, torch.autograd.grad(out.sum(), (q, k, v))

        (out, grads), codes = run_and_get_code(step)
        return out, grads, [sorted(set(re.findall(r"torch\.ops\.fsa\.(\w+)\.default", c))) for c in codes]

    out, grads, ops = called({})
    assert ops == [["selected_attention_compiled"], ["selected_attention_backward_compiled"]]
    eager = selected_attention_gather(q, k, v, idx, bs)
    assert (out - eager).abs().max() < 1e-5
    for g, ge in zip(grads, torch.autograd.grad(eager.sum(), (q, k, v))):
        assert (g - ge).abs().max() < 1e-4
    _, _, ops = called({"post_grad_custom_post_pass": None})
    assert ops == [["selected_attention"], ["selected_attention_backward"]]
    assert set(compiled_ops.TWINS) == {torch.ops.fsa.selected_attention.default,
                                       torch.ops.fsa.selected_attention_backward.default,
                                       torch.ops.fsa.row_topk.default}
    args = (q, k, v, idx, bs, bs ** -0.5, True, True, "drop", "auto")
    with torch.no_grad():
        assert torch.equal(torch.ops.fsa.selected_attention_compiled.default(*args)[0],
                           torch.ops.fsa.selected_attention.default(*args)[0])


def test_bad_backend_options():
    f = torch.compile(lambda x: x + 1, backend="fsa", options={"inner": "tvm"})
    with pytest.raises(Exception, match="inner"):
        f(torch.ones(2))


def test_op_gets_the_dtype_the_products_read():
    """q and k computed in fp32 (RoPE), cast to bf16 by the user, upcast again for the scores:
    the op must get bf16, the rounding the user's code applies (and what the kernels run)."""
    import fsa_compile.backend as backend

    def f(q32, k32, v, block_indices, block_size):
        return selected_attention_gather(q32.to(torch.bfloat16), k32.to(torch.bfloat16), v, block_indices, block_size)

    q, k, v, idx, bs = random_case(seed=12)
    seen = []

    def capture(gm, example_inputs):
        backend.rewrite_graph(gm)
        seen.extend(n for n in gm.graph.nodes if n.target is torch.ops.fsa.selected_attention.default)
        return gm.forward

    out = torch.compile(f, backend=capture)(q, k, v.bfloat16(), idx, bs)
    assert len(seen) == 1
    dtypes = [a.meta["example_value"].dtype for a in seen[0].args[:3]]
    assert dtypes == [torch.bfloat16] * 3
    eager = f(q, k, v.bfloat16(), idx, bs)
    assert (out.float() - eager.float()).abs().max() < 2e-2


def test_compile_mode_reaches_inductor():
    """mode="reduce-overhead" (CUDA graphs for short steps) is passed on to Inductor; on CPU
    tensors Inductor skips the graph capture, and the result must still be the eager one."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    _compiled_matches_eager(13, mode="reduce-overhead")
    assert counters["inductor"]["cudagraph_skips"] >= 1  # the mode reached Inductor's cudagraph pass


def test_inductor_cache_keys_carry_our_op_schemas(monkeypatch):
    """Inductor's on-disk caches key graphs on op names, not schemas: the backend's post-grad
    pass has our ops' schemas in its uuid, so a graph compiled against another version of the ops
    is not reused; a pass the user set is kept."""
    import torch._inductor.compile_fx as cfx

    import fsa_compile.backend as backend

    seen = []

    def fake_compile_fx(gm, example_inputs, config_patches=None):
        seen.append(config_patches)
        return gm.forward

    monkeypatch.setattr(cfx, "compile_fx", fake_compile_fx)
    q, k, v, idx, bs = random_case(seed=14)
    torch._dynamo.reset()
    torch.compile(selected_attention_gather, backend="fsa")(q, k, v, idx, bs)
    p = seen[-1]["post_grad_custom_post_pass"]
    schemas = str(torch.ops.fsa.selected_attention_backward.default._schema)
    assert "Tensor offsets" in schemas and p.uuid() == backend._post_grad_pass().uuid()
    assert len(p.uuid()) == 64
    mine = object()
    torch._dynamo.reset()
    torch.compile(selected_attention_gather, backend="fsa",
                  options={"post_grad_custom_post_pass": mine})(q, k, v, idx, bs)
    assert seen[-1]["post_grad_custom_post_pass"] is mine


def test_a_misspelled_option_is_named():
    f = torch.compile(lambda x: x + 1, backend="fsa", options={"strategies": "nsa"})
    with pytest.raises(Exception, match=r"unknown option\(s\) \['strategies'\].*'inner', 'strategy', 'topk'"):
        f(torch.ones(2))
