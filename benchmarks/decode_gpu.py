"""A decode step written in plain PyTorch (``tests/test_patterns_decode.py``'s gather form: the
newest T_q tokens over a T_k-token cache) on the GPU: eager, ``torch.compile`` with Inductor and
``backend="fsa"``, each with and without ``mode="reduce-overhead"``. Checks each against eager and
prints ms per call (``triton.testing.do_bench`` medians).

    python benchmarks/decode_gpu.py --Tk 65536 --Tq 1 16 --G 4 16 [--profile]

``--profile`` adds, per shape, the host time of the op's pieces called one by one (ms per call,
returned before the GPU is done) and a torch.profiler table of 50 compiled ``fsa`` steps by own
host time: where a launched step's time goes.
"""
from __future__ import annotations

import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_patterns_decode import decode_gather  # noqa: E402

from offset_gpu import BS, DEV, N, arguments, sequence  # noqa: E402  (this script's folder)
from op_host_cost import host_time  # noqa: E402

from fsa_compile import op as op_mod  # noqa: E402
from fsa_compile import reference  # noqa: E402
from fsa_compile.lowering import forward as kernel_forward  # noqa: E402
from fsa_compile.lowering.canonical import canonical_indices  # noqa: E402


def profile(q, k, v, idx, bs, step):
    """Host time of the op's pieces at this shape, then the profiler's table of ``step``."""
    T = k.shape[1]
    scale = q.shape[-1] ** -0.5
    cidx = reference.canonical_indices(idx, T, bs, count_duplicates=True, on_out_of_range="assert")
    plan = op_mod.plan_for(q, k, v, cidx, bs, True, "auto")
    qoff = T - q.shape[1]
    args = (q, k, v, idx, bs, scale, True, True, "assert", "auto")
    pieces = [
        ("canonical_indices (assert)", lambda: reference.canonical_indices(
            idx, T, bs, count_duplicates=True, on_out_of_range="assert")),
        ("canonical_indices (drop)", lambda: reference.canonical_indices(
            idx, T, bs, count_duplicates=True, on_out_of_range="drop")),
        ("one-launch canonical (assert)", lambda: canonical_indices(
            idx, T, bs, count_duplicates=True, on_out_of_range="assert")),
        ("one-launch canonical (drop)", lambda: canonical_indices(
            idx, T, bs, count_duplicates=True, on_out_of_range="drop")),
        ("plan_for", lambda: op_mod.plan_for(q, k, v, cidx, bs, True, "auto")),
        ("lowering.forward", lambda: kernel_forward(q, k, v, cidx, bs, scale, True, plan, q_offset=qoff)),
        ("fsa::selected_attention", lambda: torch.ops.fsa.selected_attention(*args)),
        ("its twin (no autograd layer)", lambda: torch.ops.fsa.selected_attention_compiled(*args)),
        ("compiled fsa step", step),
    ]
    print(f"  plan: {plan.describe()}; ms per call, host returned / with the GPU")
    for name, f in pieces:
        h, t = host_time(f, 200)
        print(f"    {name:30s} {h:7.3f} {t:7.3f}", flush=True)
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(50):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18), flush=True)


def main():
    a = arguments([1, 16])
    bs, n, dev = BS, N, DEV
    rows = []
    for G in a.G:
        gen, k, v, sel = sequence(a, G, grad=False)
        for tq in a.Tq:
            q = torch.randn(1, tq, a.H * G, a.D, device=dev, generator=gen).bfloat16()
            idx = sel[:, a.Tk - tq:].contiguous()
            args = (q, k, v, idx, bs)
            with torch.no_grad():
                want = decode_gather(*args)
                for name, fn in (("eager", decode_gather),
                                 ("inductor", torch.compile(decode_gather)),
                                 ("inductor reduce-overhead", torch.compile(decode_gather, mode="reduce-overhead")),
                                 ("fsa", torch.compile(decode_gather, backend="fsa")),
                                 # the same without the post-grad pass: the ops, not their twins
                                 ("fsa, ops not twins", torch.compile(
                                     decode_gather, backend="fsa", options={"post_grad_custom_post_pass": None})),
                                 ("fsa reduce-overhead", torch.compile(decode_gather, backend="fsa",
                                                                       mode="reduce-overhead"))):
                    torch._dynamo.reset()
                    for _ in range(3):
                        out = fn(*args)
                    err = float((out.float() - want.float()).norm() / want.float().norm())
                    ms = triton.testing.do_bench(lambda: fn(*args))
                    rows.append((G, tq, name, ms, err))
                    print(f"G={G} T_q={tq} {name}: {ms:.3f} ms, rel diff to eager {err:.1e}", flush=True)
                    if a.profile and name == "fsa":
                        profile(*args, lambda: fn(*args))
    print(f"\nT_k = {a.Tk}, H = {a.H}, D = {a.D}, bs = {bs}, n = {n}, bf16\n")
    print("| G | T_q | run | ms per call | rel diff to eager |")
    print("|---|---|---|---|---|")
    for G, tq, name, ms, err in rows:
        print(f"| {G} | {tq} | {name} | {ms:.3f} | {err:.1e} |")


if __name__ == "__main__":
    main()
