"""The selected-attention contract (DESIGN.md section 2) in plain PyTorch.

This module is the oracle for every test and the CPU path of the operation. It works on the
``[B, T, H, D]`` layout with *canonical* block indices (see :func:`canonical_indices`): a negative
entry selects nothing, every other entry is a block that exists, and an entry listed twice is
counted twice. Everything the user-facing op accepts beyond that (layouts, duplicate policy,
out-of-range policy) is reduced to this form before any implementation runs, so the reference
and the kernels only ever disagree on arithmetic.

Queries are processed in chunks so that the gathered keys never exceed a fixed budget; nothing
of size ``[B, T, H, n*bs, D]`` exists for the whole sequence.
"""
from __future__ import annotations

import math

import torch

# Bytes of gathered K+V (float32) a chunk may hold. 256 MiB keeps T = 64K runs bounded.
_CHUNK_BYTES = 256 * 2**20

OUT_OF_RANGE_POLICIES = ("raise", "assert", "drop")


def num_blocks(seq_len: int, block_size: int) -> int:
    return (seq_len + block_size - 1) // block_size


def check_out_of_range(idx: torch.Tensor, seq_len: int, block_size: int, on_out_of_range: str) -> None:
    """The ``raise`` and ``assert`` policies of :func:`canonical_indices` (``drop`` checks nothing)."""
    nb = num_blocks(seq_len, block_size)
    if on_out_of_range == "raise":
        if idx.numel() and bool((idx >= nb).any()):
            where = [int(c) for c in (idx >= nb).nonzero()[0]]
            count = int((idx >= nb).sum())
            raise ValueError(
                f"block_indices{where} (as [b, t, h, slot]) is {int(idx[tuple(where)])}, out of range "
                f"({count} such entr{'y' if count == 1 else 'ies'}): with {seq_len} keys and "
                f"block_size={block_size} there are {nb} blocks, so entries must be < {nb} "
                f"(negative entries mean padding)"
            )
    elif on_out_of_range == "assert":
        if idx.numel():
            torch._assert_async(
                (idx < nb).all(),
                f"fsa_compile: block_indices has an entry >= ceil(T / block_size) with block_size={block_size} "
                "(negative entries mean padding)",
            )
    elif on_out_of_range != "drop":
        raise ValueError(
            f"on_out_of_range must be one of {OUT_OF_RANGE_POLICIES}, got {on_out_of_range!r}"
        )


def canonical_indices(
    block_indices: torch.Tensor,
    seq_len: int,
    block_size: int,
    *,
    count_duplicates: bool,
    on_out_of_range: str,
) -> torch.Tensor:
    """Reduce user block indices to the canonical form every implementation consumes.

    Returns int32 indices of the same shape where negative entries mean "nothing", every
    non-negative entry is ``< ceil(T / bs)``, and (unless ``count_duplicates``) each block
    appears at most once per row (later copies become -1).

    ``on_out_of_range``: ``"raise"`` checks on the host and raises ``ValueError`` (what a direct
    call wants); ``"assert"`` checks on the device without a host sync (what a rewrite of an
    unclamped gather wants: eager would fail there too); ``"drop"`` turns such entries into
    padding (what a clamped gather with a position mask computes).
    """
    nb = num_blocks(seq_len, block_size)
    idx = block_indices
    check_out_of_range(idx, seq_len, block_size, on_out_of_range)
    # Compared in the indices' own dtype (an int64 entry >= 2**31 must not wrap into range), filled
    # after the cast (-1 does not exist in uint8). Few ops: each is a kernel launch on every call.
    bad = idx < 0
    if on_out_of_range == "drop":
        bad = bad | (idx >= nb)
    idx = idx.to(torch.int32).masked_fill(bad, -1)
    if not count_duplicates and idx.shape[-1] > 1:
        srt, _ = torch.sort(idx, dim=-1)
        dup = torch.zeros_like(srt, dtype=torch.bool)
        dup[..., 1:] = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
        idx = torch.where(dup, torch.full_like(srt, -1), srt)
    return idx.contiguous()


def _chunk_len(B: int, H: int, S: int, D: int, Dv: int) -> int:
    per_query = B * H * S * (D + Dv) * 4
    return max(1, _CHUNK_BYTES // max(per_query, 1))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _gather_chunk(k, v, idx_c, t0, block_size, causal, T):
    """Gathered keys/values and visibility for queries at positions ``t0 .. t0 + c`` over ``T`` keys
    (``t0`` an int), or at the positions ``t0 [B, c]`` (a tensor) holds.

    Returns ``kg [B,H,c,S,D]``, ``vg [B,H,c,S,Dv]`` (float32), ``tok [B,H,c,S]`` (int64 token
    positions, clamped to be valid addresses) and ``vis [B,H,c,S]`` (bool).
    """
    B, c, H, n = idx_c.shape
    D, Dv = k.shape[-1], v.shape[-1]
    ix = idx_c.long().permute(0, 2, 1, 3)  # [B,H,c,n]
    offs = torch.arange(block_size, device=k.device)
    tok = ix.unsqueeze(-1) * block_size + offs  # [B,H,c,n,bs]
    vis = (ix >= 0).unsqueeze(-1) & (tok < T)
    if causal:
        if isinstance(t0, torch.Tensor):
            tq = t0.to(device=k.device, dtype=torch.long).view(-1, 1, c, 1, 1)  # [B or 1, c]
        else:
            tq = torch.arange(t0, t0 + c, device=k.device).view(1, 1, c, 1, 1)
        vis = vis & (tok <= tq)
    S = n * block_size
    tok = tok.clamp(0, T - 1).reshape(B, H, c, S)
    vis = vis.reshape(B, H, c, S)
    flat = tok.reshape(B, H, c * S)
    kh = k.permute(0, 2, 1, 3)  # [B,H,T,D]
    vh = v.permute(0, 2, 1, 3)
    acc = _acc_dtype(k.dtype)
    kg = torch.gather(kh, 2, flat.unsqueeze(-1).expand(B, H, c * S, D)).to(acc)
    vg = torch.gather(vh, 2, flat.unsqueeze(-1).expand(B, H, c * S, Dv)).to(acc)
    return kg.view(B, H, c, S, D), vg.view(B, H, c, S, Dv), tok, vis


def _rows(q_offset, t0: int, t1: int):
    """The positions of q's rows ``t0 .. t1 - 1``: their first (``q_offset`` an int) or all of them
    (``q_offset`` a ``[B, Tq]`` or ``[1, Tq]`` tensor of positions)."""
    if isinstance(q_offset, torch.Tensor):
        return q_offset[:, t0:t1]
    return t0 + q_offset


def reference_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_indices: torch.Tensor,
    block_size: int,
    scale: float,
    causal: bool = True,
    q_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``o [B,T,HQ,Dv]`` (q's dtype) and natural-log ``lse [B,T,HQ]`` (float32).

    Inputs are ``[B, T, H, D]`` with canonical indices ``[B, T, H, n]``. A row with no visible
    key gets ``o = 0`` and ``lse = -inf``. With ``q_offset``, q (and the indices) hold ``Tq``
    query rows at positions ``q_offset .. q_offset + Tq - 1`` of k's and v's ``Tk`` keys; a
    ``q_offset`` tensor ``[B, Tq]`` gives each row's position.
    """
    B, T, HQ, D = q.shape
    Tk = k.shape[1]
    H, Dv = k.shape[2], v.shape[-1]
    G = HQ // H
    n = block_indices.shape[-1]
    o = torch.empty(B, T, HQ, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, T, HQ, dtype=torch.float32, device=q.device)
    c = _chunk_len(B, H, n * block_size, D, Dv)
    for t0 in range(0, T, c):
        t1 = min(T, t0 + c)
        kg, vg, _, vis = _gather_chunk(k, v, block_indices[:, t0:t1], _rows(q_offset, t0, t1), block_size, causal, Tk)
        qc = q[:, t0:t1].to(kg.dtype).reshape(B, t1 - t0, H, G, D).permute(0, 2, 1, 3, 4)
        s = torch.einsum("bhcgd,bhcsd->bhcgs", qc, kg) * scale
        s = s.masked_fill(~vis.unsqueeze(3), -math.inf)
        if s.shape[-1] == 0:  # n = 0: nothing selected anywhere (amax has no identity)
            m = s.new_full((*s.shape[:-1], 1), -math.inf)
        else:
            m = s.amax(-1, keepdim=True)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        p = torch.exp(s - m)
        l = p.sum(-1, keepdim=True)
        oc = torch.einsum("bhcgs,bhcsd->bhcgd", p, vg) / l.clamp_min(torch.finfo(l.dtype).tiny)
        lc = torch.where(l > 0, m + torch.log(l), torch.full_like(l, -math.inf)).squeeze(-1)
        o[:, t0:t1] = oc.permute(0, 2, 1, 3, 4).reshape(B, t1 - t0, HQ, Dv).to(q.dtype)
        lse[:, t0:t1] = lc.float().permute(0, 2, 1, 3).reshape(B, t1 - t0, HQ)
    return o, lse


def reference_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    block_indices: torch.Tensor,
    block_size: int,
    scale: float,
    causal: bool = True,
    dlse: torch.Tensor | None = None,
    q_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``dq, dk, dv`` (in the inputs' dtypes) from the saved ``o`` and ``lse``.

    ``dlse`` is the gradient on the returned log-sum-exp, if any: ``d lse / d s = p``, so it
    enters as ``ds = p * (dp - delta + dlse)``.
    """
    B, T, HQ, D = q.shape
    Tk = k.shape[1]
    H, Dv = k.shape[2], v.shape[-1]
    G = HQ // H
    n = block_indices.shape[-1]
    acc = _acc_dtype(q.dtype)
    delta = (do.to(acc) * o.to(acc)).sum(-1)  # [B,T,HQ]
    if dlse is not None:
        delta = delta - torch.where(torch.isinf(lse), torch.zeros_like(dlse), dlse).to(acc)
    dq = torch.empty(B, T, HQ, D, dtype=q.dtype, device=q.device)
    dk = torch.zeros(B * H * Tk, D, dtype=acc, device=q.device)
    dv = torch.zeros(B * H * Tk, Dv, dtype=acc, device=q.device)
    c = _chunk_len(B, H, n * block_size, D, Dv)
    bh = (torch.arange(B, device=q.device).view(B, 1) * H + torch.arange(H, device=q.device)) * Tk
    for t0 in range(0, T, c):
        t1 = min(T, t0 + c)
        cl = t1 - t0
        kg, vg, tok, vis = _gather_chunk(k, v, block_indices[:, t0:t1], _rows(q_offset, t0, t1), block_size, causal, Tk)

        def heads(x):  # [B,c,HQ,X] -> [B,H,c,G,X]
            return x[:, t0:t1].to(acc).reshape(B, cl, H, G, -1).permute(0, 2, 1, 3, 4)

        qc, doc = heads(q), heads(do)
        lc = lse[:, t0:t1].to(acc).reshape(B, cl, H, G).permute(0, 2, 1, 3).unsqueeze(-1)
        dc = delta[:, t0:t1].reshape(B, cl, H, G).permute(0, 2, 1, 3).unsqueeze(-1)
        s = torch.einsum("bhcgd,bhcsd->bhcgs", qc, kg) * scale
        lc = torch.where(torch.isinf(lc), torch.zeros_like(lc), lc)
        p = torch.where(vis.unsqueeze(3), torch.exp(s - lc), torch.zeros_like(s))
        dp = torch.einsum("bhcgd,bhcsd->bhcgs", doc, vg)
        ds = p * (dp - dc)
        dqc = torch.einsum("bhcgs,bhcsd->bhcgd", ds, kg) * scale
        dq[:, t0:t1] = dqc.permute(0, 2, 1, 3, 4).reshape(B, cl, HQ, D).to(q.dtype)
        dkg = torch.einsum("bhcgs,bhcgd->bhcsd", ds, qc) * scale
        dvg = torch.einsum("bhcgs,bhcgd->bhcsd", p, doc)
        rows = (bh.view(B, H, 1, 1) + tok).reshape(-1)
        dk.index_add_(0, rows, dkg.reshape(-1, D))
        dv.index_add_(0, rows, dvg.reshape(-1, Dv))
    dk = dk.view(B, H, Tk, D).permute(0, 2, 1, 3).to(k.dtype)
    dv = dv.view(B, H, Tk, Dv).permute(0, 2, 1, 3).to(v.dtype)
    return dq, dk.contiguous(), dv.contiguous()
