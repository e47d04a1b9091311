"""Host-side (Python) cost of one call of the op, forward and backward, at the example model's
shapes: short sequences are bound by it. Times calls that return before the GPU is done, then
prints a cProfile of a few forward+backward calls, sorted by own time.

    python benchmarks/op_host_cost.py [--T 1024,4096] [--rows 30]
"""
import argparse
import cProfile
import io
import pstats
import time

import torch

import fsa_compile
from fsa_compile.selection import uniform_selection


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", default="1024,4096")
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--calls", type=int, default=50)
    a = ap.parse_args()
    dev = torch.device("cuda")
    B, H, G, D, bs, n = 1, 4, 4, 64, 64, 16
    for T in [int(x) for x in a.T.split(",")]:
        q = torch.randn(B, T, H * G, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        idx = uniform_selection(B, T, H, n, bs, device=dev)
        do = torch.randn(B, T, H * G, D, device=dev, dtype=torch.bfloat16)

        def fwd():
            return fsa_compile.selected_attention(q, k, v, idx, bs, on_out_of_range="assert")

        def fwd_bwd():
            torch.autograd.grad(fwd(), (q, k, v), do)

        for f in (fwd, fwd_bwd):
            for _ in range(3):
                f()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(a.calls):
                f()
            host = (time.perf_counter() - t0) / a.calls
            torch.cuda.synchronize()
            total = (time.perf_counter() - t0) / a.calls
            print(f"T={T} {f.__name__:8s}: host {host * 1e3:6.3f} ms/call, with the GPU "
                  f"{total * 1e3:6.3f} ms/call", flush=True)
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(10):
            fwd_bwd()
        pr.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(a.rows)
        print(f"--- cProfile, 10 forward+backward calls at T={T}, by own time")
        print(s.getvalue(), flush=True)


if __name__ == "__main__":
    main()
