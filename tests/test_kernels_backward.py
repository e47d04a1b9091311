"""Backward kernels (issue 5) against the reference.

CPU: the Triton templates run through the interpreter on tiny sizes (tests/conftest.py switches
``TRITON_INTERPRET`` on before triton is imported and sets ``FSA_COMPILE_INTERPRET=1`` for the
test_kernels* modules); the whole file takes well under a minute on one core.
GPU (``pytest -m gpu``): the same kernels at real sizes against the reference's gradients on
float32-upcast inputs.
"""
import dataclasses
import importlib
import os

import pytest
import torch

from fsa_compile.reference import reference_backward, reference_forward

bw = importlib.import_module("fsa_compile.lowering.backward")

# The interpreted tests need Triton's interpreter, which conftest only switches on without a GPU.
interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="needs TRITON_INTERPRET=1 (set by conftest on CPU-only machines)")

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _indices(B, T, H, n, bs, gen, causal=True, pad=0.15, dup=0.1, device="cpu"):
    nb = -(-T // bs)
    t = torch.arange(T).view(1, T, 1, 1)
    hi = (t // bs + 1) if causal else torch.full_like(t, nb)  # non-causal: any block, future ones too
    idx = (torch.rand(B, T, H, n, generator=gen) * hi).floor().to(torch.int32)
    idx = torch.where(torch.rand(idx.shape, generator=gen) < pad, torch.full_like(idx, -1), idx)
    idx = torch.where(torch.rand(idx.shape, generator=gen) < dup, idx[..., :1].expand_as(idx), idx)
    return idx.contiguous().to(device)


def _case(B, T, H, G, D, bs, n, dtype, causal, seed, layout="bthd", future=0.0, empty_rows=False,
          device="cpu", config=None):
    gen = torch.Generator().manual_seed(seed)
    HQ = H * G
    scale = D ** -0.5

    def mk(shape):
        return torch.randn(shape, generator=gen).to(dtype).to(device)

    if layout == "bhtd":
        q = mk((B, HQ, T, D)).transpose(1, 2)
        k = mk((B, H, T, D)).transpose(1, 2)
        v = mk((B, H, T, D)).transpose(1, 2)
    else:
        q, k, v = mk((B, T, HQ, D)), mk((B, T, H, D)), mk((B, T, H, D))
    idx = _indices(B, T, H, n, bs, gen, causal=causal, device=device)
    nb = -(-T // bs)
    if future:
        m = (torch.rand(idx.shape, generator=gen) < future).to(device)
        rnd = torch.randint(0, nb, idx.shape, generator=gen, dtype=torch.int32).to(device)
        idx = torch.where(m, rnd, idx)
    if empty_rows:
        # rows whose every selection lies in the future (or is padding): no visible key
        rows = torch.arange(0, T, 7, device=device)
        idx[:, rows] = torch.where(torch.arange(n, device=device) % 2 == 0,
                                   torch.full((n,), nb - 1, dtype=torch.int32, device=device),
                                   torch.full((n,), -1, dtype=torch.int32, device=device))
        idx[:, rows[rows >= (nb - 1) * bs]] = -1
    o, lse = reference_forward(q, k, v, idx, bs, scale, causal)
    do = mk(o.shape)
    up = torch.float64 if (dtype == torch.float32 or device == "cpu") else torch.float32
    ref = reference_backward(do.to(up), q.to(up), k.to(up), v.to(up), o.to(up), lse, idx, bs, scale, causal)
    return (do, q, k, v, o, lse, idx, bs, scale, causal), ref


def _run(args, config=None, **kw):
    bw.POISON_FOR_TESTS = True
    try:
        return bw.kernel_backward(*args, config=config, **kw)
    finally:
        bw.POISON_FOR_TESTS = False


def _check(out, ref, dtype, args):
    q, k, v = args[1], args[2], args[3]
    for name, a, r, x in zip(("dq", "dk", "dv"), out, ref, (q, k, v)):
        assert a.shape == x.shape and a.dtype == x.dtype, name
        assert not torch.isnan(a).any(), f"{name}: unwritten (poisoned) or NaN elements"
        e = _rel(a, r)
        assert e < TOL[dtype], f"{name}: rel err {e:.3e} >= {TOL[dtype]}"


CASES = [
    # B, T, H, G, D, bs, n, dtype, causal
    (1, 45, 2, 1, 32, 16, 3, torch.float32, True),
    (2, 50, 1, 2, 48, 16, 4, torch.float16, True),
    (1, 33, 2, 4, 20, 8, 2, torch.bfloat16, False),
    (1, 40, 1, 8, 16, 16, 3, torch.float32, True),
    (1, 37, 1, 16, 16, 16, 2, torch.float16, True),
    (1, 70, 1, 2, 96, 32, 3, torch.bfloat16, True),
    # G not a power of two: TILE_T * G rows padded to one (these failed to compile before)
    (1, 30, 2, 3, 16, 8, 2, torch.float32, True),
    (2, 27, 1, 5, 24, 16, 3, torch.float16, True),
    (1, 33, 1, 12, 16, 8, 2, torch.float32, False),
]


@interpreted
@pytest.mark.parametrize("B,T,H,G,D,bs,n,dtype,causal", CASES)
def test_backward_matches_reference(B, T, H, G, D, bs, n, dtype, causal):
    args, ref = _case(B, T, H, G, D, bs, n, dtype, causal, seed=hash((B, T, G, D)) % 1000,
                      future=0.0 if causal else 0.3)
    _check(_run(args), ref, dtype, args)


@interpreted
def test_transposed_layout_and_empty_rows():
    args, ref = _case(1, 41, 2, 2, 24, 16, 3, torch.float32, True, seed=3, layout="bhtd",
                      future=0.3, empty_rows=True)
    lse = args[5]
    assert torch.isinf(lse).any(), "the case must contain rows with no visible key"
    _check(_run(args), ref, torch.float32, args)


@interpreted
def test_large_head_dim_key_subblocks():
    # D = 192 splits each KV block over two programs (key sub-blocks); bs not a power of two
    args, ref = _case(1, 70, 1, 2, 192, 64, 2, torch.float32, True, seed=5)
    _check(_run(args), ref, torch.float32, args)
    args, ref = _case(1, 60, 1, 1, 40, 24, 3, torch.float32, True, seed=6)
    _check(_run(args), ref, torch.float32, args)


def _check_in_chunks(monkeypatch, shape, dtype, seed, overrides):
    """The case checked under each config override, with a dQ-partial budget so small that the
    queries go in several chunks (float32 running dK/dV totals between them)."""
    monkeypatch.setattr(bw, "DQ_PART_BUDGET", 3000)
    B, T, H, G, D, bs, n = shape
    args, ref = _case(B, T, H, G, D, bs, n, dtype, True, seed=seed)
    cfg = bw.backward_config(B, T, H, G, D, n, bs, dtype)
    assert -(-T // cfg.chunk_t) > 1
    for over in overrides:
        _check(_run(args, dataclasses.replace(cfg, **over)), ref, dtype, args)


@interpreted
def test_query_chunks_and_split_blocks(monkeypatch):
    # A small ch splits every busy block over several programs (partials + reduction).
    _check_in_chunks(monkeypatch, (2, 64, 1, 2, 16, 16, 3), torch.float32, 7,
                     [{"tile_t": 8, "ch": 8}, {"tile_t": 8, "ch": 8, "direct": 0}, {"tile_t": 4, "ch": 64}])


@interpreted
def test_next_entries_loaded_ahead(monkeypatch):
    # A tile's index entries loaded with the previous tile's gathers: several tiles per program,
    # a partial last tile, blocks split over programs, padding and duplicates.
    _check_in_chunks(monkeypatch, (1, 61, 2, 4, 24, 16, 3), torch.bfloat16, 11,
                     [{"ent_next": 1, "ch": 6, "tile_t": 2}, {"ent_next": 1, "ch": 5, "tile_t": 2, "st": 0},
                      {"ent_next": 1, "ch": 64, "tile_t": 4}])


@interpreted
def test_untransposed_score_variant():
    args, ref = _case(1, 45, 1, 2, 32, 16, 3, torch.float16, True, seed=8)
    cfg = bw.backward_config(1, 45, 1, 2, 32, 3, 16, torch.float16)
    cfg = dataclasses.replace(cfg, st=0, ch=8, tile_t=8)
    _check(_run(args, cfg), ref, torch.float16, args)


@interpreted
def test_deterministic():
    args, _ = _case(1, 48, 1, 4, 16, 16, 3, torch.bfloat16, True, seed=9)
    cfg = bw.backward_config(1, 48, 1, 4, 16, 3, 16, torch.bfloat16)
    cfg = dataclasses.replace(cfg, ch=4, tile_t=4)  # block 0 split over programs
    a = bw.kernel_backward(*args, config=cfg)
    b = bw.kernel_backward(*args, config=cfg)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@interpreted
def test_64bit_addressing_path(monkeypatch):
    # the path taken for tensors past 2**31 elements, forced on a tiny case
    monkeypatch.setattr(bw, "FORCE_IDX64", True)
    monkeypatch.setattr(bw, "DQ_PART_BUDGET", 3000)
    args, ref = _case(2, 40, 1, 2, 16, 16, 3, torch.float16, True, seed=13)
    _check(_run(args), ref, torch.float16, args)


@interpreted
def test_dlse_gradient():
    args, _ = _case(1, 40, 1, 2, 16, 16, 3, torch.float32, True, seed=10, empty_rows=True)
    do, q, k, v, o, lse, idx, bs, scale, causal = args
    dlse = torch.randn(lse.shape, generator=torch.Generator().manual_seed(11))
    ref = reference_backward(do.double(), q.double(), k.double(), v.double(), o.double(), lse, idx,
                             bs, scale, causal, dlse=dlse)
    out = bw.kernel_backward(*args, dlse=dlse)
    _check(out, ref, torch.float32, args)


@interpreted
@pytest.mark.parametrize("off,tq,chunked", [(13, 19, False), (44, 1, False), (5, 40, True)])
def test_queries_at_an_offset(off, tq, chunked, monkeypatch):
    """q shorter than k: dQ for its rows, dK/dV for every key (zero where no row looks), against
    the reference with the same offset; ``chunked`` also splits the rows into query chunks."""
    if chunked:
        monkeypatch.setattr(bw, "DQ_PART_BUDGET", 3000)
    args, _ = _case(1, 45, 1, 2, 16, 8, 3, torch.float32, True, seed=14)
    do, q, k, v, o, lse, idx, bs, scale, causal = args
    q, do, idx = q[:, off:off + tq], do[:, off:off + tq], idx[:, off:off + tq]
    o, lse = reference_forward(q, k, v, idx, bs, scale, causal, off)
    ref = reference_backward(do.double(), q.double(), k.double(), v.double(), o.double(), lse, idx, bs, scale,
                             causal, q_offset=off)
    sub = (do, q, k, v, o, lse, idx, bs, scale, causal)
    out = _run(sub, q_offset=off)
    _check(out, ref, torch.float32, sub)
    assert (out[1][:, off + tq + 8:] == 0).all()  # keys past every row's reach get no gradient


@interpreted
@pytest.mark.parametrize("tq", [1, 6])
def test_the_op_with_few_query_rows_plans_and_differentiates(tq):
    """Through the custom op (its fake shapes, the plan's one-row rule, autograd): one decode row
    takes the NSA order under ``auto``, more rows the inverted loop at G = 2; values and gradients
    as the reference's."""
    import fsa_compile
    from fsa_compile.op import plan_for

    args, _ = _case(1, 45, 1, 2, 16, 8, 3, torch.float32, True, seed=15)
    _, q, k, v, *_ = args
    q, k, v = (x.detach().clone().requires_grad_() for x in (q[:, -tq:], k, v))
    idx = args[6][:, -tq:]
    assert plan_for(q, k, v, idx, 8, True, "auto").strategy == ("nsa" if tq == 1 else "fsa")
    o = fsa_compile.selected_attention(q, k, v, idx, 8)
    ro = fsa_compile.selected_attention(q, k, v, idx, 8, strategy="reference")
    assert _rel(o, ro) < 1e-5
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(16))
    for a, r in zip(torch.autograd.grad((o * w).sum(), (q, k, v)), torch.autograd.grad((ro * w).sum(), (q, k, v))):
        assert _rel(a, r) < 1e-5


@interpreted
def test_reference_strategy_and_unsupported_fall_back():
    class P:
        strategy = "reference"
    args, ref = _case(1, 20, 1, 1, 8, 8, 2, torch.float32, True, seed=12)
    out = bw.backward(*args, P())
    for a, r in zip(out, ref):
        assert _rel(a, r) < 1e-6
    assert bw.supported(args[1], args[2], args[3][..., :4], args[6], 8) is not None


# ---------------------------------------------------------------------------------- GPU

GPU_CASES = [(G, 128, torch.bfloat16, True) for G in (1, 2, 4, 8, 16)] + [
    (2, 96, torch.bfloat16, True), (4, 48, torch.float16, False), (1, 192, torch.bfloat16, True),
    (8, 256, torch.float16, True), (2, 64, torch.float32, True),
    (3, 128, torch.bfloat16, True), (7, 64, torch.bfloat16, True), (12, 128, torch.float16, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("G,D,dtype,causal", GPU_CASES)
def test_gpu_backward_real_sizes(G, D, dtype, causal):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    T = 4096 - 37
    args, ref = _case(1, T, 2, G, D, 64, 16, dtype, causal, seed=G * 1000 + D, future=0.0 if causal else 0.2,
                      empty_rows=True, device="cuda")
    tol = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    out = _run(args)
    for name, a, r in zip(("dq", "dk", "dv"), out, ref):
        assert not torch.isnan(a).any(), name
        assert _rel(a, r) < tol, (name, _rel(a, r))
    again = bw.kernel_backward(*args)
    assert all(torch.equal(x, y) for x, y in zip(out, again))


@pytest.mark.gpu
@pytest.mark.parametrize("G", [2, 16])
@pytest.mark.parametrize("strategy", ["fsa", "nsa", "auto"])
def test_gpu_queries_at_an_offset(G, strategy):
    """The op at real sizes with q shorter than k (a chunk of a prefill, one decode row), forward
    and backward through the kernels, against the reference on float32 copies."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import fsa_compile
    from fsa_compile.selection import uniform_selection

    Tk, H, D, bs, n = 3000, 2, 128, 64, 16
    gen = torch.Generator(device="cuda").manual_seed(G)
    k = torch.randn(1, Tk, H, D, device="cuda", generator=gen).bfloat16().requires_grad_()
    v = torch.randn(1, Tk, H, D, device="cuda", generator=gen).bfloat16().requires_grad_()
    full = uniform_selection(1, Tk, H, n, bs, device="cuda", generator=gen)
    for off, tq in ((1500, 1000), (Tk - 1, 1)):
        q = torch.randn(1, tq, H * G, D, device="cuda", generator=gen).bfloat16().requires_grad_()
        idx = full[:, off:off + tq]
        o = fsa_compile.selected_attention(q, k, v, idx, bs, strategy=strategy, q_offset=off)
        do = torch.randn(o.shape, device="cuda", generator=gen).bfloat16()
        grads = torch.autograd.grad(o, (q, k, v), do)
        qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
        ro = fsa_compile.selected_attention(qf, kf, vf, idx, bs, strategy="reference", q_offset=off)
        rgrads = torch.autograd.grad(ro, (qf, kf, vf), do.float())
        assert _rel(o, ro) < 2e-2, (off, tq, _rel(o, ro))
        for name, a, r in zip("qkv", grads, rgrads):
            assert not torch.isnan(a).any() and _rel(a, r) < 2e-2, (off, tq, name, _rel(a, r))
