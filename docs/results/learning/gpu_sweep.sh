#!/bin/bash
# RL settings of the learning experiment, tuned on dev: several search_r1 arms from one warm start, side by side on
# one accelerator. Usage: gpu_sweep.sh WARM_HF_PARENT OUT SECONDS
set -u
WARM=$1; OUT=$2; SECS=$3
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
run() {  # name, overrides
  timeout "$SECS" python3 docs/results/learning/tune_rl.py --warm="$WARM" --out=/tmp/tune --name="$1" \
    --set="train.steps=200,train.eval_every=20,data.eval_examples=256,train.progress=False,$2" \
    > "/tmp/tune_$1.log" 2>&1
  cp "/tmp/tune/$1/metrics.jsonl" "$OUT/$1.jsonl" 2>/dev/null
  cat "/tmp/tune/$1.json" >> "$OUT/results.jsonl" 2>/dev/null
  { echo "== $1"; grep -v DEBUG "/tmp/tune_$1.log" | tail -15; } >> "$OUT/logs.txt"
}
run lr1e-4 "optim.learning_rate=1e-4" &
run lr3e-4 "optim.learning_rate=3e-4" &
run lr1e-3 "optim.learning_rate=1e-3" &
run lr3e-4_p16 "optim.learning_rate=3e-4,train.prompts_per_step=16" &
run lr1e-3_t1 "optim.learning_rate=1e-3,rollout.temperature=1.0" &
wait
