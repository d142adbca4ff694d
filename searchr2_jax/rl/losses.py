"""PPO-clip policy loss with KL to the reference, and the clipped value loss, as (sum, denominator, metrics).

A loss comes back as a sum and its denominator, never as a mean: the sums add up over micro-batches and the train
step divides them by the denominator of the whole batch (`denominator`), so the loss is a mean over the *global*
batch and splitting it never changes it (Tunix's `LossOutput`, MaxText's `total_weights`). The denominator follows
`cfg.loss_agg`:

  token-mean               sum over tokens of l / number of loss tokens                     (verl default)
  seq-mean-token-mean      sum over sequences of (mean over its tokens of l) / number of sequences (paper Eq. 2's 1/L_i)
  seq-mean-token-sum       sum over tokens of l / number of sequences
  seq-mean-token-sum-norm  sum over tokens of l / (number of sequences * T)                 (Dr.GRPO's constant)

"Sequences" are rows with at least one loss token, or the segments of a row that packs several (`segments`).
The Meta-Refiner's meta-actions join the trajectory rows in the same aggregation, each with weight `meta_weight` in
both the sum and the denominator (T of the -norm constant is that of the rows that hold them). All per-token inputs are
[B, T]; `mask` is 1 on model-generated tokens only (prompt, retrieved `<information>` and padding are 0), and masked
entries of every input are ignored (replaced by 0 before any arithmetic, so even inf/NaN there gives a finite loss
and an exactly zero gradient).
Metrics are means over this call's loss tokens (the caller weights them by the token count to merge micro-batches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("kl", "abs", "mse", "low_var_kl")
_KL_ALIASES = {"k1": "kl", "k2": "mse", "k3": "low_var_kl", "mse_kl": "mse"}
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: no overflow in the ratio; far beyond any clip range (verl, Tunix)


def check_loss_config(cfg) -> None:
    """Raises ValueError naming the field of a bad loss config (at trace time: no cost in the step)."""
    for name in ("clip_eps_low", "clip_eps_high", "kl_coef", "entropy_coef", "kl_clamp", "meta_weight"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"loss config: {name}={getattr(cfg, name)} must be >= 0")
    if cfg.clip_ratio_c and cfg.clip_ratio_c <= 1.0:
        raise ValueError(f"loss config: clip_ratio_c={cfg.clip_ratio_c} must be > 1 (or None/0 to disable)")
    if _KL_ALIASES.get(cfg.kl_estimator, cfg.kl_estimator) not in KL_ESTIMATORS:
        raise ValueError(f"loss config: kl_estimator={cfg.kl_estimator!r}, expected one of {KL_ESTIMATORS}")
    if cfg.loss_agg not in LOSS_AGGS:
        raise ValueError(f"loss config: loss_agg={cfg.loss_agg!r}, expected one of {LOSS_AGGS}")


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "low_var_kl",
               clamp: float = 10.0) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs, fp32 (Schulman's estimators):

      kl          k1 = logp - ref_logp                                (unbiased, high variance)
      abs         |logp - ref_logp|
      mse         k2 = 0.5 (logp - ref_logp)^2
      low_var_kl  k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, clamped to [-clamp, clamp] (verl)
    """
    name = _KL_ALIASES.get(estimator, estimator)
    diff = logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)
    if name == "kl":
        return diff
    if name == "abs":
        return jnp.abs(diff)
    if name == "mse":
        return 0.5 * jnp.square(diff)
    if name == "low_var_kl":
        # The inner clip never binds before the outer one (k3(+-clamp) > clamp) but keeps exp finite in fp32.
        x = jnp.clip(-diff, -clamp, clamp)
        return jnp.clip(jnp.exp(x) - x - 1.0, -clamp, clamp)
    raise ValueError(f"kl_estimator={estimator!r}: expected one of {KL_ESTIMATORS} (or k1/k2/k3)")


def _sequences(mask: jax.Array, segments: jax.Array | None):
    """(f32 mask, per-token count of its sequence's loss tokens, number of sequences with a loss token). A sequence
    is a row, or with `segments` [B, T] (ids in 0..T-1, as in a packed row) a (row, segment id) pair."""
    m = mask.astype(jnp.float32)
    b, t = m.shape
    if segments is None:
        count = jnp.sum(m, axis=1)
        return m, jnp.broadcast_to(count[:, None], m.shape), jnp.sum((count > 0).astype(jnp.float32))
    ids = (jnp.arange(b)[:, None] * t + segments).reshape(-1)
    count = jax.ops.segment_sum(m.reshape(-1), ids, num_segments=b * t)
    return m, count[ids].reshape(b, t), jnp.sum((count > 0).astype(jnp.float32))


def _denominator(m: jax.Array, seqs: jax.Array, mode: str) -> jax.Array:
    if mode == "token-mean":
        return jnp.sum(m)
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        return seqs
    if mode == "seq-mean-token-sum-norm":
        return seqs * m.shape[1]
    raise ValueError(f"loss_agg={mode!r}: expected one of {LOSS_AGGS}")


def denominator(mask: jax.Array, mode: str = "token-mean", segments: jax.Array | None = None) -> jax.Array:
    """The denominator of `mode` (see the module doc) for a [B, T] mask (may be float); `segments` as in
    `aggregate`."""
    m, _, seqs = _sequences(mask, segments)
    return _denominator(m, seqs, mode)


def aggregate(per_token: jax.Array, mask: jax.Array, mode: str = "token-mean",
              segments: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(sum, denominator) of a [B, T] per-token loss under `mode` (see the module doc); mask [B, T] may be float.
    `segments` [B, T]: a row holds several sequences (packed meta-actions), told apart by these ids.

    Both parts add up across micro-batches: sum(parts) / sum(denominators) is the global-batch loss.
    """
    m, count, seqs = _sequences(mask, segments)
    x = jnp.where(m > 0, per_token, 0.0) * m
    denom = _denominator(m, seqs, mode)
    if mode == "seq-mean-token-mean":
        return jnp.sum(x / jnp.maximum(count, 1e-8)), denom
    return jnp.sum(x), denom


def _mean(x, m, safe):
    return jnp.sum(jnp.where(m > 0, x, 0.0) * m) / safe


def policy_loss(logp, old_logp, ref_logp, advantages, mask, cfg, entropy=None, segments=None):
    """PPO-clip (+ dual clip) + kl_coef * KL(pi || ref) - entropy_coef * H, aggregated by `cfg.loss_agg`.

    logp [B, T] f32: current policy's log-prob of each token (differentiated); old_logp [B, T]: the sampling
    policy's; ref_logp [B, T] or None (no KL term); advantages [B, T] (per-token, GRPO's broadcast per sequence);
    mask [B, T] 1 on loss tokens; entropy [B, T] or None (needed when entropy_coef > 0); segments [B, T] or None
    (rows holding several sequences, see `aggregate`).

    Per token, with ratio r = exp(logp - old_logp) and A the advantage:
        pg = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high));  for A < 0 also pg = min(pg, -A c)  (dual clip)
    Returns (loss_sum, denominator, metrics): pg_loss, clip_frac (the clipped branch is active),
    clip_frac_lower (the dual clip is active), ppo_kl (k1 of old||new), approx_kl (k3 of old||new), ratio,
    and kl / entropy when present, each a mean over loss tokens.
    """
    check_loss_config(cfg)
    m = mask.astype(jnp.float32)
    live = m > 0
    safe = jnp.maximum(jnp.sum(m), 1e-8)
    clean = lambda x: jnp.where(live, x.astype(jnp.float32), 0.0)
    logp, old_logp, adv = clean(logp), clean(old_logp), clean(advantages)
    log_ratio = jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high)
    pg = jnp.maximum(pg1, pg2)
    metrics = {"clip_frac": _mean((pg2 > pg1).astype(jnp.float32), m, safe)}
    if cfg.clip_ratio_c:
        pg3 = -adv * cfg.clip_ratio_c
        lower = (adv < 0) & (pg > pg3)
        metrics["clip_frac_lower"] = _mean(lower.astype(jnp.float32), m, safe)
        pg = jnp.where(adv < 0, jnp.minimum(pg, pg3), pg)
    metrics.update(pg_loss=_mean(pg, m, safe), ppo_kl=_mean(-log_ratio, m, safe),
                   approx_kl=_mean(ratio - 1.0 - log_ratio, m, safe), ratio=_mean(ratio, m, safe))
    per_token = pg
    if ref_logp is not None and cfg.kl_coef > 0:
        kl = kl_penalty(logp, clean(ref_logp), cfg.kl_estimator, cfg.kl_clamp)
        per_token = per_token + cfg.kl_coef * kl
        metrics["kl"] = _mean(kl, m, safe)
    if entropy is not None:
        ent = clean(entropy)
        metrics["entropy"] = _mean(ent, m, safe)
        if cfg.entropy_coef > 0:
            per_token = per_token - cfg.entropy_coef * ent
    elif cfg.entropy_coef > 0:
        raise ValueError("policy_loss: entropy_coef > 0 needs the per-token entropy (entropy_from_logits)")
    loss_sum, denom = aggregate(per_token, m, cfg.loss_agg, segments)
    return loss_sum, denom, metrics


def value_loss(values, old_values, returns, mask, cfg):
    """Clipped critic loss 0.5 * max((v - R)^2, (v_clip - R)^2), v_clip = v_old + clip(v - v_old, +-value_clip).

    values [B, T] (differentiated), old_values [B, T] (the critic at rollout time), returns [B, T] (GAE returns),
    mask [B, T]. Token-mean as (sum, denominator, metrics) whatever `loss_agg` says (verl's critic does the same);
    `value_clip=None` drops the clipped branch. Metrics: vf_loss, vf_clip_frac, vf_mean, vf_error (mean of v - R).
    """
    m = mask.astype(jnp.float32)
    live = m > 0
    safe = jnp.maximum(jnp.sum(m), 1e-8)
    clean = lambda x: jnp.where(live, x.astype(jnp.float32), 0.0)
    v, v_old, ret = clean(values), clean(old_values), clean(returns)
    loss1 = jnp.square(v - ret)
    if cfg.value_clip is None:
        loss, clipped = 0.5 * loss1, jnp.zeros_like(loss1)
    else:
        v_clip = v_old + jnp.clip(v - v_old, -cfg.value_clip, cfg.value_clip)
        loss2 = jnp.square(v_clip - ret)
        loss, clipped = 0.5 * jnp.maximum(loss1, loss2), (loss2 > loss1).astype(jnp.float32)
    metrics = {"vf_loss": _mean(loss, m, safe), "vf_clip_frac": _mean(clipped, m, safe),
               "vf_mean": _mean(v, m, safe), "vf_error": _mean(v - ret, m, safe)}
    loss_sum, denom = aggregate(loss, m, "token-mean")
    return loss_sum, denom, metrics
