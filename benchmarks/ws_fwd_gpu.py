"""The inverted loop's sub-tile loop warp-specialised by the compiler (`tl.range(...,
warp_specialize=True)`), against the default plan: does it compile, does it match, is it faster?

    python benchmarks/ws_fwd_gpu.py [--T 65536] [--G 8,16]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from fsa_compile.bench import make_case  # noqa: E402
from fsa_compile.lowering.forward import forward  # noqa: E402
from fsa_compile.lowering.plan import choose_plan  # noqa: E402

VARIANTS = {"default": {}, "ws, 4 warps": dict(fsa_ws=True), "ws, 8 warps": dict(fsa_ws=True, fsa_warps=8)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--G", default="8,16")
    a = ap.parse_args()
    B, H, D, bs, n = 1, 4, 128, 64, 16
    dev = torch.device("cuda")
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    rows = []
    for G in [int(g) for g in a.G.split(",")]:
        q, k, v, idx = make_case(B, a.T, H, G, D, bs, n, "uniform", torch.bfloat16, dev, seed=G)
        ref = None
        for name, over in VARIANTS.items():
            plan = choose_plan(B, a.T, H, G, D, D, n, bs, torch.bfloat16, True, "fsa", dev, **over)
            try:
                o, _ = forward(q, k, v, idx, bs, D ** -0.5, True, plan, poison=True)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                msg = str(e).strip().splitlines()
                print(f"G={G} {name}: FAILED to compile or run: {msg[-1][:300] if msg else e!r}", flush=True)
                rows.append((G, name, None, None))
                continue
            if ref is None:
                ref = o
            diff = (o.float() - ref.float()).abs().max().item()
            nan = torch.isnan(o).any().item()
            ms = do_bench(lambda: forward(q, k, v, idx, bs, D ** -0.5, True, plan), warmup=50, rep=300,
                          return_mode="median")
            print(f"G={G} {name}: {ms:.3f} ms, max diff to default {diff:.3g}, NaN {nan}", flush=True)
            rows.append((G, name, ms, diff if not nan else float("nan")))
        del q, k, v, idx
        torch.cuda.empty_cache()
    print(f"\n=== T={a.T} forward, fsa, uniform: ms (max difference to the default plan) ===")
    for G, name, ms, diff in rows:
        print(f"G={G:2d} {name:12s} " + ("failed" if ms is None else f"{ms:8.3f}  ({diff:.3g})"))


if __name__ == "__main__":
    main()
