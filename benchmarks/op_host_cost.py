"""Host-side (Python) cost of one call of the op, forward and backward, at the example model's
shapes: short sequences are bound by it. Each piece is timed on its own (calls that return before
the GPU is done, at a T where the GPU work is tiny), then a cProfile of a few forward+backward
calls sorted by own time.

    python benchmarks/op_host_cost.py [--T 1024] [--G 4] [--D 64] [--rows 30] [--calls 100] [--kernels] [--launches]

``--kernels`` adds a torch.profiler table of one forward+backward call: the host ops by their
own CPU time, and every GPU kernel with its count and device time, so that a call's wall time can
be split into host time and device time. ``--launches`` times the host side of every Triton
launch (``JITFunction.run``) during forward+backward calls, per kernel.
"""
import argparse
import cProfile
import io
import pstats
import time

import torch

import fsa_compile
from fsa_compile import op as op_mod
from fsa_compile import reference
from fsa_compile.lowering import backward as kernel_backward
from fsa_compile.lowering import forward as kernel_forward
from fsa_compile.selection import uniform_selection
from fsa_compile.templates.index import build_block_index


@torch.library.custom_op("fsa_bench::clone", mutates_args=())
def _clone(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_clone.register_fake
def _(x):
    return torch.empty_like(x)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def host_time(f, calls):
    for _ in range(5):
        f()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        f()
    host = (time.perf_counter() - t0) / calls
    sync()
    total = (time.perf_counter() - t0) / calls
    return host * 1e3, total * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--G", type=int, default=4)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--kernels", action="store_true")
    ap.add_argument("--launches", action="store_true")
    a = ap.parse_args()
    # without CUDA: a dry run of the script through the interpreter (FSA_COMPILE_INTERPRET=1)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, H, G, D, bs, n, T = 1, 4, a.G, a.D, 64, 16, a.T
    mk = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16)  # noqa: E731
    q, k, v = mk(B, T, H * G, D), mk(B, T, H, D), mk(B, T, H, D)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    idx = uniform_selection(B, T, H, n, bs, device=dev)
    do = mk(B, T, H * G, D)
    scale = D ** -0.5
    cidx = reference.canonical_indices(idx, T, bs, count_duplicates=True, on_out_of_range="drop")
    plan = op_mod.plan_for(q, k, v, cidx, bs, True, "auto")
    o, lse = kernel_forward(q, k, v, cidx, bs, scale, True, plan)
    nb = (T + bs - 1) // bs
    args = (q, k, v, idx, bs, scale, True, True, "assert", "auto")
    none = idx.new_empty(0, dtype=torch.int32)
    saved = torch.ops.fsa.selected_attention(*args)[2:]  # the forward's index
    pieces = [
        ("canonical_indices (assert)", lambda: reference.canonical_indices(
            idx, T, bs, count_duplicates=True, on_out_of_range="assert")),
        ("plan_for", lambda: op_mod.plan_for(q, k, v, cidx, bs, True, "auto")),
        ("build_block_index", lambda: build_block_index(cidx, nb, 256, tile_map=True)),
        ("lowering.forward", lambda: kernel_forward(q, k, v, cidx, bs, scale, True, plan)),
        ("lowering.backward", lambda: kernel_backward(do, q, k, v, o, lse, cidx, bs, scale, True, plan)),
        ("trivial custom op (clone)", lambda: torch.ops.fsa_bench.clone(q)),
        ("fsa::selected_attention, no grad", lambda: torch.ops.fsa.selected_attention(*args)),
        ("fsa::selected_attention_backward", lambda: torch.ops.fsa.selected_attention_backward(
            do, None, q, k, v, o, lse, idx, bs, scale, True, True, "auto", none, none)),
        ("fsa::selected_attention_backward, saved index", lambda: torch.ops.fsa.selected_attention_backward(
            do, None, q, k, v, o, lse, idx, bs, scale, True, True, "auto", *saved)),
        ("selected_attention with grad inputs", lambda: fsa_compile.selected_attention(
            qg, kg, vg, idx, bs, on_out_of_range="assert")),
        ("forward + backward (autograd)", lambda: torch.autograd.grad(fsa_compile.selected_attention(
            qg, kg, vg, idx, bs, on_out_of_range="assert"), (qg, kg, vg), do)),
    ]
    print(f"T={T}, B={B}, H={H}, G={G}, D={D}, n={n}, bf16; ms per call: host returned / with the GPU")
    for name, f in pieces:
        h, t = host_time(f, a.calls)
        print(f"  {name:40s} {h:7.3f} {t:7.3f}", flush=True)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(10):
        pieces[-1][1]()
    pr.disable()
    sync()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(a.rows)
    print(f"--- cProfile, 10 forward+backward calls at T={T}, by own time")
    print(s.getvalue(), flush=True)
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(a.rows)
    print(f"--- the same, by cumulative time")
    print(s.getvalue(), flush=True)
    if a.kernels:
        kernel_table(pieces[-1][1], a.rows)
    if a.launches:
        launch_table(pieces[-1][1], a.calls)


def launch_table(step, calls):
    """Host time of each Triton launch, per kernel, over ``calls`` forward+backward calls."""
    from collections import defaultdict

    from triton.runtime.jit import JITFunction

    real = JITFunction.run
    spent = defaultdict(float)
    count = defaultdict(int)

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            name = getattr(self, "__name__", "?")
            spent[name] += time.perf_counter() - t0
            count[name] += 1

    for _ in range(3):
        step()
    sync()
    JITFunction.run = timed
    try:
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        host = (time.perf_counter() - t0) / calls
        sync()
    finally:
        JITFunction.run = real
    total = sum(spent.values()) / calls
    print(f"--- Triton launches per forward+backward call: {sum(count.values()) / calls:.0f}, "
          f"{total * 1e3:.3f} of the call's {host * 1e3:.3f} ms of host time")
    for name in sorted(spent, key=lambda k: -spent[k]):
        print(f"  {count[name] / calls:4.1f} x {spent[name] / count[name] * 1e6:7.1f} us  {name}")


def kernel_table(step, rows):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    for _ in range(3):
        step()
    sync()
    with profile(activities=acts) as prof:
        for _ in range(5):
            step()
        sync()
    ka = prof.key_averages()
    print("--- torch.profiler, 5 forward+backward calls: host ops by own CPU time")
    print(ka.table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)
    if torch.cuda.is_available():
        kern = [e for e in ka if e.device_type == torch.autograd.DeviceType.CUDA]
        dev_us = sum(e.self_device_time_total for e in kern) / 5
        n = sum(e.count for e in kern) / 5
        print(f"--- GPU kernels per call: {n:.0f} launches, {dev_us / 1e3:.3f} ms of device time")
        for e in sorted(kern, key=lambda e: -e.self_device_time_total)[:rows]:
            print(f"  {e.count / 5:5.1f} x {e.self_device_time_total / e.count:9.1f} us  {e.key[:90]}")


if __name__ == "__main__":
    main()
