"""Per-kernel CUDA time of one forward (torch.profiler), for a few variants and G.

    python benchmarks/profile_fwd.py --G 1,8,16 --variants fsa64t4,nsa1
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import gpu_check as gc  # noqa: E402  (same imports, variants and stubbing)
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--G", default="1,8,16")
    ap.add_argument("--variants", default="fsa64t4")
    a = ap.parse_args()
    B, H, D, bs, n = 1, 4, 128, 64, 16
    for G in [int(x) for x in a.G.split(",")]:
        q, k, v, idx = gc.make_case(B, a.T, H, G, D, bs, n, "uniform", torch.bfloat16, gc.DEV, seed=G)
        for name in a.variants.split(","):
            plan = gc.plan_for(name, B, a.T, H, G, D, D, n, bs, torch.bfloat16, True)
            fn = lambda: gc.forward(q, k, v, idx, bs, D ** -0.5, True, plan)  # noqa: E731
            fn()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
            tot = {}
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    key = e.name[:40]
                    tot[key] = tot.get(key, 0.0) + e.device_time / 3 / 1000
            s = sum(tot.values())
            print(f"G={G} {name}: total kernel time {s:.3f} ms")
            for kname, ms in sorted(tot.items(), key=lambda x: -x[1])[:8]:
                print(f"    {ms:8.3f} ms  {kname}")
        del q, k, v, idx
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
