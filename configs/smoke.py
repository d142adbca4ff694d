"""Smoke: a tiny from-scratch model on a tiny synthetic world, warm-started on demonstrations, then a few Search-R2
GRPO steps with the Meta-Refiner on, and a greedy Actor-only eval table at the end: the whole pipeline from nothing,
in about 5-9 minutes on 2 CPU cores. It shows the pipeline, not learning (configs/main.py does that).

  python launch/train.py --config=configs/smoke.py --workdir=/tmp/searchr2_smoke
"""

from searchr2_jax.config import apply_variant, base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, variant="search_r2", sft_steps=400, steps=6)
    c = base_config()
    c.data.world = dict(seed=0, num_people=120, num_companies=30, num_cities=30, num_countries=6,
                        num_universities=8, num_distractors=10, num_questions=600)
    c.data.eval_examples = 32
    c.model.vocab_size = 2048
    # 128 wide: at 64 the warm start does not learn to copy names out of the question / <information> in time.
    c.model.init = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                        intermediate_size=256, rope_theta=10000.0, max_position_embeddings=2048)
    c.retrieval.backend = "bm25"
    c.rollout.update(dict(slots=16, max_prompt_tokens=320, max_response_tokens=384, max_obs_tokens=128,
                          segment_steps=32, temperature=0.7))  # < 1: the tiny warm start's samples stay on-protocol
    # Fewer refiner-only rows (each carries one label token) leave most of the batch for Actor demonstrations, with
    # about as many sound (label 0) as flawed refiner examples so the refiner does not learn to revise everything; a
    # hotter learning rate than base_config's 1e-3 for a from-scratch model this small.
    c.sft.update(dict(steps=a.sft_steps, batch_size=8, seq_len=768, flawed_fraction=0.15, refiner_fraction=0.2))
    c.sft.optim.learning_rate = 3e-3
    c.rl.group_size = 4
    c.optim.learning_rate = 1e-5
    c.optim.warmup_ratio = 0.0
    c.train.update(dict(steps=a.steps, prompts_per_step=4, micro_batches=2, log_every=1, eval_every=50,
                        ckpt_every=50, keep_checkpoints=2))
    c.mesh.update(dict(data=1, fsdp=1, tensor=1))
    return apply_variant(c, a.variant)
