"""The ``fsa`` torch.compile backend: Dynamo graph -> pattern pass -> Inductor.

Registered through the ``torch_dynamo_backends`` entry point, so ``torch.compile(model,
backend="fsa")`` works without importing fsa_compile first. Options (``torch.compile(...,
options={...})``): ``"inner"`` picks what compiles the rewritten graph (``"inductor"``, the
default; ``"aot_eager"``; ``"eager"``), ``"strategy"`` forces the kernel family of every rewrite
(``"auto"``, ``"fsa"``, ``"nsa"``, ``"reference"``), ``"topk"`` (default True) rewrites
``torch.topk`` calls to the row top-k op; the rest are Inductor config patches.
"""
from __future__ import annotations

import logging

import torch
from torch import fx

from .patterns import matcher
from .patterns.ops import device_of, dtype_of, example_value
from .patterns.rewrite import input_dtype

log = logging.getLogger("fsa_compile")

INNER = ("inductor", "aot_eager", "eager")

# explain() registers a list here for the duration of one compile; every graph's result lands in it.
_collectors: list[list] = []


def _plan_name(strategy: str):
    from .lowering import choose_plan, kernels_available

    def plan_of(m) -> str:
        device = device_of(m.q) or torch.device("cpu")
        if strategy == "reference" or not kernels_available(device):
            return "reference (plain PyTorch; Triton kernels need CUDA or FSA_COMPILE_INTERPRET=1)"
        dtype = input_dtype(m) or dtype_of(m.q)  # what the rewrite casts q, k, v to
        plan = choose_plan(m.B, m.Tq, m.H, m.G, m.D, m.D, m.n, m.block_size, dtype, m.causal, strategy, device)
        return plan.describe()

    return plan_of


def _topk_plan(m) -> str:
    from .lowering.row_topk import describe

    ev = example_value(m.x)
    return describe(m.shape[m.dim], m.k, ev.dtype, ev.device)


def rewrite_graph(gm: fx.GraphModule, strategy: str = "auto", topk: bool = True) -> matcher.PassResult:
    """Run the pattern pass on a Dynamo graph in place (also usable on its own, for tests)."""
    result = matcher.run(gm, strategy, plan_of=_plan_name(strategy), topk_plan_of=_topk_plan, with_topk=topk)
    if result.rewrites or result.misses:
        shared = sum(1 for r in result.rewrites if r.same_as)
        log.info("fsa_compile: pattern pass: %d rewrite(s) (%d reusing an identical earlier subgraph's checks), "
                 "%d near miss(es) in %.1f s", len(result.rewrites), shared, len(result.misses), result.seconds)
    for c in _collectors:
        c.append(result)
    return result


def _post_grad_pass():
    """The backend's post-grad pass: our ops' twins without the Python autograd layer in place of
    the ops (``compiled_ops``), and our ops' schemas and the source of their definitions in
    Inductor's cache keys.

    Inductor's on-disk caches key a compiled graph on the graph, which names ops but not their
    schemas or fake implementations: a graph compiled against an older fsa_compile would call
    ``fsa::*`` ops with the old arguments (seen when the forward started returning its index), or
    expect the old output strides (seen when the backward's gradients became contiguous)."""
    import hashlib
    import inspect

    from torch._inductor.custom_graph_pass import CustomGraphPass

    from . import compiled_ops, op, topk  # (registers the ops)

    text = "\n".join(f"{o._schema}\n{t._schema}" for o, t in compiled_ops.TWINS.items())
    text += "".join(inspect.getsource(m) for m in (compiled_ops, op, topk))

    class _OpTwins(CustomGraphPass):
        def __call__(self, graph):
            compiled_ops.swap_in_twins(graph)

        def uuid(self):
            return hashlib.sha256(text.encode()).hexdigest()

    return _OpTwins()


OWN_OPTIONS = ("inner", "strategy", "topk")


def _check_inductor_keys(opts: dict) -> None:
    """The keys left after the backend's own are Inductor config patches: name a misspelling
    before Inductor fails on it deep inside the compile."""
    from torch._inductor import config

    bad = [k for k in opts if not hasattr(config, k.split(".")[0])]
    if bad:
        raise ValueError(f"fsa backend: unknown option(s) {bad}: the backend's own are {OWN_OPTIONS}, "
                         "every other key must be a torch._inductor.config setting")


def fsa_backend(gm: fx.GraphModule, example_inputs, options: dict | None = None, mode: str | None = None):
    opts = dict(options or {})
    inner = opts.pop("inner", "inductor")
    strategy = opts.pop("strategy", "auto")
    topk = opts.pop("topk", True)
    if not isinstance(topk, bool):
        raise ValueError(f"fsa backend: options['topk'] must be True or False, got {topk!r}")
    if inner not in INNER:
        raise ValueError(f"fsa backend: options['inner'] must be one of {INNER}, got {inner!r}")
    from .lowering.plan import STRATEGIES

    if strategy not in STRATEGIES:
        raise ValueError(f"fsa backend: options['strategy'] must be one of {STRATEGIES}, got {strategy!r}")
    _check_inductor_keys(opts)
    rewrite_graph(gm, strategy, topk)
    if inner == "eager":
        return gm.forward
    if inner == "aot_eager":
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, example_inputs)
    from torch._inductor.compile_fx import compile_fx

    if mode is not None:
        from torch._inductor import list_mode_options

        opts = {**list_mode_options(mode), **opts}
    opts.setdefault("post_grad_custom_post_pass", _post_grad_pass())
    return compile_fx(gm, example_inputs, config_patches=opts)


def register_by_name() -> None:
    """Make ``backend="fsa"`` resolve even where the package's entry point is not installed
    (a checkout on ``PYTHONPATH``); with the entry point installed this does nothing."""
    from torch._dynamo import list_backends
    from torch._dynamo.backends.registry import register_backend

    if "fsa" not in list_backends(exclude_tags=()):
        register_backend(fsa_backend, name="fsa")
