"""Eager spellings of NSA selected attention that the ``fsa`` backend recognises.

Each function is plain PyTorch (nothing here calls fsa_compile's op): the tests compile them with
``backend="fsa"`` and check that the pattern pass rewrites them and that compiled == eager, and
the README ("Recognised forms") quotes them. Every form takes
``(q, k, v, block_indices, block_size)`` in its own layout (``FORMS[name].layout``):

- ``"bthd"``: q ``[B, T, HQ, D]``, k/v ``[B, T, H, D]``, block_indices ``[B, T, H, n]``;
- ``"bhtd"``: q ``[B, HQ, T, D]``, k/v ``[B, H, T, D]``, block_indices ``[B, H, T, n]``;
- ``"thd"``: the batch dim squeezed away (one sequence): q ``[T, HQ, D]``, ... ``[T, H, n]``;
- ``"tbhd"``: sequence first: q ``[T, B, HQ, D]``, k/v ``[T, B, H, D]``, ``[T, B, H, n]``;
- ``"(bh)td"``: batch and heads merged: q ``[B*HQ, T, D]``, k/v ``[B*H, T, D]``, ``[B*H, T, n]``.

Negative block indices are padding. Gather forms count a block listed twice twice, mask forms
once; rows whose selected blocks all lie in the future give NaN, as eager softmax does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


# -- helpers shared by the gather forms (each form spells its own core) ------------------------------


def _token_indices(block_indices, block_size):
    """``[..., n] -> [..., n*bs]`` token positions and a padding mask of the same shape."""
    offs = torch.arange(block_size, device=block_indices.device)
    tok = (block_indices.unsqueeze(-1) * block_size + offs).flatten(-2)
    pad = (block_indices < 0).unsqueeze(-1).expand(*block_indices.shape, block_size).flatten(-2)
    return tok, pad


# -- gather forms ---------------------------------------------------------------------------------------


def gather_index_einsum(q, k, v, block_indices, block_size):
    """Advanced indexing, GQA by repeat_interleave, einsum, float32 upcast, masked_fill, softmax."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)
    t_pos = torch.arange(T, device=q.device).view(1, T, 1, 1)
    masked = pad | (tok > t_pos)
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, 1, H, 1)
    k_sel = k[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    v_sel = v[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    scores = torch.einsum("bthd,bthsd->bths", q.float(), k_sel.float()) * D**-0.5
    scores = scores.masked_fill(masked.repeat_interleave(G, dim=2), NEG_INF)
    p = torch.softmax(scores, dim=-1)
    return torch.einsum("bths,bthsd->bthd", p, v_sel.float()).to(q.dtype)


def gather_bhtd_matmul_where(q, k, v, block_indices, block_size):
    """[B, H, T, D] layout, ``@`` products, scale by division, mask by torch.where, F.softmax."""
    B, HQ, T, D = q.shape
    H = k.shape[1]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)  # [B, H, T, S]
    t_pos = torch.arange(T, device=q.device).view(T, 1)
    visible = ~pad & (tok <= t_pos)
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, H, 1, 1)
    k_sel = k[b_idx, h_idx, safe].repeat_interleave(G, dim=1)  # [B, HQ, T, S, D]
    v_sel = v[b_idx, h_idx, safe].repeat_interleave(G, dim=1)
    scores = (q.unsqueeze(-2) @ k_sel.transpose(-1, -2)).squeeze(-2) / math.sqrt(D)
    scores = torch.where(visible.repeat_interleave(G, dim=1), scores, NEG_INF)
    p = F.softmax(scores, dim=-1)
    return (p.unsqueeze(-2) @ v_sel).squeeze(-2)


def gather_take_per_token(q, k, v, block_indices, block_size):
    """torch.gather on token positions of ``[B, H, T, D]`` views, GQA by q.view(B, T, H, G, D)."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)  # [B, T, H, S]
    S = tok.shape[-1]
    t_pos = torch.arange(T, device=q.device)[:, None, None]
    masked = pad | (tok > t_pos)
    flat = tok.clamp(0, T - 1).permute(0, 2, 1, 3).reshape(B, H, T * S, 1)
    kh, vh = k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
    k_sel = torch.gather(kh, 2, flat.expand(B, H, T * S, D)).view(B, H, T, S, D)
    v_sel = torch.gather(vh, 2, flat.expand(B, H, T * S, D)).view(B, H, T, S, D)
    qg = q.view(B, T, H, G, D)
    scores = torch.einsum("bthgd,bhtsd->bthgs", qg, k_sel) * D**-0.5
    scores = scores.masked_fill(masked.unsqueeze(3), NEG_INF)
    p = scores.softmax(dim=-1)
    o = torch.einsum("bthgs,bhtsd->bthgd", p, v_sel)
    return o.reshape(B, T, HQ, D)


def gather_take_per_block(q, k, v, block_indices, block_size):
    """torch.gather of whole blocks from a ``[B, H, nb, bs*D]`` view (T padded up to whole blocks)."""
    B, T, HQ, D = q.shape
    H, n = k.shape[2], block_indices.shape[-1]
    G = HQ // H
    nb = (T + block_size - 1) // block_size
    Tp = nb * block_size
    kp = F.pad(k, (0, 0, 0, 0, 0, Tp - T))
    vp = F.pad(v, (0, 0, 0, 0, 0, Tp - T))
    kb = kp.transpose(1, 2).reshape(B, H, nb, block_size * D)
    vb = vp.transpose(1, 2).reshape(B, H, nb, block_size * D)
    blk = block_indices.clamp(min=0).permute(0, 2, 1, 3).reshape(B, H, T * n, 1)
    blk = blk.expand(B, H, T * n, block_size * D)
    k_sel = torch.gather(kb, 2, blk).view(B, H, T, n * block_size, D)
    v_sel = torch.gather(vb, 2, blk).view(B, H, T, n * block_size, D)
    tok, pad = _token_indices(block_indices, block_size)
    t_pos = torch.arange(T, device=q.device).view(T, 1, 1)
    masked = (pad | (tok > t_pos)).permute(0, 2, 1, 3)  # [B, H, T, S]
    qh = q.transpose(1, 2).reshape(B, H, G, T, D)
    scores = torch.einsum("bhgtd,bhtsd->bhgts", qh, k_sel) * D**-0.5
    scores = scores.masked_fill(masked.unsqueeze(2), NEG_INF)
    p = torch.softmax(scores, -1)
    o = torch.einsum("bhgts,bhtsd->bhgtd", p, v_sel)
    return o.reshape(B, HQ, T, D).transpose(1, 2)


def gather_index_select(q, k, v, block_indices, block_size):
    """index_select on a flattened ``[B*T*H, D]`` view, GQA by expand + reshape, torch.matmul."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)  # [B, T, H, S]
    S = tok.shape[-1]
    t_pos = torch.arange(T, device=q.device).view(1, T, 1, 1)
    masked = pad | (tok > t_pos)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, 1, H, 1)
    rows = ((b_idx * T + tok.clamp(0, T - 1)) * H + h_idx).reshape(-1)
    k_sel = k.reshape(B * T * H, D).index_select(0, rows).view(B, T, H, S, D)
    v_sel = v.reshape(B * T * H, D).index_select(0, rows).view(B, T, H, S, D)
    k_sel = k_sel[:, :, :, None].expand(B, T, H, G, S, D).reshape(B, T, HQ, S, D)
    v_sel = v_sel[:, :, :, None].expand(B, T, H, G, S, D).reshape(B, T, HQ, S, D)
    masked = masked[:, :, :, None].expand(B, T, H, G, S).reshape(B, T, HQ, S)
    scores = torch.matmul(q.unsqueeze(-2), k_sel.transpose(-1, -2)).squeeze(-2) * D**-0.5
    scores = scores.masked_fill(masked, NEG_INF)
    p = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(p.unsqueeze(-2), v_sel).squeeze(-2)


def gather_manual_softmax(q, k, v, block_indices, block_size):
    """Softmax spelled out as ``exp(s - amax) / sum``, scale folded into q, an added -inf bias."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)
    t_pos = torch.arange(T, device=q.device).view(1, T, 1, 1)
    bias = torch.zeros(tok.shape, device=q.device, dtype=q.dtype).masked_fill(pad | (tok > t_pos), NEG_INF)
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, 1, H, 1)
    k_sel = k[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    v_sel = v[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    qs = q * D**-0.5
    scores = torch.einsum("bthd,bthsd->bths", qs, k_sel) + bias.repeat_interleave(G, dim=2)
    m = scores.amax(dim=-1, keepdim=True)
    e = torch.exp(scores - m)
    p = e / e.sum(dim=-1, keepdim=True)
    return torch.einsum("bths,bthsd->bthd", p, v_sel)


def gather_unbatched(q, k, v, block_indices, block_size):
    """One sequence with the batch dim squeezed: q ``[T, HQ, D]``, k/v ``[T, H, D]``, ``[T, H, n]``."""
    T, HQ, D = q.shape
    H = k.shape[1]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)  # [T, H, S]
    t_pos = torch.arange(T, device=q.device).view(T, 1, 1)
    masked = pad | (tok > t_pos)
    safe = tok.clamp(0, T - 1)
    h_idx = torch.arange(H, device=q.device).view(1, H, 1)
    k_sel = k[safe, h_idx].repeat_interleave(G, dim=1)  # [T, HQ, S, D]
    v_sel = v[safe, h_idx].repeat_interleave(G, dim=1)
    scores = torch.einsum("thd,thsd->ths", q, k_sel) * D**-0.5
    scores = scores.masked_fill(masked.repeat_interleave(G, dim=1), NEG_INF)
    return torch.einsum("ths,thsd->thd", scores.softmax(-1), v_sel)


def gather_noncausal(q, k, v, block_indices, block_size):
    """Non-causal selected attention (only padding and past-the-end keys masked), torch.where."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)
    visible = ~pad & (tok < T)
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, 1, H, 1)
    k_sel = k[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    v_sel = v[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    scores = torch.einsum("bthd,bthsd->bths", q, k_sel) * D**-0.5
    scores = torch.where(visible.repeat_interleave(G, dim=2), scores, NEG_INF)
    return torch.einsum("bths,bthsd->bthd", scores.softmax(-1), v_sel)


def gather_inplace(q, k, v, block_indices, block_size):
    """In-place updates (``s *= scale``, ``s.masked_fill_``), GQA by q.view, F.softmax(dtype=float32)."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok = (block_indices.unsqueeze(-1) * block_size + torch.arange(block_size, device=q.device)).flatten(-2)
    masked = block_indices.lt(0).repeat_interleave(block_size, -1) | (tok > torch.arange(T, device=q.device).view(1, T, 1, 1))
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, 1, H, 1)
    k_sel, v_sel = k[b_idx, safe, h_idx], v[b_idx, safe, h_idx]  # [B, T, H, S, D]
    s = torch.einsum("bthgd,bthsd->bthgs", q.view(B, T, H, G, D), k_sel)
    s *= D**-0.5
    s.masked_fill_(masked.unsqueeze(3), NEG_INF)
    p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.einsum("bthgs,bthsd->bthgd", p, v_sel).flatten(2, 3)


def gather_einsum_ellipsis(q, k, v, block_indices, block_size):
    """``einsum`` with ``...`` and a size-1 group dim broadcast against ``q.view(B, T, H, G, D)``."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)
    masked = pad | (tok > torch.arange(T, device=q.device).view(T, 1, 1))
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, 1, H, 1)
    k_sel = k[b_idx, safe, h_idx].unsqueeze(3)  # [B, T, H, 1, S, D]
    v_sel = v[b_idx, safe, h_idx].unsqueeze(3)
    s = torch.einsum("...gd,...gsd->...gs", q.view(B, T, H, G, D), k_sel) * D**-0.5
    s = s.masked_fill(masked.unsqueeze(-2), NEG_INF)
    return torch.einsum("...gs,...gsd->...gd", s.softmax(-1), v_sel).reshape(B, T, HQ, D)


def _rope_interleaved(x):
    """Rotary embedding on interleaved pairs (GPT-J style): ``stack([..], -1).flatten(-2)``."""
    T, D = x.shape[-3], x.shape[-1]
    inv = 10000.0 ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv  # [T, D/2]
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


def gather_rope_interleaved(q, k, v, block_indices, block_size):
    """The gather form on q and k that an interleaved RoPE just built by ``stack`` + ``flatten``."""
    return gather_index_einsum(_rope_interleaved(q), _rope_interleaved(k), v, block_indices, block_size)


def gather_seq_first(q, k, v, block_indices, block_size):
    """Sequence-first tensors (Megatron's ``[T, B, H, D]``), GQA by repeat_interleave, matmul."""
    T, B, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)  # [T, B, H, S]
    masked = pad | (tok > torch.arange(T, device=q.device).view(T, 1, 1, 1))
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(1, B, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, 1, H, 1)
    k_sel = k[safe, b_idx, h_idx].repeat_interleave(G, dim=2)  # [T, B, HQ, S, D]
    v_sel = v[safe, b_idx, h_idx].repeat_interleave(G, dim=2)
    scores = torch.matmul(k_sel, q.unsqueeze(-1)).squeeze(-1) * D**-0.5  # [T, B, HQ, S]
    scores = scores.masked_fill(masked.repeat_interleave(G, dim=2), NEG_INF)
    return torch.matmul(scores.softmax(-1).unsqueeze(-2), v_sel).squeeze(-2)


def gather_bmm_merged_heads(q, k, v, block_indices, block_size):
    """Batch and heads merged into one dim (``[B*HQ, T, D]``, ``[B*H, T, n]``), products by bmm."""
    BHQ, T, D = q.shape
    BH = k.shape[0]
    G = BHQ // BH
    tok, pad = _token_indices(block_indices, block_size)  # [B*H, T, S]
    masked = pad | (tok > torch.arange(T, device=q.device).view(1, T, 1))
    safe = tok.clamp(0, T - 1)
    rows = torch.arange(BH, device=q.device).view(BH, 1, 1)
    k_sel = k[rows, safe].repeat_interleave(G, 0).flatten(0, 1)  # [B*HQ*T, S, D]
    v_sel = v[rows, safe].repeat_interleave(G, 0).flatten(0, 1)
    scores = torch.bmm(q.reshape(BHQ * T, 1, D), k_sel.transpose(1, 2)).view(BHQ, T, -1) * D**-0.5
    p = scores.masked_fill(masked.repeat_interleave(G, 0), NEG_INF).softmax(-1)
    return torch.bmm(p.view(BHQ * T, 1, -1), v_sel).view(BHQ, T, D)


def gather_group_major(q, k, v, block_indices, block_size):
    """GQA groups the other way round, ``hq = g * H + h`` (einops' ``repeat(k, 'b h ... -> b (g h)
    ...')``): gathered keys tiled by ``expand`` + ``reshape``, the mask by ``.repeat``; [B, H, T, D]."""
    B, HQ, T, D = q.shape
    H = k.shape[1]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)  # [B, H, T, S]
    visible = ~pad & (tok <= torch.arange(T, device=q.device).view(T, 1))
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, H, 1, 1)

    def tiled(x):  # [B, H, ...] -> [B, G*H, ...], group outermost
        return x.unsqueeze(1).expand(B, G, *x.shape[1:]).reshape(B, HQ, *x.shape[2:])

    scores = torch.einsum("bhtd,bhtsd->bhts", q, tiled(k[b_idx, h_idx, safe])) * D**-0.5
    scores = scores.masked_fill(~visible.repeat(1, G, 1, 1), NEG_INF)
    return torch.einsum("bhts,bhtsd->bhtd", scores.softmax(-1), tiled(v[b_idx, h_idx, safe]))


def gather_sdpa_per_token(q, k, v, block_indices, block_size):
    """``F.scaled_dot_product_attention`` of each query token (a length-1 query) over its gathered
    keys, the visible ones as a boolean mask, squeezed after; GQA by repeat_interleave."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    tok, pad = _token_indices(block_indices, block_size)  # [B, T, H, S]
    visible = ~pad & (tok <= torch.arange(T, device=q.device).view(1, T, 1, 1))
    safe = tok.clamp(0, T - 1)
    b_idx = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h_idx = torch.arange(H, device=q.device).view(1, 1, H, 1)
    k_sel = k[b_idx, safe, h_idx].repeat_interleave(G, dim=2)  # [B, T, HQ, S, D]
    v_sel = v[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    mask = visible.repeat_interleave(G, dim=2).unsqueeze(-2)  # [B, T, HQ, 1, S]
    return F.scaled_dot_product_attention(q.unsqueeze(-2), k_sel, v_sel, attn_mask=mask).squeeze(-2)


# -- dense-mask forms -----------------------------------------------------------------------------------


def _block_mask_scatter(block_indices, T, block_size):
    """``[..., T, nb]`` bool: which blocks each query selected (padding routed to a spare column)."""
    nb = (T + block_size - 1) // block_size
    idx = block_indices.masked_fill(block_indices < 0, nb)
    mask = torch.zeros(*block_indices.shape[:-1], nb + 1, dtype=torch.bool, device=block_indices.device)
    mask.scatter_(-1, idx, True)
    return mask[..., :nb]


def mask_scatter_repeat(q, k, v, block_indices, block_size):
    """Block mask by scatter_, expanded to tokens by repeat_interleave, AND causal, [B, H, T, D]."""
    B, HQ, T, D = q.shape
    H = k.shape[1]
    G = HQ // H
    blocks = _block_mask_scatter(block_indices, T, block_size)  # [B, H, T, nb]
    tokens = blocks.repeat_interleave(block_size, dim=-1)[..., :T]  # [B, H, T, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    allowed = (tokens & causal).repeat_interleave(G, dim=1)
    kk = k.repeat_interleave(G, dim=1)
    vv = v.repeat_interleave(G, dim=1)
    scores = q @ kk.transpose(-2, -1) * D**-0.5
    scores = scores.masked_fill(~allowed, NEG_INF)
    return torch.softmax(scores, dim=-1) @ vv


def mask_scatter_index_pos(q, k, v, block_indices, block_size):
    """Block mask by torch.scatter, expanded by indexing with ``pos // bs``, [B, T, H, D], einsum."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    nb = (T + block_size - 1) // block_size
    idx = torch.where(block_indices >= 0, block_indices, nb)
    blocks = torch.zeros(B, T, H, nb + 1, dtype=torch.bool, device=q.device)
    blocks = torch.scatter(blocks, -1, idx, torch.ones_like(idx, dtype=torch.bool))
    pos = torch.arange(T, device=q.device)
    tokens = blocks[..., pos // block_size]  # [B, T, H, T]
    allowed = tokens & (pos[None, :] <= pos[:, None]).view(1, T, 1, T)
    qg = q.view(B, T, H, G, D)
    scores = torch.einsum("bthgd,bshd->bthgs", qg.float(), k.float()) / math.sqrt(D)
    scores = scores.masked_fill(~allowed.unsqueeze(3), NEG_INF)
    p = torch.softmax(scores, dim=-1)
    o = torch.einsum("bthgs,bshd->bthgd", p, v.float())
    return o.reshape(B, T, HQ, D).to(q.dtype)


def mask_sdpa(q, k, v, block_indices, block_size):
    """The scatter block mask AND causal, handed to F.scaled_dot_product_attention, [B, H, T, D]."""
    B, HQ, T, D = q.shape
    H = k.shape[1]
    G = HQ // H
    blocks = _block_mask_scatter(block_indices, T, block_size)
    tokens = blocks.repeat_interleave(block_size, dim=-1)[..., :T]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    allowed = (tokens & causal).repeat_interleave(G, dim=1)
    kk = k.repeat_interleave(G, dim=1)
    vv = v.repeat_interleave(G, dim=1)
    return F.scaled_dot_product_attention(q, kk, vv, attn_mask=allowed)


def mask_bias_manual_softmax(q, k, v, block_indices, block_size):
    """Dense mask as an additive bias (0 / -inf by torch.where), scale folded into q by division,
    softmax spelled out with ``max(...).values``, GQA by expand + reshape."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    blocks = _block_mask_scatter(block_indices, T, block_size)  # [B, T, H, nb]
    pos = torch.arange(T, device=q.device)
    allowed = blocks[..., pos // block_size] & (pos.view(1, T, 1, 1) >= pos.view(1, 1, 1, T))
    bias = torch.where(allowed, 0.0, NEG_INF).to(q.dtype)  # [B, T, H, T]
    bias = bias[:, :, :, None].expand(B, T, H, G, T).reshape(B, T, HQ, T)
    qs = q / math.sqrt(D)
    scores = torch.einsum("bthd,bshd->bths", qs, k.repeat_interleave(G, dim=2)) + bias
    m = scores.max(dim=-1, keepdim=True).values
    e = (scores - m).exp()
    p = e / torch.sum(e, dim=-1, keepdim=True)
    return torch.einsum("bths,bshd->bthd", p, v.repeat_interleave(G, dim=2))


def mask_index_put(q, k, v, block_indices, block_size):
    """Block mask by index assignment ``mask[b, t, h, idx] = True``, expanded by ``pos // bs``."""
    B, T, HQ, D = q.shape
    H, n = k.shape[2], block_indices.shape[-1]
    G = HQ // H
    nb = (T + block_size - 1) // block_size
    idx = torch.where(block_indices < 0, nb, block_indices)  # padding -> a spare column
    blocks = torch.zeros(B, T, H, nb + 1, dtype=torch.bool, device=q.device)
    b_i = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    t_i = torch.arange(T, device=q.device).view(1, T, 1, 1)
    h_i = torch.arange(H, device=q.device).view(1, 1, H, 1)
    blocks[b_i, t_i, h_i, idx] = True
    pos = torch.arange(T, device=q.device)
    allowed = blocks[..., pos // block_size] & (pos.view(1, T, 1, 1) >= pos.view(1, 1, 1, T))
    allowed = allowed.repeat_interleave(G, dim=2)
    scores = torch.einsum("bthd,bshd->bths", q, k.repeat_interleave(G, dim=2)) * D**-0.5
    p = scores.masked_fill(~allowed, NEG_INF).softmax(dim=-1)
    return torch.einsum("bths,bshd->bthd", p, v.repeat_interleave(G, dim=2))


def mask_compare_any(q, k, v, block_indices, block_size):
    """Block mask by comparing every block number with the selection and ``.any`` over the slots
    (padding equals no block), expanded by indexing with ``pos // bs``, [B, T, H, D]."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    nb = (T + block_size - 1) // block_size
    blocks = (block_indices.unsqueeze(-2) == torch.arange(nb, device=q.device).unsqueeze(-1)).any(dim=-1)
    pos = torch.arange(T, device=q.device)
    allowed = blocks[..., pos // block_size] & (pos.view(1, T, 1, 1) >= pos.view(1, 1, 1, T))
    scores = torch.einsum("bthd,bshd->bths", q, k.repeat_interleave(G, dim=2)) * D**-0.5
    scores = scores.masked_fill(~allowed.repeat_interleave(G, dim=2), NEG_INF)
    return torch.einsum("bths,bshd->bthd", scores.softmax(dim=-1), v.repeat_interleave(G, dim=2))


@dataclass(frozen=True)
class Form:
    name: str
    fn: Callable
    layout: str  # "bthd", "bhtd", "thd", "tbhd" or "(bh)td"
    family: str  # "gather" or "mask"
    causal: bool = True

    @property
    def count_duplicates(self) -> bool:
        return self.family == "gather"


FORMS = {
    f.__name__: Form(f.__name__, f, layout, family, f is not gather_noncausal)
    for f, layout, family in [
        (gather_index_einsum, "bthd", "gather"),
        (gather_bhtd_matmul_where, "bhtd", "gather"),
        (gather_take_per_token, "bthd", "gather"),
        (gather_take_per_block, "bthd", "gather"),
        (gather_index_select, "bthd", "gather"),
        (gather_manual_softmax, "bthd", "gather"),
        (gather_unbatched, "thd", "gather"),
        (gather_noncausal, "bthd", "gather"),
        (gather_inplace, "bthd", "gather"),
        (gather_einsum_ellipsis, "bthd", "gather"),
        (gather_rope_interleaved, "bthd", "gather"),
        (gather_seq_first, "tbhd", "gather"),
        (gather_bmm_merged_heads, "(bh)td", "gather"),
        (gather_group_major, "bhtd", "gather"),
        (gather_sdpa_per_token, "bthd", "gather"),
        (mask_scatter_repeat, "bhtd", "mask"),
        (mask_scatter_index_pos, "bthd", "mask"),
        (mask_sdpa, "bhtd", "mask"),
        (mask_bias_manual_softmax, "bthd", "mask"),
        (mask_index_put, "bthd", "mask"),
        (mask_compare_any, "bthd", "mask"),
    ]
}


def to_layout(layout: str, q, k, v, block_indices):
    """``[B, T, H, D]`` tensors (and ``[B, T, H, n]`` indices) in ``layout``."""
    if layout == "bthd":
        return q, k, v, block_indices
    if layout == "bhtd":
        return tuple(t.transpose(1, 2) for t in (q, k, v, block_indices))
    if layout == "thd":
        assert q.shape[0] == 1, "the thd layout holds one sequence"
        return tuple(t[0] for t in (q, k, v, block_indices))
    if layout == "tbhd":
        return tuple(t.transpose(0, 1) for t in (q, k, v, block_indices))
    if layout == "(bh)td":
        return tuple(t.transpose(1, 2).flatten(0, 1) for t in (q, k, v, block_indices))
    raise ValueError(layout)


def from_layout(layout: str, o, batch: int = 1):
    """The output of a form back to ``[B, T, HQ, D]`` (``batch``: B, for the merged layout)."""
    if layout == "bhtd":
        return o.transpose(1, 2)
    if layout == "thd":
        return o.unsqueeze(0)
    if layout == "tbhd":
        return o.transpose(0, 1)
    if layout == "(bh)td":
        return o.unflatten(0, (batch, -1)).transpose(1, 2)
    return o
