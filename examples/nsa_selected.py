"""NSA selected attention written in plain PyTorch (no fsa_compile import): the gather form.

Each query token t of key/value head h selected ``n`` blocks of ``block_size`` keys
(``block_indices[b, t, h, :]``, -1 = padding); it attends causally to the keys of those blocks.
"""
import torch


def selected_attention_gather(q, k, v, block_indices, block_size: int):
    """q [B, T, HQ, D]; k, v [B, T, H, D]; block_indices [B, T, H, n] -> [B, T, HQ, D]."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    offsets = torch.arange(block_size, device=q.device)
    tok = (block_indices.unsqueeze(-1) * block_size + offsets).flatten(-2)  # [B, T, H, n*bs]
    pad = (block_indices < 0).unsqueeze(-1).expand(*block_indices.shape, block_size).flatten(-2)
    t_pos = torch.arange(T, device=q.device).view(1, T, 1, 1)
    masked = pad | (tok > t_pos)  # padding, and causal (also hides keys past the end)
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, 1, H, 1)
    k_sel = k[b_idx, safe, h_idx].repeat_interleave(G, dim=2)  # [B, T, HQ, n*bs, D]
    v_sel = v[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    scores = torch.einsum("bthd,bthsd->bths", q.float(), k_sel.float()) * D**-0.5
    scores = scores.masked_fill(masked.repeat_interleave(G, dim=2), float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return torch.einsum("bths,bthsd->bthd", p, v_sel.float()).to(q.dtype)
