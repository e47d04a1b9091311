#!/usr/bin/env bash
# Creates .venv (once) and installs fsa_compile into it with the test extra.
# torch comes first and on its own: the CPU build 2.13.0 from this machine's disk where there is
# no torch yet; a bare "torch>=" requirement resolved by pip could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  # FSA_TORCH_INDEX: an index to take torch from, e.g. https://download.pytorch.org/whl/cpu on a
  # machine whose pip would otherwise resolve torch==2.13.0 to PyPI's CUDA build.
  echo "setup: installing torch==2.13.0${FSA_TORCH_INDEX:+ from $FSA_TORCH_INDEX}"
  python -m pip install -q --disable-pip-version-check ${FSA_TORCH_INDEX:+--index-url "$FSA_TORCH_INDEX"} "torch==2.13.0"
fi
python -m pip install -q --disable-pip-version-check -e ".[test]"
