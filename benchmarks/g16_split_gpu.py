"""Do the two loop orders overlap? Each query's slots split between them, at G = 16.

    python benchmarks/g16_split_gpu.py [--T 65536] [--x 0,2,3,4,6,8,16]

The first ``x`` slots of every query go to the NSA order (bound by L2), the other ``16 - x`` to
the inverted loop (bound by memory traffic), each through the existing kernels on its own
selection; the two ``(o, lse)`` are combined by torch ops. Timed run one after the other, and on
two streams at once (the inverted loop's on a higher priority, so its programs take the free
slots first and the NSA order's fill what is left). The combine is timed alone: a real
implementation would hand the NSA order's result to the merge as one more partial. The combined
output is checked against the whole selection's forward.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import triton  # noqa: E402

from fsa_compile.bench import dense_sdpa, _no_math, make_case  # noqa: E402
from fsa_compile.lowering.forward import forward  # noqa: E402
from fsa_compile.lowering.plan import choose_plan  # noqa: E402
from g16_floor_gpu import ms_of  # noqa: E402  (the same timing as the floors)


def combine(oa, la, ob, lb):
    lse = torch.logaddexp(la, lb)
    wa = torch.exp(la - lse).nan_to_num(0.0).unsqueeze(-1)
    wb = torch.exp(lb - lse).nan_to_num(0.0).unsqueeze(-1)
    return (oa.float() * wa + ob.float() * wb).to(oa.dtype), lse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--x", default="0,2,3,4,6,8,16")
    a = ap.parse_args()
    B, T, H, G, D, bs, n = 1, a.T, 4, 16, 128, 64, 16
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    dev = torch.device("cuda")
    q, k, v, idx = make_case(B, T, H, G, D, bs, n, "uniform", torch.bfloat16, dev, seed=G)
    sc = D ** -0.5
    with _no_math():
        dense = ms_of(lambda: dense_sdpa(q, k, v))
    full_plan = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, "fsa", dev)
    o_full, _ = forward(q, k, v, idx, bs, sc, True, full_plan)
    hi = torch.cuda.Stream(priority=-1)
    lo = torch.cuda.Stream(priority=0)
    rows = []
    for x in [int(s) for s in a.x.split(",")]:
        ia = idx[..., :x].contiguous()
        ib = idx[..., x:].contiguous()
        pa = choose_plan(B, T, H, G, D, D, x, bs, torch.bfloat16, True, "nsa", dev) if x else None
        pb = choose_plan(B, T, H, G, D, D, n - x, bs, torch.bfloat16, True, "fsa", dev) if x < n else None
        if pa is None or pb is None:  # one order alone
            plan, sel = (pb, ib) if pa is None else (pa, ia)
            t = ms_of(lambda: forward(q, k, v, sel, bs, sc, True, plan))
            rows.append((x, t, t, 0.0, 0.0))
            print(f"x={x:2d}: {plan.strategy} alone {t:.3f} ms", flush=True)
            continue

        def seq():
            oa, la = forward(q, k, v, ia, bs, sc, True, pa)
            ob, lb = forward(q, k, v, ib, bs, sc, True, pb)
            return oa, la, ob, lb

        def conc():
            cur = torch.cuda.current_stream()
            hi.wait_stream(cur)
            lo.wait_stream(cur)
            with torch.cuda.stream(hi):
                ob, lb = forward(q, k, v, ib, bs, sc, True, pb)
            with torch.cuda.stream(lo):
                oa, la = forward(q, k, v, ia, bs, sc, True, pa)
            cur.wait_stream(hi)
            cur.wait_stream(lo)
            return oa, la, ob, lb

        ts = ms_of(seq)
        tc = ms_of(conc)
        parts = conc()
        torch.cuda.synchronize()
        tm = ms_of(lambda: combine(*parts))
        o, _ = combine(*parts)
        err = ((o.float() - o_full.float()).norm() / o_full.float().norm()).item()
        rows.append((x, ts, tc, tm, err))
        print(f"x={x:2d}: sequential {ts:.3f} ms, two streams {tc:.3f} ms, combine {tm:.3f} ms, "
              f"rel err vs the whole forward {err:.2e}", flush=True)
    print(f"\n=== T={T}, G=16, uniform; dense {dense:.2f} ms; x slots by the NSA order, the rest by "
          f"the inverted loop ===")
    print(f"{'x':>3} {'sequential':>11} {'two streams':>12} {'ratio':>7} {'combine':>8} {'rel err':>9}")
    for x, ts, tc, tm, err in rows:
        print(f"{x:3d} {ts:11.3f} {tc:12.3f} {tc / dense:7.3f} {tm:8.3f} {err:9.2e}")


if __name__ == "__main__":
    main()
