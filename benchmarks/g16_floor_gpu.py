"""How fast could the G = 16 forward be? The bytes each loop order must move, timed alone.

    python benchmarks/g16_floor_gpu.py [--T 65536] [--G 16]

- **NSA order's K/V stream**: a kernel with the NSA order's grid (one program per token and KV
  head) and its loads (each selected block's K and V tile by bulk tensor copy, 3 stages), which
  only adds the tiles up, no products and no softmax. Its time is what the NSA order's loads cost
  by themselves. Run again on the 13 non-forced slots only (block 0 and the two local blocks left
  out): the most any scheme sharing those blocks' loads between tokens could save.
- **Inverted loop's partial stream**: writing the partial buffer of every chunk once
  (``fill_``) and reading it back once (a sum over the slots), at the plan's chunk: the memory
  traffic of the partials alone.

The real kernels are timed in the same process for comparison. A table comes last.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from fsa_compile.bench import dense_sdpa, _no_math, make_case  # noqa: E402
from fsa_compile.lowering.forward import _tma_descriptors, forward  # noqa: E402
from fsa_compile.lowering.plan import choose_plan  # noqa: E402


@triton.jit
def kv_stream_kernel(IDX, OUT, K_DESC, V_DESC, sib, sit, sih, sis, T, H,
                     N_SEL: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lst = IDX + b.to(tl.int64) * sib + t.to(tl.int64) * sit + h * sih
    for i in range(0, N_SEL):
        blk = tl.load(lst + i * sis)
        k = tl.reshape(K_DESC.load([b, blk * BS, h, 0]), [BLOCK_N, BLOCK_D])
        v = tl.reshape(V_DESC.load([b, blk * BS, h, 0]), [BLOCK_N, BLOCK_D])
        acc += k.to(tl.float32) + v.to(tl.float32)
    tl.store(OUT + pid_bh.to(tl.int64) * T + t, tl.sum(tl.sum(acc, 1), 0))


def kv_stream(k, v, idx, bs):
    B, T, H, D = k.shape
    kd, vd = _tma_descriptors(k, v, bs)
    out = torch.empty(B * H, T, device=k.device, dtype=torch.float32)
    kv_stream_kernel[(T, B * H)](idx, out, kd, vd, *idx.stride(), T, H, N_SEL=idx.shape[-1], BS=bs,
                                 BLOCK_N=bs, BLOCK_D=D, num_warps=4, num_stages=3)
    return out


def ms_of(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--G", type=int, default=16)
    a = ap.parse_args()
    B, T, H, G, D, bs, n = 1, a.T, 4, a.G, 128, 64, 16
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    dev = torch.device("cuda")
    q, k, v, idx = make_case(B, T, H, G, D, bs, n, "uniform", torch.bfloat16, dev, seed=G)
    rows = []
    with _no_math():
        dense = ms_of(lambda: dense_sdpa(q, k, v))
    rows.append(("dense SDPA", dense, ""))
    # the selection's first three columns are block 0 and the two local blocks
    # (fsa_compile.selection.uniform_selection); the rest are the random ones
    rand = idx[..., 3:].contiguous()
    kv_bytes = lambda sel: (sel >= 0).sum().item() * bs * D * 2 * 2  # noqa: E731
    for name, sel in (("K/V stream, 16 slots", idx), ("K/V stream, 13 random slots", rand)):
        t = ms_of(lambda: kv_stream(k, v, sel, bs))
        gb = kv_bytes(sel) / 1e9
        rows.append((name, t, f"{gb:.1f} GB, {gb / t:.2f} TB/s"))
    for strat in ("nsa", "fsa"):
        plan = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, strat, dev)
        t = ms_of(lambda: forward(q, k, v, idx, bs, D ** -0.5, True, plan))
        rows.append((f"forward, {strat}", t, plan.describe()))
    plan = choose_plan(B, T, H, G, D, D, n, bs, torch.bfloat16, True, "fsa", dev)
    C = min(plan.chunk, T)
    nc = triton.cdiv(T, C)
    po = torch.empty(B, C, n, H * G, D, dtype=torch.bfloat16, device=dev)
    red = torch.empty(B, C, H * G, D, dtype=torch.bfloat16, device=dev)

    def write_all():
        for _ in range(nc):
            po.fill_(1.0)

    def read_all():
        for _ in range(nc):
            torch.sum(po, dim=2, out=red)

    pbytes = nc * po.numel() * 2 / 1e9
    tw = ms_of(write_all)
    tr = ms_of(read_all)
    rows.append((f"partials written once ({nc} chunks of {C})", tw, f"{pbytes:.1f} GB, {pbytes / tw:.2f} TB/s"))
    rows.append(("partials read once (sum over slots)", tr, f"{pbytes:.1f} GB, {pbytes / tr:.2f} TB/s"))
    print(f"\n=== T={T}, G={G}, H={H}, D={D}, bs={bs}, n={n}, bf16, uniform: ms (ratio to dense) ===")
    for name, t, note in rows:
        print(f"{name:45s} {t:8.3f}  ({t / dense:5.3f})  {note}")


if __name__ == "__main__":
    main()
