"""Search-R2 on Qwen2.5-32B-Instruct (the Search-R2 paper, §6): GRPO n=5, 512 prompts x 300 steps, lr 1e-6 (warm-up
0.285), low-var KL 0.001, 4 turns, top-3 e5-base-v2 over wiki-18, bf16 + remat, prompts through the chat template.

Sized for 128 chips (e.g. a TPU v5p-256 slice): mesh data=1 x fsdp=16 x tensor=8 (the paper's TP 8), 40
micro-batches of 64 rollout rows = 4 rows per fsdp shard (the paper's micro-batch 4 per GPU).

  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd searchr2_jax && \
    python launch/train.py --config=configs/qwen2p5_32b_r2.py:root=/mnt/disks/searchr2 \
      --workdir=/mnt/disks/searchr2/runs/qwen2p5_32b_r2 --multihost"
"""

from configs.common import paper_config


def get_config(arg=None):
    return paper_config(arg, model="Qwen2.5-32B-Instruct", tensor=8, micro_batches=40, devices=128, slots=128)
