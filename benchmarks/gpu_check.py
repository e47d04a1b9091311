"""One device call: correctness of every kernel variant against the reference, then timings.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py [--quick] [--T 65536] [--only G,..]

Part 1 checks fresh random inputs (poisoned outputs) at moderate sizes against
``reference_forward`` on float32-upcast inputs. Part 2 times the variants at long T with
``triton.testing.do_bench`` medians, dense SDPA alongside, and prints a table last.
"""
import argparse
import os
import sys
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
try:
    import fsa_compile  # noqa: F401
except Exception as e:  # the package __init__ is someone else's and may be mid-edit
    print("note: fsa_compile/__init__ failed to import, using submodules directly:", e)
    for k in [k for k in sys.modules if k.startswith("fsa_compile")]:
        del sys.modules[k]
    m = types.ModuleType("fsa_compile")
    m.__path__ = [os.path.join(os.path.dirname(__file__), "..", "fsa_compile")]
    sys.modules["fsa_compile"] = m

import torch  # noqa: E402

from fsa_compile.lowering.forward import forward  # noqa: E402
from fsa_compile.lowering.plan import choose_plan  # noqa: E402
from fsa_compile.reference import reference_forward  # noqa: E402
from fsa_compile.selection import skewed_selection, uniform_selection  # noqa: E402
from fsa_compile.bench import dense_sdpa, _no_math, measure, visible_pairs, make_case  # noqa: E402
from fsa_compile.templates.index import build_block_index  # noqa: E402
from fsa_compile.templates.nsa_fwd import tile_block_union  # noqa: E402

DEV = torch.device("cuda")
VARIANTS = {
    "nsa1": ("nsa", {}),
    "nsa2u": ("nsa", dict(tok=2)),
    "nsa4u": ("nsa", dict(tok=4)),
    "nsa8u": ("nsa", dict(tok=8)),
    "fsa64": ("fsa", dict(fsa_rows=64, fsa_warps=4)),
    "fsa128": ("fsa", dict(fsa_rows=128, fsa_warps=8)),
    "fsa64t4": ("fsa", dict(fsa_rows=64, fsa_warps=4, fsa_tpp=4)),
    "fsa64t8": ("fsa", dict(fsa_rows=64, fsa_warps=4, fsa_tpp=8)),
    "fsa64t4s2": ("fsa", dict(fsa_rows=64, fsa_warps=4, fsa_tpp=4, fsa_stages=2)),
    "fsa128t4": ("fsa", dict(fsa_rows=128, fsa_warps=8, fsa_tpp=4)),
    "fsa32t8": ("fsa", dict(fsa_rows=32, fsa_warps=4, fsa_tpp=8)),
    "fsa32t4": ("fsa", dict(fsa_rows=32, fsa_warps=4, fsa_tpp=4)),
    "fsa64t4w8": ("fsa", dict(fsa_rows=64, fsa_warps=8, fsa_tpp=4)),
    "fsa64t4m": ("fsa", dict(fsa_rows=64, fsa_warps=4, fsa_tpp=4, fsa_tile_map=True)),
    "fsa64t4me": ("fsa", dict(fsa_rows=64, fsa_warps=4, fsa_tpp=4, fsa_tile_map=True, fsa_evict=True)),
    "fsa64t4ma": ("fsa", dict(fsa_rows=64, fsa_warps=4, fsa_tpp=4, fsa_tile_map=True, fsa_ent_all=True)),
    "fsa64t8ma": ("fsa", dict(fsa_rows=64, fsa_warps=4, fsa_tpp=8, fsa_tile_map=True, fsa_ent_all=True)),
    "fsa64t4mae": ("fsa", dict(fsa_rows=64, fsa_warps=4, fsa_tpp=4, fsa_tile_map=True, fsa_ent_all=True, fsa_evict=True)),
    "fsa64t2": ("fsa", dict(fsa_rows=64, fsa_warps=4, fsa_tpp=2)),
    "nsa1q4": ("nsa", dict(nsa_seq=4)),
    "nsa1q16": ("nsa", dict(nsa_seq=16)),
    "nsa1s3": ("nsa", dict(nsa_stages=3)),
    "nsa1w2": ("nsa", dict(nsa_warps=2)),
}


def plan_for(name, B, T, H, G, D, Dv, n, bs, dtype, causal):
    """``name`` is a VARIANTS key or a strategy, optionally followed by ``@key=int[+key=int]``
    plan overrides (e.g. ``fsa@chunk=4096``)."""
    name, _, extra = name.partition("@")
    strat, over = VARIANTS[name] if name in VARIANTS else (name, {})
    over = dict(over)
    for kv in filter(None, extra.split("+")):
        key, val = kv.split("=")
        over[key] = int(val)
    if strat == "fsa" and "fsa_rows" in over:
        rows = max(over["fsa_rows"], G, 16)
        over["fsa_rows"] = rows
        over["fsa_tile_q"] = max(1, rows // G)
    return choose_plan(B, T, H, G, D, Dv, n, bs, dtype, causal, strat, DEV, **over)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check_case(name, B, T, H, G, D, bs, n, dtype, dist, causal=True, layout="bthd", Dv=None,
               chunk=None, seed=0):
    Dv = Dv or D
    g = torch.Generator(device=DEV).manual_seed(seed)
    HQ = H * G
    if layout == "bthd":
        q = torch.randn(B, T, HQ, D, device=DEV, dtype=dtype, generator=g)
        k = torch.randn(B, T, H, D, device=DEV, dtype=dtype, generator=g)
        v = torch.randn(B, T, H, Dv, device=DEV, dtype=dtype, generator=g)
    else:  # bhtd storage, seen through a transposed view
        q = torch.randn(B, HQ, T, D, device=DEV, dtype=dtype, generator=g).transpose(1, 2)
        k = torch.randn(B, H, T, D, device=DEV, dtype=dtype, generator=g).transpose(1, 2)
        v = torch.randn(B, H, T, Dv, device=DEV, dtype=dtype, generator=g).transpose(1, 2)
    nb = (T + bs - 1) // bs
    if dist == "uniform":
        idx = uniform_selection(B, T, H, n, bs, device=DEV, generator=g)
    elif dist == "skewed":
        idx = skewed_selection(q, k, n, bs)
    else:  # random with padding, duplicates and future blocks
        idx = torch.randint(-2, nb, (B, T, H, n), device=DEV, generator=g, dtype=torch.int32)
        idx = torch.where(idx < 0, torch.full_like(idx, -1), idx)
        idx[:, :, :, -1] = idx[:, :, :, 0]  # a duplicate in every row
    scale = D ** -0.5
    ro, rl = reference_forward(q.float(), k.float(), v.float(), idx, bs, scale, causal)
    plan = plan_for(name, B, T, H, G, D, Dv, n, bs, dtype, causal)
    if chunk is not None:
        import dataclasses
        plan = dataclasses.replace(plan, chunk=chunk)
    o, l = forward(q, k, v, idx, bs, scale, causal, plan, poison=True)
    torch.cuda.synchronize()
    fin = torch.isfinite(rl)
    ok_inf = torch.equal(torch.isinf(l) & (l < 0), torch.isinf(rl) & (rl < 0))
    nan = bool(o.isnan().any()) or bool(l.isnan().any())
    eo = rel(o, ro)
    el = (l[fin] - rl[fin]).abs().max().item() if fin.any() else 0.0
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-2
    good = (not nan) and ok_inf and eo < tol and el < 5e-2
    return good, f"{name:7s} B{B} T{T} H{H} G{G} D{D}/{Dv} bs{bs} n{n} {str(dtype)[6:]} {dist} " \
        f"causal={causal} {layout} chunk={chunk}: rel_o {eo:.2e} lse {el:.2e} inf_ok {ok_inf} nan {nan}"


def part1(quick, names):
    cases = []
    for G in (1, 2, 4, 8, 16):
        for name in names:
            cases.append((name, 2, 1000, 2, G, 128, 64, 16, torch.bfloat16, "uniform"))
            if not quick:
                cases.append((name, 1, 777, 2, G, 96, 32, 8, torch.float16, "random"))
    for name in names:
        cases.append((name, 1, 700, 2, 4, 48, 64, 6, torch.float16, "random", False))  # non-causal
        cases.append((name, 1, 2048, 2, 2, 128, 64, 16, torch.bfloat16, "skewed", True, "bhtd"))
        cases.append((name, 1, 513, 1, 8, 256, 64, 5, torch.bfloat16, "random", True, "bhtd"))
        cases.append((name, 1, 300, 3, 1, 64, 16, 7, torch.float32, "random"))
        cases.append((name, 1, 900, 2, 2, 64, 64, 4, torch.bfloat16, "random", True, "bthd", 128))
    for name in ("fsa64", "fsa128"):
        cases.append((name, 2, 3000, 2, 4, 128, 64, 16, torch.bfloat16, "uniform", True, "bthd",
                      None, 512))
    bad = 0
    t0 = time.time()
    for c in cases:
        kw = {}
        if len(c) > 10:
            kw["causal"] = c[10]
        if len(c) > 11:
            kw["layout"] = c[11]
        if len(c) > 12:
            kw["Dv"] = c[12]
        if len(c) > 13:
            kw["chunk"] = c[13]
        try:
            good, msg = check_case(*c[:10], **kw, seed=len(msg_log))
        except Exception as e:  # noqa: BLE001
            good, msg = False, f"{c}: EXCEPTION {type(e).__name__}: {str(e)[:300]}"
        msg_log.append(("PASS " if good else "FAIL ") + msg)
        if not good:
            bad += 1
            print("FAIL", msg, flush=True)
    print(f"part 1: {len(cases) - bad}/{len(cases)} passed in {time.time() - t0:.0f}s", flush=True)
    failed = {m.split()[1] for m in msg_log if m.startswith("FAIL")}
    return failed


msg_log = []


def part2(T, Gs, names, dists, D=128):
    B, H, bs, n = 1, 4, 64, 16
    rows = []
    for G in Gs:
        for dist in dists:
            q, k, v, idx = make_case(B, T, H, G, D, bs, n, dist, torch.bfloat16, DEV, seed=G)
            with _no_math():
                dms, _ = measure(lambda: dense_sdpa(q, k, v))
            # the selection's own statistics: how many (token, slot) land on each block
            cnt = torch.bincount(idx[0, :, 0].clamp_min(0).flatten().long())
            line = f"T={T} G={G} {dist}: dense {dms:.3f} ms; block counts max {cnt.max().item()} " \
                f"median {cnt.float().median().item():.0f}"
            print(line, flush=True)
            pairs = visible_pairs(idx, T, bs)
            res = {}
            for name in names:
                plan = plan_for(name, B, T, H, G, D, D, n, bs, torch.bfloat16, True)
                try:
                    ms, mem = measure(lambda: forward(q, k, v, idx, bs, D ** -0.5, True, plan))
                except Exception as e:  # noqa: BLE001
                    print(f"   {name}: EXCEPTION {str(e)[:200]}", flush=True)
                    continue
                res[name] = (ms, mem)
                tf = 4.0 * D * pairs * G / ms / 1e9
                print(f"   {name:7s} {ms:8.3f} ms ratio {ms / dms:6.3f} {tf:6.1f} TFLOP/s "
                      f"mem {mem:5.2f} GiB [{plan.describe()}]", flush=True)
            # pieces: index build / union build
            pf = plan_for("fsa128", B, T, H, G, D, D, n, bs, torch.bfloat16, True)
            C = min(pf.chunk, T)
            nc = (T + C - 1) // C
            ipad = torch.cat([idx, idx.new_full((B, nc * C - T, H, n), -1)], 1)
            ims, _ = measure(lambda: build_block_index(ipad.view(B * nc, C, H, n), (T + bs - 1) // bs, pf.fsa_tile_q))
            ums, _ = measure(lambda: tile_block_union(idx, 4, bs, True))
            print(f"   pieces: fsa index build {ims:.3f} ms (chunk {C}), union(4) build {ums:.3f} ms", flush=True)
            rows.append((G, dist, dms, res))
            del q, k, v, idx
            torch.cuda.empty_cache()
    print("\n=== T=%d forward, ms (ratio to dense) [extra GiB] ===" % T)
    print(f"{'G':>3} {'dist':>8} {'dense':>8} " + " ".join(f"{n_:>20}" for n_ in names))
    for G, dist, dms, res in rows:
        cells = []
        for name in names:
            if name in res:
                ms, mem = res[name]
                cells.append(f"{ms:7.2f} ({ms / dms:5.3f}) [{mem:4.2f}]")
            else:
                cells.append(f"{'-':>20}")
        print(f"{G:>3} {dist:>8} {dms:8.2f} " + " ".join(f"{c:>20}" for c in cells))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--G", default="1,2,4,8,16")
    ap.add_argument("--variants", default="fsa,nsa")
    ap.add_argument("--dist", default="uniform,skewed")
    ap.add_argument("--D", type=int, default=128, help="head dim of the timed cases")
    a = ap.parse_args()
    import triton
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    names = a.variants.split(",")
    failed = set() if a.skip_check else part1(a.quick, names)
    if failed:
        print("variants with failures (not timed):", sorted(failed))
    names = [x for x in names if x not in failed]
    part2(a.T, [int(x) for x in a.G.split(",")], names, a.dist.split(","), a.D)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "check_log.txt"), "w") as f:
            f.write("\n".join(msg_log))


if __name__ == "__main__":
    main()
