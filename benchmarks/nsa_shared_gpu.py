"""One device call for the NSA order's shared-block tiles (plan option ``nsa_shared``).

    python benchmarks/nsa_shared_gpu.py [--T 65536] [--skip-check]

(The calls of 2026-12-01 also timed variants whose knobs were removed afterwards: phase 1
pipelined 2 deep, ``nsa_shared_stages``, in commit 8603ad7; see NOTES.md.)

Part 1: every shared-tile variant against the float32 reference at real sizes (fresh random
inputs, poisoned outputs), G = 16 and 32, several head dims, layouts, selections (NSA's uniform
and skewed, random with padding, duplicates and future blocks), causal or not, bulk copies or
plain loads. Part 2: times at long T, G = 16, the one-token kernel and the shared tiles with
their launch knobs, dense SDPA alongside; a table last.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

from fsa_compile.bench import _no_math, dense_sdpa, make_case, measure, visible_pairs  # noqa: E402
from fsa_compile.lowering.forward import forward  # noqa: E402
from fsa_compile.lowering.plan import choose_plan  # noqa: E402
from fsa_compile.reference import reference_forward  # noqa: E402
from fsa_compile.selection import skewed_selection, uniform_selection  # noqa: E402

DEV = torch.device("cuda")
# name -> plan overrides of the "nsa" strategy
VARIANTS = {
    "nsa1": dict(tok=1),  # the one-token kernel
    "sh4r168": dict(tok=4, nsa_shared=True, nsa_maxnreg=168),  # the default at G = 16
    "sh4": dict(tok=4, nsa_shared=True),
    "sh4r160": dict(tok=4, nsa_shared=True, nsa_maxnreg=160),
    "sh2r168": dict(tok=2, nsa_shared=True, nsa_maxnreg=168),
    "sh8r168": dict(tok=8, nsa_shared=True, nsa_maxnreg=168),
    "sh4plain": dict(tok=4, nsa_shared=True, nsa_tma=False, nsa_maxnreg=168),
}


def check(name, B, T, H, G, D, bs, n, dtype, dist, causal, layout, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    HQ = H * G

    def rnd(h, d):
        if layout == "bthd":
            return torch.randn(B, T, h, d, device=DEV, dtype=dtype, generator=g)
        return torch.randn(B, h, T, d, device=DEV, dtype=dtype, generator=g).transpose(1, 2)

    q, k, v = rnd(HQ, D), rnd(H, D), rnd(H, D)
    nb = (T + bs - 1) // bs
    if dist == "uniform":
        idx = uniform_selection(B, T, H, n, bs, device=DEV, generator=g)
    elif dist == "skewed":
        idx = skewed_selection(q, k, n, bs)
    else:  # random with padding, future blocks, and a duplicate in every third row
        idx = torch.randint(-2, nb, (B, T, H, n), device=DEV, generator=g, dtype=torch.int32)
        idx = torch.where(idx < 0, torch.full_like(idx, -1), idx)
        idx[:, ::3, :, -1] = idx[:, ::3, :, 0]
        idx[:, :, :, 1] = 0  # one block every row lists, so tiles share it
    plan = choose_plan(B, T, H, G, D, D, n, bs, dtype, causal, "nsa", DEV, **VARIANTS[name])
    o, lse = forward(q, k, v, idx, bs, D**-0.5, causal, plan, poison=True)
    ro, rl = reference_forward(q.float(), k.float(), v.float(), idx, bs, D**-0.5, causal)
    torch.cuda.synchronize()
    fin = torch.isfinite(rl)
    nan = bool(o.isnan().any() or lse.isnan().any())
    inf_ok = torch.equal(torch.isinf(lse), torch.isinf(rl))
    eo = ((o.float() - ro).norm() / ro.norm().clamp_min(1e-30)).item()
    el = (lse[fin] - rl[fin]).abs().max().item() if fin.any() else 0.0
    good = not nan and inf_ok and eo < (2e-2 if dtype == torch.bfloat16 else 1e-2) and el < 5e-2
    return good, (f"{name:8s} T{T} H{H} G{G} D{D} bs{bs} n{n} {str(dtype)[6:]} {dist} causal={causal} "
                  f"{layout}: rel_o {eo:.2e} lse {el:.2e} inf_ok {inf_ok} nan {nan} [{plan.describe()}]")


def part1():
    cases = []
    for name in ("sh4r168", "sh2r168", "sh4plain"):
        cases += [
            (name, 2, 3000, 2, 16, 128, 64, 16, torch.bfloat16, "uniform", True, "bthd"),
            (name, 1, 2048, 2, 16, 128, 64, 16, torch.bfloat16, "skewed", True, "bhtd"),
            (name, 1, 1000, 2, 16, 96, 32, 8, torch.float16, "random", True, "bthd"),
            (name, 1, 777, 1, 16, 192, 64, 6, torch.bfloat16, "random", False, "bhtd"),
            (name, 1, 513, 2, 32, 48, 64, 5, torch.float16, "uniform", True, "bthd"),
        ]
    bad = 0
    t0 = time.time()
    for i, c in enumerate(cases):
        try:
            good, msg = check(*c, seed=i)
        except Exception as e:  # noqa: BLE001
            good, msg = False, f"{c[0]} {c[1:]}: EXCEPTION {type(e).__name__}: {str(e)[:400]}"
        bad += not good
        print(("PASS " if good else "FAIL ") + msg, flush=True)
    print(f"part 1: {len(cases) - bad}/{len(cases)} passed in {time.time() - t0:.0f} s", flush=True)


def part2(T):
    B, H, G, D, bs, n = 1, 4, 16, 128, 64, 16
    rows = []
    for dist in ("uniform", "skewed"):
        q, k, v, idx = make_case(B, T, H, G, D, bs, n, dist, torch.bfloat16, DEV, seed=G)
        with _no_math():
            dms, _ = measure(lambda: dense_sdpa(q, k, v))
        pairs = visible_pairs(idx, T, bs)
        print(f"T={T} G={G} {dist}: dense {dms:.3f} ms", flush=True)
        ref = None
        res = {}
        for name, over in VARIANTS.items():
            plan = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, "nsa", DEV, **over)
            try:
                o, _ = forward(q, k, v, idx, bs, D**-0.5, True, plan)
                if ref is None:
                    ref = o
                diff = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                ms, mem = measure(lambda: forward(q, k, v, idx, bs, D**-0.5, True, plan))
            except Exception as e:  # noqa: BLE001
                print(f"   {name}: EXCEPTION {str(e)[:300]}", flush=True)
                continue
            res[name] = ms
            print(f"   {name:8s} {ms:8.3f} ms ratio {ms / dms:6.3f} "
                  f"{4.0 * D * pairs * G / ms / 1e9:6.1f} TFLOP/s mem {mem:5.2f} GiB "
                  f"vs nsa1 {diff:.1e} [{plan.describe()}]", flush=True)
        rows.append((dist, dms, res))
        del q, k, v, idx, ref
        torch.cuda.empty_cache()
    print(f"\n=== T={T} G={G} forward, ms (ratio to dense) ===")
    print(f"{'dist':>8} {'dense':>8} " + " ".join(f"{x:>16}" for x in VARIANTS))
    for dist, dms, res in rows:
        cells = [f"{res[x]:6.2f} ({res[x] / dms:.3f})" if x in res else "-" for x in VARIANTS]
        print(f"{dist:>8} {dms:8.2f} " + " ".join(f"{c:>16}" for c in cells))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--skip-check", action="store_true")
    a = ap.parse_args()
    import triton
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    if not a.skip_check:
        part1()
    part2(a.T)


if __name__ == "__main__":
    main()
