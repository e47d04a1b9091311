"""Selected attention under ``torch.autocast``: the rewrite computes in the dtype autocast gives
the user's products (so float32 code under bf16 autocast runs the bf16 kernels), and the op itself
is not reached by an autocast around its call."""
import pytest
import torch

import fsa_compile
from fsa_compile.patterns.forms import FORMS, to_layout
from fsa_compile.testing import Shape, assert_compiled_matches_eager, make_inputs

FAST = {"inner": "aot_eager"}
SHAPE = Shape(B=1, T=45, H=2, G=2, D=16, block_size=8, n=3)  # float32 inputs, T not a multiple of bs


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield


def _args(form, kind="unique", seed=0):
    q, k, v, idx, bs = make_inputs(SHAPE, kind, seed)
    return (*to_layout(form.layout, q, k, v, idx), bs)


# a gather with einsum, one with matmul in [B, H, T, D], SDPA with a mask, a softmax written out
AUTOCAST_FORMS = ["gather_index_einsum", "gather_bhtd_matmul_where", "mask_sdpa", "gather_manual_softmax"]


@pytest.mark.parametrize("name,where", [(name, "around the call") for name in AUTOCAST_FORMS]
                         + [(name, "inside the function") for name in ("gather_index_einsum", "mask_sdpa")])
def test_autocast_products_run_the_op_in_autocasts_dtype(name, where):
    form = FORMS[name]
    args = _args(form, seed=3)
    if where == "around the call":
        fn = form.fn
    else:
        def fn(*a):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return form.fn(*a)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=where == "around the call"):
        eager = fn(*args)
        rep = fsa_compile.explain(fn, *args, options=FAST)
        assert len(rep.rewrites) == 1 and rep.misses == [], str(rep)
        assert rep.rewrites[0].options["dtype"] == "bfloat16", str(rep)
        assert rep.output.dtype == eager.dtype
        torch._dynamo.reset()
        # forward and backward within bf16 tolerance of eager, or closer to float32 than eager is;
        # with autocast inside fn and a float32 output (a form that casts back to q's dtype) the
        # helper cannot see that the products ran in bf16, so the tolerance is given
        tol = {} if where == "around the call" or eager.dtype == torch.bfloat16 else {"rtol": 0.1, "atol": 0.1}
        assert_compiled_matches_eager(fn, *args, backend_options=FAST, expect_rewrites=1, **tol)


def test_fp16_autocast_gives_fp16():
    form = FORMS["gather_index_einsum"]
    args = _args(form, seed=4)
    with torch.autocast("cpu", dtype=torch.float16):
        rep = fsa_compile.explain(form.fn, *args, options=FAST)
    assert len(rep.rewrites) == 1 and rep.rewrites[0].options["dtype"] == "float16", str(rep)


def test_attention_with_autocast_turned_off_stays_float32():
    """Near miss of the autocast rule: the user turns autocast off for the attention (for its
    numerics); its products then read float32, and so does the op."""
    form = FORMS["gather_index_einsum"]
    args = _args(form, seed=5)

    def fn(*a):
        with torch.autocast("cpu", enabled=False):
            return form.fn(*a)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = fn(*args)
        rep = fsa_compile.explain(fn, *args, options=FAST)
    assert len(rep.rewrites) == 1 and rep.rewrites[0].options["dtype"] == "float32", str(rep)
    assert rep.output.dtype == torch.float32
    torch.testing.assert_close(rep.output, eager, rtol=1e-4, atol=1e-5)


def test_without_autocast_float32_stays_float32():
    form = FORMS["gather_index_einsum"]
    rep = fsa_compile.explain(form.fn, *_args(form, seed=6), options=FAST)
    assert len(rep.rewrites) == 1 and rep.rewrites[0].options["dtype"] == "float32", str(rep)


def test_the_op_is_not_reached_by_an_autocast_around_it():
    q, k, v, idx, bs = make_inputs(SHAPE, "padding", 7)
    args = (q, k, v, idx, bs, 0.25, True, True, "drop", "reference")
    plain = torch.ops.fsa.selected_attention(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = torch.ops.fsa.selected_attention(*args)
    for a, b in zip(plain[:2], under[:2]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_public_wrapper_casts_to_autocasts_dtype_like_sdpa():
    q, k, v, idx, bs = make_inputs(SHAPE, "padding", 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = fsa_compile.selected_attention(q, k, v, idx, bs)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2))
    assert o.dtype == sdpa.dtype == torch.bfloat16
    expected = fsa_compile.selected_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), idx, bs)
    torch.testing.assert_close(o, expected, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", AUTOCAST_FORMS)
def test_autocast_on_the_gpu_runs_the_bf16_kernels(name):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    form = FORMS[name]
    q, k, v, idx, bs = make_inputs(Shape(1, 300, 2, 4, 64, 32, 4), "unique", 9)
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in to_layout(form.layout, q, k, v, idx)) + (bs,)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        rep = fsa_compile.explain(form.fn, *args)
        assert len(rep.rewrites) == 1, str(rep)
        rw = rep.rewrites[0]
        assert rw.options["dtype"] == "bfloat16" and "reference" not in rw.plan, str(rep)
        torch._dynamo.reset()
        assert_compiled_matches_eager(form.fn, *args, expect_rewrites=1)


@pytest.mark.interpret
@pytest.mark.parametrize("strategy", ["fsa"])
def test_autocast_runs_the_bf16_kernels_interpreted(strategy):
    """Through the Triton kernels (interpreted on CPU): the plan is for bf16 and the result, forward
    and backward, is eager's under autocast to bf16 tolerance. (The inverted loop only: once the
    dtype is chosen the op is the same for both strategies, and each has its bf16 kernel tests.)"""
    form = FORMS["gather_index_einsum"]
    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 2, 16, 16, 3), "unique", 10)
    opts = {**FAST, "strategy": strategy}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rep = fsa_compile.explain(form.fn, q, k, v, idx, bs, options=opts)
        assert len(rep.rewrites) == 1 and rep.rewrites[0].plan.startswith(strategy), str(rep)
        assert rep.rewrites[0].options["dtype"] == "bfloat16", str(rep)
        torch._dynamo.reset()
        assert_compiled_matches_eager(form.fn, q, k, v, idx, bs, backend_options=opts, expect_rewrites=1)
