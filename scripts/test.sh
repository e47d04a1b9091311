#!/usr/bin/env bash
# Set up, then run the test suite (CPU; Triton kernels through the Triton interpreter).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m gpu` on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# One pytest worker per core, at most 4 (pytest-xdist): the interpreted kernels keep one core
# busy each (on the 2-core CI machine the suite took 10 min with two workers, 2026-12-01).
# A later -n in the arguments wins; FSA_TEST_WORKERS=0 runs in this process.
workers=${FSA_TEST_WORKERS:-$(python -c "import os
n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
print(min(4, n) if n > 1 else 0)")}
if [ "$workers" -gt 0 ]; then
  python -m pytest -q -n "$workers" "$@"
else
  python -m pytest -q "$@"
fi
