"""Top-k of short rows (NSA's block selection: 16 of a few hundred compressed scores per query).

Each program holds ``ROWS`` whole rows in registers and takes the largest key ``K`` times. Keys
are the floats' bits mapped to integers that order like the floats (-0.0 equal to 0.0), with
every NaN above +inf (torch.topk ranks NaN largest); among equal keys the lowest column goes
first. Values are the chosen element's own bits, so NaN payloads and signed zeros come back as
they were.
"""
import triton
import triton.language as tl


@triton.jit
def row_topk_kernel(
    x_ptr, val_ptr, idx_ptr, R, L, stride_x,
    K: tl.constexpr, LARGEST: tl.constexpr, NARROW: tl.constexpr, ROWS: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_L)
    inside = (rows[:, None] < R) & (cols[None, :] < L)
    row_ptr = x_ptr + rows.to(tl.int64) * stride_x
    x = tl.load(row_ptr[:, None] + cols[None, :], mask=inside, other=0.0)
    if NARROW:
        # 16-bit floats: a 16-bit key and the column fit in one int32 (half the reduction work)
        bits = x.to(tl.int16, bitcast=True).to(tl.int32)
        key = tl.where(bits < 0, bits ^ 0x7FFF, bits)
        xf = x.to(tl.float32)
        key = tl.where(xf == 0, 0, key)
        key = tl.where(xf != xf, 0x7FFF, key)  # every NaN above +inf
        if not LARGEST:
            key = -key - 1  # reverses the order and stays inside int16's range
        packed = key * 65536 + (65535 - cols[None, :])
        taken = -(2**31)  # below every packed key (the lowest key is -32768 with column bits > 0)
    else:
        xf = x.to(tl.float32)
        bits = xf.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        key = tl.where(xf == 0, 0, key)
        key = tl.where(xf != xf, 0x7FFFFFFF, key).to(tl.int64)  # every NaN above +inf
        if not LARGEST:
            key = -key - 1  # reverses the order and stays inside int32's range
        # key and column in one integer, so one max finds both: lower column first among equal keys
        packed = key * 65536 + (65535 - cols[None, :])
        taken = -(2**62)  # below every packed key: padding and entries already returned
    packed = tl.where(inside, packed, taken)
    ok = rows < R
    out_rows = rows.to(tl.int64) * K
    for i in range(K):
        best = tl.max(packed, axis=1)
        packed = tl.where(packed == best[:, None], taken, packed)
        col = 65535 - (best & 65535)
        # the element itself (a cached load): NaN payloads and signed zeros come back as they were
        val = tl.load(row_ptr + col, mask=ok)
        tl.store(val_ptr + out_rows + i, val, mask=ok)
        tl.store(idx_ptr + out_rows + i, col.to(tl.int64), mask=ok)
