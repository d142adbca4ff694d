#!/bin/bash
# Second round on dev: sampling temperature 1 (the paper's), rejection sampling, lower learning rates.
# Usage: gpu_sweep2.sh WARM_HF_PARENT OUT SECONDS
set -u
WARM=$1; OUT=$2; SECS=$3
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
run() {  # name, overrides
  timeout "$SECS" python3 docs/results/learning/tune_rl.py --warm="$WARM" --out=/tmp/tune --name="$1" \
    --set="train.steps=200,train.eval_every=20,data.eval_examples=256,train.progress=False,$2" \
    > "/tmp/tune_$1.log" 2>&1
  cp "/tmp/tune/$1/metrics.jsonl" "$OUT/$1.jsonl" 2>/dev/null
  { echo "== $1"; grep -E "before RL|step [0-9]+ eval|^all" "/tmp/tune_$1.log"; } >> "$OUT/logs.txt"
}
run t1_lr1e-4 "optim.learning_rate=1e-4,rollout.temperature=1.0" &
run rs_lr1e-4 "optim.learning_rate=1e-4,rl.rejection_sampling=True" &
run lr3e-5 "optim.learning_rate=3e-5" &
run rs_t1_lr3e-4 "optim.learning_rate=3e-4,rl.rejection_sampling=True,rollout.temperature=1.0" &
wait
