"""Advantage estimators (pure, jittable, static shapes): GRPO group normalization and PPO's GAE.

GRPO (default, paper §4.1): one advantage per sequence, the caller broadcasts it onto the sequence's loss tokens.
GAE (PPO with a critic): one advantage per token, over [B, T] token rows where the loss mask is 0 on the prompt and
on retrieved `<information>` spans; the recursion bridges those spans (as verl's multi-turn GAE and Tunix's
`compute_gae_advantages`), so the TD step runs from the last generated token before a span to the first after it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_index(group_ids: jax.Array) -> jax.Array:
    """Remaps arbitrary integer group ids [N] (any order, any values) onto dense indices in [0, N), in-jit."""
    n = group_ids.shape[0]
    return jnp.unique(group_ids, return_inverse=True, size=n, fill_value=group_ids[0])[1].reshape(n)


def grpo_advantages(rewards: jax.Array, group_ids: jax.Array, normalize_std: bool = True, eps: float = 1e-6,
                    valid: jax.Array | None = None) -> jax.Array:
    """Per-sequence GRPO advantages: (R_i - mean_g) / (std_g + eps) over the members of each group. [N] -> [N] f32.

    rewards [N] float; group_ids [N] int, any values, not necessarily contiguous or sorted; valid [N] bool
    (padding rows in a static-shape batch: excluded from the statistics, advantage 0).
    - std is the unbiased sample std (torch.std, as verl; Tunix uses ddof=1 too);
    - `normalize_std=False` is Dr.GRPO: mean-centering only;
    - a group of identical rewards gets exactly 0 (std 0 -> 0 / eps = 0, never NaN);
    - a singleton group gets mean 0 and std 1, i.e. its raw reward (verl's rule, REINFORCE without baseline).
    """
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"grpo_advantages: rewards {rewards.shape} and group_ids {group_ids.shape} must be [N]")
    n = rewards.shape[0]
    r = rewards.astype(jnp.float32)
    w = jnp.ones((n,), jnp.float32) if valid is None else valid.astype(jnp.float32)
    idx = group_index(group_ids)
    seg = lambda x: jax.ops.segment_sum(x, idx, num_segments=n)[idx]
    count = seg(w)
    single = count <= 1.0
    # Shift by a member's reward (the group max) before averaging: in fp32 the mean of n copies of 1.7 is not 1.7,
    # and (r - mean) / (std + eps) would then be O(0.1) for a group of identical rewards instead of 0.
    top = jax.ops.segment_max(jnp.where(w > 0, r, -jnp.inf), idx, num_segments=n)[idx]
    d = jnp.where(w > 0, r - top, 0.0)
    centered = jnp.where(single, r, d - seg(w * d) / jnp.maximum(count, 1.0))
    if normalize_std:
        var = seg(w * centered**2) / jnp.maximum(count - 1.0, 1.0)
        std = jnp.where(single, 1.0, jnp.sqrt(var))
        centered = centered / (std + eps)
    return jnp.where(w > 0, centered, 0.0)


def sequence_advantages(rewards: jax.Array, group_ids: jax.Array, keep: jax.Array | None = None,
                        normalize_std: bool = True, rejection_sampling: bool = False) -> jax.Array:
    """Per-sequence advantages [N] f32: GRPO's group normalization, or 1 for a positive reward under rejection
    sampling (learn only from successes, as SFT would). Rows with `keep` False (an infrastructure fault such as a
    failed retrieval, not a wrong answer) get 0 and stay out of their group's mean and std."""
    keep = jnp.ones(rewards.shape, bool) if keep is None else jnp.asarray(keep, bool)
    if rejection_sampling:
        return jnp.where(keep & (rewards > 0), 1.0, 0.0).astype(jnp.float32)
    return grpo_advantages(rewards, group_ids, normalize_std=normalize_std, valid=keep)


def drop_rows(keep: jax.Array, mask: jax.Array, index: jax.Array | None = None) -> jax.Array:
    """`mask` [R, T] as f32 with zero weight on the rows whose trajectory has `keep` [N] False: row r belongs to
    trajectory `index[r]` (-1 pads and is dropped too), or to trajectory r when `index` is None."""
    keep = jnp.asarray(keep, bool)
    row_keep = keep if index is None else (index >= 0) & keep[jnp.maximum(index, 0)]
    return jnp.where(row_keep[:, None], mask, 0).astype(jnp.float32)


def terminal_rewards(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Token rewards [B, T] for PPO: each sequence's scalar score [B] at its last loss token (mask > 0), zero
    elsewhere (verl's reward placement; a row without loss tokens gets none)."""
    t = mask.shape[1]
    last = (t - 1) - jnp.argmax(jnp.flip(mask > 0, axis=1), axis=1)
    has = jnp.any(mask > 0, axis=1)
    onehot = (jnp.arange(t)[None, :] == last[:, None]) & has[:, None]
    return jnp.where(onehot, scores.astype(jnp.float32)[:, None], 0.0)


def gae_advantages(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = 1.0, lam: float = 1.0,
                   unroll: int = 8) -> tuple[jax.Array, jax.Array]:
    """GAE over token rows. rewards, values, mask [B, T] -> (advantages, returns) [B, T] f32, 0 where mask is 0.

    Backwards over t, on loss tokens (mask > 0) only:
        delta_t = r_t + gamma * V_next - V_t;   A_t = delta_t + gamma * lam * A_next
    where V_next and A_next are those of the next *loss* token (0 past the end). A masked token changes neither,
    so a retrieved span is bridged, and its rewards are ignored (place rewards on loss tokens). Returns = A + V.
    Search-R1's PPO uses gamma = lam = 1.
    """
    if not rewards.shape == values.shape == mask.shape or rewards.ndim != 2:
        raise ValueError(f"gae_advantages: rewards {rewards.shape}, values {values.shape}, mask {mask.shape} "
                         "must all be [B, T]")
    live = mask > 0

    def step(carry, x):
        next_adv, next_value = carry
        r, v, m = x
        adv = r + gamma * next_value - v + gamma * lam * next_adv
        return (jnp.where(m, adv, next_adv), jnp.where(m, v, next_value)), jnp.where(m, adv, 0.0)

    # Scan over time (reversed) on [T, B] slices.
    xs = tuple(jnp.flip(x, axis=1).T for x in (rewards.astype(jnp.float32), values.astype(jnp.float32), live))
    zeros = jnp.zeros((rewards.shape[0],), jnp.float32)
    _, adv = jax.lax.scan(step, (zeros, zeros), xs, unroll=unroll)
    adv = jnp.flip(adv.T, axis=1)
    return adv, jnp.where(live, adv + values.astype(jnp.float32), 0.0)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / sqrt(var + eps) over mask > 0 entries of the whole array, 0 elsewhere.

    var is unbiased (Bessel n / (n - 1), as verl's and Tunix's masked_whiten); `shift_mean=False` adds the mean
    back (scale only). Fewer than two entries: var is taken as the biased one (0 for one entry).
    """
    m = (mask > 0).astype(jnp.float32)
    x = jnp.where(m > 0, x.astype(jnp.float32), 0.0)
    n = jnp.sum(m)
    mean = jnp.sum(x) / jnp.maximum(n, 1.0)
    sq = jnp.sum(jnp.where(m > 0, (x - mean) ** 2, 0.0))
    var = sq / jnp.maximum(n - 1.0, 1.0)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(m > 0, out, 0.0)
