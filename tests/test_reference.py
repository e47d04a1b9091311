"""The operation on its CPU path (the reference) against an independent implementation."""
import math

import pytest
import torch

import fsa_compile
from fsa_compile.reference import canonical_indices
from naive import naive_selected_attention, random_selection

TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def _inputs(B, T, H, G, D, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H * G, D, generator=g).to(dtype)
    k = torch.randn(B, T, H, D, generator=g).to(dtype)
    v = torch.randn(B, T, H, D, generator=g).to(dtype)
    for t in (q, k, v):
        t.requires_grad_(grad)
    return q, k, v, g


@pytest.mark.parametrize("G", [1, 2, 4, 8])
def test_values_and_gradients_match_independent_gather(G):
    B, T, H, D, bs, n = 2, 45, 2, 8, 8, 3  # T not a multiple of bs
    q, k, v, g = _inputs(B, T, H, G, D, grad=True)
    idx = random_selection(B, T, H, n, bs, pad=0.3, generator=g)
    o, lse = fsa_compile.selected_attention(q, k, v, idx, bs, return_lse=True)
    ro, rlse = naive_selected_attention(q, k, v, idx, bs)
    assert (o.double() - ro).abs().max() < 1e-4
    assert (lse.double() - rlse).abs().max() < 1e-4
    w = torch.randn(o.shape, generator=g)
    grads = torch.autograd.grad((o * w).sum(), (q, k, v))
    rgrads = torch.autograd.grad((ro * w.double()).sum(), (q, k, v))
    for a, b, name in zip(grads, rgrads, "qkv"):
        assert (a.double() - b).abs().max() < 1e-4, name


@pytest.mark.parametrize("Tq,q_offset", [(1, None), (9, None), (12, 5), (45, 0), (1, 0)])
def test_queries_at_an_offset_match_independent_gather(Tq, q_offset):
    """q shorter than k (a decode step, a chunk of a prefill): its rows are key positions
    q_offset.. (by default the last T_q), values and gradients against the naive implementation."""
    B, T, H, G, D, bs, n = 2, 45, 2, 2, 8, 8, 3
    q, k, v, g = _inputs(B, T, H, G, D, seed=4, grad=True)
    off = T - Tq if q_offset is None else q_offset
    qc = q.detach()[:, off:off + Tq].clone().requires_grad_()
    idx = random_selection(B, T, H, n, bs, pad=0.2, dup=0.3, generator=g)[:, off:off + Tq]
    o, lse = fsa_compile.selected_attention(qc, k, v, idx, bs, return_lse=True, q_offset=q_offset)
    ro, rlse = naive_selected_attention(qc, k, v, idx, bs, q_offset=q_offset)
    assert o.shape == qc.shape and lse.shape == qc.shape[:3]
    assert (o.double() - ro).abs().max() < 1e-4
    assert (lse.double() - rlse).abs().max() < 1e-4
    w = torch.randn(o.shape, generator=g)
    grads = torch.autograd.grad((o * w).sum(), (qc, k, v))
    rgrads = torch.autograd.grad((ro * w.double()).sum(), (qc, k, v))
    for a, b, name in zip(grads, rgrads, "qkv"):
        assert (a.double() - b).abs().max() < 1e-4, name
    # rows of the whole sequence's attention, for the same queries
    full = fsa_compile.selected_attention(q.detach(), k.detach(), v.detach(),
                                          torch.nn.functional.pad(idx, (0, 0, 0, 0, off, T - off - Tq), value=-1), bs)
    torch.testing.assert_close(o.detach(), full[:, off:off + Tq], rtol=0, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("count_duplicates", [True, False])
def test_duplicates_and_causality(causal, count_duplicates):
    B, T, H, G, D, bs, n = 1, 40, 2, 2, 8, 8, 4
    q, k, v, g = _inputs(B, T, H, G, D, seed=1)
    idx = random_selection(B, T, H, n, bs, pad=0.1, dup=0.5, generator=g)
    o = fsa_compile.selected_attention(q, k, v, idx, bs, causal=causal, count_duplicates=count_duplicates)
    ro, _ = naive_selected_attention(q, k, v, idx, bs, causal=causal, count_duplicates=count_duplicates)
    assert (o.double() - ro).abs().max() < 1e-4
    other, _ = naive_selected_attention(q, k, v, idx, bs, causal=causal, count_duplicates=not count_duplicates)
    assert (other - ro).abs().max() > 1e-3  # the duplicates really matter in this selection


def test_rows_with_nothing_visible_give_zero_and_minus_inf():
    B, T, H, G, D, bs = 1, 32, 1, 2, 8, 8
    q, k, v, _ = _inputs(B, T, H, G, D, seed=2)
    idx = torch.full((B, T, H, 2), -1)
    idx[:, :, :, 0] = 3  # block 3 = keys 24..31: invisible to queries t < 24
    o, lse = fsa_compile.selected_attention(q, k, v, idx, bs, return_lse=True)
    assert torch.all(o[:, :24] == 0) and torch.all(torch.isneginf(lse[:, :24]))
    assert torch.isfinite(o[:, 24:]).all()
    ro, _ = naive_selected_attention(q, k, v, idx, bs)
    assert (o[:, 24:].double() - ro[:, 24:]).abs().max() < 1e-4


@pytest.mark.parametrize("strategy", ["auto", "fsa", "nsa"])
def test_no_selected_block_at_all(strategy, monkeypatch):
    """n = 0 (an empty selection) is valid: every row sees nothing, gradients are zero."""
    monkeypatch.setenv("FSA_COMPILE_INTERPRET", "1")
    q, k, v, _ = _inputs(1, 20, 2, 2, 8, seed=3, grad=True)
    idx = torch.empty(1, 20, 2, 0, dtype=torch.long)
    o, lse = fsa_compile.selected_attention(q, k, v, idx, 8, return_lse=True, strategy=strategy)
    assert o.shape == (1, 20, 4, 8) and torch.all(o == 0) and torch.all(torch.isneginf(lse))
    w = torch.randn(o.shape)
    for grad in torch.autograd.grad((o * w).sum(), (q, k, v)):
        assert torch.all(grad == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_bhtd_layout_and_dtypes(dtype):
    B, T, H, G, D, bs, n = 2, 33, 2, 2, 16, 8, 2
    q, k, v, g = _inputs(B, T, H, G, D, dtype=dtype, seed=3)
    idx = random_selection(B, T, H, n, bs, generator=g)
    o = fsa_compile.selected_attention(q, k, v, idx, bs)
    ob = fsa_compile.selected_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), idx.transpose(1, 2), bs, layout="bhtd"
    )
    assert o.dtype == dtype and ob.shape == (B, H * G, T, D)
    assert torch.equal(ob.transpose(1, 2), o)
    ro, _ = naive_selected_attention(q, k, v, idx, bs)
    assert (o.double() - ro).abs().max() < TOL[dtype]


def test_any_strides_and_explicit_scale():
    B, T, H, G, D, bs, n = 2, 24, 2, 2, 8, 8, 2
    g = torch.Generator().manual_seed(4)
    base = torch.randn(B, H * G, T, 2 * D, generator=g)
    q = base[..., ::2].transpose(1, 2)  # non-contiguous, strided last dim
    k = torch.randn(T, B, H, D, generator=g).transpose(0, 1)
    v = torch.randn(B, T, H, D, generator=g)
    idx = random_selection(B, T, H, n, bs, generator=g)
    o = fsa_compile.selected_attention(q, k, v, idx, bs, scale=0.3)
    ro, _ = naive_selected_attention(q, k, v, idx, bs, scale=0.3)
    assert (o.double() - ro).abs().max() < 1e-4


def test_long_sequence_reference_is_chunked():
    # 4096 queries x 8 blocks x 64 keys x 64 dims of float32 gathered K+V would be 1 GiB unchunked.
    B, T, H, G, D, bs, n = 1, 4096, 1, 1, 64, 64, 8
    q, k, v, g = _inputs(B, T, H, G, D, seed=5)
    idx = random_selection(B, T, H, n, bs, pad=0.0, generator=g)
    o = fsa_compile.selected_attention(q, k, v, idx, bs)
    rows = torch.randint(0, T, (8,), generator=g)
    for t in rows.tolist():  # spot-check rows against a direct computation
        blocks = sorted(set(idx[0, t, 0].tolist()))
        keys = [s for b in idx[0, t, 0].tolist() for s in range(b * bs, (b + 1) * bs) if s <= t]
        s = (k[0, keys, 0].double() @ q[0, t, 0].double()) * D**-0.5
        ref = torch.softmax(s, 0) @ v[0, keys, 0].double()
        assert (o[0, t, 0].double() - ref).abs().max() < 1e-4, (t, blocks)


def test_canonical_indices_policies():
    idx = torch.tensor([[[[0, 5, 1, 1, -3]]]])
    T, bs = 20, 8  # 3 blocks
    with pytest.raises(ValueError, match=r"block_indices\[0, 0, 0, 1\] \(as \[b, t, h, slot\]\) is 5, out of range "
                                         r"\(1 such entry\): with 20 keys and block_size=8 there are 3 blocks"):
        canonical_indices(idx, T, bs, count_duplicates=True, on_out_of_range="raise")
    c = canonical_indices(idx, T, bs, count_duplicates=True, on_out_of_range="drop")
    assert c.tolist() == [[[[0, -1, 1, 1, -1]]]] and c.dtype == torch.int32
    c = canonical_indices(idx, T, bs, count_duplicates=False, on_out_of_range="drop")
    assert sorted(c.flatten().tolist()) == [-1, -1, -1, 0, 1]
    with pytest.raises(RuntimeError):
        canonical_indices(idx, T, bs, count_duplicates=True, on_out_of_range="assert")
    assert math.ceil(T / bs) == 3


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64])
def test_canonical_indices_drop_in_every_integer_dtype(dtype):
    """Out-of-range entries become -1 whatever the dtype: one past the range of int32 must not wrap
    into range, and uint8 (which has no -1) must not come back as 255."""
    big = {torch.uint8: 200, torch.int16: 30000, torch.int64: 2**32 + 1}[dtype]
    idx = torch.tensor([[[[0, 2, big, 3]]]], dtype=dtype)
    c = canonical_indices(idx, 20, 8, count_duplicates=True, on_out_of_range="drop")
    assert c.tolist() == [[[[0, 2, -1, -1]]]] and c.dtype == torch.int32


def test_gradient_through_lse():
    B, T, H, G, D, bs, n = 1, 30, 2, 2, 8, 8, 3
    q, k, v, g = _inputs(B, T, H, G, D, seed=6, grad=True)
    idx = random_selection(B, T, H, n, bs, generator=g)
    o, lse = fsa_compile.selected_attention(q, k, v, idx, bs, return_lse=True)
    ro, rlse = naive_selected_attention(q, k, v, idx, bs)
    w, u = torch.randn(o.shape, generator=g), torch.randn(lse.shape, generator=g)
    grads = torch.autograd.grad((o * w).sum() + (lse * u).sum(), (q, k, v))
    rgrads = torch.autograd.grad((ro * w.double()).sum() + (rlse * u.double()).sum(), (q, k, v))
    for a, b in zip(grads, rgrads):
        assert (a.double() - b).abs().max() < 1e-4
