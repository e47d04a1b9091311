"""Property-test your own NSA code against the ``fsa`` backend.

Two things live here:

- hypothesis strategies for the inputs of selected attention: :func:`shapes` (B, T, H, G, D,
  block size, n, dtype) and :func:`selections` (block indices: unique, with padding, with
  duplicates, with rows that see nothing), and :func:`nsa_inputs` that draws a whole
  ``(q, k, v, block_indices, block_size)`` case;
- :func:`assert_compiled_matches_eager`: compile a function with ``backend="fsa"`` and check that
  it gives what eager gives, forward and backward, within a tolerance set by the dtype, and
  (optionally) that the backend rewrote it.

hypothesis is imported lazily (only the strategies need it), so the package does not depend on it
at runtime. Example::

    from hypothesis import given, settings
    from fsa_compile.testing import nsa_inputs, assert_compiled_matches_eager

    @settings(max_examples=50, deadline=None)
    @given(nsa_inputs())
    def test_my_nsa(case):
        q, k, v, idx, bs = case
        assert_compiled_matches_eager(my_selected_attention, q, k, v, idx, bs, expect_rewrites=1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

# (rtol, atol) of outputs and of gradients, by dtype: compiled and eager round differently.
TOLERANCES = {
    torch.float32: ((1e-4, 1e-5), (1e-3, 1e-4)),
    torch.float16: ((1e-2, 1e-2), (2e-2, 2e-2)),
    torch.bfloat16: ((5e-2, 5e-2), (1e-1, 1e-1)),
}


def _hyp():
    try:
        from hypothesis import strategies as st
    except ImportError as e:  # pragma: no cover
        raise ImportError("fsa_compile.testing strategies need hypothesis: pip install hypothesis") from e
    return st


# -- shapes and selections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    H: int
    G: int
    D: int
    block_size: int
    n: int
    dtype: torch.dtype = torch.float32

    @property
    def num_blocks(self) -> int:
        return (self.T + self.block_size - 1) // self.block_size


def shapes(
    B=(1, 2), T=(1, 48), H=(1, 3), G=(1, 16), D=(4, 8, 12, 16), block_size=(2, 4, 8, 16), n=(1, 4),
    dtypes=(torch.float32,),
):
    """Strategy of :class:`Shape`. Ranges are ``(lo, hi)`` inclusive; ``D`` and ``block_size``
    are lists of choices. Defaults stay tiny so that eager gathers are cheap on a CPU."""
    st = _hyp()
    return st.builds(
        Shape,
        B=st.integers(*B), T=st.integers(*T), H=st.integers(*H), G=st.integers(*G),
        D=st.sampled_from(list(D)), block_size=st.sampled_from(list(block_size)), n=st.integers(*n),
        dtype=st.sampled_from(list(dtypes)),
    )


SELECTION_KINDS = ("unique", "padding", "duplicates", "empty_rows")


def _check_kinds(kinds) -> None:
    bad = [k for k in kinds if k not in SELECTION_KINDS]
    if bad:
        raise ValueError(f"unknown selection kind {', '.join(map(repr, bad))}; choose from {SELECTION_KINDS}")


def make_selection(shape: Shape, kind: str, seed: int) -> torch.Tensor:
    """``[B, T, H, n]`` int64 block indices of one kind (deterministic in ``seed``).

    ``unique``: distinct blocks per row, the token's own block always among them (no row is
    empty), padding ``-1`` where fewer than ``n`` blocks exist; ``padding``: as unique with
    extra random ``-1``; ``duplicates``: blocks drawn with repetition (own block included);
    ``empty_rows``: anything in range, so some rows select only future blocks (eager gives NaN).
    """
    _check_kinds((kind,))
    B, T, H, n, bs = shape.B, shape.T, shape.H, shape.n, shape.block_size
    nb = shape.num_blocks
    g = torch.Generator().manual_seed(seed)
    own = (torch.arange(T) // bs).view(1, T, 1, 1).expand(B, T, H, 1)
    if kind == "empty_rows":
        return torch.randint(0, nb, (B, T, H, n), generator=g)
    if kind == "duplicates":
        rest = torch.randint(0, nb, (B, T, H, n), generator=g)
        rest = torch.minimum(rest, own)  # past blocks, so every entry is useful
        return torch.cat([own, rest[..., 1:]], -1) if n > 1 else own.clone()
    # unique: the own block first, then distinct earlier blocks in random order
    keys = torch.rand(B, T, H, nb, generator=g)
    blocks = torch.arange(nb).view(1, 1, 1, nb)
    keys = torch.where(blocks == own, 2.0, keys)  # own block first
    keys = torch.where(blocks > own, -1.0, keys)  # no future blocks
    val, idx = keys.sort(-1, descending=True)
    idx = torch.where(val < 0, -1, idx)
    if nb < n:
        idx = torch.cat([idx, idx.new_full((B, T, H, n - nb), -1)], -1)
    idx = idx[..., :n]
    if kind == "padding" and n > 1:
        drop = torch.rand(B, T, H, n, generator=g) < 0.3
        drop[..., 0] = False
        idx = torch.where(drop, -1, idx)
    return idx.contiguous()


def selections(shape: Shape, kinds=SELECTION_KINDS):
    """Strategy of block-index tensors for ``shape`` (see :func:`make_selection`)."""
    st = _hyp()
    _check_kinds(kinds)
    return st.builds(lambda kind, seed: make_selection(shape, kind, seed),
                     st.sampled_from(list(kinds)), st.integers(0, 2**31 - 1))


def make_inputs(shape: Shape, kind: str = "unique", seed: int = 0, requires_grad: bool = False):
    """``(q, k, v, block_indices, block_size)`` in the ``[B, T, H, D]`` layout."""
    g = torch.Generator().manual_seed(seed)
    B, T, H, G, D = shape.B, shape.T, shape.H, shape.G, shape.D

    def rnd(*s):
        return torch.randn(*s, generator=g).to(shape.dtype).requires_grad_(requires_grad)

    q, k, v = rnd(B, T, H * G, D), rnd(B, T, H, D), rnd(B, T, H, D)
    return q, k, v, make_selection(shape, kind, seed + 1), shape.block_size


def nsa_inputs(shape_strategy=None, kinds=("unique", "padding", "duplicates"), requires_grad: bool = False):
    """Strategy of whole cases ``(q, k, v, block_indices, block_size)`` ([B, T, H, D] layout)."""
    st = _hyp()
    _check_kinds(kinds)
    shape_strategy = shape_strategy if shape_strategy is not None else shapes()
    return st.builds(lambda s, kind, seed: make_inputs(s, kind, seed, requires_grad),
                     shape_strategy, st.sampled_from(list(kinds)), st.integers(0, 2**31 - 1))


# -- the check ------------------------------------------------------------------------------------------


class many_recompiles:
    """Within it, Dynamo may recompile one function ``limit`` times (its default is 8).

    Property tests draw new shapes, and each new block size or head count recompiles; past
    Dynamo's limit the function silently runs eagerly, and compiled-vs-eager then compares eager
    with itself. :func:`assert_compiled_matches_eager` uses this around its compiled call.
    """

    NAMES = ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit")

    def __init__(self, limit: int = 1024):
        self.limit = limit
        self.saved: dict = {}

    def __enter__(self):
        cfg = torch._dynamo.config
        for name in self.NAMES:  # the names differ between torch versions
            if hasattr(cfg, name):
                self.saved[name] = getattr(cfg, name)
                setattr(cfg, name, max(self.limit, self.saved[name]))
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(torch._dynamo.config, name, value)
        self.saved.clear()


class RewriteCounter:
    """Collects the pattern pass results of every graph the ``fsa`` backend compiles while active."""

    def __init__(self):
        self.results: list = []

    def __enter__(self):
        from . import backend

        backend._collectors.append(self.results)
        return self

    def __exit__(self, *exc):
        from . import backend

        backend._collectors.remove(self.results)

    @property
    def rewrites(self) -> list:
        return [r for res in self.results for r in res.rewrites]

    @property
    def misses(self) -> list:
        return [m for res in self.results for m in res.misses]

    @property
    def others(self) -> list:
        return [r for res in self.results for r in res.others]


def _tensors(x) -> list:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for y in x for t in _tensors(y)]
    if isinstance(x, dict):
        return [t for y in x.values() for t in _tensors(y)]
    return []


def _close(actual, expected, rtol, atol, what, truth=None):
    """``actual`` close to ``expected``; in low precision, or at least as close to ``truth`` (the
    same function in float32) as ``expected`` is: eager bf16 code accumulates gathered gradients
    in bf16 and can be the less accurate side."""
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")
    except AssertionError:
        if truth is None:
            raise
        fin = torch.isfinite(truth)
        err_a = (actual.float() - truth).abs()[fin].max().item() if fin.any() else 0.0
        err_e = (expected.float() - truth).abs()[fin].max().item() if fin.any() else 0.0
        if not (err_a <= 2 * err_e + atol and torch.equal(actual.isnan(), expected.isnan())):
            raise AssertionError(
                f"{what}: compiled differs from eager beyond rtol={rtol}, atol={atol}, and is further from the "
                f"float32 result ({err_a:.3g}) than twice eager's distance ({err_e:.3g})"
            ) from None


def assert_compiled_matches_eager(
    fn: Callable,
    *args: Any,
    backend_options: Optional[dict] = None,
    grad: bool = True,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    expect_rewrites: Optional[int] = None,
    compiled: Optional[Callable] = None,
    **kwargs: Any,
):
    """Assert ``torch.compile(fn, backend="fsa")(*args) == fn(*args)``, forward and backward.

    ``backend_options`` go to the backend (``{"inner": "aot_eager"}`` is fast on a CPU).
    ``grad``: also compare the gradients of every floating-point tensor argument under a random
    upstream gradient; skipped where eager's output has NaN rows (a query that sees no key makes
    eager's gradients NaN across everything that row read, while the rewritten op's are finite).
    ``rtol``/``atol`` default by dtype (:data:`TOLERANCES`); called under ``torch.autocast``, by
    autocast's dtype (or by the outputs' dtype, where it is narrower than the inputs': autocast
    inside ``fn``), with the function run in float32 without an outer autocast as the yardstick.
    ``expect_rewrites``: the number of subgraphs the backend must have rewritten while compiling
    for this call (only checked when this call compiled something). ``compiled``: reuse a
    function already compiled with the backend (saves recompiling in property tests). The call runs under :class:`many_recompiles`,
    so a new shape compiles again instead of falling back to eager. Returns the compiled output.
    """
    if compiled is None:
        compiled = torch.compile(fn, backend="fsa", options=dict(backend_options or {"inner": "aot_eager"}))
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
    dtype = leaves[0].dtype if leaves else torch.float32
    device_type = leaves[0].device.type if leaves else "cpu"

    def fresh():
        out = []
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point() and grad:
                out.append(a.detach().clone().requires_grad_(True))
            else:
                out.append(a)
        return out

    ea, ca = fresh(), fresh()
    expected = fn(*ea, **kwargs)
    # Under autocast (around the call, or inside fn: then the outputs show it) the products run
    # in a narrower dtype than the inputs': its tolerances.
    narrow = [t.dtype for t in _tensors(expected) if t.is_floating_point()]
    if torch.is_autocast_enabled(device_type):
        narrow.append(torch.get_autocast_dtype(device_type))
    for dt in narrow:
        if dt.itemsize < dtype.itemsize:
            dtype = dt
    (frt, fat), (grt, gat) = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    frt, fat = rtol or frt, atol or fat
    grt, gat = rtol or grt, atol or gat
    low = dtype in (torch.float16, torch.bfloat16)
    if low:  # the same function in float32: the yardstick when compiled and eager disagree
        ta = [a.detach().float().requires_grad_(grad) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in args]
        with torch.autocast(device_type, enabled=False):
            truth_out = fn(*ta, **kwargs)
    with RewriteCounter() as counter, many_recompiles():
        actual = compiled(*ca, **kwargs)
    truths = _tensors(truth_out) if low else [None] * len(_tensors(expected))
    for i, (a, e, t) in enumerate(zip(_tensors(actual), _tensors(expected), truths)):
        _close(a, e, frt, fat, f"output {i}", None if t is None else t.detach().float())
    if expect_rewrites is not None and counter.results:
        assert len(counter.rewrites) == expect_rewrites, (
            f"expected {expect_rewrites} rewrite(s), got {len(counter.rewrites)}; misses: "
            + "; ".join(str(m) for m in counter.misses)
        )
    outs_e, outs_c = _tensors(expected), _tensors(actual)
    if grad and outs_e and all(bool(torch.isfinite(o).all()) for o in outs_e if o.is_floating_point()):
        g = torch.Generator().manual_seed(1234)
        ws = [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs_e]
        ins_e = [a for a in ea if isinstance(a, torch.Tensor) and a.requires_grad]
        ins_c = [a for a in ca if isinstance(a, torch.Tensor) and a.requires_grad]
        if ins_e:
            ge = torch.autograd.grad(sum((o.float() * w.float()).sum() for o, w in zip(outs_e, ws)), ins_e, allow_unused=True)
            gc = torch.autograd.grad(sum((o.float() * w.float()).sum() for o, w in zip(outs_c, ws)), ins_c, allow_unused=True)
            gt = [None] * len(ge)
            if low:
                ins_t = [a for a in ta if isinstance(a, torch.Tensor) and a.requires_grad]
                outs_t = _tensors(truth_out)
                gt = torch.autograd.grad(sum((o.float() * w.float()).sum() for o, w in zip(outs_t, ws)), ins_t, allow_unused=True)
            for i, (a, e, t) in enumerate(zip(gc, ge, gt)):
                if a is None or e is None:
                    assert a is None and e is None, f"gradient {i}: one side is None"
                    continue
                _close(a, e, grt, gat, f"gradient of argument {i}", t)
    return actual
