"""GPU check and timing of the backward kernels (issue 5), in one process.

    python benchmarks/gpu_check_bwd.py [--quick] [--T 65536] [--variants]

1. Correctness: fresh random inputs (never zeros), outputs poisoned with NaN, against
   ``reference_backward`` on float32-upcast inputs (float64 for float32 inputs); relative
   Frobenius error per gradient; determinism (two runs bitwise equal).
2. Timing at T = 64K, H = 4, D = 128, bs = 64, n = 16, bf16, the two selection distributions
   of DESIGN.md section 5: our backward vs dense causal SDPA backward (and forward) on the same
   tensors; extra memory of our backward (peak allocated minus inputs/outputs).
Prints a short table last.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
try:
    bw = importlib.import_module("fsa_compile.lowering.backward")
except Exception as e:  # a colleague's half-written module elsewhere in the package: bypass it
    print(f"(package import failed: {e!r}; importing the backward modules directly)")
    import types
    for k in [m for m in sys.modules if m.startswith("fsa_compile")]:
        del sys.modules[k]
    for name, sub in (("fsa_compile", "fsa_compile"), ("fsa_compile.lowering", "fsa_compile/lowering")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(ROOT, sub)]
        sys.modules[name] = pkg
    bw = importlib.import_module("fsa_compile.lowering.backward")
from fsa_compile.reference import reference_backward, reference_forward  # noqa: E402

DEV = "cuda"


def make_indices(B, T, H, n, bs, dist, gen, pad_frac=0.0, dup_frac=0.0):
    """uniform: block 0, the two local blocks, the rest uniform among earlier blocks;
    skewed: top-n of a score with a per-(head, block) popularity term, same forced blocks."""
    nb = -(-T // bs)
    out = torch.empty(B, T, H, n, dtype=torch.int32, device=DEV)
    cur = torch.arange(T, device=DEV) // bs
    blk = torch.arange(nb, device=DEV)
    for b in range(B):
        for h in range(H):
            sc = torch.rand(T, nb, device=DEV, generator=gen)
            if dist == "skewed":
                pop = torch.randn(nb, device=DEV, generator=gen) * 2.0
                sc = sc + pop
            sc = torch.where(blk[None, :] <= cur[:, None], sc, torch.full_like(sc, -math.inf))
            forced = (blk[None, :] == 0) | (blk[None, :] == cur[:, None]) | (blk[None, :] == cur[:, None] - 1)
            sc = torch.where(forced & (blk[None, :] <= cur[:, None]), torch.full_like(sc, 1e9), sc)
            val, ix = sc.topk(n, dim=-1)
            ix = torch.where(torch.isinf(val), torch.full_like(ix, -1), ix)
            out[b, :, h] = ix.to(torch.int32)
    if pad_frac > 0:
        m = torch.rand(out.shape, device=DEV, generator=gen) < pad_frac
        out = torch.where(m, torch.full_like(out, -1), out)
    if dup_frac > 0:
        m = torch.rand(out.shape, device=DEV, generator=gen) < dup_frac
        out = torch.where(m, out[..., :1].expand_as(out), out)
    return out.contiguous()


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def parse_over(spec, G):
    """``"split=1,dq_warps=8"`` -> dict of BwdConfig overrides (``tile_t=64/G`` divides by G)."""
    d = {}
    for p in filter(None, spec.split(",")):
        key, val = p.split("=")
        d[key] = max(1, int(val[:-2]) // G) if val.endswith("/G") else int(val)
    return d


def check_case(B, T, H, G, D, bs, n, dtype, causal, dist, gen, layout="bthd", pad=0.05, dup=0.02, over=None):
    HQ = H * G
    scale = D ** -0.5

    def mk(shape):
        return torch.randn(shape, device=DEV, generator=gen, dtype=torch.float32).to(dtype)

    if layout == "bhtd":  # a [B,H,T,D] tensor arrives as a transposed view
        q = mk((B, HQ, T, D)).transpose(1, 2)
        k = mk((B, H, T, D)).transpose(1, 2)
        v = mk((B, H, T, D)).transpose(1, 2)
    else:
        q, k, v = mk((B, T, HQ, D)), mk((B, T, H, D)), mk((B, T, H, D))
    idx = make_indices(B, T, H, n, bs, dist, gen, pad, dup)
    if not causal:  # let some queries select future blocks too
        nb = -(-T // bs)
        m = torch.rand(idx.shape, device=DEV, generator=gen) < 0.2
        idx = torch.where(m, torch.randint(0, nb, idx.shape, device=DEV, generator=gen, dtype=torch.int32), idx)
    o, lse = reference_forward(q, k, v, idx, bs, scale, causal)
    do = mk(o.shape)
    up = torch.float64 if dtype == torch.float32 else torch.float32
    ref = reference_backward(do.to(up), q.to(up), k.to(up), v.to(up), o.to(up), lse, idx, bs, scale, causal)
    cfg = None
    if over:
        base = bw.backward_config(B, T, H, G, D, n, bs, dtype)
        cfg = dataclasses.replace(base, **over)
    bw.POISON_FOR_TESTS = True
    try:
        out1 = bw.kernel_backward(do, q, k, v, o, lse, idx, bs, scale, causal, cfg)
        out2 = bw.kernel_backward(do, q, k, v, o, lse, idx, bs, scale, causal, cfg)
    finally:
        bw.POISON_FOR_TESTS = False
    torch.cuda.synchronize()
    errs = [rel(a, r) for a, r in zip(out1, ref)]
    det = all(torch.equal(a, b) for a, b in zip(out1, out2))
    nan = any(bool(torch.isnan(a).any()) for a in out1)
    tol = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    ok = det and not nan and all(e < tol for e in errs)
    return ok, errs, det, nan


def run_checks(quick, overs=("",)):
    gen = torch.Generator(device=DEV)
    gen.manual_seed(int(time.time()) % 100000)
    T = 2048 if quick else 8192
    cases = []
    for G in (1, 2, 4, 8, 16):
        cases.append(dict(B=1, T=T, H=2, G=G, D=128, bs=64, n=16, dtype=torch.bfloat16, causal=True, dist="uniform"))
    cases += [
        dict(B=2, T=T - 37, H=2, G=2, D=96, bs=64, n=16, dtype=torch.bfloat16, causal=True, dist="skewed"),
        dict(B=1, T=T - 5, H=2, G=4, D=48, bs=32, n=8, dtype=torch.float16, causal=False, dist="uniform", layout="bhtd"),
        dict(B=1, T=1000, H=2, G=1, D=192, bs=64, n=8, dtype=torch.bfloat16, causal=True, dist="uniform"),
        dict(B=1, T=1000, H=1, G=8, D=256, bs=64, n=8, dtype=torch.bfloat16, causal=True, dist="skewed"),
        dict(B=1, T=777, H=2, G=2, D=64, bs=48, n=6, dtype=torch.float32, causal=True, dist="uniform"),
        dict(B=1, T=T, H=2, G=16, D=128, bs=64, n=16, dtype=torch.float16, causal=True, dist="skewed"),
        dict(B=1, T=999, H=2, G=2, D=64, bs=8, n=24, dtype=torch.bfloat16, causal=True, dist="uniform"),
        dict(B=1, T=T - 100, H=2, G=8, D=128, bs=128, n=8, dtype=torch.bfloat16, causal=True, dist="skewed"),
        dict(B=2, T=T // 2 + 3, H=1, G=1, D=128, bs=64, n=16, dtype=torch.bfloat16, causal=False, dist="skewed", layout="bhtd"),
    ]
    rows = []
    allok = True
    for c, spec in [(c, sp) for sp in overs for c in cases]:
        t = time.time()
        ok, errs, det, nan = check_case(gen=gen, over=parse_over(spec, c["G"]), **c)
        allok &= ok
        desc = (f"[{spec}] " if spec else "") + f"G={c['G']} T={c['T']} D={c['D']} bs={c['bs']} n={c['n']} {str(c['dtype'])[6:]} {'causal' if c['causal'] else 'full'} {c['dist']} {c.get('layout','bthd')}"
        rows.append((desc, errs, det, nan, ok))
        print(f"check {desc}: dq {errs[0]:.2e} dk {errs[1]:.2e} dv {errs[2]:.2e} det={det} nan={nan} {'OK' if ok else 'FAIL'} ({time.time()-t:.1f}s)", flush=True)
    return allok, rows


def bench(fn, warmup=25, rep=150):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def run_timing(T, Gs, dists, variants, D=128):
    import triton  # noqa
    B, H, bs, n = 1, 4, 64, 16
    dtype = torch.bfloat16
    gen = torch.Generator(device=DEV)
    gen.manual_seed(1234)
    scale = D ** -0.5
    res = []
    for G in Gs:
        HQ = H * G
        q = torch.randn(B, T, HQ, D, device=DEV, dtype=dtype, generator=gen)
        k = torch.randn(B, T, H, D, device=DEV, dtype=dtype, generator=gen)
        v = torch.randn(B, T, H, D, device=DEV, dtype=dtype, generator=gen)
        do = torch.randn(B, T, HQ, D, device=DEV, dtype=dtype, generator=gen)
        # dense causal SDPA fwd / bwd on the same tensors ([B, H, T, D] views)
        qd, kd, vd = (x.transpose(1, 2).detach().requires_grad_(True) for x in (q, k, v))
        dod = do.transpose(1, 2)
        t_dfwd = bench(lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True))
        od = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True)
        t_dbwd = bench(lambda: torch.autograd.grad(od, (qd, kd, vd), dod, retain_graph=True))
        del od
        for dist in dists:
            idx = make_indices(B, T, H, n, bs, dist, gen)
            o, lse = reference_forward(q, k, v, idx, bs, scale, True)
            for name, cfg in variants(G):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                out = bw.kernel_backward(do, q, k, v, o, lse, idx, bs, scale, True, cfg)
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - base - sum(x.numel() * x.element_size() for x in out)
                del out
                t = bench(lambda: bw.kernel_backward(do, q, k, v, o, lse, idx, bs, scale, True, cfg))
                r = dict(G=G, dist=dist, variant=name, ms=t, dense_bwd=t_dbwd, dense_fwd=t_dfwd,
                         ratio_bwd=t / t_dbwd, extra_gib=peak / 2**30,
                         cfg=(cfg or bw.backward_config(B, T, H, G, D, n, bs, dtype)).describe())
                res.append(r)
                print(f"time G={G} {dist} {name}: {t:.2f} ms, dense bwd {t_dbwd:.2f} fwd {t_dfwd:.2f}, ratio {t/t_dbwd:.3f}, extra {peak/2**30:.2f} GiB [{r['cfg']}]", flush=True)
            del o, lse, idx
        del q, k, v, do, qd, kd, vd
    return res


def profile_once(T, G, dist="uniform"):
    B, H, D, bs, n = 1, 4, 128, 64, 16
    dtype = torch.bfloat16
    gen = torch.Generator(device=DEV)
    gen.manual_seed(7)
    q = torch.randn(B, T, H * G, D, device=DEV, dtype=dtype, generator=gen)
    k = torch.randn(B, T, H, D, device=DEV, dtype=dtype, generator=gen)
    v = torch.randn(B, T, H, D, device=DEV, dtype=dtype, generator=gen)
    do = torch.randn_like(q)
    idx = make_indices(B, T, H, n, bs, dist, gen)
    o, lse = reference_forward(q, k, v, idx, bs, D ** -0.5, True)
    bw.kernel_backward(do, q, k, v, o, lse, idx, bs, D ** -0.5, True)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            bw.kernel_backward(do, q, k, v, o, lse, idx, bs, D ** -0.5, True)
        torch.cuda.synchronize()
    print(f"profile G={G} {dist} (3 runs):")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--G", type=str, default="1,2,4,8,16")
    ap.add_argument("--dists", type=str, default="uniform,skewed")
    ap.add_argument("--variants", type=str, default="")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--D", type=int, default=128, help="head dim of the timed cases")
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--check-variants", action="store_true", help="run the checks with each variant's config too")
    ap.add_argument("--profile", type=str, default="")
    ap.add_argument("--json", type=str, default=os.path.join(os.environ.get("OUT", "/tmp"), "bwd_results.json"))
    a = ap.parse_args()
    import triton
    print(f"torch {torch.__version__} triton {triton.__version__} {torch.cuda.get_device_name()}", flush=True)
    allok, rows = (True, [])
    names = [s for s in a.variants.split(";") if s]
    if not a.no_check:
        allok, rows = run_checks(a.quick, [""] + (names if a.check_variants else []))
    for g in filter(None, a.profile.split(",")):
        profile_once(a.T, int(g))
    res = []
    if not a.no_time:
        def variants(G):
            out = [("default", None)]
            base = bw.backward_config(1, a.T, 4, G, a.D, 16, 64, torch.bfloat16)
            for s in names:  # e.g. "tile_t=64/G,ch=512;num_warps=4"
                cfg = dataclasses.replace(base, **parse_over(s, G))
                out.append((s, cfg))
            return out

        res = run_timing(a.T, [int(g) for g in a.G.split(",")], a.dists.split(","), variants, a.D)
    with open(a.json, "w") as f:
        json.dump(dict(checks=[(r[0], r[1], r[2], r[3], r[4]) for r in rows], timing=res), f, indent=1)
    print("\n=== summary ===")
    print(f"correctness: {'ALL OK' if allok else 'FAILURES'} ({sum(r[4] for r in rows)}/{len(rows)})")
    for r in rows:
        if not r[4]:
            print("  FAIL", r[0], r[1], "det", r[2], "nan", r[3])
    print(f"{'G':>3} {'dist':8} {'variant':28} {'ms':>8} {'dense_bwd':>9} {'ratio':>6} {'GiB':>5}")
    for r in res:
        print(f"{r['G']:>3} {r['dist']:8} {r['variant'][:28]:28} {r['ms']:8.2f} {r['dense_bwd']:9.2f} {r['ratio_bwd']:6.3f} {r['extra_gib']:5.2f}")


if __name__ == "__main__":
    main()
