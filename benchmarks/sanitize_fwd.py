"""Small forward calls for ``compute-sanitizer --tool memcheck`` (issue 4, item 7).

    compute-sanitizer --tool memcheck python benchmarks/sanitize_fwd.py

Padding entries (-1), the last block (partial when T % bs != 0), duplicates and future blocks,
every strategy; tensors sized exactly so that any read past an end is outside its allocation.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

from fsa_compile.lowering.forward import forward  # noqa: E402
from fsa_compile.lowering.plan import choose_plan  # noqa: E402
from fsa_compile.reference import reference_forward  # noqa: E402

dev = torch.device("cuda")
# G = 4: the inverted loop and the NSA order's one-token and union tiles; G = 16: its
# shared-block tiles (the default there), with bulk copies and with plain loads
CONFIGS = {
    4: (("fsa", {}), ("fsa", dict(chunk=128, fsa_tpp=3, fsa_ent_all=False)), ("nsa", {}),
        ("nsa", dict(tok=4))),
    16: (("nsa", {}), ("nsa", dict(tok=4, nsa_shared=True, nsa_tma=False)),
         ("nsa", dict(tok=2, nsa_shared=True))),
}
for G, variants in CONFIGS.items():
    B, T, H, D, bs, n = 1, 333, 2, 96, 64, 6
    nb = (T + bs - 1) // bs
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, T, H * G, D, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, generator=g)
    idx = torch.randint(-1, nb, (B, T, H, n), device=dev, generator=g, dtype=torch.int32)
    idx[:, :, :, 0] = nb - 1  # the partial last block everywhere
    idx[:, ::2, :, 1] = -1
    idx[:, ::3, :, 2] = idx[:, ::3, :, 3]
    idx[:, :, :, 4] = 0  # block 0 in every row: shared by tiles whose rows list it once
    ro, _ = reference_forward(q.float(), k.float(), v.float(), idx, bs, D ** -0.5, True)
    for strat, over in variants:
        plan = choose_plan(B, T, H, G, D, D, n, bs, q.dtype, True, strat, dev, **over)
        o, lse = forward(q, k, v, idx, bs, D ** -0.5, True, plan, poison=True)
        torch.cuda.synchronize()
        err = ((o.float() - ro).norm() / ro.norm()).item()
        print(f"G={G} {plan.describe()}: rel err {err:.2e}", flush=True)
print("sanitize_fwd done")
