"""What GQA groups written g-major (``hq = g * H + h``) cost against the op's own h-major order.

    python benchmarks/regroup_gpu.py [--T 16384 65536] [--G 4 16]

Compiles, with ``backend="fsa"``, the gather form in both groupings (``gather_bhtd_matmul_where``,
h-major, and ``gather_group_major``, g-major, whose rewrite regroups q's heads for the op and the
output back), feeds the g-major one the same q with its heads regrouped, checks that both give
the same output and gradients (bitwise: the op sees the same values), and times forward and
forward + backward of each. Prints one table row per shape.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton.testing  # noqa: E402

from fsa_compile.patterns.forms import FORMS  # noqa: E402
from fsa_compile.selection import uniform_selection  # noqa: E402
from fsa_compile.testing import RewriteCounter  # noqa: E402


def regroup(x, outer, inner):
    """Heads dim 1 of ``[B, outer*inner, ...]`` read as ``inner x outer``."""
    return x.unflatten(1, (outer, inner)).transpose(1, 2).flatten(1, 2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--G", type=int, nargs="+", default=[4, 16])
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--device", default="cuda", help="cpu: check only (a smoke test; no timings)")
    args = p.parse_args()
    bs, n, H, D, dev = args.bs, args.n, args.H, args.D, args.device
    bench = triton.testing.do_bench if dev == "cuda" else (lambda fn: float("nan"))
    rows = []
    for T in args.T:
        for G in args.G:
            torch._dynamo.reset()
            HQ = H * G
            g = torch.Generator(device=dev).manual_seed(T + G)
            q = torch.randn(1, HQ, T, D, device=dev, dtype=torch.bfloat16, generator=g)
            k = torch.randn(1, H, T, D, device=dev, dtype=torch.bfloat16, generator=g)
            v = torch.randn(1, H, T, D, device=dev, dtype=torch.bfloat16, generator=g)
            idx = uniform_selection(1, T, H, n, bs, device=dev).transpose(1, 2).contiguous()  # [B, H, T, n]
            qg = regroup(q, H, G).contiguous()  # head h*G+g of q at g*H+h
            fh = torch.compile(FORMS["gather_bhtd_matmul_where"].fn, backend="fsa", fullgraph=True)
            fg = torch.compile(FORMS["gather_group_major"].fn, backend="fsa", fullgraph=True)
            res = {}
            for name, f, qq in (("h-major", fh, q), ("g-major", fg, qg)):
                print(f"T={T} G={G} {name}: compiling ...", flush=True)
                with RewriteCounter() as c:
                    qr, kr, vr = (t.detach().requires_grad_(True) for t in (qq, k, v))
                    o = f(qr, kr, vr, idx, bs)
                assert len(c.rewrites) == 1, [str(m) for m in c.misses]
                do = torch.randn(o.shape, device=dev, dtype=o.dtype, generator=torch.Generator(device=dev).manual_seed(7))
                if name == "g-major":
                    do = regroup(do, H, G).contiguous()
                o.backward(do)
                with torch.no_grad():
                    fwd = bench(lambda: f(qq, k, v, idx, bs))

                def step():
                    qr.grad = kr.grad = vr.grad = None
                    f(qr, kr, vr, idx, bs).backward(do)

                both = bench(step)
                res[name] = (o.detach(), qr.grad, kr.grad, vr.grad, fwd, both)
            oh, dqh, dkh, dvh, fwd_h, both_h = res["h-major"]
            og, dqg, dkg, dvg, fwd_g, both_g = res["g-major"]
            same = (torch.equal(regroup(og, G, H), oh) and torch.equal(regroup(dqg, G, H), dqh)
                    and torch.equal(dkg, dkh) and torch.equal(dvg, dvh))
            if not same:
                diff = max(float((regroup(og, G, H).float() - oh.float()).abs().max()),
                           float((regroup(dqg, G, H).float() - dqh.float()).abs().max()),
                           float((dkg.float() - dkh.float()).abs().max()))
                same = f"no (max diff {diff:.3g})"
            rows.append((T, G, fwd_h, fwd_g, both_h, both_g, same))
            print(f"T={T} G={G}: fwd {fwd_h:.3f} / {fwd_g:.3f} ms, fwd+bwd {both_h:.3f} / {both_g:.3f} ms, "
                  f"bitwise equal: {same}", flush=True)
    print("\n| T | G | fwd h-major | fwd g-major | fwd+bwd h-major | fwd+bwd g-major | equal |")
    print("|---|---|---|---|---|---|---|")
    for T, G, a, b, c, d, same in rows:
        print(f"| {T} | {G} | {a:.3f} | {b:.3f} (+{100 * (b / a - 1):.1f}%) | {c:.3f} | {d:.3f} "
              f"(+{100 * (d / c - 1):.1f}%) | {same} |")


if __name__ == "__main__":
    main()
