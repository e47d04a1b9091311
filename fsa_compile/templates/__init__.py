"""Triton templates: the kernels, knowing nothing of FX.

``FSA_COMPILE_INTERPRET=1`` runs the very same templates on CPU tensors through the Triton
interpreter. Triton decides interpreted-or-compiled when a function is decorated (its own
``triton.language`` helpers included, at ``import triton``), so the switch is read here, once,
and every module of this package that needs Triton imports this package first.
"""
import os
import sys

if os.environ.get("FSA_COMPILE_INTERPRET", "") == "1" and os.environ.get("TRITON_INTERPRET") != "1":
    if "triton" in sys.modules:
        raise ImportError(
            "FSA_COMPILE_INTERPRET=1 but triton was imported before fsa_compile's templates: set "
            "TRITON_INTERPRET=1 too, or import fsa_compile before triton"
        )
    os.environ["TRITON_INTERPRET"] = "1"
