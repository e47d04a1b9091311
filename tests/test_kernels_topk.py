"""Row top-k: the Triton template against torch.topk, and the rewrite of ``topk`` calls.

CPU: interpreted kernels (this module's name switches FSA_COMPILE_INTERPRET on). GPU
(``pytest -m gpu``): NSA's selection size and a few others at real sizes.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fsa_compile
from fsa_compile.lowering.row_topk import row_topk
from fsa_compile.topk import row_topk as public_row_topk

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _rows(R, L, dtype, seed, specials=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, L, generator=g)
    if specials:
        pick = torch.rand(R, L, generator=g)
        x = torch.where(pick < 0.05, float("inf"), x)
        x = torch.where((pick >= 0.05) & (pick < 0.15), float("-inf"), x)
        x = torch.where((pick >= 0.15) & (pick < 0.18), float("nan"), x)
        x = torch.where((pick >= 0.18) & (pick < 0.22), -0.0, x)
        x = torch.where((pick >= 0.22) & (pick < 0.26), 0.0, x)
        x = torch.where((pick >= 0.26) & (pick < 0.40), x.round(), x)  # many ties
    return x.to(dtype).to(device)


def _expected(x, k, largest):
    """torch.topk's values; indices ordered lowest first among equal values (a stable sort).
    In float64, +-inf and NaN get finite stand-ins that keep torch.topk's order (NaN largest)."""
    key = x.double()
    key = torch.where(key == 0, torch.zeros_like(key), key)  # -0.0 ties with 0.0
    key = torch.where(torch.isposinf(key), 1e300, torch.where(torch.isneginf(key), -1e300, key))
    key = torch.where(torch.isnan(key), 1e301, key)
    idx = torch.sort(key, dim=-1, descending=largest, stable=True).indices[..., :k]
    return x.gather(-1, idx), idx


def _same_values(a, b):
    return torch.equal(torch.nan_to_num(a.float(), nan=1234.5), torch.nan_to_num(b.float(), nan=1234.5))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(R=st.integers(1, 70), L=st.integers(1, 600), kfrac=st.floats(0, 1), dtype=st.sampled_from(DTYPES),
       largest=st.booleans(), seed=st.integers(0, 2**16), two_level=st.booleans())
def test_kernel_matches_torch_topk(R, L, kfrac, dtype, largest, seed, two_level):
    """Both ways of taking the keys (whole rows in registers, or group maxima with one group
    reloaded per step) against torch.topk, with infinities, NaN, signed zeros and many ties."""
    k = max(1, min(L, 64, round(kfrac * min(L, 64))))
    x = _rows(R, L, dtype, seed)
    poison = (torch.full((R, k), float("nan"), dtype=dtype), torch.full((R, k), -7, dtype=torch.int64))
    v, i = row_topk(x, k, largest, out=poison, two_level=two_level)
    ev, ei = _expected(x, k, largest)
    rv, _ = torch.topk(x, k, dim=-1, largest=largest)
    assert _same_values(v, rv), "values differ from torch.topk"
    assert _same_values(v, x.gather(-1, i)), "indices do not point at the values"
    assert torch.equal(i, ei), "among equal values the lowest index must come first"


def test_signed_zeros_and_nan_come_back_as_they_were():
    x = torch.tensor([[0.0, -0.0, float("nan"), 1.0, -0.0, float("-inf")]])
    v, i = row_topk(x, 6, True)
    assert i.tolist() == [[2, 3, 0, 1, 4, 5]]
    assert torch.isnan(v[0, 0]) and torch.signbit(v[0, 2:5]).tolist() == [False, True, True]
    v, i = row_topk(x, 3, False)
    assert i.tolist() == [[5, 0, 1]]


def test_strided_input_and_other_dims():
    x = _rows(40, 30, torch.float32, 3, specials=False).view(8, 5, 30).transpose(0, 1)  # not contiguous
    v, i = public_row_topk(x, 7, dim=-1)
    rv, ri = torch.topk(x, 7, dim=-1)
    assert torch.equal(v, rv) and torch.equal(i, ri)  # no ties in random floats: same indices
    v, i = public_row_topk(x, 3, dim=0, largest=False)
    rv, ri = torch.topk(x, 3, dim=0, largest=False)
    assert torch.equal(v, rv) and torch.equal(i, ri)


def test_bad_arguments_are_refused():
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match="larger than"):
        public_row_topk(x, 11)
    with pytest.raises(ValueError, match="non-negative int"):
        public_row_topk(x, -1)


def test_gradient_flows_through_the_values():
    x = torch.randn(6, 50, dtype=torch.float64, requires_grad=True)
    v, _ = public_row_topk(x, 5)
    g = torch.randn_like(v)
    (gx,) = torch.autograd.grad((v * g).sum(), x)
    x2 = x.detach().requires_grad_(True)
    (gr,) = torch.autograd.grad((torch.topk(x2, 5).values * g).sum(), x2)
    assert torch.equal(gx, gr)


# ---- the rewrite ------------------------------------------------------------------------------

def selection(q, k, bs: int = 4, n: int = 3):
    """NSA's selection in plain PyTorch: top-n block scores, future blocks out, -1 where fewer."""
    T, nb = q.shape[1], (q.shape[1] + bs - 1) // bs
    kc = torch.nn.functional.pad(k, (0, 0, 0, nb * bs - T)).view(k.shape[0], nb, bs, -1).mean(2)
    s = torch.einsum("btd,bjd->btj", q, kc)
    future = torch.arange(nb).view(1, 1, nb) > (torch.arange(T) // bs).view(1, T, 1)
    top = s.masked_fill(future, float("-inf")).topk(min(n, nb), dim=-1)
    return torch.where(torch.isinf(top.values), -1, top.indices), top.values


def functional_forms(x):
    a = torch.topk(x, 2)
    b, c = torch.topk(x * 2, 3, 0, False, True)
    d, e = torch.topk(x, 3, 0, True, False)  # sorted=False: left to torch.topk (its order is its own)
    return a.values, a.indices, b, c, d, e


def test_rewrite_fires_and_matches_eager():
    q, k = torch.randn(2, 21, 8), torch.randn(2, 21, 8)
    rep = fsa_compile.explain(selection, q, k, options={"inner": "aot_eager"})
    assert len(rep.others) == 1 and rep.others[0].pattern == "row top-k", str(rep)
    assert "kernel" in rep.others[0].plan
    for a, b in zip(rep.output, selection(q, k)):
        assert torch.equal(a, b)
    x = torch.randn(5, 9)
    rep = fsa_compile.explain(functional_forms, x, options={"inner": "aot_eager"})
    assert len(rep.others) == 2, str(rep)
    assert [r.options["largest"] for r in rep.others] == [True, False]
    got, want = rep.output, functional_forms(x)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def int_topk(x):
    return torch.topk(x, 2).indices


def topk_k_from_size(x):
    return torch.topk(x, x.shape[-1] // 2).values


def test_rewrite_leaves_near_misses_alone():
    # integer scores: not a float row
    rep = fsa_compile.explain(int_topk, torch.randint(0, 9, (4, 7)), options={"inner": "aot_eager"})
    assert rep.others == [], str(rep)
    # switched off
    q, k = torch.randn(1, 9, 4), torch.randn(1, 9, 4)
    rep = fsa_compile.explain(selection, q, k, options={"inner": "aot_eager", "topk": False})
    assert rep.others == [], str(rep)
    with pytest.raises(Exception, match="topk"):
        fsa_compile.explain(selection, q, k, options={"inner": "aot_eager", "topk": "yes"})


def test_k_from_a_symbolic_size_is_left_to_torch():
    torch._dynamo.reset()
    x = torch.randn(3, 8)
    compiled = torch.compile(topk_k_from_size, backend="fsa", dynamic=True, options={"inner": "aot_eager"})
    from fsa_compile.testing import RewriteCounter

    with RewriteCounter() as c:
        out = compiled(x)
    assert torch.equal(out, topk_k_from_size(x))
    assert c.others == [], [str(r) for r in c.others]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("R,L,k", [(32768 * 4, 512, 16), (4096 * 4, 64, 16), (1000, 4096, 64), (77, 333, 5)])
def test_gpu_real_sizes(R, L, k, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = _rows(R, L, dtype, 11).cuda()
    poison = (torch.full((R, k), float("nan"), dtype=dtype, device="cuda"),
              torch.full((R, k), -7, dtype=torch.int64, device="cuda"))
    v, i = row_topk(x, k, True, out=poison)
    rv, _ = torch.topk(x, k, dim=-1)
    assert _same_values(v, rv)
    assert _same_values(v, x.gather(-1, i))
    ev, ei = _expected(x.cpu(), k, True)
    assert torch.equal(i.cpu(), ei)
