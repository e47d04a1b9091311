"""A decode loop over a preallocated (static) cache attended whole, the query at a Python-int
position ``pos`` (``tests/test_patterns_decode.py``'s ``_static_step``: slots past ``pos`` are
masked by causality), and (``pos`` column ``tensor``) at a position given as a one-element
tensor, HF's ``cache_position`` (``tests/test_patterns_positions.py``'s ``gather_at``). For eager, Inductor and ``backend="fsa"``: how many graphs a loop over
``--steps`` positions compiled, the largest difference to eager over the loop, and ms per step
(``triton.testing.do_bench`` median) at three positions once compiled.

    python benchmarks/static_cache_gpu.py --Tk 65536 --Tq 1 --G 4 16 [--profile]

With the tensor position each compiled run also with ``mode="reduce-overhead"`` (CUDA graphs, how
a decode loop should run). ``--profile`` adds, for the tensor position, a torch.profiler table of 50 launched steps of
``fsa`` and of Inductor (by count: kernels, launches, copies a step) and the Python stack of each
host-to-device copy.
"""
from __future__ import annotations

import os
import sys

import torch
import triton
from torch._dynamo.utils import counters

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_patterns_decode import _static_step  # noqa: E402
from test_patterns_positions import gather_at  # noqa: E402

from offset_gpu import BS, DEV, arguments, sequence  # noqa: E402  (this script's folder)


def _profile(fn, args, label):
    """Kernels, launches and copies of 50 steps; the stacks of the copies."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(3):
            fn(*args)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
            for _ in range(50):
                fn(*args)
            torch.cuda.synchronize()
    print(f"--- profile of 50 steps: {label}")
    print(prof.key_averages().table(sort_by="count", row_limit=30), flush=True)
    for evt in prof.key_averages(group_by_stack_n=12):
        if "Memcpy" in evt.key or "memcpy" in evt.key.lower():
            print(f"  {evt.key} x{evt.count}:\n    " + "\n    ".join(evt.stack or ["(no stack)"]), flush=True)


def _loop(step, args_at, positions, rows, label, tensor=False, profile=False):
    """One form through eager, Inductor and fsa (with a tensor position each also under CUDA
    graphs; an int position would record a graph per value): graphs compiled over the loop, the
    largest relative difference to eager, ms per step at the first, middle and last position."""
    runs = [("eager", step), ("inductor", torch.compile(step)), ("fsa", torch.compile(step, backend="fsa"))]
    if tensor:
        runs += [("inductor reduce-overhead", torch.compile(step, mode="reduce-overhead")),
                 ("fsa reduce-overhead", torch.compile(step, backend="fsa", mode="reduce-overhead"))]
    for name, fn in runs:
        torch._dynamo.reset()
        counters.clear()
        worst = 0.0
        with torch.no_grad():
            for pos in positions:
                args = args_at(pos)
                want = step(*args).float()
                got = fn(*args).float()
                worst = max(worst, float((got - want).norm() / want.norm()))
        graphs = counters["stats"]["unique_graphs"]
        times = []
        for pos in (positions[0], positions[len(positions) // 2], positions[-1]):
            args = args_at(pos)
            with torch.no_grad():
                times.append(triton.testing.do_bench(lambda: fn(*args)))
        rows.append((*label, name, graphs, worst, times))
        if profile and name in ("inductor", "fsa"):
            _profile(fn, args_at(positions[-1]), " ".join(map(str, label)) + " " + name)
        print(" ".join(map(str, label)) + f" {name}: {graphs} graphs over {len(positions)} positions, "
              f"rel diff {worst:.1e}, " + ", ".join(f"{t:.3f}" for t in times) + " ms", flush=True)


def main():
    a = arguments([1])
    rows = []
    steps = 24
    for G in a.G:
        gen, k, v, sel = sequence(a, G, grad=False)
        for tq in a.Tq:
            q_all = torch.randn(1, a.Tk, a.H * G, a.D, device=DEV, generator=gen).bfloat16()
            positions = [int(p) for p in torch.linspace(a.Tk // 8, a.Tk - tq, steps)]
            for kind, step in (("int", _static_step), ("tensor", gather_at)):
                def args_at(pos, kind=kind):
                    at = pos if kind == "int" else torch.arange(pos, pos + tq, device=DEV)
                    return (q_all[:, pos:pos + tq], k, v, sel[:, pos:pos + tq].contiguous(), BS, at)

                _loop(step, args_at, positions, rows, (G, tq, kind), kind == "tensor", a.profile and kind == "tensor")
    print(f"\nT_k = {a.Tk}, H = {a.H}, D = {a.D}, bs = {BS}, bf16; ms per step at three positions\n")
    print("| G | T_q | pos | run | graphs compiled | rel diff to eager | ms per step |")
    print("|---|---|---|---|---|---|---|")
    for G, tq, kind, name, graphs, worst, times in rows:
        print(f"| {G} | {tq} | {kind} | {name} | {graphs} | {worst:.1e} | "
              + " / ".join(f"{t:.3f}" for t in times) + " |")


if __name__ == "__main__":
    main()
