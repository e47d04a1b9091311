"""Strategy and tile sizes, chosen from static shapes (and T's power-of-two bucket).

A :class:`Plan` depends only on ``(B, T bucket, H, G, D, Dv, n, block_size, dtype, causal)`` so a
compiled graph can guard on those and recompile outside the bucket rather than run a wrong config.
The ``auto`` choice is a table written from measurements on an H100 (``benchmarks/NOTES.md``).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

STRATEGIES = ("auto", "fsa", "nsa", "reference")

# Extra device memory the inverted loop's partial buffer may take (bytes), whatever T is. The
# chunk is the power of two under it, so the buffer is 384-768 MiB at the long lengths. Measured
# (H100, T=64K, benchmarks/NOTES.md): doubling the chunk from the 512 MiB budget's took G=2/4/8
# from 3.43/6.14/10.16 to 3.35/5.90/9.72 ms (likely: half the launches and their tails, each K/V
# block loaded once for twice the entries); G=1 stayed level (1.87 -> 1.89); forward extra memory
# stays under 1 GiB.
PARTIAL_BUDGET = 768 * 2**20


def interpret_mode() -> bool:
    return os.environ.get("FSA_COMPILE_INTERPRET", "") == "1"


def kernels_available(device: torch.device) -> bool:
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and interpret_mode())


def _pow2(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def row_position_args(q_offset, q):
    """Kernel arguments for q's rows' positions, ``(QOFF, POS, POS batch stride, POS row stride,
    HAS_POS)``: from an int first position, or a ``[B, T_q]`` / ``[1, T_q]`` int32 or int64
    tensor of every row's, unclamped (``op._offset``; the kernels clamp what they read); the
    forward and backward launches alike."""
    if isinstance(q_offset, torch.Tensor):
        spb = q_offset.stride(0) if q_offset.shape[0] > 1 else 0
        return 0, q_offset, spb, q_offset.stride(1), True
    return q_offset, q, 0, 0, False


def t_bucket(T: int) -> int:
    """The power of two ``>= T`` (a plan is valid for every T in ``(bucket/2, bucket]``)."""
    return _pow2(max(1, T))


@dataclass(frozen=True)
class Plan:
    strategy: str  # "fsa" | "nsa" | "reference"
    # NSA order: tiles of nsa_tok tokens x G heads (nsa_rows rows, padded to >= 16)
    nsa_tok: int = 1
    nsa_rows: int = 16
    nsa_warps: int = 4
    nsa_stages: int = 2
    nsa_seq: int = 1  # tiles one program walks one after the other (L1 reuse of shared blocks)
    nsa_tma: bool = False  # K/V blocks by bulk tensor copies (where the layout allows)
    # tiles of nsa_tok tokens: blocks they all list loaded once for the tile, the rest per token
    nsa_shared: bool = False
    nsa_maxnreg: int = 0  # register cap per thread for the shared-block kernel (0: compiler's)
    # inverted loop: tiles of fsa_tile_q (query, slot) entries x G heads
    fsa_tile_q: int = 64
    fsa_rows: int = 64
    fsa_warps: int = 4
    fsa_stages: int = 1
    fsa_tpp: int = 1  # sub-tiles per program (K/V loaded once for all of them)
    fsa_tile_map: bool = False  # programs read their block from a tile->block map (one load)
    fsa_ent_all: bool = False  # one load of all sub-tiles' entries per program (tpp pow2)
    fsa_evict: bool = False  # L2 hints: keep gathered queries (evict_last), stream partials
    fsa_maxnreg: int = 0  # register cap per thread for the main kernel (0: the compiler's choice)
    chunk: int = 16384  # query tokens per inverted-loop pass (bounds the partial buffer)
    merge_rows: int = 8
    merge_warps: int = 4
    t_bucket: int = 0

    def for_row_positions(self, G: int) -> "Plan":
        """The plan for q's rows at positions a tensor gives (``q_positions``): the NSA order's
        tiles of several tokens read which blocks a tile's rows can see from consecutive
        positions, so one-token tiles run there (the inverted loop reads each row's own)."""
        if self.strategy != "nsa" or (self.nsa_tok == 1 and not self.nsa_shared):
            return self
        from dataclasses import replace

        return replace(self, nsa_shared=False, nsa_tok=1, nsa_rows=max(16, _pow2(G)), nsa_maxnreg=0)

    def describe(self) -> str:
        if self.strategy == "fsa":
            return (f"fsa: tile {self.fsa_rows}x({self.fsa_tile_q} sel x "
                    f"{self.fsa_rows // self.fsa_tile_q} heads) x{self.fsa_tpp} per program, "
                    f"warps {self.fsa_warps}, "
                    + ("entries at once, " if self.fsa_ent_all else "")
                    + ("L2 hints, " if self.fsa_evict else "")
                    + (f"max {self.fsa_maxnreg} registers, " if self.fsa_maxnreg else "")
                    + f"stages {self.fsa_stages}, chunk {self.chunk}, "
                    + f"merge {self.merge_rows} rows")
        if self.strategy == "nsa":
            union = (" shared" if self.nsa_shared else " union") if self.nsa_tok > 1 else ""
            seq = f" x{self.nsa_seq} in sequence" if self.nsa_seq > 1 else ""
            tma = ", bulk copies" if self.nsa_tma else ""
            cap = f", max {self.nsa_maxnreg} registers" if self.nsa_maxnreg else ""
            return (f"nsa: tile {self.nsa_rows}x({self.nsa_tok} tok x heads){union}{seq}{tma}, "
                    f"warps {self.nsa_warps}, stages {self.nsa_stages}{cap}")
        return self.strategy


def _elt(dtype) -> int:
    return 4 if dtype == torch.float32 else 2


def _fsa_plan(B, T, H, G, D, Dv, n, block_size, dtype, **over) -> Plan:
    big_d = max(D, Dv) > 128
    rows = 64  # measured v1: 64-row tiles beat 128 at every G (benchmarks/NOTES.md)
    if G > rows:
        rows = _pow2(G)
    tile_q = max(1, rows // _pow2(G))
    rows = tile_q * G if (tile_q * G) >= 16 else 16
    rows = _pow2(rows)
    HQ = H * G
    per_tok = B * n * HQ * (Dv * _elt(dtype) + 4)  # partial o + partial lse, per query token
    fit = max(64, PARTIAL_BUDGET // max(per_tok, 1))
    # a power of two <= fit (measured: a 48K-token chunk at T=64K, i.e. a padded second chunk,
    # was 40% slower at G=1 than 16K-token chunks; a 32K-token one 1% slower than 16K)
    chunk = min(1 << (fit.bit_length() - 1), t_bucket(T))
    # Head dims up to 64 at G >= 2: twice the merge rows and sub-tiles per program (measured H100,
    # T=32K, D=64, uniform, ms: G=2 1.07 -> 1.03, G=4 1.74 -> 1.59, G=16 5.48 -> 4.99; at G=1 16
    # merge rows were slower, 0.87 -> 0.95, and at D=128 too, G=8 9.75 -> 10.24).
    narrow = _pow2(Dv) <= 64 and G >= 2
    # Head dims 65..128 (one padded tile width; measured at 128): the main kernel took 163
    # registers, so 3 programs per SM (ncu: 18.75% occupancy, 0.41 issued warps per scheduler).
    # Capped at 128 (a few spilled registers) 4 fit. Measured H100, T=64K, uniform, ms, default ->
    # capped -> capped with 8 sub-tiles per program: G=1 1.55/1.51/1.49, G=2 2.99/2.75/2.64,
    # G=4 5.60/4.90/4.85, G=8 9.38/10.16/8.87, G=16 18.05/17.72/17.54. A cap of 104 was slower
    # (G=8 9.86).
    mid = _pow2(max(D, Dv)) == 128
    kw = dict(fsa_tile_q=tile_q, fsa_rows=rows, fsa_warps=8 if (rows >= 128 or big_d) else 4,
              fsa_stages=1, fsa_tpp=8 if (narrow or mid) else 4, fsa_tile_map=True, fsa_ent_all=True,
              fsa_evict=True, fsa_maxnreg=128 if (mid and rows == 64) else 0,
              chunk=chunk, merge_rows=16 if narrow else 8, t_bucket=t_bucket(T))
    kw.update(over)
    return Plan("fsa", **kw)


def _nsa_plan(B, T, H, G, D, Dv, n, block_size, dtype, tok=None, **over) -> Plan:
    # Shared-block tiles of 4 tokens, capped at 168 registers (3 programs per SM), where measured:
    # H200, T=64K, G=16, D=128, bf16, ms uniform / skewed, two calls: one-token kernel
    # 14.96 / 15.12 and 15.11 / 15.12, shared tiles 14.76 / 14.71 and 14.89 / 14.74; uncapped
    # 17.51 / 17.47; 2 tokens 15.5-16.0 (benchmarks/NOTES.md, results/nsa_shared_h200_v*.log).
    measured = G == 16 and _pow2(max(D, Dv)) == 128 and dtype in (torch.float16, torch.bfloat16)
    if tok is None and "nsa_shared" not in over and measured:
        tok = 4
        over = {"nsa_shared": True, "nsa_maxnreg": 168, **over}
    shared = bool(over.get("nsa_shared", False))
    if tok is None:
        tok = 1
    if shared and (G < 16 or G & (G - 1) or tok < 2 or tok & (tok - 1)):
        raise ValueError(f"shared-block tiles need G a power of two >= 16 and tok a power of two "
                         f">= 2, got G={G}, tok={tok}")
    rows = max(16, _pow2(tok * G))
    # One token per tile: K/V by bulk tensor copies, 3 stages deep (measured H100, T=64K, G=16:
    # 17.20 ms with plain loads and 2 stages, 16.64 with bulk copies, 16.40 with 3 stages too;
    # plain loads with 3 stages 17.88). Union tiles keep plain loads (not measured with copies).
    # Shared-block tiles load one block per step, as one-token tiles do.
    one = tok == 1 or shared
    kw = dict(nsa_tok=tok, nsa_rows=rows, nsa_warps=4 if rows <= 64 else 8, nsa_stages=3 if one else 2,
              nsa_tma=one, t_bucket=t_bucket(T))
    kw.update(over)
    return Plan("nsa", **kw)


# auto: strategy per G measured on the H100 (bf16, D=128, bs=64, n=16); see benchmarks/NOTES.md.
# Last bench (T=64K, uniform, benchmarks/results/bench_h100_T65536.log, 2026-11-25), ms at
# G=1/2/4/8/16: fsa 1.67/3.11/5.72/9.54/18.28, nsa 16.60/16.17/16.34/16.55/16.60.
_AUTO_G = {1: "fsa", 2: "fsa", 4: "fsa", 8: "fsa", 16: "nsa"}


def resolve_strategy(strategy: str, G: int, device, rows=None) -> str:
    """The kernel family a plan for ``strategy`` runs: ``"fsa"``, ``"nsa"`` or ``"reference"``.
    Depends on G, the device and whether q has a single row (``rows``: q's row count where it is a
    plain int; a symbolic one is never 1), not on T's value, so fake implementations can call it."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "reference" or not kernels_available(torch.device(device)):
        return "reference"
    if strategy == "auto":
        if isinstance(rows, int) and rows == 1:
            # One decode row: the inverted loop's index (a sort and three launches) and merge cost
            # more than the NSA order's one launch. Measured H200, T_k = 64K, forward: NSA order
            # 0.43 / 0.44 ms against 0.87 / 0.74 at G = 4 / 16 (benchmarks/results/offset_1202K.log).
            return "nsa"
        G = int(G)  # a symbolic head count (dynamic=True) is specialised here: the table is per G
        return _AUTO_G.get(G, "nsa" if G > 8 else "fsa")
    return strategy


def choose_plan(B, T, H, G, D, Dv, n, block_size, dtype, causal, strategy, device, **over) -> Plan:
    """The plan for these static facts; ``over`` replaces the chosen fields (benchmarks, tests).
    Without ``over`` and with plain-int shapes the answer is remembered: the op asks on every call,
    and a short call's time is host time (``benchmarks/NOTES.md``)."""
    if not over and all(type(x) is int for x in (B, T, H, G, D, Dv, n, block_size)):
        # the interpreter switch decides whether a CPU device has kernels, and tests flip it
        return _remembered_plan(B, T, H, G, D, Dv, n, block_size, dtype, causal, strategy, torch.device(device),
                                interpret_mode())
    return _plan(B, T, H, G, D, Dv, n, block_size, dtype, causal, strategy, device, **over)


@functools.lru_cache(maxsize=1024)
def _remembered_plan(B, T, H, G, D, Dv, n, block_size, dtype, causal, strategy, device, _interpret) -> Plan:
    return _plan(B, T, H, G, D, Dv, n, block_size, dtype, causal, strategy, device)


def _plan(B, T, H, G, D, Dv, n, block_size, dtype, causal, strategy, device, **over) -> Plan:
    strategy = resolve_strategy(strategy, G, device, T)
    if strategy == "reference":
        return Plan("reference", t_bucket=t_bucket(T))
    if strategy == "fsa":
        return _fsa_plan(B, T, H, G, D, Dv, n, block_size, dtype, **over)
    return _nsa_plan(B, T, H, G, D, Dv, n, block_size, dtype, **over)


def maxnreg_option(maxnreg: int) -> dict:
    """Launch option capping a kernel's registers per thread (more programs per SM); ``{}`` for 0
    and under the interpreter, which has no registers to cap."""
    return {"maxnreg": int(maxnreg)} if maxnreg and not interpret_mode() else {}
