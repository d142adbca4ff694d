"""Search-R2 on Qwen3-8B (the Search-R2 paper, §6): GRPO n=5, 512 prompts x 300 steps, lr 1e-6 (warm-up 0.285),
low-var KL 0.001, 4 turns, top-3 e5-base-v2 over wiki-18, bf16 + remat, prompts through the chat template.

Sized for 64 chips (e.g. a TPU v5p-128 slice): mesh data=1 x fsdp=32 x tensor=2 (the paper's TP 2), 20 micro-batches
of 128 rollout rows = 4 rows per fsdp shard (the paper's micro-batch 4 per GPU).

  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd searchr2_jax && \
    python launch/train.py --config=configs/qwen3_8b_r2.py:root=/mnt/disks/searchr2 \
      --workdir=/mnt/disks/searchr2/runs/qwen3_8b_r2 --multihost"
"""

from configs.common import paper_config


def get_config(arg=None):
    return paper_config(arg, model="Qwen3-8B", tensor=2, micro_batches=20, devices=64)
