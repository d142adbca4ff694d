#!/bin/bash
# RL settings of the learning experiment, tuned on dev: several arms from one warm start, side by side on one
# accelerator (the step of a model this small is bound by the host, so runs sharing a chip barely slow each other).
# Usage: sweep.sh WARM_DIR OUT SECONDS RUNS_FILE [CONFIG_ARG]
#   RUNS_FILE: one run per line, "NAME OVERRIDES" (dotted.key=value,... for tune_rl.py --set); # starts a comment.
#   CONFIG_ARG: switches of configs/learning.py, e.g. stop_early=0.5
set -u
WARM=$1; OUT=$2; SECS=$3; RUNS=$4; ARG=${5:-}
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
mkdir -p "$OUT"
run() {  # name, overrides
  timeout "$SECS" python3 docs/results/learning/tune_rl.py --warm="$WARM" --out=/tmp/tune --name="$1" \
    --config_arg="$ARG" \
    --set="train.steps=200,train.eval_every=20,data.eval_examples=256,train.progress=False,$2" \
    > "/tmp/tune_$1.log" 2>&1
  cp "/tmp/tune/$1/metrics.jsonl" "$OUT/$1.jsonl" 2>/dev/null
  cat "/tmp/tune/$1.json" >> "$OUT/results.jsonl" 2>/dev/null
  { echo "== $1"; grep -v DEBUG "/tmp/tune_$1.log" | tail -15; } >> "$OUT/logs.txt"
}
while read -r name overrides; do
  case "$name" in ""|\#*) continue ;; esac
  run "$name" "$overrides" &
done < "$RUNS"
wait
