"""op -> plan -> kernels.

The operation (``fsa_compile.op``) reduces every call to ``[B, T, H, D]`` tensors (any strides)
and canonical int32 block indices (negative = nothing, in range, each listed entry counted), then
calls :func:`forward` / :func:`backward` here. This package picks a :class:`~.plan.Plan` from the
static shapes and launches the Triton templates of ``fsa_compile.templates``; it knows nothing
of FX.
"""
from .plan import Plan, choose_plan, kernels_available  # noqa: F401
from .forward import forward  # noqa: F401
from .backward import backward  # noqa: F401
