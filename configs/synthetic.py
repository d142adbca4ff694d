"""The ablation rows of the paper's Table 3 on the synthetic world: a from-scratch model warm-started on the world's
demonstrations (and refiner labels), then GRPO with the paper's RL settings (n=5, warm-up ratio 0.285, low-var KL
0.001, 4 turns, top-3 retrieval, one revision). `variant` picks the row (searchr2_jax/config.py VARIANTS):

  search_r1             refiner off, outcome reward only
  meta_refiner          refiner on in rollouts, meta-actions not trained, outcome reward only
  meta_refiner_process  + the hybrid (process) reward
  search_r2             + meta-actions trained jointly (the full method)
  rejection_sampling    refiner off, learn only from successful trajectories

  python launch/train.py --config=configs/synthetic.py:variant=search_r1 --workdir=/tmp/searchr2_syn_r1
  python launch/evaluate.py --config=configs/synthetic.py:variant=search_r1 --workdir=/tmp/searchr2_syn_r1

Other switches: sft_steps, steps, prompts (per step), seed (world, model and data), backend (bm25 | dense).
Compare rows with the same seed: world, warm start and data order are then identical.
"""

from searchr2_jax.config import apply_variant, base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, variant="search_r2", sft_steps=1000, steps=300, prompts=64, seed=0, backend="bm25")
    c = base_config()
    c.seed = a.seed
    c.data.world = dict(seed=a.seed)  # the default world: ~2k entities, 10k questions
    c.data.eval_examples = 256
    c.model.vocab_size = 2048
    c.model.init = dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=32,
                        intermediate_size=768, rope_theta=10000.0, max_position_embeddings=2048)
    c.retrieval.backend = a.backend
    c.retrieval.k = 3
    c.rollout.update(dict(slots=64, max_turns=4, max_prompt_tokens=320, max_response_tokens=640, max_obs_tokens=160,
                          topk=3, segment_steps=32, temperature=1.0))
    c.refiner.update(dict(max_revisions=1, margin=0.0))
    c.reward.judge = "oracle"  # the world knows which passages are gold
    c.rl.group_size = 5
    c.sft.update(dict(steps=a.sft_steps, batch_size=32, seq_len=768))
    c.optim.update(dict(learning_rate=1e-5, warmup_ratio=0.285))  # a small model from scratch: 10x the paper's lr
    c.train.update(dict(steps=a.steps, prompts_per_step=a.prompts, micro_batches=4, log_every=1, eval_every=50,
                        ckpt_every=50, keep_checkpoints=3))
    c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    return apply_variant(c, a.variant)
