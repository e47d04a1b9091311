"""q's rows at positions a tensor gives (``q_positions``, a KV cache's ``cache_position``).

Every row's key position is read from the tensor, any values: unsorted, repeated, negative (the
row sees nothing) or past the last key (it sees all of its blocks). CPU: the kernels through the
interpreter (tests/conftest.py), against the reference and against a dense formula written
here; GPU (``-m gpu``): real sizes in fp16/bf16.
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import fsa_compile
from fsa_compile.lowering.forward import forward
from fsa_compile.lowering.plan import choose_plan
from fsa_compile.op import _offset
from fsa_compile.reference import reference_backward, reference_forward

from test_kernels_forward import OFFSET_VARIANTS, make_inputs, run_and_compare

bw = importlib.import_module("fsa_compile.lowering.backward")

CPU = torch.device("cpu")


def dense_formula(q, k, v, idx, bs, pos, scale):
    """o by the contract's definition, with the [T_q, T_k] weights written out: row t of batch b
    weighs key s by how many of its selected blocks hold s, where s <= pos[b, t]."""
    B, Tq, HQ, D = q.shape
    Tk, H = k.shape[1], k.shape[2]
    G = HQ // H
    blk = torch.arange(Tk) // bs
    count = (idx.long().unsqueeze(-1) == blk).sum(-2)  # [B, Tq, H, Tk]
    count = count * (torch.arange(Tk).view(1, 1, 1, Tk) <= pos.view(B, Tq, 1, 1))
    w = count.repeat_interleave(G, 2).permute(0, 2, 1, 3).double()  # [B, HQ, Tq, Tk]
    s = torch.einsum("bthd,bshd->bhts", q.double(), k.double().repeat_interleave(G, 2)) * scale
    s = torch.where(w > 0, s, torch.full_like(s, -math.inf))
    m = s.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    p = w * torch.exp(s - m)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-300)
    return torch.einsum("bhts,bshd->bthd", p, v.double().repeat_interleave(G, 2))


def _positions(B, Tq, Tk, gen, shape):
    pos = torch.randint(-3, Tk + 4, (B, Tq), generator=gen)
    pos[:, ::3] = Tk - 1  # some rows at the last key
    if Tq > 2:
        pos[:, 1] = pos[:, 2]  # a repeated position
    return pos[0] if shape == "T" else pos


def test_positions_of_consecutive_rows_are_q_offset():
    """``q_positions = arange(off, off + T_q)`` is ``q_offset = off``, bit for bit, forward and
    backward, for the reference and both kernel strategies."""
    q, k, v, idx, do, _ = _rows_over_keys(3, B=2, Tk=45, Tq=7, n=3, top=6)
    _bitwise_equal_calls(q, k, v, idx, 8, do, dict(q_offset=20), dict(q_positions=torch.arange(20, 20 + 7)))


def _rows_over_keys(seed, B, Tk, Tq, n, top, H=2, G=2, D=16):
    """float32 q ``[B, Tq, H * G, D]`` over k, v ``[B, Tk, H, D]``, a selection with padding and
    entries up to ``top - 1``, an upstream gradient, and the generator for what else a test draws."""
    gen = torch.Generator().manual_seed(seed)
    q, _, _ = make_inputs(B, Tq, H, G, D, D, torch.float32, "bthd", gen)
    _, k, v = make_inputs(B, Tk, H, G, D, D, torch.float32, "bthd", gen)
    idx = torch.randint(-1, top, (B, Tq, H, n), generator=gen)
    do = torch.randn(B, Tq, H * G, D, generator=gen)
    return q, k, v, idx, do, gen


def _bitwise_equal_calls(q, k, v, idx, bs, do, *kws):
    """The op called with each of ``kws`` gives bitwise equal o, lse and gradients of q, k, v, for
    the reference and both kernel strategies."""
    for strategy in ("reference", "nsa", "fsa"):
        outs = []
        for kw in kws:
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
            o, lse = fsa_compile.selected_attention(qq, kk, vv, idx, bs, strategy=strategy, return_lse=True, **kw)
            outs.append((o, lse, *torch.autograd.grad((o * do).sum(), (qq, kk, vv))))
        assert not outs[0][0].isnan().all()
        for got in outs[1:]:
            for a, b, name in zip(outs[0], got, ("o", "lse", "dq", "dk", "dv")):
                assert torch.equal(a, b), (strategy, name)


@pytest.mark.parametrize("shape", ["T", "BT"])
@pytest.mark.parametrize("strategy", ["reference", "nsa", "fsa"])
def test_any_positions_match_the_dense_formula(strategy, shape):
    gen = torch.Generator().manual_seed(5)
    B, Tk, Tq, H, G, D, bs, n = 2, 50, 9, 2, 4, 16, 8, 4
    q, _, _ = make_inputs(B, Tq, H, G, D, D, torch.float32, "bthd", gen)
    _, k, v = make_inputs(B, Tk, H, G, D, D, torch.float32, "bthd", gen)
    idx = torch.randint(-1, 7, (B, Tq, H, n), generator=gen)
    idx[:, :, :, -1] = idx[:, :, :, 0]  # duplicates count twice
    pos = _positions(B, Tq, Tk, gen, shape)
    o = fsa_compile.selected_attention(q, k, v, idx, bs, strategy=strategy, q_positions=pos)
    want = dense_formula(q, k, v, idx, bs, pos.expand(B, Tq), D**-0.5)
    empty = (pos.expand(B, Tq) < 0).view(B, Tq, 1, 1)
    assert (o.masked_select(empty) == 0).all()  # a row before key 0 sees nothing: o = 0
    torch.testing.assert_close(o.double(), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name,strategy,over", OFFSET_VARIANTS, ids=[v[0] for v in OFFSET_VARIANTS])
def test_every_forward_variant_reads_each_rows_position(name, strategy, over):
    """Every plan variant, the NSA order's tiles of several tokens included (they run one-token
    tiles here: ``Plan.for_row_positions``), NaN-poisoned outputs, against the reference."""
    gen = torch.Generator().manual_seed(7)
    B, Tk, Tq, H, bs, n = 2, 45, 11, 1, 8, 4
    G = 16 if "shared" in name else 2
    q, _, _ = make_inputs(B, Tq, H, G, 16, 16, torch.float32, "bthd", gen)
    _, k, v = make_inputs(B, Tk, H, G, 16, 16, torch.float32, "bthd", gen)
    idx = torch.randint(-1, 6, (B, Tq, H, n), generator=gen, dtype=torch.int32)
    pos = _offset(q, k, None, _positions(B, Tq, Tk, gen, "BT"))
    plan = choose_plan(B, Tq, H, G, 16, 16, n, bs, q.dtype, True, strategy, CPU, **over)
    run_and_compare(q, k, v, idx, bs, True, plan, torch.float32, q_offset=pos)


def test_backward_kernels_read_each_rows_position():
    gen = torch.Generator().manual_seed(9)
    B, Tk, Tq, H, G, D, bs, n = 2, 40, 13, 2, 2, 16, 8, 3
    q, _, _ = make_inputs(B, Tq, H, G, D, D, torch.float32, "bthd", gen)
    _, k, v = make_inputs(B, Tk, H, G, D, D, torch.float32, "bthd", gen)
    idx = torch.randint(-1, 5, (B, Tq, H, n), generator=gen, dtype=torch.int32)
    pos = _offset(q, k, None, _positions(B, Tq, Tk, gen, "BT"))
    o, lse = reference_forward(q, k, v, idx, bs, D**-0.5, True, pos)
    do = torch.randn(o.shape, generator=gen)
    up = [t.double() for t in (do, q, k, v, o)]
    want = reference_backward(*up, lse, idx, bs, D**-0.5, True, q_offset=pos)
    bw.POISON_FOR_TESTS = True
    try:
        got = bw.kernel_backward(do, q, k, v, o, lse, idx, bs, D**-0.5, True, q_offset=pos)
    finally:
        bw.POISON_FOR_TESTS = False
    for g, w, name in zip(got, want, ("dq", "dk", "dv")):
        assert not g.isnan().any(), name
        torch.testing.assert_close(g.double(), w, rtol=0, atol=1e-5, msg=name)


def _as_given(pos, how):
    """``pos [B, T_q]`` (B = 2, int64) spelled another way with the same values per row."""
    if how == "strided":  # every other column of a wider tensor, as a slice of position_ids
        wide = torch.full((pos.shape[0], 2 * pos.shape[1]), 10**6, dtype=torch.long)
        wide[:, ::2] = pos
        return wide[:, ::2]
    if how == "int32":
        return pos.to(torch.int32)
    if how == "int16":
        return pos.to(torch.int16)
    if how == "transposed":  # [B, T_q] with the batch stride 1
        return pos.t().contiguous().t()
    if how == "one_row":  # [1, T_q]: every batch item alike
        return pos[:1]
    if how == "huge":  # past the int32 range: the kernels clamp the int64 they read
        return torch.where(pos < 0, torch.full_like(pos, -2**40), torch.where(pos >= 40, 2**40 + 7, pos))
    raise ValueError(how)


@pytest.mark.parametrize("how", ["strided", "int32", "int16", "transposed", "one_row", "huge"])
def test_positions_are_read_as_given(how):
    """The kernels read the tensor as the user gave it (strides, int32/int64, values past the int32
    range, one row for every batch item) and clamp what they read: equal bit for bit, forward and
    backward, to the same positions given as a contiguous int64 ``[B, T_q]`` tensor. int32 and
    int64 are passed on without a copy."""
    B, Tk, Tq, bs = 2, 40, 6, 8
    q, k, v, idx, do, gen = _rows_over_keys(11, B=B, Tk=Tk, Tq=Tq, n=3, top=5)
    pos = _positions(B, Tq, Tk, gen, "BT")
    given_pos = _as_given(pos, how)
    plain = given_pos.long().clamp(-1, Tk).expand(B, Tq).contiguous()
    assert not torch.equal(plain[0], plain[1]) or how == "one_row"
    if given_pos.dtype in (torch.int32, torch.int64):
        assert _offset(q, k, None, given_pos).data_ptr() == given_pos.data_ptr()
    _bitwise_equal_calls(q, k, v, idx, bs, do, dict(q_positions=plain), dict(q_positions=given_pos))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # (shrinking interpreted kernels takes minutes)
@given(Tq=st.integers(1, 12), extra=st.integers(0, 30), G=st.sampled_from([1, 2, 3, 4]),
       bs=st.sampled_from([4, 8, 5]), n=st.integers(1, 4), strategy=st.sampled_from(["nsa", "fsa"]),
       shape=st.sampled_from(["T", "BT"]), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       seed=st.integers(0, 2**16))
def test_property_positions_forward_and_backward(Tq, extra, G, bs, n, strategy, shape, dtype, seed):
    """Random shapes, selections and positions through the op: the kernels' forward and
    gradients against the reference's (float32 on the same inputs)."""
    gen = torch.Generator().manual_seed(seed)
    B, H, D, Tk = 2, 2, 16, Tq + extra
    q, _, _ = make_inputs(B, Tq, H, G, D, D, dtype, "bthd", gen)
    _, k, v = make_inputs(B, Tk, H, G, D, D, dtype, "bthd", gen)
    idx = torch.randint(-1, -(-Tk // bs), (B, Tq, H, n), generator=gen)
    pos = _positions(B, Tq, Tk, gen, shape)
    do = torch.randn(B, Tq, H * G, D, generator=gen).to(dtype)
    res = []
    for strat, cast in ((strategy, lambda t: t), ("reference", torch.Tensor.float)):
        qq, kk, vv = (cast(t).detach().requires_grad_() for t in (q, k, v))
        o = fsa_compile.selected_attention(qq, kk, vv, idx, bs, strategy=strat, q_positions=pos)
        res.append((o, *torch.autograd.grad((o * cast(do)).sum(), (qq, kk, vv))))
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    for got, want, name in zip(*res, ("o", "dq", "dk", "dv")):
        # (relative to a floor: with one visible key dq is zero up to rounding)
        floor = 0.1 * want.numel() ** 0.5
        err = float((got.detach().double() - want.detach()).norm() / max(float(want.norm()), floor))
        assert err < tol, (name, err)


@pytest.mark.parametrize("kw, error, says", [
    (dict(q_positions=torch.arange(3), q_offset=0), ValueError, "not both"),
    (dict(q_positions=torch.arange(3.0)), TypeError, "integer tensor"),
    (dict(q_positions=torch.ones(3, dtype=torch.bool)), TypeError, "integer tensor"),
    (dict(q_positions=torch.arange(4)), ValueError, r"\[T_q\] = \[3\]"),
    (dict(q_positions=torch.zeros(3, 3, dtype=torch.long)), ValueError, r"\[B, T_q\] = \[2, 3\]"),
    (dict(q_positions=[0, 1, 2]), TypeError, "integer tensor or None"),
])
def test_bad_positions_are_named(kw, error, says):
    q, k, v = torch.randn(2, 3, 2, 8), torch.randn(2, 10, 2, 8), torch.randn(2, 10, 2, 8)
    idx = torch.zeros(2, 3, 2, 1, dtype=torch.long)
    with pytest.raises(error, match=says):
        fsa_compile.selected_attention(q, k, v, idx, 4, **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("G", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("strategy", ["auto", "nsa", "fsa"])
def test_gpu_positions_real_sizes(G, strategy):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(G)
    B, Tk, Tq, H, D, bs, n = 2, 4000, 300, 2, 128, 64, 16
    for dtype in (torch.float16, torch.bfloat16):
        q, _, _ = make_inputs(B, Tq, H, G, D, D, dtype, "bthd", gen)
        _, k, v = make_inputs(B, Tk, H, G, D, D, dtype, "bthd", gen)
        idx = torch.randint(-1, -(-Tk // bs), (B, Tq, H, n), generator=gen)
        pos = _positions(B, Tq, Tk, gen, "BT")
        q, k, v, idx, pos = (t.to(dev) for t in (q, k, v, idx, pos))
        do = torch.randn(q.shape, device=dev, dtype=dtype)
        res = []
        for strat, cast in ((strategy, lambda t: t), ("reference", torch.Tensor.float)):
            qq, kk, vv = (cast(t).detach().requires_grad_() for t in (q, k, v))
            o = fsa_compile.selected_attention(qq, kk, vv, idx, bs, strategy=strat, q_positions=pos)
            res.append((o, *torch.autograd.grad((o * cast(do)).sum(), (qq, kk, vv))))
        for got, want, name in zip(*res, ("o", "dq", "dk", "dv")):
            assert not got.isnan().any(), name
            err = float((got.float() - want).norm() / want.norm().clamp_min(1e-30))
            assert err < (2e-2 if dtype == torch.bfloat16 else 1e-2), (name, dtype, err)
