#!/bin/bash
# The Wikipedia-summaries benchmark (data/wiki_qa.py): SmolLM2-135M-Instruct on the 500 test questions, top-3 BM25
# over the 10,033 lead summaries, greedy. Writes OUT/before/table.* (direct, rag and the untrained agent), with
# TRAIN=1 also OUT/rl (GRPO on the train split) and OUT/after/table.* (the trained agent), then OUT/summary.json.
#
#   bash docs/results/wiki/run.sh /tmp/wiki_results && cp /tmp/wiki_results/summary.json docs/results/wiki/
set -euo pipefail
OUT=${1:-/tmp/wiki_results}
CONFIG="configs/wiki_smollm2.py:eval_split=test"
python launch/evaluate.py --config="$CONFIG" --methods=direct,rag,agent --out="$OUT/before"
if [ "${TRAIN:-0}" = 1 ]; then
  python launch/train.py --config=configs/wiki_smollm2.py --workdir="$OUT/rl"
  python launch/evaluate.py --config="$CONFIG" --workdir="$OUT/rl" --methods=agent --out="$OUT/after"
fi
python docs/results/wiki/summarize.py "$OUT"
