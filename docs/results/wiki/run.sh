#!/bin/bash
# The Wikipedia-summaries benchmark (data/wiki_qa.py): SmolLM2-135M-Instruct on the 500 test questions, top-3 BM25
# over the 10,033 lead summaries, greedy. Writes OUT/before/table.* (direct, rag and the untrained agent); with
# TRAIN=1 also OUT/rl (configs/wiki_smollm2.py: a 48-step format warm start on one-search demonstrations of the
# train split, then 16 GRPO steps), OUT/warm/table.* (the agent at the end of the warm start) and OUT/after/table.*
# (the agent after RL); then OUT/summary.json. STAGES=train,warm,after reruns only those (OUT/before is kept).
#
#   bash docs/results/wiki/run.sh /tmp/wiki_results && cp /tmp/wiki_results/summary.json docs/results/wiki/
set -euo pipefail
OUT=${1:-/tmp/wiki_results}
CONFIG="configs/wiki_smollm2.py:eval_split=test"
if [ "${TRAIN:-0}" = 1 ]; then STAGES=${STAGES:-before,train,warm,after}; else STAGES=${STAGES:-before}; fi
SFT_STEPS=48
has() { [[ ",$STAGES," == *",$1,"* ]]; }
if has before; then
  python launch/evaluate.py --config="$CONFIG" --methods=direct,rag,agent --out="$OUT/before"
fi
if has train; then
  python launch/train.py --config=configs/wiki_smollm2.py --workdir="$OUT/rl"
fi
if has warm; then
  python launch/evaluate.py --config="$CONFIG" --workdir="$OUT/rl" --step=$SFT_STEPS --methods=agent --out="$OUT/warm"
fi
if has after; then
  python launch/evaluate.py --config="$CONFIG" --workdir="$OUT/rl" --methods=agent --out="$OUT/after"
fi
python docs/results/wiki/summarize.py "$OUT"
