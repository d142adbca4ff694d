#!/bin/bash
# The stop-early experiment's four RL arm units (search_r1 and search_r2, seeds 0 and 1), side by side on one
# accelerator, each one `launch/experiment.py` process on the same experiment folder.
# Usage, from the repository root: put the CPU run's finished units (warm_start-<key>/ with hf/ and warm_start.json,
# baselines.json, headroom.json) in .gpu/exp and the wheels the accelerator's image lacks in .whl; OUT=DIR bash
# docs/results/learning_stop_early/gpu_arms.sh. Then, on any machine, the same experiment command over a folder
# holding the units and the returned arms/ writes summary.json, table.md and curves.png.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $OUT/device.txt
mkdir -p /tmp/exp && cp -r .gpu/exp/. /tmp/exp/
[ -d .gpu/resume ] && cp -r .gpu/resume/. /tmp/exp/
LIMIT=${LIMIT:-520}
for arm in search_r2 search_r1; do for s in 0 1; do
  timeout $LIMIT python3 launch/experiment.py \
    --config=configs/learning.py:stop_early=0.5,arms=$arm,seeds=$s,steps=60 --out=/tmp/exp \
    > $OUT/log_${arm}_$s.txt 2>&1 &
done; done
wait
cd /tmp/exp && for d in arms/*/seed*; do [ -f $d/test.json ] && rm -rf $d/checkpoints; done
tar czf $OUT/arms.tgz --exclude=tensorboard arms
ls -la $OUT; du -sh /tmp/exp/arms
