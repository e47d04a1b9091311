"""A decode step written in plain PyTorch (``tests/test_patterns_decode.py``'s gather form: the
newest T_q tokens over a T_k-token cache) on the GPU: eager, ``torch.compile`` with Inductor and
``backend="fsa"``, each with and without ``mode="reduce-overhead"``. Checks each against eager and
prints ms per call (``triton.testing.do_bench`` medians).

    python benchmarks/decode_gpu.py --Tk 65536 --Tq 1 16 --G 4 16
"""
from __future__ import annotations

import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_patterns_decode import decode_gather  # noqa: E402

from offset_gpu import BS, DEV, N, arguments, sequence  # noqa: E402  (this script's folder)


def main():
    a = arguments([1, 16])
    bs, n, dev = BS, N, DEV
    rows = []
    for G in a.G:
        gen, k, v, sel = sequence(a, G, grad=False)
        for tq in a.Tq:
            q = torch.randn(1, tq, a.H * G, a.D, device=dev, generator=gen).bfloat16()
            idx = sel[:, a.Tk - tq:].contiguous()
            args = (q, k, v, idx, bs)
            with torch.no_grad():
                want = decode_gather(*args)
                for name, fn in (("eager", decode_gather),
                                 ("inductor", torch.compile(decode_gather)),
                                 ("inductor reduce-overhead", torch.compile(decode_gather, mode="reduce-overhead")),
                                 ("fsa", torch.compile(decode_gather, backend="fsa")),
                                 ("fsa reduce-overhead", torch.compile(decode_gather, backend="fsa",
                                                                       mode="reduce-overhead"))):
                    torch._dynamo.reset()
                    for _ in range(3):
                        out = fn(*args)
                    err = float((out.float() - want.float()).norm() / want.float().norm())
                    ms = triton.testing.do_bench(lambda: fn(*args))
                    rows.append((G, tq, name, ms, err))
                    print(f"G={G} T_q={tq} {name}: {ms:.3f} ms, rel diff to eager {err:.1e}", flush=True)
    print(f"\nT_k = {a.Tk}, H = {a.H}, D = {a.D}, bs = {bs}, n = {n}, bf16\n")
    print("| G | T_q | run | ms per call | rel diff to eager |")
    print("|---|---|---|---|---|")
    for G, tq, name, ms, err in rows:
        print(f"| {G} | {tq} | {name} | {ms:.3f} | {err:.1e} |")


if __name__ == "__main__":
    main()
