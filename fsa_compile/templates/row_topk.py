"""Top-k of short rows (NSA's block selection: 16 of a few hundred compressed scores per query).

Keys are the floats' bits mapped to integers that order like the floats (-0.0 equal to 0.0), with
every NaN above +inf (torch.topk ranks NaN largest), packed with the column so that all keys of a
row differ and one max finds both: among equal values the lowest column goes first. Values are
the chosen element's own bits, so NaN payloads and signed zeros come back as they were.

Two ways to take the largest key ``K`` times, both on ``ROWS`` rows per program:

- one level (``GROUP == BLOCK_L``): the whole row stays in registers and every step is a max and
  an update over all of it;
- two levels: the row is cut into groups of ``GROUP`` columns and only each group's largest key
  is kept. A step takes the largest of those, then reloads that one group (a cached load) and
  finds its largest key below the one just taken (keys are distinct and come out in decreasing
  order, so "below" excludes exactly the keys already taken). A step then costs about
  ``BLOCK_L / GROUP + GROUP`` operations per row instead of ``BLOCK_L``.
"""
import triton
import triton.language as tl


@triton.jit
def _packed_keys(x, cols, LARGEST: tl.constexpr, NARROW: tl.constexpr):
    """Distinct integer keys ordered like (value, -column), largest first (``LARGEST``) or smallest."""
    if NARROW:
        # 16-bit floats: a 16-bit key and the column fit in one int32 (half the reduction work)
        bits = x.to(tl.int16, bitcast=True).to(tl.int32)
        key = tl.where(bits < 0, bits ^ 0x7FFF, bits)
        xf = x.to(tl.float32)
        key = tl.where(xf == 0, 0, key)
        key = tl.where(xf != xf, 0x7FFF, key)  # every NaN above +inf
        if not LARGEST:
            key = -key - 1  # reverses the order and stays inside int16's range
    else:
        xf = x.to(tl.float32)
        bits = xf.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        key = tl.where(xf == 0, 0, key)
        key = tl.where(xf != xf, 0x7FFFFFFF, key).to(tl.int64)  # every NaN above +inf
        if not LARGEST:
            key = -key - 1  # reverses the order and stays inside int32's range
    return key * 65536 + (65535 - cols)


@triton.jit
def row_topk_kernel(
    x_ptr, val_ptr, idx_ptr, R, L, stride_x,
    K: tl.constexpr, LARGEST: tl.constexpr, NARROW: tl.constexpr, ROWS: tl.constexpr, BLOCK_L: tl.constexpr,
    GROUP: tl.constexpr,
):
    # below every packed key: padding and keys already taken (the lowest 16-bit key is -32768,
    # with column bits > 0; 32-bit keys are shifted into int64)
    if NARROW:
        taken = -(2**31)
    else:
        taken = -(2**62)
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_L)
    inside = (rows[:, None] < R) & (cols[None, :] < L)
    row_ptr = x_ptr + rows.to(tl.int64) * stride_x
    x = tl.load(row_ptr[:, None] + cols[None, :], mask=inside, other=0.0)
    packed = tl.where(inside, _packed_keys(x, cols[None, :], LARGEST, NARROW), taken)
    ok = rows < R
    out_rows = rows.to(tl.int64) * K
    if GROUP < BLOCK_L:
        NG: tl.constexpr = BLOCK_L // GROUP
        gmax = tl.max(tl.reshape(packed, [ROWS, NG, GROUP]), axis=2)
        gid = tl.arange(0, NG)
        goff = tl.arange(0, GROUP)
    for i in range(K):
        if GROUP == BLOCK_L:
            best = tl.max(packed, axis=1)
            packed = tl.where(packed == best[:, None], taken, packed)
        else:
            best = tl.max(gmax, axis=1)
        col = 65535 - (best & 65535)
        # the element itself (a cached load): NaN payloads and signed zeros as they were
        val = tl.load(row_ptr + col, mask=ok)
        tl.store(val_ptr + out_rows + i, val, mask=ok)
        tl.store(idx_ptr + out_rows + i, col.to(tl.int64), mask=ok)
        if GROUP < BLOCK_L:
            # the taken key's group again: its largest key below the one just taken
            g = col // GROUP
            gc = g[:, None] * GROUP + goff[None, :]
            gin = ok[:, None] & (gc < L)
            pg = _packed_keys(tl.load(row_ptr[:, None] + gc, mask=gin, other=0.0), gc, LARGEST, NARROW)
            pg = tl.where(gin & (pg < best[:, None]), pg, taken)
            gmax = tl.where(gid[None, :] == g[:, None], tl.max(pg, axis=1)[:, None], gmax)
