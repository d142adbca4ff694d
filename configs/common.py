"""Shared config pieces: every experiment config starts from `base_config()` and overrides what it needs.

Configs are ml_collections `get_config(arg)` files (big_vision style): `arg` is an optional comma-separated string of
`key=value` switches, e.g. `--config=configs/synthetic.py:variant=search_r1`.
"""

import ml_collections

from searchr2_jax.rl.losses import default_loss_config
from searchr2_jax.rl.state import default_optim_config
from searchr2_jax.rollout.refiner import default_refiner_config
from searchr2_jax.rollout.rollout import default_rollout_config
from searchr2_jax.retrieval.retriever import default_retrieval_config


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """'a=1,b=x' -> ConfigDict(a=1, b='x'), typed by the defaults given."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"config argument {key!r} is not one of {sorted(defaults)}")
        kind = type(defaults[key])
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


# The paper's ablation rows (Table 3) and the rejection-sampling baseline, as switches on one config.
VARIANTS = {
    "search_r1": dict(refiner=False, process_reward=False, joint=False),
    "meta_refiner": dict(refiner=True, process_reward=False, joint=False),
    "meta_refiner_process": dict(refiner=True, process_reward=True, joint=False),
    "search_r2": dict(refiner=True, process_reward=True, joint=True),
    "rejection_sampling": dict(refiner=False, process_reward=False, joint=False, rejection=True),
}


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    config.variant = variant
    config.refiner.enabled = v["refiner"]
    config.reward.outcome_only = not v["process_reward"]
    config.rl.train_meta_actions = v["joint"]
    config.rl.rejection_sampling = v.get("rejection", False)
    return config


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.variant = "search_r2"
    c.data = ml_collections.ConfigDict(dict(
        world=dict(),  # synthetic.WorldConfig fields; {} = the default world (~2k entities, 10k questions)
        train_split="train", eval_split="dev", eval_examples=256))
    c.model = ml_collections.ConfigDict(dict(
        hf_path="",  # an HF folder (config.json + safetensors); empty = from scratch with `init`
        tokenizer="world",  # a tokenizer dir/file, or "world": BPE trained on the synthetic world
        vocab_size=2048,  # for the world tokenizer
        chat=False,  # prompts through the tokenizer's chat template (instruct models)
        dtype="float32", remat=False,
        init=dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32, intermediate_size=256,
                  rope_theta=10000.0, max_position_embeddings=4096)))
    c.retrieval = default_retrieval_config()
    c.rollout = default_rollout_config()
    c.refiner = default_refiner_config()
    c.reward = ml_collections.ConfigDict(dict(judge="oracle", judge_kwargs={}, outcome_only=False))
    c.rl = ml_collections.ConfigDict(dict(
        algo="grpo", group_size=5, normalize_std=True, train_meta_actions=True, rejection_sampling=False,
        loss=default_loss_config()))
    c.optim = default_optim_config()
    c.sft = ml_collections.ConfigDict(dict(steps=0, batch_size=16, seq_len=512, flawed_fraction=0.4,
                                           refiner_fraction=0.2, optim=default_optim_config()))
    c.sft.optim.learning_rate = 1e-3
    c.sft.optim.warmup_ratio = 0.05
    c.sft.optim.schedule = "cosine"
    c.train = ml_collections.ConfigDict(dict(
        steps=300, prompts_per_step=512, micro_batches=1, log_every=1, eval_every=50, ckpt_every=50,
        keep_checkpoints=3, progress=True))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c
