#!/bin/bash
# The Wikipedia-summaries benchmark (data/wiki_qa.py): SmolLM2-135M-Instruct on the 500 test questions, top-3 BM25
# over the 10,033 lead summaries, greedy. Writes OUT/before/table.* (direct, rag and the untrained agent); with
# TRAIN=1 also OUT/rl (configs/wiki_smollm2.py: a 48-step format warm start on one-search demonstrations of the
# train split, then 16 GRPO steps), OUT/warm/table.* (the agent at the end of the warm start) and OUT/after/table.*
# (the agent after RL); then OUT/summary.json. STAGES=train,warm,after reruns only those (OUT/before is kept).
# BACKEND=dense evaluates over all-MiniLM-L6-v2 + faiss instead (index built once into OUT/index); RL_DIR points
# the warm/after stages at a workdir trained elsewhere (e.g. the BM25 run's OUT/rl); BEFORE_METHODS picks the
# methods of the before stage.
#
#   bash docs/results/wiki/run.sh /tmp/wiki_results && cp /tmp/wiki_results/summary.json docs/results/wiki/
#   BACKEND=dense STAGES=before,warm,after BEFORE_METHODS=direct,rag RL_DIR=/tmp/wiki_results/rl \
#       bash docs/results/wiki/run.sh /tmp/wiki_dense
set -euo pipefail
OUT=${1:-/tmp/wiki_results}
BACKEND=${BACKEND:-bm25}
RL_DIR=${RL_DIR:-$OUT/rl}
CONFIG=("--config=configs/wiki_smollm2.py:eval_split=test,backend=$BACKEND")
if [ "${TRAIN:-0}" = 1 ]; then STAGES=${STAGES:-before,train,warm,after}; else STAGES=${STAGES:-before}; fi
SFT_STEPS=48
has() { [[ ",$STAGES," == *",$1,"* ]]; }
if [ "$BACKEND" = dense ]; then
  CORPUS=$(python -c "from searchr2_jax.data.wiki_qa import prepare_wiki_qa; print(prepare_wiki_qa()['corpus'])")
  python launch/build_index.py --retrieval.corpus_path="$CORPUS" --out_dir="$OUT/index" --progress=false
  CONFIG+=("--config.retrieval.index_dir=$OUT/index")
fi
if has before; then
  python launch/evaluate.py "${CONFIG[@]}" --methods="${BEFORE_METHODS:-direct,rag,agent}" --out="$OUT/before"
fi
if has train; then
  python launch/train.py --config=configs/wiki_smollm2.py --workdir="$RL_DIR"
fi
if has warm; then
  python launch/evaluate.py "${CONFIG[@]}" --workdir="$RL_DIR" --step=$SFT_STEPS --methods=agent --out="$OUT/warm"
fi
if has after; then
  python launch/evaluate.py "${CONFIG[@]}" --workdir="$RL_DIR" --methods=agent --out="$OUT/after"
fi
python docs/results/wiki/summarize.py "$OUT"
