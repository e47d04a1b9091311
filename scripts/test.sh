#!/usr/bin/env bash
# Set up, then run the test suite (CPU; Triton kernels through the Triton interpreter).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m gpu` on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
