"""Small helpers shared by the forward templates."""
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
