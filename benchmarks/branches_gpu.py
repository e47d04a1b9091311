"""GPU micro-benchmark of the example model's non-selected parts at one length: block selection
(top-n of compressed scores), the compressed branch and the sliding-window branch, each in a few
plain-PyTorch spellings, compiled with Inductor. Checks every variant against the first of its
group, then prints forward and forward+backward medians (ms).

    python benchmarks/branches_gpu.py [--T 32768]
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from triton.testing import do_bench

B, HQ, H, D, BS, N, W, CB, CS = 1, 16, 4, 64, 64, 16, 512, 32, 16
G = HQ // H


def scores_of(q, k):
    T = q.shape[1]
    nb = (T + BS - 1) // BS
    kc = F.pad(k, (0, 0, 0, 0, 0, nb * BS - T)).view(B, nb, BS, H, D).mean(2)
    return torch.einsum("bthgd,bjhd->bthj", q.view(B, T, H, G, D), kc), nb


def _masked(s, T, nb):
    tb = torch.arange(T, device=s.device) // BS
    j = torch.arange(nb, device=s.device)
    s = s.masked_fill(j.view(1, 1, 1, nb) > tb.view(1, T, 1, 1), float("-inf"))
    return s.masked_fill((j.view(1, 1, 1, nb) == 0) | (j.view(1, 1, 1, nb) == tb.view(1, T, 1, 1)), float("inf"))


def sel_topk(q, k):
    s, nb = scores_of(q, k)
    top = _masked(s, q.shape[1], nb).topk(N, dim=-1)
    return _drop(top.values, top.indices)


def _drop(values, indices):  # -1 where only future (-inf) blocks were left to pick
    return torch.where(torch.isinf(values) & (values < 0), -1, indices)


def sel_topk_f32(q, k):
    s, nb = scores_of(q, k)
    return _masked(s.float(), q.shape[1], nb).topk(N, dim=-1).indices


def sel_sort(q, k):
    s, nb = scores_of(q, k)
    return _masked(s, q.shape[1], nb).sort(dim=-1, descending=True).indices[..., :N]


def sel_sum_first(q, k):
    T = q.shape[1]
    nb = (T + BS - 1) // BS
    kc = F.pad(k, (0, 0, 0, 0, 0, nb * BS - T)).view(B, nb, BS, H, D).mean(2)
    s = torch.einsum("bthd,bjhd->bthj", q.view(B, T, H, G, D).sum(3), kc)
    return _masked(s, T, nb).topk(N, dim=-1).indices


def _topk_split(s, parts):
    """top-N of each of ``parts`` slices of the last dim, then top-N of those: the same set, with
    slices short enough for the one-block-per-row top-k kernel."""
    *lead, L = s.shape
    c = -(-L // parts)
    s = F.pad(s, (0, parts * c - L), value=float("-inf"))
    v1, i1 = s.view(*lead, parts, c).topk(min(N, c), dim=-1)
    i1 = i1 + torch.arange(0, parts * c, c, device=s.device).view(parts, 1)
    v2, j = v1.flatten(-2).topk(N, dim=-1)
    return v2, i1.flatten(-2).gather(-1, j)


def sel_split2(q, k):
    s, nb = scores_of(q, k)
    return _drop(*_topk_split(_masked(s, q.shape[1], nb), 2))


def sel_split4(q, k):
    s, nb = scores_of(q, k)
    return _drop(*_topk_split(_masked(s, q.shape[1], nb), 4))


def sel_split8(q, k):
    s, nb = scores_of(q, k)
    return _drop(*_topk_split(_masked(s, q.shape[1], nb), 8))


def cmp_mask(T, Tc, device):
    ends = torch.arange(Tc, device=device) * CS + CB - 1
    vis = ends.view(1, Tc) <= torch.arange(T, device=device).view(T, 1)
    return torch.cat([vis.new_ones(T, 1), vis], 1)


def cmp_cur(q, kc, vc):
    T, Tc = q.shape[1], kc.shape[1] - 1
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), kc.repeat_interleave(G, 2).transpose(1, 2), vc.repeat_interleave(G, 2).transpose(1, 2),
        attn_mask=cmp_mask(T, Tc, q.device)).transpose(1, 2)


def cmp_gqa(q, kc, vc):
    T, Tc = q.shape[1], kc.shape[1] - 1
    return F.scaled_dot_product_attention(q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2),
                                          attn_mask=cmp_mask(T, Tc, q.device), enable_gqa=True).transpose(1, 2)


def cmp_flex(q, kc, vc):
    T, Tk = q.shape[1], kc.shape[1]

    def visible(b, h, qi, ki):
        return (ki == 0) | ((ki - 1) * CS + CB - 1 <= qi)

    bm = create_block_mask(visible, None, None, T, Tk, device=q.device)
    return flex_attention(q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), block_mask=bm,
                          enable_gqa=True).transpose(1, 2)


def cmp_chunks(q, kc, vc, C=4096):
    """Queries in chunks of C, each against the compressed keys it can see (a prefix)."""
    T, Tk = q.shape[1], kc.shape[1]
    outs = []
    for s in range(0, T, C):
        e = min(s + C, T)
        nk = min(Tk, 1 + max(0, (e - CB) // CS + 1))
        ki = torch.arange(nk, device=q.device)
        m = (ki == 0) | ((ki - 1) * CS + CB - 1 <= torch.arange(s, e, device=q.device).view(-1, 1))
        outs.append(F.scaled_dot_product_attention(q[:, s:e].transpose(1, 2), kc[:, :nk].transpose(1, 2),
                                                   vc[:, :nk].transpose(1, 2), attn_mask=m, enable_gqa=True))
    return torch.cat(outs, 2).transpose(1, 2)


def cmp_batch(q, kc, vc, C=4096):
    """Query chunks of C in the batch dim, each against all compressed keys under its rows of
    the mask: the backward's dK/dV work is spread over T/C times more programs."""
    T, Tk = q.shape[1], kc.shape[1]
    pad = (-T) % C
    nc = (T + pad) // C
    qb = F.pad(q, (0, 0, 0, 0, 0, pad)).view(B * nc, C, HQ, D).transpose(1, 2)
    m = cmp_mask(T + pad, Tk - 1, q.device).view(1, nc, 1, C, Tk).expand(B, -1, -1, -1, -1).reshape(B * nc, 1, C, Tk)

    def rep(x):
        return x[:, None].expand(B, nc, Tk, H, D).reshape(B * nc, Tk, H, D).transpose(1, 2)
    o = F.scaled_dot_product_attention(qb, rep(kc), rep(vc), attn_mask=m, enable_gqa=True)
    return o.transpose(1, 2).reshape(B, nc * C, HQ, D)[:, :T]


def cmp_batch2k(q, kc, vc):
    return cmp_batch(q, kc, vc, 2048)


def cmp_batch8k(q, kc, vc):
    return cmp_batch(q, kc, vc, 8192)


def cmp_tri(q, kc, vc, parts=4, C=2048):
    """cmp_batch on `parts` slices of the queries, each against only the keys its last row sees."""
    T, Tk = q.shape[1], kc.shape[1]
    outs = []
    L = -(-T // parts)
    for s in range(0, T, L):
        e = min(s + L, T)
        nk = min(Tk, 1 + max(0, (e - CB) // CS + 1))
        n_rows = e - s
        pad = (-n_rows) % C
        nc = (n_rows + pad) // C
        qb = F.pad(q[:, s:e], (0, 0, 0, 0, 0, pad)).view(B * nc, C, HQ, D).transpose(1, 2)
        ki = torch.arange(nk, device=q.device)
        rows = torch.arange(s, e + pad, device=q.device).view(-1, 1)
        m = ((ki == 0) | ((ki - 1) * CS + CB - 1 <= rows)).view(1, nc, 1, C, nk).expand(B, -1, -1, -1, -1)
        m = m.reshape(B * nc, 1, C, nk)

        def rep(x):
            return x[:, :nk, None].expand(B, nk, nc, H, D).permute(0, 2, 1, 3, 4).reshape(B * nc, nk, H, D).transpose(1, 2)
        o = F.scaled_dot_product_attention(qb, rep(kc), rep(vc), attn_mask=m, enable_gqa=True)
        outs.append(o.transpose(1, 2).reshape(B, nc * C, HQ, D)[:, :n_rows])
    return torch.cat(outs, 1)


def cmp_tri8(q, kc, vc):
    return cmp_tri(q, kc, vc, 8, 2048)


def cmp_tri8c1k(q, kc, vc):
    return cmp_tri(q, kc, vc, 8, 1024)


def cmp_tri16c1k(q, kc, vc):
    return cmp_tri(q, kc, vc, 16, 1024)


def cmp_tri4c1k(q, kc, vc):
    return cmp_tri(q, kc, vc, 4, 1024)


def _group(q, kc, vc, how):
    """The example model's spelling: queries in groups of CS tokens that see the same summaries,
    a group's tokens folded into the head dim (or the batch dim), one causal SDPA call."""
    T, S = q.shape[1], kc.shape[1]
    off = CB - 1 - CS
    early = min(T, max(off, 0))
    front = max(-off, 0)
    qg = F.pad(q[:, early:], (0, 0, 0, 0, front, S * CS - front - (T - early))).view(B, S, CS, HQ, D)
    k_, v_ = kc.transpose(1, 2), vc.transpose(1, 2)
    if how == "batch":  # [B*CS, HQ, S, D] against K/V repeated per group member
        qg = qg.permute(0, 2, 3, 1, 4).reshape(B * CS, HQ, S, D)
        k_, v_ = (x[:, None].expand(B, CS, H, S, D).reshape(B * CS, H, S, D) for x in (k_, v_))
    else:
        qg = qg.permute(0, 3, 2, 1, 4).reshape(B, HQ * CS, S, D)
        if how == "rep":
            k_, v_ = (x.repeat_interleave(G * CS, 1) for x in (k_, v_))
    ctx = {"flash": [SDPBackend.FLASH_ATTENTION], "cudnn": [SDPBackend.CUDNN_ATTENTION]}.get(how)
    if ctx:
        with sdpa_kernel(ctx):
            o = F.scaled_dot_product_attention(qg, k_, v_, is_causal=True, enable_gqa=True)
    else:
        o = F.scaled_dot_product_attention(qg, k_, v_, is_causal=True, enable_gqa=True)
    if how == "batch":
        o = o.view(B, CS, HQ, S, D).permute(0, 3, 1, 2, 4)
    else:
        o = o.view(B, HQ, CS, S, D).permute(0, 3, 2, 1, 4)
    o = o.reshape(B, S * CS, HQ, D)[:, front:front + T - early]
    return torch.cat([vc[:, :1].repeat_interleave(G, 2).expand(B, early, HQ, D), o], 1)


def cmp_group(q, kc, vc):
    return _group(q, kc, vc, "gqa")


def cmp_group_rep(q, kc, vc):
    return _group(q, kc, vc, "rep")


def cmp_group_batch(q, kc, vc):
    return _group(q, kc, vc, "batch")


def cmp_group_flash(q, kc, vc):
    return _group(q, kc, vc, "flash")


def cmp_group_cudnn(q, kc, vc):
    return _group(q, kc, vc, "cudnn")


def win_q(q, k, v, qc=256):
    """Query chunks of qc against the W + qc keys before and in them (less wasted work than
    chunks of W against 2W keys)."""
    T = q.shape[1]
    pad = (-T) % qc
    nc = (T + pad) // qc
    L = W + qc
    qb = F.pad(q, (0, 0, 0, 0, 0, pad)).view(B * nc, qc, HQ, D).transpose(1, 2)

    def keys(x):
        x = F.pad(x, (0, 0, 0, 0, W, pad))
        return x.unfold(1, L, qc).transpose(-1, -2).reshape(B * nc, H, L, D)

    i = torch.arange(qc, device=q.device).view(qc, 1)
    j = torch.arange(L, device=q.device).view(1, L)
    c = torch.arange(nc, device=q.device).repeat(B).view(B * nc, 1, 1, 1)
    mask = (j > i) & (j <= i + W) & (j >= W - c * qc)
    o = F.scaled_dot_product_attention(qb, keys(k), keys(v), attn_mask=mask, enable_gqa=True)
    return o.transpose(1, 2).reshape(B, nc * qc, HQ, D)[:, :T]


def win_band(q, k, v, qc=256):
    """The example model's spelling: the first W tokens as plain causal attention, the rest in
    chunks of qc queries against W + qc keys with one band mask broadcast over the chunks."""
    T = q.shape[1]
    head = min(T, W)
    tr = lambda x: x.transpose(1, 2)  # noqa: E731
    o_head = F.scaled_dot_product_attention(tr(q[:, :head]), tr(k[:, :head]), tr(v[:, :head]), is_causal=True,
                                            enable_gqa=True).transpose(1, 2)
    if T == head:
        return o_head
    qc = min(qc, T - W)
    L = W + qc
    pad = (-(T - W)) % qc
    nc = (T - W + pad) // qc
    qs = F.pad(q[:, W:], (0, 0, 0, 0, 0, pad)).view(B * nc, qc, HQ, D).transpose(1, 2)

    def keys(x):
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.unfold(1, L, qc).transpose(-1, -2).reshape(B * nc, H, L, D)

    r = torch.arange(qc, device=q.device).view(qc, 1)
    j = torch.arange(L, device=q.device).view(1, L)
    band = ((j > r) & (j <= r + W)).view(1, 1, qc, L)
    o = F.scaled_dot_product_attention(qs, keys(k), keys(v), attn_mask=band, enable_gqa=True)
    return torch.cat([o_head, o.transpose(1, 2).reshape(B, nc * qc, HQ, D)[:, : T - W]], 1)


def win_band128(q, k, v):
    return win_band(q, k, v, 128)


def win_band512(q, k, v):
    return win_band(q, k, v, 512)


def win_q128(q, k, v):
    return win_q(q, k, v, 128)


def win_cur(q, k, v):
    T = q.shape[1]
    w = min(W, T)
    pad = (-T) % w
    nc = (T + pad) // w
    qc = F.pad(q, (0, 0, 0, 0, 0, pad)).view(B * nc, w, HQ, D).transpose(1, 2)

    def two(x):
        x = F.pad(x, (0, 0, 0, 0, w, pad))
        return x.unfold(1, 2 * w, w).transpose(-1, -2).reshape(B * nc, H, 2 * w, D).repeat_interleave(G, 1)

    i = torch.arange(w, device=q.device).view(w, 1)
    j = torch.arange(2 * w, device=q.device).view(1, 2 * w)
    band = (j <= i + w) & (j > i)
    chunk = torch.arange(nc, device=q.device).repeat(B).view(B * nc, 1, 1, 1)
    mask = torch.where(chunk == 0, band & (j >= w), band)
    o = F.scaled_dot_product_attention(qc, two(k), two(v), attn_mask=mask)
    return o.transpose(1, 2).reshape(B, nc * w, HQ, D)[:, :T]


def win_flex(q, k, v):
    T = q.shape[1]

    def window(b, h, qi, ki):
        return (ki <= qi) & (qi - ki < W)

    bm = create_block_mask(window, None, None, T, T, device=q.device)
    return flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=bm,
                          enable_gqa=True).transpose(1, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=32768)
    ap.add_argument("--select", action="store_true", help="also time the selection spellings")
    ap.add_argument("--only", help="comma-separated variant names to time (default: all)")
    a = ap.parse_args()
    T = a.T
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, T, HQ, D, device=dev, dtype=dt, generator=g)
    k = torch.randn(B, T, H, D, device=dev, dtype=dt, generator=g)
    v = torch.randn(B, T, H, D, device=dev, dtype=dt, generator=g)
    Tc = (T - CB) // CS + 1
    kc = torch.randn(B, Tc + 1, H, D, device=dev, dtype=dt, generator=g)
    vc = torch.randn(B, Tc + 1, H, D, device=dev, dtype=dt, generator=g)
    rows = []
    groups = [
        *([("select", [sel_topk, sel_split2, sel_split4, sel_split8], (q, k), False)] if a.select else []),
        ("compressed", [cmp_cur, cmp_gqa, cmp_chunks, cmp_batch, cmp_batch2k, cmp_batch8k, cmp_tri, cmp_tri4c1k,
                        cmp_tri8, cmp_tri8c1k, cmp_tri16c1k, cmp_group, cmp_group_rep, cmp_group_batch,
                        cmp_group_flash, cmp_group_cudnn, cmp_flex],
         (q, kc, vc), True),
        ("sliding", [win_cur, win_q, win_q128, win_band, win_band128, win_band512, win_flex], (q, k, v), True),
    ]
    only = set(a.only.split(",")) if a.only else None
    for name, fns, args, grad in groups:
        ref = None
        for fn in fns:
            if only and fn.__name__ not in only:
                continue
            torch._dynamo.reset()
            f = torch.compile(fn)
            try:
                out = f(*args)
                if ref is None:
                    ref = out
                if name == "select":  # same sets of blocks (ties aside)
                    agree = (out.sort(-1).values == ref.sort(-1).values).float().mean().item()
                    check = f"{agree:.4f} rows equal"
                else:
                    err = (out.float() - ref.float()).abs().max().item()
                    check = f"max err {err:.3g}"
                fwd = do_bench(lambda: f(*args), warmup=5, rep=40)
                fb = float("nan")
                if grad:
                    a2 = [a.detach().requires_grad_(True) for a in args]
                    go = torch.randn_like(out)

                    def step():
                        f(*a2).backward(go)
                    step()
                    fb = do_bench(step, warmup=5, rep=40, grad_to_none=a2)
                rows.append((name, fn.__name__, fwd, fb, check))
            except Exception as e:  # noqa: BLE001
                rows.append((name, fn.__name__, float("nan"), float("nan"), f"FAILED {type(e).__name__}: {str(e)[:120]}"))
            print(rows[-1], flush=True)
    print(f"\nT={T}  (ms, median)\n{'group':<11}{'variant':<15}{'fwd':>8}{'fwd+bwd':>9}  check")
    for r in rows:
        print(f"{r[0]:<11}{r[1]:<15}{r[2]:8.3f}{r[3]:9.3f}  {r[4]}")


if __name__ == "__main__":
    main()
