"""Advantage estimators (pure, jittable): GRPO group normalization and GAE that bridges masked spans."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def grpo_advantages(rewards: jax.Array, group_index: jax.Array, normalize_std: bool = True,
                    eps: float = 1e-6) -> jax.Array:
    """(R_i - mean_group) / (std_group + eps) per sequence. rewards [N] fp32, group_index [N] int in [0, N).

    Groups need not be contiguous or sorted. `normalize_std=False` gives Dr.GRPO's mean-centering only. A group of
    identical rewards gets advantage 0 (never NaN). std is the unbiased sample std, as verl's torch.std.
    """
    n = rewards.shape[0]
    rewards = rewards.astype(jnp.float32)
    count = jax.ops.segment_sum(jnp.ones_like(rewards), group_index, num_segments=n)
    mean = jax.ops.segment_sum(rewards, group_index, num_segments=n) / jnp.maximum(count, 1.0)
    centered = rewards - mean[group_index]
    if not normalize_std:
        return centered
    var = jax.ops.segment_sum(centered**2, group_index, num_segments=n) / jnp.maximum(count - 1.0, 1.0)
    std = jnp.where(count > 1, jnp.sqrt(var), 1.0)[group_index]
    return centered / (std + eps)


def gae_advantages(rewards, values, mask, gamma: float = 1.0, lam: float = 1.0):
    """GAE over token sequences [B, T]; tokens with mask 0 (prompt, retrieved spans) are skipped: the recursion
    carries the running advantage and the next value straight through them, so a retrieved block between two
    generated tokens does not cut credit assignment. Returns (advantages, returns), 0 where mask is 0."""
    mask = mask.astype(jnp.float32)

    def step(carry, x):
        last_gae, next_value = carry
        r, v, m = x
        delta = r + gamma * next_value - v
        gae = delta + gamma * lam * last_gae
        carry = (jnp.where(m > 0, gae, last_gae), jnp.where(m > 0, v, next_value))
        return carry, jnp.where(m > 0, gae, 0.0)

    xs = tuple(jnp.flip(x.astype(jnp.float32), axis=1).T for x in (rewards, values, mask))
    init = (jnp.zeros(rewards.shape[0], jnp.float32), jnp.zeros(rewards.shape[0], jnp.float32))
    _, adv = jax.lax.scan(step, init, xs)
    adv = jnp.flip(adv.T, axis=1)
    return adv, (adv + values) * mask


def masked_whiten(x, mask, eps: float = 1e-8):
    """(x - mean) / std over masked entries; 0 elsewhere."""
    mask = mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(x * mask) / n
    var = jnp.sum(((x - mean) ** 2) * mask) / n
    return (x - mean) * jax.lax.rsqrt(var + eps) * mask
