#!/usr/bin/env bash
# Print the source of Inductor-generated Triton kernels whose name starts with $1 (after a run
# that compiled them), from Inductor's on-disk cache. Usage: bash benchmarks/kernel_source.sh NAME [lines]
set -uo pipefail
NAME=$1
LINES=${2:-80}
DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/torchinductor_$(whoami)}
grep -rl --include='*.py' "def ${NAME}" "$DIR" 2>/dev/null | head -3 | while read -r f; do
  echo "=== $f"
  grep -n -A "$LINES" "def ${NAME}" "$f" | head -"$LINES"
done
