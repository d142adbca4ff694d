#!/bin/bash
# The Search-R2 arm's setting, chosen on dev (never test): search_r1, search_r2 and search_r2 with its revised drafts
# kept in their groups (`refiner.train_drafts`), each 40 RL steps from the shipped stop-early warm start, seed 0,
# greedy EM on the first 256 dev questions before RL and at steps 20 and 40 (tune_rl.py, beside the folder above).
# Usage, from the repository root: bash docs/results/learning_stop_early/tuning/run.sh OUT
set -eu
OUT=${1:-/tmp/tune_stop_early}
export PYTHONPATH=. PYTHONUNBUFFERED=1
run() {  # name arm extra-overrides
  python docs/results/learning/tune_rl.py --warm=assets/warm_start_stop_early --out="$OUT" --name="$1" --arm="$2" \
    --config_arg=stop_early=0.5,steps=40 \
    --set="train.steps=40,train.eval_every=20,data.eval_examples=256,train.progress=False,train.diagnostics_every=0$3"
}
run r1 search_r1 ""
run r2 search_r2 ""
run r2_drafts search_r2 ",refiner.train_drafts=True"
