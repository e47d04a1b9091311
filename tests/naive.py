"""An independent implementation of the contract for tests: dense weights, float64, no chunking.

Each (query, key) pair gets a weight = how many times the key's block is selected (or 0/1 when
duplicates count once), times visibility; attention is the weighted softmax. Small sizes only.
"""
import torch


def naive_selected_attention(q, k, v, idx, bs, scale=None, causal=True, count_duplicates=True, q_offset=None):
    """``q_offset``: q's rows are key positions ``q_offset ..`` (default: the last ``T_q`` keys)."""
    B, Tq, HQ, D = q.shape
    T = k.shape[1]
    H = k.shape[2]
    G = HQ // H
    off = T - Tq if q_offset is None else q_offset
    nb = (T + bs - 1) // bs
    scale = D**-0.5 if scale is None else scale
    cnt = torch.zeros(B, Tq, H, nb, dtype=torch.float64)
    for s in range(idx.shape[-1]):
        e = idx[..., s].long()
        ok = (e >= 0) & (e < nb)
        cnt.scatter_add_(-1, e.clamp(0, nb - 1).unsqueeze(-1), ok.double().unsqueeze(-1))
    if not count_duplicates:
        cnt = (cnt > 0).double()
    w = cnt.repeat_interleave(bs, -1)[..., :T]  # [B, Tq, H, T]
    if causal:
        w = w * torch.ones(T, T, dtype=torch.bool).tril()[off:off + Tq][None, :, None, :]
    w = w.repeat_interleave(G, 2)
    qd, kd, vd = q.double(), k.double().repeat_interleave(G, 2), v.double().repeat_interleave(G, 2)
    s = torch.einsum("bthd,bshd->bths", qd, kd) * scale
    m = torch.where(w > 0, s, torch.tensor(float("-inf"), dtype=s.dtype)).amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m) * w
    l = e.sum(-1, keepdim=True)
    o = torch.einsum("bths,bshd->bthd", e / l.clamp_min(1e-300), vd)
    lse = torch.where(l.squeeze(-1) > 0, (m + torch.log(l)).squeeze(-1), torch.tensor(float("-inf"), dtype=torch.float64))
    return o, lse


def random_selection(B, T, H, n, bs, *, pad=0.2, dup=0.0, force_first=True, generator=None):
    nb = (T + bs - 1) // bs
    idx = torch.randint(0, nb, (B, T, H, n), generator=generator)
    if dup:
        idx = torch.where(torch.rand(idx.shape, generator=generator) < dup, idx.roll(1, -1), idx)
    if pad:
        idx = torch.where(torch.rand(idx.shape, generator=generator) < pad, torch.full_like(idx, -1), idx)
    if force_first:
        idx[..., 0] = 0
    return idx


def random_case(B=1, T=40, H=2, G=2, D=8, bs=8, n=3, seed=0, grad=False):
    """Random ``q, k, v`` (``[B, T, H*G, D]``, ``[B, T, H, D]``) and a selection with padding,
    for the backend tests."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H * G, D, generator=g, requires_grad=grad)
    k = torch.randn(B, T, H, D, generator=g, requires_grad=grad)
    v = torch.randn(B, T, H, D, generator=g, requires_grad=grad)
    idx = random_selection(B, T, H, n, bs, pad=0.3, generator=g)
    return q, k, v, idx, bs
