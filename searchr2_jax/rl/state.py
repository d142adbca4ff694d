"""TrainState (one pytree: what a checkpoint holds) and the optax chain that updates it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


class TrainState(NamedTuple):
    step: jax.Array  # [] int32
    params: Any  # the policy (Actor = Refiner by default; a value head rides on the trunk for PPO)
    opt_state: Any
    ref_params: Any  # frozen reference for the KL term; None when kl_coef == 0
    rng: jax.Array  # typed PRNG key: all randomness of the run flows from here


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = int(round(cfg.warmup_ratio * total_steps))
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1), alpha=cfg.min_lr_ratio)
    else:
        raise ValueError(f"optim.schedule={cfg.schedule!r}; expected 'constant' or 'cosine'")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with linear warm-up (by ratio) and a constant or cosine tail."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay),
    )


def init_state(params, optimizer: optax.GradientTransformation, rng: jax.Array, with_reference: bool) -> TrainState:
    params = jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    ref = jax.tree.map(jnp.copy, params) if with_reference else None
    return TrainState(jnp.int32(0), params, optimizer.init(params), ref, rng)
