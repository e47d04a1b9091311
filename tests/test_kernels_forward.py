"""Forward kernels (templates + lowering) against the reference.

CPU: the Triton templates run through the interpreter (``FSA_COMPILE_INTERPRET=1``) on tiny
shapes. GPU (``pytest -m gpu``): every case again at real sizes in fp16/bf16, the reference on
float32-upcast inputs.
"""
from __future__ import annotations

import pytest
import torch

# Without a GPU, tests/conftest.py switches Triton's interpreter on before triton is imported and
# sets FSA_COMPILE_INTERPRET=1 for every test of a test_kernels* module.
from fsa_compile.lowering.forward import forward  # noqa: E402
from fsa_compile.lowering.plan import PARTIAL_BUDGET, Plan, choose_plan, t_bucket  # noqa: E402
from fsa_compile.reference import reference_forward  # noqa: E402
from fsa_compile.selection import skewed_selection, uniform_selection  # noqa: E402

CPU = torch.device("cpu")
TOL = {torch.float32: 2e-4, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
# (name, strategy, plan overrides)
VARIANTS = [
    ("nsa", "nsa", {}),  # K/V by bulk tensor copies where the layout allows (the default)
    ("nsa-plain", "nsa", dict(nsa_tma=False)),  # plain masked loads (other layouts)
    ("nsa-union", "nsa", dict(tok=4, nsa_seq=2)),
    ("nsa-seq", "nsa", dict(nsa_seq=3)),
    ("nsa-union-tma", "nsa", dict(tok=4, nsa_tma=True)),
    ("fsa", "fsa", dict(chunk=16)),  # several chunks even at tiny T
    # several sub-tiles per program, sub-tiles of 2 entries x G heads
    ("fsa-tpp", "fsa", dict(chunk=32, fsa_tile_q=2, fsa_rows=16, fsa_tpp=3, fsa_evict=True)),
    ("fsa-entall", "fsa", dict(chunk=32, fsa_tile_q=2, fsa_rows=16, fsa_tpp=4, fsa_ent_all=True,
                               fsa_tile_map=True)),
]


def make_inputs(B, T, H, G, D, Dv, dtype, layout, gen, device=CPU):
    HQ = H * G

    def rnd(*shape):
        if layout == "bthd":
            return torch.randn(*shape, generator=gen, device=device).to(dtype)
        b, t, h, d = shape  # stored [B, H, T, D], seen through a transposed view
        return torch.randn(b, h, t, d, generator=gen, device=device).to(dtype).transpose(1, 2)

    return rnd(B, T, HQ, D), rnd(B, T, H, D), rnd(B, T, H, Dv)


def random_indices(B, T, H, n, bs, gen, device=CPU):
    """Padding (-1), duplicates, future blocks, all mixed, and a few rows with nothing visible."""
    nb = (T + bs - 1) // bs
    idx = torch.randint(-2, nb, (B, T, H, n), generator=gen, device=device, dtype=torch.int32)
    idx = torch.where(idx < 0, torch.full_like(idx, -1), idx)
    if n > 1:
        idx[:, ::3, :, -1] = idx[:, ::3, :, 0]  # duplicates
    idx[:, 1, :, :] = -1  # nothing selected
    if nb > 1:
        idx[:, 2, :, :] = nb - 1  # only a future block (causal: nothing visible), listed n times
    return idx


def run_and_compare(q, k, v, idx, bs, causal, plan, dtype, scale=None, q_offset=0):
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else scale
    o, lse = forward(q, k, v, idx, bs, scale, causal, plan, poison=True, q_offset=q_offset)
    ro, rl = reference_forward(q.double(), k.double(), v.double(), idx, bs, scale, causal, q_offset)
    assert o.dtype == q.dtype and lse.dtype == torch.float32
    assert o.shape == ro.shape and lse.shape == rl.shape
    assert not torch.isnan(o).any(), "unwritten (NaN-poisoned) output elements"
    assert not torch.isnan(lse).any(), "unwritten (NaN-poisoned) lse elements"
    empty = torch.isinf(rl)
    assert torch.equal(torch.isinf(lse), empty), "rows with no visible key differ"
    assert (lse[empty] < 0).all()
    assert (o[empty] == 0).all(), "a row with no visible key must give o = 0"
    err = ((o.double() - ro).norm() / ro.norm().clamp_min(1e-30)).item()
    assert err < TOL[dtype], f"relative error {err:.2e} (tolerance {TOL[dtype]:.0e})"
    if (~empty).any():
        lerr = (lse[~empty].double() - rl[~empty]).abs().max().item()
        assert lerr < 10 * TOL[dtype], f"lse error {lerr:.2e}"


def plan_of(strategy, over, q, k, idx, bs, causal):
    B, T, HQ, D = q.shape
    H = k.shape[2]
    return choose_plan(B, T, H, HQ // H, D, D, idx.shape[-1], bs, q.dtype, causal, strategy, CPU,
                       **over)


# G x variant, with D, dtype, causality and layout cycled so that every one is covered.
_DS = [16, 48, 96, 64]
_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = []
for _i, (_G, (_name, _strat, _over)) in enumerate(
        [(G, v) for G in (1, 2, 4, 8, 16) for v in VARIANTS]):
    CASES.append(pytest.param(_G, _strat, _over, _DS[_i % 4], _DTYPES[_i % 3], _i % 2 == 0,
                              "bthd" if _i % 4 < 2 else "bhtd", id=f"{_name}-G{_G}-D{_DS[_i % 4]}-{_i}"))


@pytest.mark.parametrize("G,strategy,over,D,dtype,causal,layout", CASES)
def test_matches_reference(G, strategy, over, D, dtype, causal, layout):
    gen = torch.Generator().manual_seed(1000 + G * 7 + D)
    B, T, H, bs, n = 1, 37, 2 if G <= 4 else 1, 16, 3  # T not a multiple of bs
    q, k, v = make_inputs(B, T, H, G, D, D, dtype, layout, gen)
    idx = random_indices(B, T, H, n, bs, gen)
    plan = plan_of(strategy, over, q, k, idx, bs, causal)
    assert plan.strategy == strategy
    run_and_compare(q, k, v, idx, bs, causal, plan, dtype)


@pytest.mark.parametrize("name,strategy,over", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_value_dim_differs_and_batch(name, strategy, over):
    gen = torch.Generator().manual_seed(7)
    B, T, H, G, D, Dv, bs, n = 2, 21, 1, 2, 32, 48, 8, 2
    q, k, v = make_inputs(B, T, H, G, D, Dv, torch.float32, "bthd", gen)
    idx = random_indices(B, T, H, n, bs, gen)
    plan = choose_plan(B, T, H, G, D, Dv, n, bs, q.dtype, True, strategy, CPU, **over)
    run_and_compare(q, k, v, idx, bs, True, plan, torch.float32)


@pytest.mark.parametrize("name,strategy,over", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_generated_selections(name, strategy, over):
    gen = torch.Generator().manual_seed(3)
    B, T, H, G, D, bs, n = 1, 40, 1, 4, 16, 8, 4
    q, k, v = make_inputs(B, T, H, G, D, D, torch.float16, "bthd", gen)
    for idx in (uniform_selection(B, T, H, n, bs, generator=gen), skewed_selection(q, k, n, bs)):
        plan = plan_of(strategy, over, q, k, idx, bs, True)
        run_and_compare(q, k, v, idx, bs, True, plan, torch.float16)


def test_bulk_copies_only_where_the_layout_allows():
    """The NSA order takes K/V by tensor descriptors only for layouts they can describe, and
    falls back to masked loads (same result) elsewhere."""
    from fsa_compile.lowering.forward import _tma_descriptors

    gen = torch.Generator().manual_seed(11)
    B, T, H, G, D, bs, n = 1, 30, 2, 2, 16, 8, 3
    q, k, v = make_inputs(B, T, H, G, D, D, torch.float32, "bhtd", gen)
    assert _tma_descriptors(k, v, bs)[0] is not None  # a transposed view: any strides, aligned
    assert _tma_descriptors(k, v, 12) == (None, None)  # the box would reach into the next block
    strided = torch.randn(B, T, H, 2 * D, generator=gen)[..., ::2]  # last dim not contiguous
    assert _tma_descriptors(strided, v, bs) == (None, None)
    shifted = torch.randn(B * T * H * D + 1, generator=gen)[1:].view(B, T, H, D)  # base off by 4 bytes
    assert _tma_descriptors(k, shifted, bs) == (None, None)
    idx = random_indices(B, T, H, n, bs, gen)
    plan = plan_of("nsa", {}, q, k, idx, bs, True)
    assert plan.nsa_tma
    run_and_compare(q, strided, shifted, idx, bs, True, plan, torch.float32)
    run_and_compare(q, k, v, idx, bs, True, plan, torch.float32)


# NSA order with shared-block tiles: G a power of two >= 16, tok tokens per program.
SHARED = [
    pytest.param(16, 2, 16, torch.float32, True, "bthd", True, id="G16-tok2-D16-f32-causal-copies"),
    pytest.param(16, 4, 48, torch.float16, False, "bhtd", True, id="G16-tok4-D48-f16-copies"),
    pytest.param(16, 4, 24, torch.bfloat16, True, "bthd", False, id="G16-tok4-D24-bf16-causal-loads"),
    pytest.param(32, 2, 16, torch.float32, True, "bhtd", False, id="G32-tok2-D16-f32-causal-loads"),
]


OFFSET_VARIANTS = VARIANTS + [("nsa-shared", "nsa", dict(tok=4, nsa_shared=True, nsa_tma=True)),
                               ("nsa-shared-loads", "nsa", dict(tok=2, nsa_shared=True, nsa_tma=False))]


@pytest.mark.parametrize("name,strategy,over", OFFSET_VARIANTS, ids=[v[0] for v in OFFSET_VARIANTS])
def test_queries_at_an_offset(name, strategy, over):
    """q shorter than k: a chunk of rows in the middle, the last rows, one decode row; the
    kernels' causal masks read row t as key position q_offset + t."""
    gen = torch.Generator().manual_seed(11)
    B, Tk, H, bs, n = 1, 45, 1, 8, 4
    G = 16 if "shared" in name else 2
    q, k, v = make_inputs(B, Tk, H, G, 16, 16, torch.float32, "bthd", gen)
    idx = random_indices(B, Tk, H, n, bs, gen)
    idx[:, 20:28] = torch.randint(0, 3, (B, 8, H, n), generator=gen, dtype=torch.int32)  # blocks seen by all
    for off, tq in ((13, 19), (37, 8), (44, 1), (0, 45)):
        qc, ic = q[:, off:off + tq], idx[:, off:off + tq]
        plan = plan_of(strategy, over, qc, k, ic, bs, True)
        run_and_compare(qc, k, v, ic, bs, True, plan, torch.float32, q_offset=off)
        o, lse = forward(qc, k, v, ic, bs, 16**-0.5, True, plan, q_offset=off)
        fo, fl = forward(q, k, v, idx, bs, 16**-0.5, True, plan_of(strategy, over, q, k, idx, bs, True))
        torch.testing.assert_close(o, fo[:, off:off + tq], rtol=0, atol=1e-6)  # rows of the whole
        torch.testing.assert_close(lse, fl[:, off:off + tq], rtol=0, atol=1e-6)


@pytest.mark.parametrize("G,tok,D,dtype,causal,layout,tma", SHARED)
def test_shared_tiles_match_reference(G, tok, D, dtype, causal, layout, tma):
    gen = torch.Generator().manual_seed(G + tok + D)
    B, T, H, bs, n = 1, 37, 1, 8, 4  # T not a multiple of bs; tiles of 4 inside one block
    q, k, v = make_inputs(B, T, H, G, D, D, dtype, layout, gen)
    for idx in (random_indices(B, T, H, n, bs, gen), uniform_selection(B, T, H, n, bs, generator=gen),
                skewed_selection(q, k, n, bs)):
        plan = plan_of("nsa", dict(tok=tok, nsa_shared=True, nsa_tma=tma), q, k, idx, bs, causal)
        assert plan.nsa_shared and "shared" in plan.describe()
        run_and_compare(q, k, v, idx, bs, causal, plan, dtype)


def test_shared_tiles_count_a_block_listed_twice_twice():
    """Near miss for sharing: every token of a tile lists block 0, but one lists it twice. Shared,
    its rows would weigh it once; the gather forms count it twice, so it must stay per token."""
    gen = torch.Generator().manual_seed(21)
    B, T, H, G, D, bs = 1, 8, 1, 16, 16, 4
    q, k, v = make_inputs(B, T, H, G, D, D, torch.float32, "bthd", gen)
    idx = torch.tensor([0, 1, -1], dtype=torch.int32).repeat(B, T, H, 1)
    idx[0, 5, 0] = torch.tensor([0, 0, 1], dtype=torch.int32)  # token 5: block 0 twice
    idx[0, 2, 0] = torch.tensor([1, 0, 1], dtype=torch.int32)  # token 2: block 1 twice (future)
    plan = plan_of("nsa", dict(tok=4, nsa_shared=True), q, k, idx, bs, True)
    run_and_compare(q, k, v, idx, bs, True, plan, torch.float32)
    # the same with the duplicate gone: now block 0 is shared by tokens 4-7, same answer as the
    # reference either way
    idx[0, 5, 0] = torch.tensor([0, 1, -1], dtype=torch.int32)
    run_and_compare(q, k, v, idx, bs, True, plan, torch.float32)


def test_shared_tiles_plan():
    """The default at G = 16, head dims 65-128, 16-bit (where it was measured); nowhere else, and a
    request that cannot be met is an error, not a silent fallback."""
    p = choose_plan(1, 65536, 4, 16, 128, 128, 16, 64, torch.bfloat16, True, "auto", CPU)
    assert (p.strategy, p.nsa_shared, p.nsa_tok, p.nsa_maxnreg) == ("nsa", True, 4, 168)
    assert "shared" in p.describe() and "max 168 registers" in p.describe()
    for D, dt in ((64, torch.bfloat16), (256, torch.float16), (128, torch.float32)):
        assert not choose_plan(1, 65536, 4, 16, D, D, 16, 64, dt, True, "auto", CPU).nsa_shared
    assert not choose_plan(1, 65536, 4, 32, 128, 128, 16, 64, torch.bfloat16, True, "nsa", CPU).nsa_shared
    # an explicit token count keeps the union tiles it always meant
    p = choose_plan(1, 65536, 4, 16, 128, 128, 16, 64, torch.bfloat16, True, "nsa", CPU, tok=4)
    assert p.nsa_tok == 4 and not p.nsa_shared and "union" in p.describe()
    for G, tok in ((8, 4), (12, 4), (16, 3), (16, 1)):
        with pytest.raises(ValueError, match="shared-block tiles"):
            choose_plan(1, 4096, 1, G, 64, 64, 16, 64, torch.float16, True, "nsa", CPU, tok=tok,
                        nsa_shared=True)


def test_shared_tiles_fall_back_where_bulk_copies_cannot_go():
    """A layout the tensor descriptors cannot take runs the one-token kernel (same result)."""
    gen = torch.Generator().manual_seed(13)
    B, T, H, G, D, bs, n = 1, 30, 1, 16, 16, 8, 3
    q, k, v = make_inputs(B, T, H, G, D, D, torch.float16, "bthd", gen)
    strided = torch.randn(B, T, H, 2 * D, generator=gen).to(torch.float16)[..., ::2]
    idx = uniform_selection(B, T, H, n, bs, generator=gen)
    plan = plan_of("nsa", dict(tok=4, nsa_shared=True), q, k, idx, bs, True)
    assert plan.nsa_tma
    run_and_compare(q, strided, v, idx, bs, True, plan, torch.float16)


def test_reference_strategy_is_the_reference():
    gen = torch.Generator().manual_seed(5)
    q, k, v = make_inputs(1, 20, 1, 2, 16, 16, torch.float32, "bthd", gen)
    idx = random_indices(1, 20, 1, 2, 8, gen)
    plan = choose_plan(1, 20, 1, 2, 16, 16, 2, 8, q.dtype, True, "reference", CPU)
    assert plan.strategy == "reference"
    o, lse = forward(q, k, v, idx, 8, 0.3, True, plan)
    ro, rl = reference_forward(q, k, v, idx, 8, 0.3, True)
    assert torch.equal(o, ro) and torch.equal(lse, rl)


def test_plans():
    for strat in ("auto", "fsa", "nsa"):
        for G in (1, 2, 4, 8, 16):
            p = choose_plan(1, 65536, 4, G, 128, 128, 16, 64, torch.bfloat16, True, strat, CPU)
            assert p.strategy in ("fsa", "nsa")
            assert isinstance(p.describe(), str) and p.describe().startswith(p.strategy)
            assert p.t_bucket == 65536
            if p.strategy == "fsa":  # the partial buffer stays within its budget
                part = p.chunk * 16 * 4 * G * (128 * 2 + 4)
                assert part <= PARTIAL_BUDGET
    with pytest.raises(ValueError):
        choose_plan(1, 64, 1, 1, 16, 16, 2, 16, torch.float32, True, "bogus", CPU)
    # a plan depends on T's bucket only
    a = choose_plan(1, 40000, 4, 2, 128, 128, 16, 64, torch.bfloat16, True, "auto", CPU)
    b = choose_plan(1, 65536, 4, 2, 128, 128, 16, 64, torch.bfloat16, True, "auto", CPU)
    assert a == b and t_bucket(40000) == 65536
    assert isinstance(Plan("reference").describe(), str)
    # one query row (a decode step): the NSA order whatever G is; a forced strategy stays
    for G in (1, 2, 4, 16):
        assert choose_plan(1, 1, 4, G, 128, 128, 16, 64, torch.bfloat16, True, "auto", CPU).strategy == "nsa"
        assert choose_plan(1, 1, 4, G, 128, 128, 16, 64, torch.bfloat16, True, "fsa", CPU).strategy == "fsa"
    assert choose_plan(1, 2, 4, 2, 128, 128, 16, 64, torch.bfloat16, True, "auto", CPU).strategy == "fsa"


def test_remembered_plans_are_the_plans(monkeypatch):
    # choose_plan remembers its answers; they must be what the choice computes, and a flip of the
    # interpreter switch (which decides whether a CPU tensor has kernels) must not reuse one
    from fsa_compile.lowering.plan import _plan
    for T, G, strat in ((1, 4, "auto"), (700, 16, "auto"), (65536, 2, "fsa"), (4096, 8, "nsa")):
        args = (1, T, 4, G, 128, 128, 16, 64, torch.bfloat16, True, strat, CPU)
        assert choose_plan(*args) == choose_plan(*args) == _plan(*args)
    args = (1, 64, 1, 2, 16, 16, 2, 16, torch.float32, True, "auto", CPU)
    monkeypatch.setenv("FSA_COMPILE_INTERPRET", "1")
    assert choose_plan(*args).strategy == "fsa"
    monkeypatch.delenv("FSA_COMPILE_INTERPRET")
    assert choose_plan(*args).strategy == "reference"
    # overrides are applied, never remembered as the default
    assert choose_plan(*args[:-1], torch.device("cuda"), fsa_tpp=2).fsa_tpp == 2
    assert choose_plan(*args[:-1], torch.device("cuda")).fsa_tpp != 2


def test_register_cap_where_measured():
    # head dims 65..128 with 64-row tiles: 128 registers (4 programs per SM) and 8 sub-tiles;
    # other head dims keep the compiler's choice; the interpreter gets no launch option
    from fsa_compile.lowering.plan import maxnreg_option
    for G in (1, 2, 4, 8, 16):
        p = choose_plan(1, 65536, 4, G, 128, 128, 16, 64, torch.bfloat16, True, "fsa", CPU)
        assert (p.fsa_maxnreg, p.fsa_tpp) == (128, 8) and "max 128 registers" in p.describe()
        for D in (64, 192):
            p = choose_plan(1, 65536, 4, G, D, D, 16, 64, torch.bfloat16, True, "fsa", CPU)
            assert p.fsa_maxnreg == 0
    assert maxnreg_option(0) == {} and maxnreg_option(128) == {}  # interpreted here


def test_bench_needs_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    from fsa_compile.bench import main

    assert main(["--T", "1K", "--G", "1"]) != 0
    assert "CUDA" in capsys.readouterr().err


@pytest.mark.parametrize("args, says", [
    (["--T", "8X"], "not a comma-separated list of integers"),
    (["--G", "0"], "at least 1"),
    (["--dist", "uniform,zipf"], "uniform, skewed"),
    (["--strategies", "fsa,reference"], "auto, fsa, nsa"),
])
def test_bench_rejects_bad_arguments_before_it_looks_for_a_gpu(args, says, capsys):
    from fsa_compile.bench import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_the_module_help_lists_its_commands(capsys):
    from fsa_compile.__main__ import main

    assert main(["--help"]) == 0 and main([]) == 2
    out = capsys.readouterr().out
    assert "bench --e2e" in out and "--cpu-smoke" in out


def test_bench_lists_parse_lengths_with_k():
    from fsa_compile.bench import choice_list, int_list

    assert int_list("8K,1k,300") == [8192, 1024, 300]
    assert choice_list(("a", "b"))("b,a") == ["b", "a"]


def test_bench_table_has_the_backward_memory_column():
    from fsa_compile.bench import table

    row = dict(T=1024, G=2, dist="uniform", strategy="auto", ms=1.0, dense_ms=2.0, ratio=0.5, tflops=3.0,
               extra_gib=0.25)
    lines = table([dict(row, fb_ms=2.0, fb_dense_ms=8.0, fb_ratio=0.25, fb_extra_gib=1.5), row]).splitlines()
    assert lines[0].split()[-3:] == ["ratio", "fb", "GiB"]
    assert lines[2].split()[-4:] == ["2.00", "8.00", "0.250", "1.50"]
    assert lines[3].split()[-4:] == ["-"] * 4


def test_bench_says_at_once_when_it_cannot_plot(monkeypatch, capsys):
    import sys

    from fsa_compile.bench import plot_wanted

    assert plot_wanted(None) is False
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert plot_wanted("t.png") is False
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "t.png" in err


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        T=st.integers(1, 33), H=st.integers(1, 2), G=st.sampled_from([1, 2, 3, 5, 8]),
        D=st.sampled_from([16, 24, 40]), bs=st.sampled_from([4, 8, 16, 20]), n=st.integers(1, 4),
        variant=st.sampled_from(VARIANTS), causal=st.booleans(), seed=st.integers(0, 2**16),
        extra=st.sampled_from([0, 0, 5, 17]), at=st.floats(0, 1),
    )
    def test_property_random_shapes(T, H, G, D, bs, n, variant, causal, seed, extra, at):
        """``extra`` keys beyond q's rows: q then sits at a random offset in the keys."""
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_inputs(1, T + extra, H, G, D, D, torch.float32, "bthd", gen)
        off = round(at * extra)
        q = q[:, off:off + T]
        nb = (T + extra + bs - 1) // bs
        idx = torch.randint(-1, nb, (1, T, H, n), generator=gen, dtype=torch.int32)
        _, strategy, over = variant
        plan = plan_of(strategy, over, q, k, idx, bs, causal)
        run_and_compare(q, k, v, idx, bs, causal, plan, torch.float32, q_offset=off)


    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        T=st.integers(1, 29), G=st.sampled_from([16, 32]), tok=st.sampled_from([2, 4]),
        bs=st.sampled_from([4, 8, 12]), n=st.integers(1, 4), share=st.floats(0, 1),
        causal=st.booleans(), tma=st.booleans(), seed=st.integers(0, 2**16),
    )
    def test_property_shared_tiles(T, G, tok, bs, n, share, causal, tma, seed):
        """Random selections where a random share of the tiles copy their first token's row into
        every token (so they share everything, duplicates and padding included)."""
        gen = torch.Generator().manual_seed(seed)
        q, k, v = make_inputs(1, T, 1, G, 16, 16, torch.float32, "bthd", gen)
        nb = (T + bs - 1) // bs
        idx = torch.randint(-1, nb, (1, T, 1, n), generator=gen, dtype=torch.int32)
        for t0 in range(0, T, tok):
            if torch.rand((), generator=gen).item() < share:
                idx[:, t0:t0 + tok] = idx[:, t0:t0 + 1]
        plan = plan_of("nsa", dict(tok=tok, nsa_shared=True, nsa_tma=tma), q, k, idx, bs, causal)
        run_and_compare(q, k, v, idx, bs, causal, plan, torch.float32)


# ----------------------------------------------------------------------------------------- GPU
GPU_CASES = []
for _G in (1, 2, 4, 8, 16):
    for _strat, _over in (("fsa", {}), ("nsa", {}), ("nsa", dict(tok=4)), ("auto", {}),
                          ("nsa", dict(tok=4, nsa_shared=True, nsa_maxnreg=168))):
        if _over.get("nsa_shared") and _G < 16:
            continue
        for _dt in (torch.float16, torch.bfloat16):
            _name = _strat + str(_over.get("tok", "")) + ("shared" if _over.get("nsa_shared") else "")
            GPU_CASES.append(pytest.param(_G, _strat, _over, _dt, id=f"{_name}-G{_G}-{str(_dt)[6:]}"))


@pytest.mark.gpu
@pytest.mark.parametrize("G,strategy,over,dtype", GPU_CASES)
def test_gpu_real_sizes(G, strategy, over, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(G)
    B, T, H, bs, n = 2, 3000, 2, 64, 16
    for D, layout, causal, dist in ((128, "bthd", True, "uniform"), (96, "bhtd", True, "skewed"),
                                   (192, "bthd", False, "random"), (48, "bhtd", True, "random")):
        q, k, v = make_inputs(B, T, H, G, D, D, dtype, layout, gen, device=dev)
        if dist == "uniform":
            idx = uniform_selection(B, T, H, n, bs, device=dev, generator=gen)
        elif dist == "skewed":
            idx = skewed_selection(q, k, n, bs)
        else:
            idx = random_indices(B, T, H, n, bs, gen, device=dev)
        plan = choose_plan(B, T, H, G, D, D, n, bs, dtype, causal, strategy, dev,
                           **(dict(chunk=1024) if strategy == "fsa" else over))
        o, lse = forward(q, k, v, idx, bs, D**-0.5, causal, plan, poison=True)
        ro, rl = reference_forward(q.float(), k.float(), v.float(), idx, bs, D**-0.5, causal)
        assert not o.isnan().any() and not lse.isnan().any()
        assert torch.equal(torch.isinf(lse), torch.isinf(rl))
        err = ((o.float() - ro).norm() / ro.norm()).item()
        assert err < (2e-2 if dtype == torch.bfloat16 else 1e-2), (D, layout, dist, err)
        fin = torch.isfinite(rl)
        assert (lse[fin] - rl[fin]).abs().max().item() < 5e-2


@pytest.mark.gpu
@pytest.mark.parametrize("name,strategy,over", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_gpu_every_variant_compiles_and_matches(name, strategy, over):
    """The interpreter never compiles a kernel, so a plan option that the GPU compiler rejects
    passes every CPU test: each variant above, compiled for the GPU, at moderate sizes (T not a
    multiple of bs, head dim 96, several chunks)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(5)
    B, T, H, G, D, bs, n = 1, 333, 2, 4, 96, 64, 6
    q, k, v = make_inputs(B, T, H, G, D, D, torch.bfloat16, "bthd", gen, device=dev)
    idx = random_indices(B, T, H, n, bs, gen, device=dev)
    plan = choose_plan(B, T, H, G, D, D, n, bs, q.dtype, True, strategy, dev, **over)
    run_and_compare(q, k, v, idx, bs, True, plan, torch.bfloat16)
