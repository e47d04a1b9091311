#!/usr/bin/env bash
# The main job: set up, then compile an NSA layer written in plain PyTorch with backend="fsa",
# print what was rewritten, check it against eager and time both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python examples/demo.py "$@"
