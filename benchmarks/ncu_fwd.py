"""One forward at a given shape, for Nsight Compute to read the kernels' counters, plus the
compiler's resource report (registers, spills, shared memory) of every Triton kernel it ran.

    ncu --clock-control none -k regex:fsa_fwd --launch-skip 2 --launch-count 1 \
        python benchmarks/ncu_fwd.py --T 65536 --G 8 --D 128
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import gpu_check as gc  # noqa: E402
import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--variant", default="fsa", help="a gpu_check variant, e.g. fsa@fsa_maxnreg=128")
    ap.add_argument("--resources", action="store_true", help="print registers/spills/shared of the kernels")
    ap.add_argument("--backward", action="store_true", help="run the kernel backward after the forward")
    ap.add_argument("--bwd-maxnreg", type=int, default=0)
    a = ap.parse_args()
    B, H, bs, n = 1, 4, 64, 16
    q, k, v, idx = gc.make_case(B, a.T, H, a.G, a.D, bs, n, "uniform", torch.bfloat16, gc.DEV, seed=a.G)
    plan = gc.plan_for(a.variant, B, a.T, H, a.G, a.D, a.D, n, bs, torch.bfloat16, True)
    print(plan.describe())
    o, lse = gc.forward(q, k, v, idx, bs, a.D ** -0.5, True, plan)
    torch.cuda.synchronize()
    if a.backward:
        import dataclasses

        import importlib
        bw = importlib.import_module("fsa_compile.lowering.backward")
        cfg = bw.backward_config(B, a.T, H, a.G, a.D, n, bs, torch.bfloat16)
        cfg = dataclasses.replace(cfg, maxnreg=a.bwd_maxnreg)
        print(cfg.describe())
        bw.kernel_backward(torch.randn_like(o), q, k, v, o, lse, idx, bs, a.D ** -0.5, True, cfg)
        torch.cuda.synchronize()
    if a.resources:
        from fsa_compile.templates import bwd_dkdv, bwd_dq, bwd_preprocess, fsa_fwd, merge, nsa_fwd
        for mod in (fsa_fwd, merge, nsa_fwd, bwd_dkdv, bwd_dq, bwd_preprocess):
            for name in dir(mod):
                fn = getattr(mod, name)
                cache = getattr(fn, "device_caches", None)
                if not name.endswith("_kernel") or cache is None:
                    continue
                for dev_cache in cache.values():
                    for compiled in list(dev_cache[0].values()):
                        md = compiled.metadata
                        print(f"{name}: regs {compiled.n_regs} spills {compiled.n_spills} "
                              f"shared {md.shared} warps {md.num_warps} stages {md.num_stages}")
                        try:
                            asm = compiled.asm["sass"]
                        except Exception as e:  # noqa: BLE001 (a diagnostic script)
                            asm = ""
                            print("    no sass:", e)
                        if asm:
                            ops = ["HGMMA", "HMMA", "LDGSTS", "LDG", "STG", "BAR", "LDL", "STL"]
                            print("    sass: " + ", ".join(f"{o} {asm.count(o + '.')}" for o in ops))


if __name__ == "__main__":
    main()
