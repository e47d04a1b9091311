"""Launch knobs of the row top-k kernel (rows per program, warps, group width) at the e2e
model's selection sizes, each checked against torch.topk and timed (do_bench medians).

    PYTHONUNBUFFERED=1 python benchmarks/topk_knobs_gpu.py [--L 256,512,1024] [--rows 8,16,32]
        [--warps 2,4] [--groups 8,16,32]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import triton  # noqa: E402

from fsa_compile.lowering.row_topk import tiles  # noqa: E402
from fsa_compile.templates.row_topk import row_topk_kernel  # noqa: E402


def launch(x, k, rows, warps, group):
    R, L = x.shape
    block_l = max(16, triton.next_power_of_2(L))
    v = x.new_empty(R, k)
    i = x.new_empty(R, k, dtype=torch.int64)
    row_topk_kernel[(triton.cdiv(R, rows),)](x, v, i, R, L, x.stride(0), K=k, LARGEST=True,
                                             NARROW=x.dtype != torch.float32, ROWS=rows, BLOCK_L=block_l,
                                             GROUP=group, num_warps=warps)
    return v, i


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--L", default="512,1024", help="row lengths; rows = 32K tokens x 4 heads x (L / 512)")
    ap.add_argument("--rows", default="2,4,8,16,32")
    ap.add_argument("--warps", default="1,2,4,8")
    ap.add_argument("--groups", default="8,16,32,64,0", help="0: one level (the whole row)")
    a = ap.parse_args()
    ints = lambda t: [int(x) for x in t.split(",")]  # noqa: E731
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    out = []
    for L in ints(a.L):
        R, k = 131072 * L // 512, 16
        x = torch.randn(R, L, device="cuda", generator=g).to(torch.bfloat16)
        x[:, 0] = float("inf")
        x[:, L // 3] = float("inf")
        x[R // 2:, L - L // 4:] = float("-inf")
        rv, _ = torch.topk(x, k, dim=-1)
        bl, r0, w0, g0 = tiles(L)
        res = []
        for rows in ints(a.rows):
            for warps in ints(a.warps):
                for group in [gp or bl for gp in ints(a.groups)]:
                    if rows * bl // (32 * warps) < 1 or group > bl:
                        continue
                    try:
                        v, i = launch(x, k, rows, warps, group)
                        good = torch.equal(v, rv) and torch.equal(x.gather(-1, i), v)
                        ms = triton.testing.do_bench(lambda: launch(x, k, rows, warps, group), return_mode="median")
                    except Exception as e:  # noqa: BLE001
                        print(f"R={R} L={L} rows {rows} warps {warps} group {group}: {type(e).__name__}", flush=True)
                        continue
                    res.append((ms, rows, warps, group, good))
                    print(f"R={R} L={L} rows {rows:2d} warps {warps} group {group:4d}: {ms:.4f} ms"
                          f"{'' if good else ' WRONG'}{'  (default)' if (rows, warps, group) == (r0, w0, g0) else ''}",
                          flush=True)
        res.sort()
        d = [r for r in res if (r[1], r[2], r[3]) == (r0, w0, g0)]
        out.append(f"[{R}, {L}] top-{k}: default rows {r0} warps {w0} group {g0} "
                   f"{d[0][0] if d else float('nan'):.4f} ms; best: "
                   + "; ".join(f"rows {r} warps {w} group {gp} {ms:.4f}{'' if ok else ' WRONG'}"
                               for ms, r, w, gp, ok in res[:5]))
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
