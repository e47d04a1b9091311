"""Argument checks for the public operation: clear errors that name the argument and the shapes."""
from __future__ import annotations

import torch

LAYOUTS = ("bthd", "bhtd")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_inputs(q, k, v, block_indices, block_size, layout, scale, strategy, strategies):
    """Raise TypeError/ValueError for anything outside the contract (DESIGN.md section 2)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("block_indices", block_indices)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if strategy not in strategies:
        raise ValueError(f"strategy must be one of {strategies}, got {strategy!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dims ({layout} layout), got shape {_shape(t)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if block_indices.dtype.is_floating_point or block_indices.dtype.is_complex or block_indices.dtype == torch.bool:
        raise TypeError(f"block_indices must have an integer dtype, got {block_indices.dtype}")
    if block_indices.dim() != 4:
        raise ValueError(
            f"block_indices must be [B, T, H, n] ([B, H, T, n] with layout='bhtd'), got {_shape(block_indices)}"
        )
    devices = {t.device for t in (q, k, v, block_indices)}
    if len(devices) != 1:
        raise ValueError(
            "q, k, v and block_indices must be on one device, got "
            + ", ".join(f"{n}: {t.device}" for n, t in (("q", q), ("k", k), ("v", v), ("block_indices", block_indices)))
        )
    tdim, hdim = (1, 2) if layout == "bthd" else (2, 1)
    B, T, HQ, D = q.shape[0], q.shape[tdim], q.shape[hdim], q.shape[3]
    names = "[B, T, H, D]" if layout == "bthd" else "[B, H, T, D]"
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape {names}, got k {_shape(k)} and v {_shape(v)}")
    H = k.shape[hdim]
    if k.shape[0] != B:
        raise ValueError(f"q {_shape(q)} and k {_shape(k)} disagree on the batch size ({layout} layout)")
    if T > k.shape[tdim]:
        raise ValueError(
            f"q {_shape(q)} has more query rows than k {_shape(k)} has keys ({layout} layout): queries are "
            "positions of the key sequence (q_offset), so T_q <= T_k")
    if k.shape[3] != D:
        raise ValueError(f"q {_shape(q)} and k {_shape(k)} disagree on the head dim")
    if H == 0 or HQ % H != 0:
        raise ValueError(
            f"query heads ({HQ}) must be a multiple of key/value heads ({H}) so that the GQA group "
            f"size G = HQ / H is an integer; q {_shape(q)}, k {_shape(k)}"
        )
    if D > MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} exceeds the supported maximum of {MAX_HEAD_DIM}")
    expect = (B, T, H) if layout == "bthd" else (B, H, T)
    if tuple(block_indices.shape[:3]) != expect:
        raise ValueError(
            f"block_indices must be {'[B, T, H, n]' if layout == 'bthd' else '[B, H, T, n]'} = "
            f"[{', '.join(map(str, expect))}, n] for q {_shape(q)} and k {_shape(k)}, got {_shape(block_indices)}"
        )


def check_q_offset(q_offset, Tq: int, Tk: int) -> int:
    """The position of q's first row among the ``Tk`` keys: ``Tk - Tq`` by default (the queries
    are the last ones, as when decoding after a cache), else an int with the queries inside."""
    if q_offset is None:
        return Tk - Tq
    if isinstance(q_offset, bool) or not isinstance(q_offset, int):
        raise TypeError(f"q_offset must be an int or None, got {type(q_offset).__name__}")
    if q_offset < 0 or q_offset + Tq > Tk:
        raise ValueError(
            f"q_offset={q_offset} puts the {Tq} query rows at positions {q_offset}..{q_offset + Tq - 1}, "
            f"outside the {Tk} keys: need 0 <= q_offset <= T_k - T_q = {Tk - Tq}")
    return q_offset


def check_q_positions(q_positions, q_offset, B: int, Tq: int, device) -> None:
    """``q_positions``: each query row's key position, an integer tensor ``[T_q]`` (every batch
    item alike) or ``[B, T_q]`` on q's device; not together with ``q_offset``."""
    if q_positions is None:
        return
    if q_offset is not None:
        raise ValueError("give q's rows' positions either as q_offset (the first row's) or as q_positions, not both")
    if not isinstance(q_positions, torch.Tensor):
        raise TypeError(f"q_positions must be an integer tensor or None, got {type(q_positions).__name__}")
    if q_positions.dtype.is_floating_point or q_positions.dtype.is_complex or q_positions.dtype == torch.bool:
        raise TypeError(f"q_positions must be an integer tensor, got {q_positions.dtype}")
    shape = tuple(q_positions.shape)
    if shape not in ((Tq,), (B, Tq), (1, Tq)):
        raise ValueError(f"q_positions must be [T_q] = [{Tq}] or [B, T_q] = [{B}, {Tq}], got {list(shape)}")
    if q_positions.device != torch.device(device):
        raise ValueError(f"q_positions is on {q_positions.device}, q on {device}")
