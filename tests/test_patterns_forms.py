"""Fire tests: every recognised spelling is rewritten once and matches eager, forward and backward."""
import functools

import pytest
import torch

import fsa_compile
from fsa_compile.patterns.forms import FORMS, from_layout, to_layout
from fsa_compile.testing import Shape, assert_compiled_matches_eager, make_inputs

FAST = {"inner": "aot_eager"}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles the shared forms afresh (Dynamo's per-function recompile limit)."""
    torch._dynamo.reset()
    yield
SHAPE = Shape(B=2, T=37, H=2, G=2, D=8, block_size=8, n=3)  # T not a multiple of the block size


def _args(form, shape=SHAPE, kind="padding", seed=0, grad=False):
    if form.layout == "thd":
        shape = Shape(1, shape.T, shape.H, shape.G, shape.D, shape.block_size, shape.n, shape.dtype)
    q, k, v, idx, bs = make_inputs(shape, kind, seed, requires_grad=grad)
    return (*to_layout(form.layout, q, k, v, idx), bs)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_form_is_rewritten_once_and_matches_eager(name):
    form = FORMS[name]
    args = _args(form)
    rep = fsa_compile.explain(form.fn, *args, options=FAST)
    assert len(rep.rewrites) == 1 and rep.misses == [], str(rep)
    rw = rep.rewrites[0]
    assert rw.shapes["block_size"] == 8 and rw.shapes["n"] == 3 and rw.shapes["G"] == 2, str(rep)
    assert rw.options["causal"] is form.causal
    assert rw.options["count_duplicates"] is form.count_duplicates
    torch.testing.assert_close(rep.output, form.fn(*args), equal_nan=True, rtol=1e-4, atol=1e-5)
    # forward and backward, on a selection without empty rows (eager's gradients are NaN there)
    assert_compiled_matches_eager(form.fn, *_args(form, kind="unique", seed=1), backend_options=FAST, expect_rewrites=1)


@pytest.mark.parametrize("name", ["gather_index_einsum", "mask_scatter_repeat"])
def test_duplicates_keep_the_forms_meaning(name):
    """A block listed twice counts twice in a gather, once in a mask: the rewrite keeps each."""
    form = FORMS[name]
    args = _args(form, kind="duplicates", seed=3)
    assert (args[3][..., 0] == args[3][..., 1]).any() or (args[3].sort(-1)[0].diff(dim=-1) == 0).any()
    rep = fsa_compile.explain(form.fn, *args, options=FAST)
    assert len(rep.rewrites) == 1, str(rep)
    torch.testing.assert_close(rep.output, form.fn(*args), equal_nan=True, rtol=1e-4, atol=1e-5)


def test_rows_with_nothing_visible_are_nan_as_in_eager():
    form = FORMS["gather_index_einsum"]
    args = _args(form, kind="empty_rows", seed=5)
    eager = form.fn(*args)
    assert eager.isnan().any()
    rep = fsa_compile.explain(form.fn, *args, options=FAST)
    assert len(rep.rewrites) == 1
    assert torch.equal(rep.output.isnan(), eager.isnan())
    torch.testing.assert_close(rep.output, eager, equal_nan=True, rtol=1e-4, atol=1e-5)


def test_sdpa_rows_with_nothing_visible_are_zero_as_in_eager():
    form = FORMS["mask_sdpa"]
    args = _args(form, kind="empty_rows", seed=5)
    eager = form.fn(*args)
    assert not eager.isnan().any()
    rep = fsa_compile.explain(form.fn, *args, options=FAST)
    assert len(rep.rewrites) == 1
    torch.testing.assert_close(rep.output, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_without_upcast(dtype):
    form = FORMS["gather_index_select"]  # no float32 upcast of the scores; p cast back to q's dtype
    shape = Shape(1, 24, 2, 2, 8, 4, 3, dtype)
    args = _args(form, shape=shape, kind="unique", seed=2)
    assert_compiled_matches_eager(form.fn, *args, backend_options=FAST, expect_rewrites=1)


def test_topk_selection_inside_the_graph():
    """The selection computed in the graph by top-k (as NSA does) is an opaque, trusted leaf."""

    def layer(q, k, v, block_size: int):
        B, T, HQ, D = q.shape
        nb = (T + block_size - 1) // block_size
        scores = torch.randn(B, T, k.shape[2], nb, generator=None).abs()  # any data-dependent choice
        pos_block = torch.arange(T).view(1, T, 1, 1) // block_size
        scores = scores.masked_fill(torch.arange(nb).view(1, 1, 1, nb) > pos_block, float("-inf"))
        idx = scores.topk(2, dim=-1).indices
        return FORMS["gather_index_einsum"].fn(q, k, v, idx, block_size)

    q, k, v, _, bs = make_inputs(Shape(1, 32, 2, 2, 8, 8, 2), "unique", 0)
    torch.manual_seed(0)
    rep = fsa_compile.explain(layer, q, k, v, bs, options=FAST)
    assert len(rep.rewrites) == 1, str(rep)


def test_two_attention_layers_in_one_graph_are_both_rewritten():
    a, b = FORMS["gather_index_einsum"].fn, FORMS["mask_scatter_index_pos"].fn

    def two_layers(q, k, v, idx, bs):
        h = a(q, k, v, idx, bs)
        return b(h, k, v, idx, bs) + h

    args = _args(FORMS["gather_index_einsum"], kind="unique", seed=4)
    rep = fsa_compile.explain(two_layers, *args, options=FAST)
    assert len(rep.rewrites) == 2 and rep.misses == [], str(rep)
    assert_compiled_matches_eager(two_layers, *args, backend_options=FAST, expect_rewrites=2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(FORMS))
def test_form_on_the_gpu_runs_the_kernels_and_matches_eager(name, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    form = FORMS[name]
    args = _args(form, shape=Shape(1, 300, 2, 2, 64, 32, 4, dtype), kind="unique", seed=7)
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    rep = fsa_compile.explain(form.fn, *args)
    assert len(rep.rewrites) == 1 and "reference" not in rep.rewrites[0].plan, str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(form.fn, *args, expect_rewrites=1)


def test_duplicate_policy_is_found_when_few_rows_show_a_duplicate():
    """Block 2, n = 2, 30 heads: the sampled rows of the random tables met no visible duplicate, so
    the pass could not tell a mask (once) from a gather (twice) and gave up; it now asks again
    with tables where every row lists its own block twice."""
    form = FORMS["mask_bias_manual_softmax"]
    args = _args(form, shape=Shape(1, 39, 2, 15, 12, 2, 2), kind="empty_rows", seed=1)
    rep = fsa_compile.explain(form.fn, *args, options=FAST)
    assert len(rep.rewrites) == 1 and rep.rewrites[0].options["count_duplicates"] is False, str(rep)
    torch.testing.assert_close(rep.output, form.fn(*args), equal_nan=True, rtol=1e-4, atol=1e-5)


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rope_tables(T, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * torch.rand(D // 2, generator=g)[None]
    cos, sin = (torch.cat([f(ang), f(ang)], -1)[None, :, None, :] for f in (torch.cos, torch.sin))
    return cos, sin


def _half_rotation_rope(q, k, v, block_indices, block_size, cos, sin):
    """q and k rotated in the graph the way Llama-style code does (``x * cos + rotate_half(x) * sin``)."""
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return FORMS["gather_index_einsum"].fn(q, k, v, block_indices, block_size)


def _qk_norm(q, k, v, block_indices, block_size, weight):
    """q and k through an RMS norm with a learned weight in the graph (QK-norm)."""
    def rms(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
    return FORMS["gather_index_einsum"].fn(rms(q), rms(k), v, block_indices, block_size)


@pytest.mark.parametrize("which", ["half_rotation_rope", "qk_norm"])
def test_arithmetic_on_q_and_k_in_the_graph_is_read_as_data(which):
    """Elementwise arithmetic of q or k with other data (RoPE tables, a norm) gives the tensor the
    scores read: the rewrite reads that node as q (k), forward and backward as eager. (Its near
    misses, the same arithmetic on the scores, probabilities or gathered keys, are in
    test_patterns_misses.py.)"""
    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 2, 16, 8, 3), "unique", 11, requires_grad=True)
    if which == "half_rotation_rope":
        fn, extra = _half_rotation_rope, _rope_tables(40, 16)
    else:
        fn, extra = _qk_norm, (torch.rand(16, generator=torch.Generator().manual_seed(3)) + 0.5,)
    rep = fsa_compile.explain(fn, q, k, v, idx, bs, *extra, options=FAST)
    assert len(rep.rewrites) == 1 and rep.misses == [], str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(fn, q.detach(), k.detach(), v.detach(), idx, bs, *extra, backend_options=FAST,
                                  expect_rewrites=1)


def _one_hot_counts(q, k, v, block_indices, block_size):
    """Block mask as a count of one-hot rows over the slots (padding clamped to block 0 and
    zeroed), ``> 0``; expanded by ``pos // bs``."""
    B, T, HQ, D = q.shape
    G = HQ // k.shape[2]
    nb = (T + block_size - 1) // block_size
    hot = torch.nn.functional.one_hot(block_indices.clamp(min=0), nb) * (block_indices >= 0).unsqueeze(-1)
    pos = torch.arange(T)
    allowed = (hot.sum(dim=-2) > 0)[..., pos // block_size] & (pos.view(1, T, 1, 1) >= pos.view(1, 1, 1, T))
    s = torch.einsum("bthd,bshd->bths", q, k.repeat_interleave(G, dim=2)) * D**-0.5
    s = s.masked_fill(~allowed.repeat_interleave(G, dim=2), float("-inf"))
    return torch.einsum("bths,bshd->bthd", s.softmax(-1), v.repeat_interleave(G, dim=2))


@pytest.mark.parametrize("kind", ["padding", "duplicates"])
def test_block_mask_from_one_hot_counts_is_rewritten(kind):
    """Reductions of the selection (``.any``, ``.all``, an integer ``.sum``) and ``F.one_hot`` are
    read point by point: a mask built from them is a dense-mask form (each block once)."""
    q, k, v, idx, bs = make_inputs(SHAPE, kind, 7)
    rep = fsa_compile.explain(_one_hot_counts, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 1 and rep.misses == [], str(rep)
    assert rep.rewrites[0].options["count_duplicates"] is False, str(rep)
    torch.testing.assert_close(rep.output, _one_hot_counts(q, k, v, idx, bs), equal_nan=True, rtol=1e-4, atol=1e-5)


def _group_major_tiled(q, k, v, block_indices, block_size):
    """[B, T, H, D]; GQA groups g-major (``hq = g * H + h``) by ``torch.tile`` of the gathered keys,
    values and mask."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok = (block_indices.unsqueeze(-1) * block_size + torch.arange(block_size)).flatten(-2)  # [B, T, H, S]
    masked = (block_indices < 0).repeat_interleave(block_size, -1) | (tok > torch.arange(T).view(1, T, 1, 1))
    safe = tok.clamp(0, T - 1)
    b_idx, h_idx = torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, 1, H, 1)
    k_sel = torch.tile(k[b_idx, safe, h_idx], (1, 1, G, 1, 1))
    v_sel = torch.tile(v[b_idx, safe, h_idx], (1, 1, G, 1, 1))
    s = torch.einsum("bthd,bthsd->bths", q, k_sel) * D**-0.5
    s = s.masked_fill(torch.tile(masked, (1, 1, G, 1)), float("-inf"))
    return torch.einsum("bths,bthsd->bthd", s.softmax(-1), v_sel)


@pytest.mark.parametrize("G,H", [(2, 3), (4, 2), (1, 2), (3, 1)])
def test_group_major_heads_are_regrouped_for_the_op(G, H):
    """Query head ``g * H + h`` reading KV head ``h``: the rewrite hands the op q with its heads
    regrouped (``h * G + g``) and regroups the output back; where G = 1 or H = 1 both orders are
    one and nothing is regrouped."""
    q, k, v, idx, bs = make_inputs(Shape(2, 37, H, G, 8, 8, 3), "padding", 12)
    rep = fsa_compile.explain(_group_major_tiled, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 1 and rep.misses == [], str(rep)
    regrouped = "(gh)" in str(rep.rewrites[0])
    assert regrouped is (G > 1 and H > 1), str(rep)
    torch.testing.assert_close(rep.output, _group_major_tiled(q, k, v, idx, bs), equal_nan=True, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
    args = make_inputs(Shape(2, 37, H, G, 8, 8, 3), "unique", 13)
    assert_compiled_matches_eager(_group_major_tiled, *args, backend_options=FAST, expect_rewrites=1)


@pytest.mark.interpret
def test_group_major_heads_through_the_kernels():
    """The regrouped q and output through the interpreted Triton kernels, forward and backward."""
    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 2, 16, 8, 3), "unique", 14)
    args = (*to_layout("bhtd", q, k, v, idx), bs)
    fn = FORMS["gather_group_major"].fn
    rep = fsa_compile.explain(fn, *args, options=FAST)
    assert len(rep.rewrites) == 1 and "plan: fsa" in str(rep.rewrites[0]), str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(fn, *args, backend_options=FAST, expect_rewrites=1)


def _gathered(q, k, v, block_indices, block_size):
    """The gather form's gathered keys and values ``[B, T, HQ, S, D]`` and masked slots."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    dev = q.device
    tok = (block_indices.unsqueeze(-1) * block_size + torch.arange(block_size, device=dev)).flatten(-2)
    masked = (block_indices < 0).repeat_interleave(block_size, -1) | (tok > torch.arange(T, device=dev).view(1, T, 1, 1))
    safe = tok.clamp(0, T - 1)
    b_idx, h_idx = torch.arange(B, device=dev).view(B, 1, 1, 1), torch.arange(H, device=dev).view(1, 1, H, 1)
    return (k[b_idx, safe, h_idx].repeat_interleave(G, 2), v[b_idx, safe, h_idx].repeat_interleave(G, 2),
            masked.repeat_interleave(G, 2))


def _logsumexp_softmax(q, k, v, block_indices, block_size, detach=False):
    """Softmax spelled ``exp(s - logsumexp(s))``."""
    k_sel, v_sel, masked = _gathered(q, k, v, block_indices, block_size)
    s = torch.einsum("bthd,bthsd->bths", q, k_sel) * q.shape[-1] ** -0.5
    s = s.masked_fill(masked, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    return torch.einsum("bths,bthsd->bthd", torch.exp(s - (lse.detach() if detach else lse)), v_sel)


def _baddbmm_scores(q, k, v, block_indices, block_size, bias=None):
    """Scores by ``torch.baddbmm(mask_bias, q, k_sel^T, alpha=scale)`` on ``[B*T*HQ, ...]`` rows
    (the products Bloom- and Falcon-style attention writes), then ``bmm``."""
    B, T, HQ, D = q.shape
    k_sel, v_sel, masked = _gathered(q, k, v, block_indices, block_size)
    S = k_sel.shape[-2]
    add = torch.zeros(B * T * HQ, 1, S, device=q.device, dtype=q.dtype).masked_fill(masked.reshape(-1, 1, S), float("-inf"))
    if bias is not None:
        add = add + bias
    s = torch.baddbmm(add, q.reshape(-1, 1, D), k_sel.reshape(-1, S, D).transpose(1, 2), alpha=D**-0.5)
    return torch.bmm(s.softmax(-1), v_sel.reshape(-1, S, D)).view(B, T, HQ, D)


def _log_softmax_exp(q, k, v, block_indices, block_size):
    """Softmax as ``F.log_softmax(s).exp()``, the scale as ``/ torch.sqrt(torch.tensor(D))``."""
    k_sel, v_sel, masked = _gathered(q, k, v, block_indices, block_size)
    s = torch.einsum("bthd,bthsd->bths", q, k_sel) / torch.sqrt(torch.tensor(q.shape[-1], dtype=torch.float32))
    p = torch.nn.functional.log_softmax(s.masked_fill(masked, float("-inf")), dim=-1).exp()
    return torch.einsum("bths,bthsd->bthd", p, v_sel)


def _mul_sum_products(q, k, v, block_indices, block_size):
    """Both products as a broadcast multiply and a sum: ``(q * k_sel).sum(-1)``, ``(p * v_sel).sum(-2)``."""
    k_sel, v_sel, masked = _gathered(q, k, v, block_indices, block_size)
    s = (q.unsqueeze(-2) * k_sel).sum(-1) * q.shape[-1] ** -0.5
    p = s.masked_fill(masked, float("-inf")).softmax(-1)
    return (p.unsqueeze(-1) * v_sel).sum(dim=-2)


MORE_SPELLINGS = {"logsumexp_softmax": _logsumexp_softmax, "baddbmm_scores": _baddbmm_scores,
                  "log_softmax_exp": _log_softmax_exp, "mul_sum_products": _mul_sum_products}


@pytest.mark.parametrize("name", sorted(MORE_SPELLINGS))
def test_more_spellings_of_the_scores_and_softmax(name):
    fn = MORE_SPELLINGS[name]
    q, k, v, idx, bs = make_inputs(SHAPE, "padding", 21)
    rep = fsa_compile.explain(fn, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 1 and rep.misses == [], str(rep)
    torch.testing.assert_close(rep.output, fn(q, k, v, idx, bs), equal_nan=True, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
    assert_compiled_matches_eager(fn, *make_inputs(SHAPE, "unique", 22), backend_options=FAST, expect_rewrites=1)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MORE_SPELLINGS))
def test_more_spellings_on_the_gpu_run_the_kernels_and_match_eager(name):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fn = MORE_SPELLINGS[name]
    q, k, v, idx, bs = (a.cuda() if isinstance(a, torch.Tensor) else a
                        for a in make_inputs(Shape(1, 300, 2, 2, 64, 32, 4, torch.bfloat16), "unique", 25))
    rep = fsa_compile.explain(fn, q, k, v, idx, bs)
    assert len(rep.rewrites) == 1 and "reference" not in rep.rewrites[0].plan, str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(fn, q, k, v, idx, bs, expect_rewrites=1)


def test_a_detached_logsumexp_is_not_a_softmax():
    """``exp(s - lse.detach())`` has softmax's values but not its gradient: left alone."""
    q, k, v, idx, bs = make_inputs(SHAPE, "unique", 23)
    fn = functools.partial(_logsumexp_softmax, detach=True)
    rep = fsa_compile.explain(fn, q, k, v, idx, bs, options=FAST)
    assert rep.rewrites == [], str(rep)
    torch._dynamo.reset()
    assert_compiled_matches_eager(fn, q, k, v, idx, bs, backend_options=FAST)


def test_baddbmm_with_a_position_bias_is_a_near_miss():
    """A finite bias in the baddbmm (ALiBi-like) changes the scores: a near miss with its reason."""
    q, k, v, idx, bs = make_inputs(SHAPE, "unique", 24)
    S = idx.shape[-1] * bs
    fn = functools.partial(_baddbmm_scores, bias=-0.1 * torch.arange(S, dtype=torch.float32))
    rep = fsa_compile.explain(fn, q, k, v, idx, bs, options=FAST)
    assert rep.rewrites == [] and len(rep.misses) == 1, str(rep)
    assert "cannot follow the subgraph" in rep.misses[0].reason, str(rep)
    torch.testing.assert_close(rep.output, fn(q, k, v, idx, bs), rtol=1e-4, atol=1e-5)


def test_a_summed_product_with_scaled_probabilities_is_a_near_miss():
    """The multiply-and-sum output product is read as a product, so what it multiplies is
    checked as for ``@``: probabilities scaled on the way are a near miss with that reason."""
    def fn(q, k, v, block_indices, block_size):
        k_sel, v_sel, masked = _gathered(q, k, v, block_indices, block_size)
        s = torch.einsum("bthd,bthsd->bths", q, k_sel) * q.shape[-1] ** -0.5
        p = s.masked_fill(masked, float("-inf")).softmax(-1)
        return (p.unsqueeze(-1) * 0.5 * v_sel).sum(dim=-2)

    q, k, v, idx, bs = make_inputs(SHAPE, "unique", 25)
    rep = fsa_compile.explain(fn, q, k, v, idx, bs, options=FAST)
    assert rep.rewrites == [] and len(rep.misses) == 1, str(rep)
    assert "multiplied by 0.5" in rep.misses[0].reason, str(rep)
    torch.testing.assert_close(rep.output, fn(q, k, v, idx, bs), rtol=1e-4, atol=1e-5)
