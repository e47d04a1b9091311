"""Small helpers shared by the templates."""
import triton
import triton.language as tl


@triton.jit
def mma(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``tl.dot(a, b)``; ``UPCAST`` computes it on float32 copies (the Triton interpreter's
    bfloat16 dot is wrong, so interpreted bf16 runs set it; operands are already rounded)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def block_tile(DESC, base, b, h, row0, kpos64, kmask, st, sd, W: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, TMA: tl.constexpr):
    """One key block's ``[BLOCK_N, BLOCK_W]`` tile of K or V (rows from ``row0``): one bulk copy
    through the descriptor ``DESC`` over ``[B, T, H, W]``, or masked loads from ``base`` (rows
    ``kpos64`` where ``kmask``, stride ``st``; columns of stride ``sd``). Rows and columns out of
    range read as zeros either way."""
    if TMA:
        return tl.reshape(DESC.load([b, row0, h, 0]), [BLOCK_N, BLOCK_W])
    else:
        offs_w = tl.arange(0, BLOCK_W)
        return tl.load(base + kpos64[:, None] * st + offs_w[None, :] * sd,
                       mask=kmask[:, None] & (offs_w[None, :] < W), other=0.0)


@triton.jit
def softmax_probs(s, m_i, l_i, w, WEIGHTED: tl.constexpr):
    """The online softmax's step over one block, up to the product with its values: ``s`` masked
    scores in the log2 domain (``-inf`` where not visible); ``WEIGHTED`` scales each row's
    probabilities by ``w`` (how many times the row's token lists the block). Returns
    ``(m, l, alpha, p)``: the caller does ``acc = acc * alpha[:, None] + p @ v``, loading ``v``
    only now so that its wait comes after this arithmetic."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    if WEIGHTED:
        p = p * w[:, None]
    l_i = l_i * alpha + tl.sum(p, axis=1)
    return m_new, l_i, alpha, p


@triton.jit
def store_rows(O, LSE, b64, tok, hq, ok, m_i, l_i, acc, T, H, sob, sot, soh, sod,
               G: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Normalise an online-softmax state and store its rows (token ``tok``, query head ``hq``):
    ``o`` in O's dtype, natural-log ``lse`` float32 into a contiguous ``[B, T, H * G]``; a row
    with nothing visible gets ``o = 0``, ``lse = -inf``."""
    offs_dv = tl.arange(0, BLOCK_DV)
    has = l_i > 0
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tok64 = tok.to(tl.int64)
    tl.store(O + b64 * sob + tok64[:, None] * sot + hq[:, None] * soh + offs_dv[None, :] * sod,
             o.to(O.dtype.element_ty), mask=ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + (b64 * T + tok64) * (H * G) + hq, lse, mask=ok)


@triton.jit
def row_position(POS, off, ok, TK):
    """A query row's position read from ``POS + off`` (a ``q_positions`` tensor, int32 or int64,
    as the user gave it), clamped to ``[-1, TK]`` as int32: a row at or past the last key sees all
    of its blocks' keys and one before 0 none, as unclamped."""
    p = tl.load(POS + off, mask=ok, other=0).to(tl.int64)
    return tl.minimum(tl.maximum(p, -1), TK).to(tl.int32)
