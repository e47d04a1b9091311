"""The op with q shorter than k (``q_offset``) on the GPU: the last ``T_q`` rows of a ``T_k``
sequence (a decode step, a chunk of a prefill after a KV cache), each strategy, forward and
forward + backward, against the reference on float32 copies and against the whole sequence's
call. Prints a table (ms, ``triton.testing.do_bench`` medians).

    python benchmarks/offset_gpu.py --Tk 65536 --Tq 1 16 4096 --G 4 16
"""
from __future__ import annotations

import argparse

import torch
import triton

import fsa_compile
from fsa_compile.selection import uniform_selection


BS, N, DEV = 64, 16, "cuda"


def arguments(tq_default):
    """The command line both this script and ``decode_gpu.py`` take."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--Tk", type=int, default=65536)
    ap.add_argument("--Tq", type=int, nargs="+", default=tq_default)
    ap.add_argument("--G", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--profile", action="store_true", help="decode_gpu.py: where a step's host time goes")
    return ap.parse_args()


def sequence(a, G, grad):
    """A generator seeded by G, bf16 k and v ``[1, T_k, H, D]`` and their uniform selection."""
    gen = torch.Generator(device=DEV).manual_seed(G)
    k, v = (torch.randn(1, a.Tk, a.H, a.D, device=DEV, generator=gen).bfloat16().requires_grad_(grad) for _ in "kv")
    return gen, k, v, uniform_selection(1, a.Tk, a.H, N, BS, device=DEV, generator=gen)


def main():
    a = arguments([1, 16, 4096])
    bs, dev = BS, DEV
    rows = []
    for G in a.G:
        gen, k, v, full = sequence(a, G, grad=True)
        qf = torch.randn(1, a.Tk, a.H * G, a.D, device=dev, generator=gen).bfloat16().requires_grad_()
        whole = triton.testing.do_bench(lambda: fsa_compile.selected_attention(qf, k, v, full, bs))
        for tq in a.Tq:
            off = a.Tk - tq
            q = qf.detach()[:, off:].clone().requires_grad_()
            idx = full[:, off:].contiguous()
            ref = fsa_compile.selected_attention(q.detach().float(), k.detach().float(), v.detach().float(), idx, bs,
                                                 strategy="reference")
            for s in ("fsa", "nsa", "auto"):
                o = fsa_compile.selected_attention(q, k, v, idx, bs, strategy=s)
                err = float((o.float() - ref).norm() / ref.norm())
                with torch.no_grad():
                    same = float((o - fsa_compile.selected_attention(qf, k, v, full, bs, strategy=s)[:, off:]).abs().max())
                do = torch.randn_like(o)
                fwd = triton.testing.do_bench(lambda: fsa_compile.selected_attention(q, k, v, idx, bs, strategy=s))
                fb = triton.testing.do_bench(
                    lambda: torch.autograd.grad(fsa_compile.selected_attention(q, k, v, idx, bs, strategy=s),
                                                (q, k, v), do))
                rows.append((G, tq, s, fwd, fb, err, same))
                print(f"G={G} Tq={tq} {s}: fwd {fwd:.3f} ms, fwd+bwd {fb:.3f} ms, rel err {err:.2e}, "
                      f"max diff to the whole call's rows {same:.2e}", flush=True)
        print(f"G={G}: the whole {a.Tk}-row call (auto, forward) {whole:.3f} ms", flush=True)
    print("\n| G | T_q | strategy | forward ms | forward + backward ms | rel err vs fp32 reference | max diff to whole call |")
    print("|---|---|---|---|---|---|---|")
    for G, tq, s, fwd, fb, err, same in rows:
        print(f"| {G} | {tq} | {s} | {fwd:.3f} | {fb:.3f} | {err:.1e} | {same:.1e} |")


if __name__ == "__main__":
    main()
