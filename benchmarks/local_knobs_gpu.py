"""Launch knobs of the local blocks' kernel (plan option ``fsa_local="slot"``).

    python benchmarks/local_knobs_gpu.py [--T 65536] [--G 2,4,8,16]

For each G (uniform selection): the inverted loop as it is, and with the local kernel at a few
(tokens per program, warps, stages); the whole forward by do_bench and the local kernel's own
time from the profiler. Outputs are checked against the default inverted loop's first.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import triton  # noqa: E402

from fsa_compile.bench import _no_math, dense_sdpa, make_case  # noqa: E402
from fsa_compile.lowering.forward import forward  # noqa: E402
from fsa_compile.lowering.plan import choose_plan  # noqa: E402
from local_merge_gpu import err, kernel_ms, ms_of  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--G", default="2,4,8,16")
    a = ap.parse_args()
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    dev = torch.device("cuda")
    B, T, H, D, bs, n = 1, a.T, 4, 128, 64, 16
    rows = []
    for G in [int(g) for g in a.G.split(",")]:
        q, k, v, idx = make_case(B, T, H, G, D, bs, n, "uniform", torch.bfloat16, dev, seed=G)
        with _no_math():
            dense = ms_of(lambda: dense_sdpa(q, k, v))
        base = max(1, 64 // G)
        ref = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, "fsa", dev)
        ro, rl = forward(q, k, v, idx, bs, D ** -0.5, True, ref)
        knobs = [(None, 0, 0)] + [(base, w, s) for w, s in ((4, 1), (4, 2), (4, 3), (8, 2), (8, 3))]
        knobs += [(max(1, base // 2), 4, 3), (max(1, base // 2), 8, 3), (2 * base, 8, 3)]
        for tok, w, s in knobs:
            over = {} if tok is None else dict(fsa_local="slot", merge_tok=tok, local_warps=w, local_stages=s)
            name = "fsa" if tok is None else f"slot tok{tok} w{w} st{s}"
            plan = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, "fsa", dev, **over)
            o, lse = forward(q, k, v, idx, bs, D ** -0.5, True, plan, poison=True)
            e, le, si = err(o, lse, ro, rl)
            t = ms_of(lambda: forward(q, k, v, idx, bs, D ** -0.5, True, plan))
            ks = kernel_ms(lambda: forward(q, k, v, idx, bs, D ** -0.5, True, plan))
            loc = ks.get("local_fwd_kernel", 0.0)
            bad = "" if (e < 1e-2 and le < 0.1 and si) else "  MISMATCH"
            rows.append((G, name, t, t / dense, loc))
            print(f"G={G:2d} {name:22s} {t:8.3f} ms ({t / dense:.3f})  local kernel {loc:.3f}  "
                  f"vs fsa rel {e:.1e} lse {le:.1e}{bad}", flush=True)
        del q, k, v, idx, ro, rl
        torch.cuda.empty_cache()
    print(f"\n=== T={T}, H={H}, D={D}, bs={bs}, n={n}, bf16, uniform: forward ms (ratio), local kernel ms ===")
    for G, name, t, r, loc in rows:
        print(f"G={G:2d} {name:22s} {t:8.3f}  ({r:.3f})  {loc:6.3f}")


if __name__ == "__main__":
    main()
