"""Host-side (Python) cost of one call of the op, forward and backward, at the example model's
shapes: short sequences are bound by it. Each piece is timed on its own (calls that return before
the GPU is done, at a T where the GPU work is tiny), then a cProfile of a few forward+backward
calls sorted by own time.

    python benchmarks/op_host_cost.py [--T 1024] [--rows 30] [--calls 100]
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
    a = ap.parse_args()
    # without CUDA: a dry run of the script through the interpreter (FSA_COMPILE_INTERPRET=1)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, H, G, D, bs, n, T = 1, 4, 4, 64, 64, 16, a.T
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


if __name__ == "__main__":
    main()
