"""Shared bits of the backward templates.

Importing this module first makes ``FSA_COMPILE_INTERPRET=1`` select the Triton interpreter
(``TRITON_INTERPRET=1``) before any backward template is decorated, so the same kernels run on
CPU tensors in CI. Triton reads ``TRITON_INTERPRET`` when ``triton.jit`` wraps a function.
"""
from __future__ import annotations

import os

if os.environ.get("FSA_COMPILE_INTERPRET", "") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

LOG2E = 1.4426950408889634


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


__all__ = ["triton", "tl", "LOG2E", "next_pow2"]
