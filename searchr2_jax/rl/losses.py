"""PPO-clip policy loss, KL estimators and the clipped value loss, as (sum, denominator, metrics) triples.

Losses come back as sums over the (float) mask and its denominator, never as means: the train step divides by the
global denominator of the whole batch once, so splitting the batch into micro-batches never changes the loss.
A float mask may carry weights (e.g. 1/L_i for the paper's sequence-mean aggregation).
All inputs are [B, T] fp32; `mask` is 1 on model-generated tokens only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

KL_ESTIMATORS = ("kl", "abs", "mse", "low_var_kl")


def default_loss_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        clip_eps_low=0.2,  # ratio clipped to [1 - low, 1 + high]
        clip_eps_high=0.2,
        clip_ratio_c=3.0,  # dual clip for negative advantages (0 disables)
        kl_coef=0.001,  # paper: low-variance KL, coefficient 0.001, as a loss term
        kl_estimator="low_var_kl",
        kl_clamp=10.0,
        entropy_coef=0.0,  # paper: no entropy bonus
        vf_coef=0.5,  # PPO critic
        value_clip=0.2,
        loss_agg="token-mean",  # or "seq-mean-token-mean" (the paper's 1/L_i), applied as mask weights
    ))


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str, clamp: float = 10.0) -> jax.Array:
    """Per-token KL(pi || pi_ref) estimate from log-probs of the sampled tokens (Schulman's k1/k2/k3)."""
    logp, ref_logp = logp.astype(jnp.float32), ref_logp.astype(jnp.float32)
    diff = logp - ref_logp
    if estimator == "kl":
        return diff
    if estimator == "abs":
        return jnp.abs(diff)
    if estimator == "mse":
        return 0.5 * diff**2
    if estimator == "low_var_kl":
        log_ratio = jnp.clip(-diff, -clamp, clamp)  # clamp before exp: no overflow in fp32
        return jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -clamp, clamp)
    raise ValueError(f"kl_estimator={estimator!r}: expected one of {KL_ESTIMATORS}")


def policy_loss(logp, old_logp, ref_logp, advantages, mask, cfg, entropy=None):
    """PPO-clip (+ dual clip) + kl_coef * KL - entropy_coef * entropy, summed over `mask`.

    Returns (loss_sum, denominator, metrics) where metrics are means over this call's masked tokens.
    `ref_logp=None` drops the KL term (kl_coef 0); `entropy` [B, T] is needed only when entropy_coef > 0.
    """
    mask = mask.astype(jnp.float32)
    denom = jnp.sum(mask)
    safe = jnp.maximum(denom, 1e-8)
    log_ratio = jnp.where(mask > 0, logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * jnp.clip(ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high)
    pg = jnp.maximum(pg1, pg2)
    if cfg.clip_ratio_c and cfg.clip_ratio_c > 0:
        # Dual clip: for A < 0 the loss is capped at -A * c, so a huge ratio cannot blow the update up.
        pg = jnp.where(advantages < 0, jnp.minimum(pg, -advantages * cfg.clip_ratio_c), pg)
    per_token = pg
    metrics = {
        "pg_loss": jnp.sum(pg * mask) / safe,
        "clip_frac": jnp.sum((pg2 > pg1) * mask) / safe,
        "ppo_kl": jnp.sum(-log_ratio * mask) / safe,
        "ratio": jnp.sum(ratio * mask) / safe,
    }
    if ref_logp is not None and cfg.kl_coef > 0:
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator, cfg.kl_clamp)
        per_token = per_token + cfg.kl_coef * kl
        metrics["kl"] = jnp.sum(kl * mask) / safe
    if cfg.entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy")
        per_token = per_token - cfg.entropy_coef * entropy
        metrics["entropy"] = jnp.sum(entropy * mask) / safe
    return jnp.sum(per_token * mask), denom, metrics


def value_loss(values, old_values, returns, mask, cfg):
    """Clipped value loss 0.5 * max((v - R)^2, (v_clip - R)^2), summed over `mask`; (sum, denom, metrics)."""
    mask = mask.astype(jnp.float32)
    denom = jnp.sum(mask)
    clipped = old_values + jnp.clip(values - old_values, -cfg.value_clip, cfg.value_clip)
    loss = 0.5 * jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    safe = jnp.maximum(denom, 1e-8)
    metrics = {"vf_loss": jnp.sum(loss * mask) / safe,
               "vf_clip_frac": jnp.sum(((clipped - returns) ** 2 > (values - returns) ** 2) * mask) / safe}
    return jnp.sum(loss * mask), denom, metrics
