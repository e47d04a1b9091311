"""One device call: the row top-k kernel (one level and two levels) against torch.topk at the
selection's sizes, checked and timed.

    PYTHONUNBUFFERED=1 python benchmarks/topk_gpu.py

Rows: NSA's selection is one row of ``T / 64`` block scores per (token, KV head), so T=32K with
4 KV heads is ``[131072, 512]`` and T=64K ``[262144, 1024]``.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import triton  # noqa: E402

from fsa_compile.lowering.row_topk import row_topk  # noqa: E402

SIZES = [(131072, 512, 16), (262144, 1024, 16), (131072, 256, 16), (16384, 64, 16), (1000, 4096, 64)]


def main():
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    lines = []
    for dtype in (torch.bfloat16, torch.float32):
        for R, L, k in SIZES:
            x = torch.randn(R, L, device="cuda", generator=g).to(dtype)
            x[:, 0] = float("inf")  # forced blocks, as in NSA's selection
            x[:, L // 3] = float("inf")
            x[R // 2:, L - L // 4:] = float("-inf")  # future blocks
            rv, _ = torch.topk(x, k, dim=-1)
            res = {"torch": triton.testing.do_bench(lambda: torch.topk(x, k, dim=-1), return_mode="median")}
            for name, two in (("one level", False), ("two levels", True)):
                v, i = row_topk(x, k, True, two_level=two)
                good = torch.equal(v, rv) and torch.equal(x.gather(-1, i), v)
                res[name] = triton.testing.do_bench(lambda: row_topk(x, k, True, two_level=two),
                                                    return_mode="median")
                if not good:
                    print(f"FAIL {name} {dtype} R={R} L={L} k={k}", flush=True)
            line = (f"topk {str(dtype)[6:]:8s} R={R:6d} L={L:4d} k={k:2d}: torch {res['torch']:.3f} ms, "
                    f"one level {res['one level']:.3f}, two levels {res['two levels']:.3f}")
            print(line, flush=True)
            lines.append(line)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
