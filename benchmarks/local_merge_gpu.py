"""The local blocks in the merge (plan option ``fsa_local``) against the partials-only merge.

    python benchmarks/local_merge_gpu.py [--T 65536] [--G 1,2,4,8,16]

For each G and both selection distributions: dense SDPA, the NSA order, the inverted loop as it
is, and the inverted loop with block 0 and the local blocks computed query-major in the merge, at
a few merge tile sizes. Before timing, every variant's output is compared with the default
inverted loop's (relative error of o, max |lse| difference); at T = 4096 also with the float32
reference. Prints a table last.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from fsa_compile.bench import _no_math, dense_sdpa, make_case  # noqa: E402
from fsa_compile.lowering.forward import forward  # noqa: E402
from fsa_compile.lowering.plan import choose_plan  # noqa: E402
from fsa_compile.reference import reference_forward  # noqa: E402


def ms_of(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


def variants(G):
    base = max(1, 64 // G)
    out = [("nsa", "nsa", {}), ("fsa", "fsa", {})]
    for tok in (base, 2 * base):
        out.append((f"local merge tok{tok}", "fsa", dict(fsa_local="merge", merge_tok=tok)))
        out.append((f"local merge unroll tok{tok}", "fsa", dict(fsa_local="merge", merge_tok=tok, merge_unroll=True)))
        out.append((f"local slot tok{tok}", "fsa", dict(fsa_local="slot", merge_tok=tok)))
    return out


def kernel_ms(fn, reps=5):
    """GPU time per call of each kernel (by name), from the profiler, over ``reps`` calls."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    ks = {}
    for e in prof.events():  # the way benchmarks/profile_fwd.py reads them
        if e.device_type == torch.autograd.DeviceType.CUDA:
            ks[e.name[:40]] = ks.get(e.name[:40], 0.0) + e.device_time / reps / 1000
    return ks


def err(o, lse, ro, rl):
    e = ((o.double() - ro.double()).norm() / ro.double().norm()).item()
    fin = torch.isfinite(rl)
    le = (lse[fin].double() - rl[fin].double()).abs().max().item() if fin.any() else 0.0
    same_inf = torch.equal(torch.isinf(lse), torch.isinf(rl))
    return e, le, same_inf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--G", default="1,2,4,8,16")
    a = ap.parse_args()
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    dev = torch.device("cuda")
    B, H, D, bs, n = 1, 4, 128, 64, 16
    bad = 0
    # correctness at T = 4096 against the float32 reference, every variant
    for G in [int(g) for g in a.G.split(",")]:
        for dist in ("uniform", "skewed"):
            q, k, v, idx = make_case(B, 4096, H, G, D, bs, n, dist, torch.bfloat16, dev, seed=G + 1)
            ro, rl = reference_forward(q.float(), k.float(), v.float(), idx, bs, D ** -0.5, True)
            for name, strat, over in variants(G):
                plan = choose_plan(B, 4096, H, G, D, D, n, bs, torch.bfloat16, True, strat, dev, **over)
                o, lse = forward(q, k, v, idx, bs, D ** -0.5, True, plan, poison=True)
                e, le, si = err(o, lse, ro, rl)
                ok = e < 1.5e-2 and le < 0.15 and si and not torch.isnan(o).any()
                bad += not ok
                if not ok:
                    print(f"MISMATCH T=4096 G={G} {dist} {name}: rel {e:.2e} lse {le:.2e} inf-equal {si}", flush=True)
    print(f"reference checks at T=4096: {'all passed' if not bad else f'{bad} FAILED'}", flush=True)
    rows = []
    T = a.T
    for G in [int(g) for g in a.G.split(",")]:
        for dist in ("uniform", "skewed"):
            q, k, v, idx = make_case(B, T, H, G, D, bs, n, dist, torch.bfloat16, dev, seed=G)
            with _no_math():
                dense = ms_of(lambda: dense_sdpa(q, k, v))
            ref_plan = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, "fsa", dev)
            ro, rl = forward(q, k, v, idx, bs, D ** -0.5, True, ref_plan)
            for name, strat, over in variants(G):
                plan = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, strat, dev, **over)
                o, lse = forward(q, k, v, idx, bs, D ** -0.5, True, plan, poison=True)
                e, le, si = err(o, lse, ro, rl)
                t = ms_of(lambda: forward(q, k, v, idx, bs, D ** -0.5, True, plan))
                rows.append((G, dist, name, t, t / dense, e, le))
                print(f"G={G:2d} {dist:7s} {name:24s} {t:8.3f} ms  ratio {t / dense:.3f}  "
                      f"vs fsa: rel {e:.1e} lse {le:.1e}{'' if si else ' INF MISMATCH'}", flush=True)
            del q, k, v, idx, ro, rl
            torch.cuda.empty_cache()
    # where the time goes, per kernel, at G = 16 and 8 (uniform)
    for G in [g for g in (8, 16) if str(g) in a.G.split(",")]:
        q, k, v, idx = make_case(B, T, H, G, D, bs, n, "uniform", torch.bfloat16, dev, seed=G)
        for name, strat, over in variants(G)[1:]:
            plan = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, strat, dev, **over)
            ks = kernel_ms(lambda: forward(q, k, v, idx, bs, D ** -0.5, True, plan))
            top = sorted(ks.items(), key=lambda x: -x[1])[:6]
            print(f"profile G={G} {name}: " + ", ".join(f"{kname} {t:.2f}" for kname, t in top), flush=True)
        del q, k, v, idx
        torch.cuda.empty_cache()
    print(f"\n=== T={T}, H={H}, D={D}, bs={bs}, n={n}, bf16: forward ms (ratio to dense) ===")
    for G, dist, name, t, r, e, le in rows:
        print(f"G={G:2d} {dist:7s} {name:24s} {t:8.3f}  ({r:.3f})")


if __name__ == "__main__":
    main()
