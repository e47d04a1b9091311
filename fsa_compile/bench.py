"""``python -m fsa_compile bench``: selected attention vs dense SDPA on the GPU, one process.

For every config (T, G, selection distribution) it times the forward of each strategy through the
lowering (``fsa``, ``nsa``, ``auto``), dense causal ``F.scaled_dot_product_attention(is_causal=True,
enable_gqa=True)`` on the same tensors, and forward+backward through the public op
``fsa_compile.selected_attention`` with autograd against dense SDPA forward+backward. Prints
progress and a table (median ms via ``triton.testing.do_bench``, useful TFLOP/s, ratio to dense,
extra device memory), writes JSON (``--json``) and a plot of time vs T per G (``--plot``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GiB = 2.0**30


def make_case(B, T, H, G, D, bs, n, dist, dtype, device, seed=0):
    """Fresh random ``q, k, v`` (bthd, contiguous) and canonical indices for ``dist``."""
    from .selection import skewed_selection, uniform_selection

    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, T, H * G, D, device=device, dtype=dtype, generator=g)
    k = torch.randn(B, T, H, D, device=device, dtype=dtype, generator=g)
    v = torch.randn(B, T, H, D, device=device, dtype=dtype, generator=g)
    if dist == "uniform":
        idx = uniform_selection(B, T, H, n, bs, device=device, generator=g)
    elif dist == "skewed":
        idx = skewed_selection(q, k, n, bs)
    else:
        raise ValueError(f"unknown distribution {dist!r}")
    return q, k, v, idx


def visible_pairs(idx, T, bs, causal=True) -> int:
    """Number of (query token, key) pairs the selection makes visible, summed over KV heads."""
    B, _, H, n = idx.shape
    t = torch.arange(T, device=idx.device).view(1, T, 1, 1)
    lo = idx.long() * bs
    hi = torch.clamp(lo + bs, max=T)
    if causal:
        hi = torch.minimum(hi, t + 1)
    cnt = torch.where(idx >= 0, (hi - lo).clamp_min(0), torch.zeros_like(lo))
    return int(cnt.sum())


def dense_sdpa(q, k, v):
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    )


def _no_math():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION])


def measure(fn, out_bytes=0):
    """(median ms, extra peak device memory in GiB beyond the outputs)."""
    import triton

    torch.cuda.synchronize()
    fn()  # compile / warm
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    extra = (torch.cuda.max_memory_allocated() - base - out_bytes) / GiB
    ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return ms, max(0.0, extra)


def run_config(T, G, dist, args, strategies, log):
    from .lowering import choose_plan, forward

    B, H, D, bs, n = args.B, args.H, args.D, args.bs, args.n
    dtype = DTYPES[args.dtype]
    dev = torch.device("cuda")
    q, k, v, idx = make_case(B, T, H, G, D, bs, n, dist, dtype, dev, seed=T * 131 + G)
    HQ = H * G
    scale = D**-0.5
    pairs = visible_pairs(idx, T, bs)
    useful = 2.0 * (D + D) * pairs * G  # QK^T and PV, every query head of the group
    dense_flops = 2.0 * (D + D) * B * HQ * T * (T + 1) / 2
    out_bytes = B * T * HQ * D * q.element_size() + B * T * HQ * 4
    rows = []
    with _no_math():
        ms_d, mem_d = measure(lambda: dense_sdpa(q, k, v), B * T * HQ * D * q.element_size())
    log(f"  dense sdpa fwd {ms_d:8.3f} ms")
    row0 = dict(T=T, G=G, dist=dist, B=B, H=H, D=D, bs=bs, n=n, dtype=args.dtype,
                dense_ms=ms_d, dense_tflops=dense_flops / ms_d / 1e9)
    for strat in strategies:
        plan = choose_plan(B, T, H, G, D, D, n, bs, dtype, True, strat, dev)
        ms, mem = measure(lambda: forward(q, k, v, idx, bs, scale, True, plan), out_bytes)
        r = dict(row0, strategy=strat, plan=plan.describe(), ms=ms, tflops=useful / ms / 1e9,
                 ratio=ms / ms_d, extra_gib=mem)
        log(f"  {strat:5s} fwd {ms:8.3f} ms  ratio {ms / ms_d:5.3f}  {r['tflops']:6.1f} TFLOP/s  "
            f"extra {mem:5.2f} GiB  [{plan.describe()}]")
        rows.append(r)
    if args.bwd:
        _fwd_bwd(rows, q, k, v, idx, args, log)
    del q, k, v, idx
    torch.cuda.empty_cache()
    return rows


def _fwd_bwd(rows, q, k, v, idx, args, log):
    from . import selected_attention  # the public op, as a user calls it (autograd included)

    bs = args.bs
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    do = torch.randn_like(q)
    # extra memory beyond the inputs: not counting o and lse (kept for the backward) and the
    # three gradients, what is left is the scratch of forward and backward (issue 5's bound)
    outputs = (2 * q.numel() + k.numel() + v.numel()) * q.element_size() + q[..., 0].numel() * 4

    def dense():
        o = dense_sdpa(qg, kg, vg).transpose(1, 2)
        torch.autograd.grad(o, (qg, kg, vg), do)

    with _no_math():
        ms_d, _ = measure(dense)
    log(f"  dense sdpa fwd+bwd {ms_d:8.3f} ms")
    for r in rows:
        strat = r["strategy"]

        def ours():
            o = selected_attention(qg, kg, vg, idx, bs, strategy=strat, on_out_of_range="assert")
            torch.autograd.grad(o, (qg, kg, vg), do)

        try:
            ours()  # compile / warm (the backward kernels compile on the first call)
            torch.cuda.synchronize()
            t0 = time.time()
            ours()
            torch.cuda.synchronize()
            if time.time() - t0 > 5.0:
                raise RuntimeError("too slow to time (backward on the reference path?)")
            ms, mem = measure(ours, outputs)
            r.update(fb_ms=ms, fb_dense_ms=ms_d, fb_ratio=ms / ms_d, fb_extra_gib=mem)
            log(f"  {strat:5s} fwd+bwd {ms:8.3f} ms  ratio {ms / ms_d:5.3f}  extra {mem:5.2f} GiB")
        except Exception as e:  # noqa: BLE001 - report and carry on
            r.update(fb_ms=None, fb_dense_ms=ms_d, fb_error=str(e)[:200])
            log(f"  {strat:5s} fwd+bwd skipped: {str(e)[:120]}")


def table(rows) -> str:
    head = (f"{'T':>6} {'G':>3} {'dist':>7} {'strategy':>8} {'ms':>8} {'dense':>8} {'ratio':>6} "
            f"{'TFLOP/s':>8} {'GiB':>5} {'fb ms':>8} {'fb dense':>8} {'fb ratio':>8} {'fb GiB':>6}")
    out = [head, "-" * len(head)]
    for r in rows:
        fb = r.get("fb_ms")
        fbs = (f"{fb:8.2f} {r['fb_dense_ms']:8.2f} {r['fb_ratio']:8.3f} {r['fb_extra_gib']:6.2f}" if fb
               else f"{'-':>8} {'-':>8} {'-':>8} {'-':>6}")
        out.append(f"{r['T']:>6} {r['G']:>3} {r['dist']:>7} {r['strategy']:>8} {r['ms']:8.3f} "
                   f"{r['dense_ms']:8.2f} {r['ratio']:6.3f} {r['tflops']:8.1f} "
                   f"{r['extra_gib']:5.2f} {fbs}")
    return "\n".join(out)


def plot_wanted(path) -> bool:
    """Whether a ``--plot`` path can be honoured; says so at once (not after the run) if
    matplotlib is missing."""
    if not path:
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"note: matplotlib is not installed, so no plot will be saved to {path} "
              "(pip install 'fsa_compile[bench]'); the table and --json are unaffected", file=sys.stderr)
        return False
    return True


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Gs = sorted({r["G"] for r in rows})
    fig, axes = plt.subplots(1, len(Gs), figsize=(4 * len(Gs), 3.5), squeeze=False)
    for ax, G in zip(axes[0], Gs):
        sub = [r for r in rows if r["G"] == G]
        for dist in sorted({r["dist"] for r in sub}):
            for strat in sorted({r["strategy"] for r in sub}):
                pts = sorted((r["T"], r["ms"]) for r in sub if r["dist"] == dist and r["strategy"] == strat)
                ax.plot(*zip(*pts), marker="o", label=f"{strat} {dist}")
            pts = sorted({(r["T"], r["dense_ms"]) for r in sub if r["dist"] == dist})
            ax.plot(*zip(*pts), "k--", marker="x", label=f"dense ({dist})")  # a marker: one T is one point
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"G = {G}")
        ax.set_xlabel("T")
        ax.set_ylabel("forward ms")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _ints(s):
    return [int(x.lower().replace("k", "")) * (1024 if "k" in x.lower() else 1) for x in s.split(",")]


def int_list(s: str):
    """argparse type: ``8K,64K`` or ``4096,8192`` -> positive ints, a clear error otherwise."""
    try:
        vals = _ints(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers (e.g. 8K,64K)")
    if any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{s!r}: every value must be at least 1")
    return vals


def choice_list(choices):
    """argparse type: a comma-separated list, each item one of ``choices``."""
    def parse(s: str):
        items = [x for x in s.split(",") if x]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{s!r}: choose a comma-separated list from {', '.join(choices)}")
        return items

    return parse


def main(argv=None) -> int:
    from .lowering.plan import STRATEGIES

    p = argparse.ArgumentParser(prog="python -m fsa_compile bench", description=__doc__.splitlines()[0],
                                epilog="python -m fsa_compile bench --e2e --help: the example NSA model per backend")
    p.add_argument("--T", type=int_list, default="8K,16K,32K,64K", help="sequence lengths (default %(default)s)")
    p.add_argument("--G", type=int_list, default="1,2,4,8,16", help="query heads per KV head (default %(default)s)")
    p.add_argument("--dist", type=choice_list(("uniform", "skewed")), default="uniform,skewed",
                   help="selection distributions, fsa_compile/selection.py (default %(default)s)")
    p.add_argument("--strategies", type=choice_list(tuple(s for s in STRATEGIES if s != "reference")),
                   default="fsa,nsa,auto", help="kernel strategies timed beside dense SDPA (default %(default)s)")
    p.add_argument("--B", type=int, default=1, help="batch (default %(default)s)")
    p.add_argument("--H", type=int, default=4, help="KV heads (default %(default)s)")
    p.add_argument("--D", type=int, default=128, help="head dim (default %(default)s)")
    p.add_argument("--bs", type=int, default=64, help="block size (default %(default)s)")
    p.add_argument("--n", type=int, default=16, help="selected blocks per query (default %(default)s)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--no-bwd", dest="bwd", action="store_false", help="skip forward+backward")
    p.add_argument("--json", default=None, help="write the rows here (after every config)")
    p.add_argument("--plot", default=None, help="save a plot (PNG) of forward ms vs T per G here (matplotlib)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("fsa_compile bench needs a CUDA GPU (none found); nothing was measured.", file=sys.stderr)
        return 2
    want_plot = plot_wanted(args.plot)
    Ts, Gs, dists, strategies = args.T, args.G, args.dist, args.strategies

    def log(msg):
        print(msg, flush=True)

    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"triton {__import__('triton').__version__}")
    rows = []
    for T in Ts:
        for G in Gs:
            for dist in dists:
                log(f"T={T} G={G} {dist}")
                rows += run_config(T, G, dist, args, strategies, log)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(rows, f, indent=1)
    print(table(rows))
    if want_plot:
        plot(rows, args.plot)
    return 0
