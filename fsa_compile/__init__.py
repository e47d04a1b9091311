"""fsa_compile: a torch.compile backend that rewrites NSA selected attention into FSA kernels.

Public API: :func:`selected_attention` (the operation), :func:`explain` (what the backend
rewrote and why not), and the backend name ``"fsa"`` for ``torch.compile``.
"""
from .op import selected_attention
from .explain import explain, Report
from .backend import register_by_name as _register_by_name

_register_by_name()

BACKEND = "fsa"
__version__ = "0.1.0"
__all__ = ["selected_attention", "explain", "Report", "BACKEND"]
