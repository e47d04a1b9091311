"""One device call: the inverted loop with chunk c's main programs and chunk c - 1's merge in one
launch (``fsa_overlap``), checked against the reference, then timed against the two-launch default.

    PYTHONUNBUFFERED=1 python benchmarks/overlap_gpu.py [--T 65536] [--G 1,2,4,8,16] [--D 128]

Variants per G: ``base`` (the plan's default), ``base/2`` (the default at half its chunk),
``ovl`` (overlap, each buffer half the budget: the default's memory), ``ovl x2`` (overlap at the
default's chunk: twice the partial memory).
"""
import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from gpu_check import DEV, bench_once, check_case  # noqa: E402
from fsa_compile.bench import _no_math, dense_sdpa, make_case  # noqa: E402
from fsa_compile.lowering.forward import forward  # noqa: E402
from fsa_compile.lowering.plan import choose_plan  # noqa: E402


def checks():
    bad = 0
    cases = []
    for G in (1, 2, 4, 8, 16):
        cases.append((2, 3000, 2, G, 128, 64, 16, torch.bfloat16, "uniform", True, "bthd", None, 512))
        cases.append((1, 2000, 2, G, 96, 32, 8, torch.float16, "random", True, "bhtd", None, 384))
    cases.append((1, 1500, 2, 4, 64, 64, 16, torch.bfloat16, "skewed", False, "bthd", 48, 256))
    for c in cases:
        good, msg = check_case("fsa@fsa_overlap=1", *c[:9], causal=c[9], layout=c[10], Dv=c[11],
                               chunk=c[12])
        print(("PASS " if good else "FAIL ") + msg, flush=True)
        bad += not good
    print(f"checks: {len(cases) - bad}/{len(cases)} passed", flush=True)
    return bad == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--G", default="1,2,4,8,16")
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--dist", default="uniform")
    ap.add_argument("--skip-check", action="store_true")
    a = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    if not a.skip_check and not checks():
        print("not timing: a check failed")
        return 1
    B, H, bs, n, T, D = 1, 4, 64, 16, a.T, a.D
    table = []
    for G in [int(x) for x in a.G.split(",")]:
        for dist in a.dist.split(","):
            q, k, v, idx = make_case(B, T, H, G, D, bs, n, dist, torch.bfloat16, DEV, seed=G)
            with _no_math():
                dms, _ = bench_once(lambda: dense_sdpa(q, k, v))
            base = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, "fsa", DEV)
            ovl = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, "fsa", DEV, fsa_overlap=True)
            plans = {
                "base": base,
                "base/2": dataclasses.replace(base, chunk=max(64, base.chunk // 2)),
                "ovl": ovl,
                "ovl x2": dataclasses.replace(ovl, chunk=base.chunk),
            }
            res = {}
            for name, plan in plans.items():
                ms, mem = bench_once(lambda: forward(q, k, v, idx, bs, D ** -0.5, True, plan))
                res[name] = (ms, mem, plan.chunk)
                print(f"T={T} G={G} D={D} {dist} {name:7s} chunk {plan.chunk:6d}: {ms:7.3f} ms "
                      f"({ms / dms:.3f} of dense {dms:.2f}) extra {mem:.2f} GiB", flush=True)
            table.append((G, dist, dms, res))
            del q, k, v, idx
            torch.cuda.empty_cache()
    names = ["base", "base/2", "ovl", "ovl x2"]
    print(f"\n=== T={T} D={D} forward ms (ratio to dense) [chunk] ===")
    print(f"{'G':>3} {'dist':>8} {'dense':>8} " + " ".join(f"{x:>24}" for x in names))
    for G, dist, dms, res in table:
        cells = [f"{res[x][0]:7.2f} ({res[x][0] / dms:5.3f}) [{res[x][2]}]" for x in names]
        print(f"{G:>3} {dist:>8} {dms:8.2f} " + " ".join(f"{c:>24}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
