"""Search-R2 on Qwen2.5-7B (base), the paper's main setting (the Search-R2 paper, §6): GRPO n=5, 512 prompts x 300
steps, lr 1e-6 (warm-up 0.285), low-var KL 0.001, 4 turns, top-3 e5-base-v2 over wiki-18, bf16 + remat.

Sized for 64 chips (e.g. a TPU v5p-128 slice): mesh data=1 x fsdp=32 x tensor=2 (the paper's TP 2), 20 micro-batches
of 128 rollout rows = 4 rows per fsdp shard (the paper's micro-batch 4 per GPU). On another pod size fsdp takes the
rest of the chips; keep 2560 / micro_batches divisible by fsdp.

  # once: the index (launch/build_index.py) and the data under ROOT (see configs/common.py:paper_config)
  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd searchr2_jax && \
    python launch/train.py --config=configs/qwen2p5_7b_r2.py:root=/mnt/disks/searchr2 \
      --workdir=/mnt/disks/searchr2/runs/qwen2p5_7b_r2 --multihost"
  # an ablation row: --config=configs/qwen2p5_7b_r2.py:root=...,variant=search_r1
"""

from configs.common import paper_config


def get_config(arg=None):
    return paper_config(arg, model="Qwen2.5-7B", tensor=2, micro_batches=20, devices=64)
