"""Forward launches: plan -> Triton templates (or the reference)."""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from .. import templates  # noqa: F401  (sets the interpreter switch before triton is imported)
import triton  # noqa: E402
from ..reference import reference_forward
from ..templates.fsa_fwd import fsa_fwd_kernel
from ..templates.index import build_block_index
from ..templates.merge import merge_fwd_kernel
from ..templates.nsa_fwd import nsa_fwd_kernel, tile_block_union
from ..templates.nsa_shared_fwd import nsa_shared_fwd_kernel
from .plan import Plan, interpret_mode, maxnreg_option, row_position_args

LOG2E = 1.4426950408889634


def _p2(x: int) -> int:
    return max(16, 1 << max(0, int(x - 1).bit_length()))


def _precision(dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _check(q, k, v, idx, block_size):
    B, T, HQ, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[1] < T or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
    H = k.shape[2]
    if HQ % H:
        raise ValueError(f"HQ={HQ} is not a multiple of H={H}")
    if idx.shape[:3] != (B, T, H) or idx.dtype != torch.int32:
        raise ValueError(f"idx must be int32 [B, T, H, n], got {idx.dtype} {tuple(idx.shape)}")
    if max(k.shape[-1], v.shape[-1]) > 256:
        raise ValueError("head dims above 256 are not supported by the kernels")
    if block_size < 1:
        raise ValueError("block_size must be >= 1")


def forward(q, k, v, idx, block_size, scale, causal, plan: Plan, *, poison: bool = False,
            keep_index: bool = False, q_offset: int = 0):
    """``o [B,T,HQ,Dv]`` (q's dtype) and natural-log ``lse [B,T,HQ]`` float32; with
    ``keep_index`` also the inverted loop's :class:`BlockIndex` (None for the other strategies),
    which the backward can take instead of building its own. q's ``T`` rows are the key
    positions ``q_offset ..`` of k's and v's (the kernels take the keys' length apart).

    ``poison=True`` (a test hook) fills the outputs and the partial buffers with NaN before the
    kernels run, so any element the kernels fail to write shows up.
    """
    o, lse, index = _forward(q, k, v, idx, block_size, scale, causal, plan, poison, q_offset)
    return (o, lse, index) if keep_index else (o, lse)


def _forward(q, k, v, idx, block_size, scale, causal, plan, poison, qoff):
    if plan.strategy == "reference":
        return (*reference_forward(q, k, v, idx, block_size, scale, causal, qoff), None)
    _check(q, k, v, idx, block_size)
    B, T, HQ, D = q.shape
    H, Dv = k.shape[2], v.shape[-1]
    G = HQ // H
    n = idx.shape[-1]
    o = torch.empty(B, T, HQ, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, T, HQ, dtype=torch.float32, device=q.device)
    if poison:
        o.fill_(float("nan"))
        lse.fill_(float("nan"))
    if T == 0 or B == 0 or HQ == 0:
        return o, lse, None
    if n == 0:
        o.zero_()
        lse.fill_(-math.inf)
        return o, lse, None
    if plan.strategy == "nsa":
        _nsa(q, k, v, idx, block_size, scale, causal, plan, o, lse, qoff)
        return o, lse, None
    if plan.strategy == "fsa":
        return o, lse, _fsa(q, k, v, idx, block_size, scale, causal, plan, o, lse, poison, qoff)
    raise ValueError(f"unknown strategy {plan.strategy!r}")


def _common(q, k, v, block_size):
    return dict(BS=block_size, BLOCK_N=_p2(block_size), D=q.shape[-1], BLOCK_D=_p2(q.shape[-1]),
                DV=v.shape[-1], BLOCK_DV=_p2(v.shape[-1]), PRECISION=_precision(q.dtype),
                UPCAST=interpret_mode() and q.dtype == torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _bulk_copies(index) -> bool:
    """Whether the GPU has Hopper's bulk copies (asked once per device: a decode step's host time
    counts)."""
    return torch.cuda.get_device_capability(index)[0] >= 9


def _tma_descriptors(k, v, block_size):
    """Tensor descriptors over k and v ``[B, T, H, D]`` with ``[1, BLOCK_N, 1, BLOCK_D]`` boxes
    (reads outside the tensor give zeros), or ``(None, None)`` where bulk copies cannot take the
    layout (last dim not contiguous, strides or base not 16-byte aligned, no Hopper GPU) or the
    block size is not a power of two (the box would reach into the next block's rows)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    if block_size & (block_size - 1):
        return None, None
    for x in (k, v):
        if x.stride(-1) != 1 or x.data_ptr() % 16 or any((s * x.element_size()) % 16 for s in x.stride()[:-1]):
            return None, None
    if k.device.type == "cuda" and not _bulk_copies(k.device.index):
        return None, None
    if k.device.type == "cpu" and not interpret_mode():
        return None, None
    bn = _p2(block_size)
    kd = TensorDescriptor(k, list(k.shape), list(k.stride()), [1, bn, 1, _p2(k.shape[-1])])
    vd = TensorDescriptor(v, list(v.shape), list(v.stride()), [1, bn, 1, _p2(v.shape[-1])])
    return kd, vd


def _nsa(q, k, v, idx, block_size, scale, causal, plan, o, lse, qoff):
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    n = idx.shape[-1]
    qoff, pos, spb, spt, has_pos = row_position_args(qoff, q)
    if has_pos:
        plan = plan.for_row_positions(G)  # (what the op's plan_for gives already)
    if plan.nsa_shared:
        kd, vd = _tma_descriptors(k, v, block_size) if plan.nsa_tma else (None, None)
        if kd is not None or not plan.nsa_tma:
            _nsa_shared(q, k, v, idx, block_size, scale, causal, plan, o, lse, kd, vd, qoff)
            return
        # The layout takes no bulk copies: with plain loads the shared tiles were slower than
        # one-token tiles (measured H200, G = 16: 18.5 against 15.1 ms), so those run instead.
        plan = dataclasses.replace(plan, nsa_shared=False, nsa_tok=1, nsa_rows=_p2(G), nsa_maxnreg=0,
                                   nsa_tma=False)
    tok = plan.nsa_tok
    rows = max(plan.nsa_rows, _p2(tok * G))
    union = tok > 1
    NT = triton.cdiv(T, tok)
    if union:
        ulist, ucnt = tile_block_union(idx, tok, block_size, causal, qoff)
        ulen = ulist.shape[-1]
    else:
        ulist, ucnt, ulen = idx, idx, 0
    kd, vd = _tma_descriptors(k, v, block_size) if plan.nsa_tma else (None, None)
    nsa_fwd_kernel[(triton.cdiv(NT, plan.nsa_seq), B * H)](
        q, k, v, idx, ulist, ucnt, o, lse, kd if kd is not None else k, vd if vd is not None else v,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *idx.stride(),
        T, k.shape[1], qoff, pos, spb, spt, H, NT, ulen, scale * LOG2E,
        G=G, TOK=tok, SEQ=plan.nsa_seq, BLOCK_R=rows, N_SEL=n, BLOCK_SEL=_p2(n), CAUSAL=causal, UNION=union,
        TMA=kd is not None, HAS_POS=has_pos,
        num_warps=plan.nsa_warps, num_stages=plan.nsa_stages, **_common(q, k, v, block_size),
    )


def _nsa_shared(q, k, v, idx, block_size, scale, causal, plan, o, lse, kd, vd, qoff):
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    n = idx.shape[-1]
    tok = plan.nsa_tok
    NT = triton.cdiv(T, tok)
    # each program's block lists (shared, then per token), written and read by that program only
    lists = torch.empty(B * H * NT * (tok + 1) * _p2(n), dtype=torch.int32, device=q.device)
    nsa_shared_fwd_kernel[(NT, B * H)](
        q, k, v, idx, o, lse, lists, kd if kd is not None else k, vd if vd is not None else v,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *idx.stride(),
        T, k.shape[1], qoff, H, triton.cdiv(k.shape[1], block_size), NT, scale * LOG2E,
        G=G, TOK=tok, N_SEL=n, BLOCK_SEL=_p2(n), CAUSAL=causal, TMA=kd is not None,
        num_warps=plan.nsa_warps, num_stages=plan.nsa_stages, **maxnreg_option(plan.nsa_maxnreg),
        **_common(q, k, v, block_size),
    )


def _fsa(q, k, v, idx, block_size, scale, causal, plan, o, lse, poison, qoff):
    B, T, HQ, D = q.shape
    H, Dv = k.shape[2], v.shape[-1]
    G = HQ // H
    n = idx.shape[-1]
    NB = triton.cdiv(k.shape[1], block_size)
    C = min(plan.chunk, T)
    nc = triton.cdiv(T, C)
    tile_q = plan.fsa_tile_q
    rows = max(plan.fsa_rows, _p2(tile_q * G))
    # One index over all of T, binned by (block, chunk): each launch reads its chunk's bins, and
    # the backward reuses the same index.
    bi = build_block_index(idx, NB, tile_q * plan.fsa_tpp, tile_map=plan.fsa_tile_map, chunk=C)
    grid0 = bi.max_tiles
    elen = bi.entries.shape[-1]
    pdt = torch.float32 if q.dtype == torch.float32 else q.dtype
    po = torch.empty(B, C, n, HQ, Dv, dtype=pdt, device=q.device)
    pl = torch.empty(B, C, n, HQ, dtype=torch.float32, device=q.device)
    if poison:
        po.fill_(float("nan"))
        pl.fill_(float("nan"))
    common = _common(q, k, v, block_size)
    search = min(1024, max(16, triton.next_power_of_2(NB)))
    qoff, pos, spb, spt, has_pos = row_position_args(qoff, q)
    for c in range(nc):
        c0 = c * C
        fsa_fwd_kernel[(grid0, B * H)](
            q, k, v, bi.bin_offsets, bi.entries, bi.tile_offsets,
            bi.tile_block if plan.fsa_tile_map else bi.tile_offsets, po, pl,
            *q.stride(), *k.stride(), *v.stride(),
            k.shape[1], qoff, pos, spb, spt, H, C, c0, nc, c, NB, elen, grid0, scale * LOG2E,
            G=G, N_SEL=n, TILE_Q=tile_q, TPP=plan.fsa_tpp, TILE_MAP=plan.fsa_tile_map,
            ENT_ALL=plan.fsa_ent_all and plan.fsa_tpp == triton.next_power_of_2(plan.fsa_tpp),
            Q_EVICT="evict_last" if plan.fsa_evict else "",
            P_EVICT="evict_first" if plan.fsa_evict else "",
            BLOCK_R=rows, SEARCH=search, CAUSAL=causal, HAS_POS=has_pos,
            num_warps=plan.fsa_warps, num_stages=plan.fsa_stages, **maxnreg_option(plan.fsa_maxnreg), **common,
        )
        merge_fwd_kernel[(triton.cdiv(C * HQ, plan.merge_rows), B)](
            po, pl, idx, o, lse,
            *idx.stride(), *o.stride(),
            T, C, c0, HQ,
            G=G, N_SEL=n, BLOCK_SEL=_p2(n), BLOCK_M=plan.merge_rows, DV=Dv, BLOCK_DV=_p2(Dv),
            P_EVICT="evict_first" if plan.fsa_evict else "", num_warps=plan.merge_warps,
        )
    return bi
