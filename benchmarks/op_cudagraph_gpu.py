"""A direct forward + backward call of the op, launched as usual and replayed from a CUDA graph:
how much of a short call is host time, and does the op capture (no host syncs, no host reads)?

    python benchmarks/op_cudagraph_gpu.py [--T 8192,16384,32768] [--G 1,4] [--D 128]

B = 1, H = 4, block 64, n = 16, bf16, the uniform selection. Both ways are timed with
``triton.testing.do_bench`` (median); the replay's gradients must equal the launched call's
bitwise (the backward is deterministic).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import triton  # noqa: E402

import fsa_compile  # noqa: E402
from fsa_compile.selection import uniform_selection  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", default="8192,16384,32768")
    ap.add_argument("--G", default="1,4")
    ap.add_argument("--D", type=int, default=128)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    rows = []
    for T in (int(x) for x in a.T.split(",")):
        for G in (int(x) for x in a.G.split(",")):
            B, H, D, bs, n = 1, 4, a.D, 64, 16
            mk = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16)  # noqa: E731
            q, k, v = (t.requires_grad_() for t in (mk(B, T, H * G, D), mk(B, T, H, D), mk(B, T, H, D)))
            idx = uniform_selection(B, T, H, n, bs, device="cuda")
            do = mk(B, T, H * G, D)

            def step():
                o = fsa_compile.selected_attention(q, k, v, idx, bs, on_out_of_range="assert")
                return torch.autograd.grad(o, (q, k, v), do)

            ref = step()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up on a side stream, as capture wants
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = step()
            graph.replay()
            torch.cuda.synchronize()
            same = all(torch.equal(x, y) for x, y in zip(ref, out))
            launched = triton.testing.do_bench(step, warmup=25, rep=200, return_mode="median")
            replayed = triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")
            rows.append((T, G, launched, replayed, same))
            print(f"T={T} G={G}: launched {launched:.3f} ms, replayed {replayed:.3f} ms, "
                  f"gradients bitwise equal: {same}", flush=True)
            del graph, out, ref
            torch.cuda.empty_cache()
    print(f"\n=== forward + backward of the op, ms (D = {a.D}) ===")
    print(f"{'T':>6} {'G':>3} {'launched':>9} {'replayed':>9} {'ratio':>6} {'equal':>6}")
    for T, G, la, re, same in rows:
        print(f"{T:6d} {G:3d} {la:9.3f} {re:9.3f} {la / re:6.2f} {str(same):>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
