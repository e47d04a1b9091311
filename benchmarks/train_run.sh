# Sourced by the GPU scripts of 2026-12-02: `train_run CALL TAG [train.py flags]` runs
# examples/train.py with its loss curve to $OUT/train_TAG_CALL.json and its output to .log, then
# prints the exit status, the model line, the last progress lines and the rewrites' dtype and plan.
# TAIL: how many progress lines (default 1).
train_run() {
  local call=$1 tag=$2; shift 2
  local base="$OUT/train_${tag}_${call}"
  timeout 200 python examples/train.py "$@" --log-json "$base.json" > "$base.log" 2>&1
  echo "$tag rc=$?: $(grep -m1 parameters "$base.log" | cut -c1-160)"
  tr '\r' '\n' < "$base.log" | grep "^step" | tail -"${TAIL:-1}"
  grep -o "dtype=[a-z0-9]*; plan: [a-z]*" "$base.log" | sort | uniq -c
  grep -i "skipping cudagraphs" "$base.log" | head -3
}
