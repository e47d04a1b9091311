"""Test-process setup shared by every test module.

Without a GPU the Triton templates run through Triton's interpreter. Triton decides that when a
function is decorated, so TRITON_INTERPRET is set here, before any test module imports
fsa_compile (which imports triton).

Whether the *operation* dispatches to those interpreted kernels is FSA_COMPILE_INTERPRET, read
at call time. The interpreter is ~30x slower than the reference, so that is per test: on for the
kernel test modules and for tests marked ``interpret``, off for the rest, unless the whole run was
started with FSA_COMPILE_INTERPRET=1 (then everything goes through the kernels).

FSA_COMPILE_MEMO_CHECK=1: where the pattern pass reuses a verdict for an identical subgraph (the
first time for each verdict), it also runs the full checks and records any difference; every
test fails on one. Each test starts with an empty memo, so that none depends on another's.
"""
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
ALL_THROUGH_KERNELS = os.environ.get("FSA_COMPILE_INTERPRET") == "1"
os.environ.setdefault("FSA_COMPILE_MEMO_CHECK", "1")
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Modules with the longest tests, run first: pytest-xdist hands tests to its workers in collection
# order, and a long test collected last (the main hypothesis property, ~2.5 min on CI) kept one
# worker busy while the other sat idle at the end of the run.
LONGEST_FIRST = ("test_properties.py", "test_examples.py", "test_kernels_backward.py", "test_patterns_graphs.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: order kept within


def pytest_configure(config):
    config.addinivalue_line("markers", "interpret: run the op through the interpreted Triton kernels on CPU")


@pytest.fixture(autouse=True)
def _kernel_dispatch(request, monkeypatch):
    module = getattr(request.module, "__name__", "")
    interpreted = request.node.get_closest_marker("interpret") or module.startswith("test_kernels")
    if ON_GPU:
        # Triton's interpreter is off where CUDA is (the kernels compile for the GPU): the CPU
        # tests of the interpreted kernels cannot run here; their `-m gpu` cases run them for real.
        if interpreted and not request.node.get_closest_marker("gpu"):
            pytest.skip("interpreted-kernel test: runs on a machine without CUDA")
        return
    if ALL_THROUGH_KERNELS or interpreted:
        monkeypatch.setenv("FSA_COMPILE_INTERPRET", "1")
    else:
        monkeypatch.delenv("FSA_COMPILE_INTERPRET", raising=False)


@pytest.fixture(autouse=True)
def _reused_verdicts_hold():
    from fsa_compile.patterns import memo

    memo.SHARED.forget()
    start = len(memo.MISMATCHES)
    yield
    assert memo.MISMATCHES[start:] == [], "a verdict reused for an identical subgraph differs from its own analysis"
