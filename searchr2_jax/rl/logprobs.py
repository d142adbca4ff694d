"""Per-token log-probabilities and entropy in fp32: the one definition the sampler and the trainer share.

The sampler draws from softmax(logits / T); the trainer must score tokens under the same tempered distribution,
or the PPO ratio at step 0 is not 1. Both go through `token_logprobs`.

`chunked_token_logprobs` runs the LM head over sequence chunks inside a rematerialized scan, so neither the
forward nor the backward pass ever holds the full [B, T, V] logits (Tunix `chunk_size`, Marin's blockwise CE):
with V = 152k (Qwen) and T = 4k, one row of fp32 logits is 2.3 GiB.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _tempered(logits: jax.Array, temperature) -> jax.Array:
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature={temperature}: log-probs need T > 0 (greedy decoding has none to score)")
    z = logits.astype(jnp.float32)
    return z if isinstance(temperature, (int, float)) and temperature == 1.0 else z / temperature


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log softmax(logits / T)[target] in fp32. logits [..., V], targets [...] int -> [...] f32.

    Target logit minus logsumexp: no [..., V] log-softmax is materialized beyond the fp32 logits themselves.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"token_logprobs: logits {logits.shape} vs targets {targets.shape}: want [..., V] and [...]")
    z = _tempered(logits, temperature)
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(z, axis=-1)


def entropy_from_logits(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Entropy of softmax(logits / T) per position in fp32: logsumexp(z) - sum(p z). [..., V] -> [...].

    Logits of -inf (a masked vocabulary) have p = 0 and contribute 0, not 0 * inf = NaN.
    """
    z = _tempered(logits, temperature)
    lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
    p = jnp.exp(z - lse)
    return lse[..., 0] - jnp.sum(p * jnp.where(jnp.isfinite(z), z, 0.0), axis=-1)


def chunked_token_logprobs(hidden: jax.Array, head: Callable[[jax.Array], jax.Array], targets: jax.Array,
                           chunk_size: int, temperature: float = 1.0, return_entropy: bool = False):
    """`token_logprobs(head(hidden), targets)` computed `chunk_size` positions at a time.

    hidden [B, T, D]; head: [B, C, D] -> [B, C, V] logits (e.g. `lambda h: decoder.lm_logits(cfg, params, h)`;
    it may close over traced params); targets [B, T] int; temperature a number or [B, T] (one per position). Returns
    logp [B, T] f32, and entropy [B, T] f32 when `return_entropy`. T need not divide by `chunk_size` (the tail is
    padded and dropped). Each chunk is rematerialized in the backward pass, so peak memory holds one [B, C, V] block,
    not [B, T, V].
    """
    b, t = targets.shape
    if hidden.shape[:2] != (b, t):
        raise ValueError(f"chunked_token_logprobs: hidden {hidden.shape} vs targets {targets.shape}")
    if chunk_size <= 0:
        raise ValueError(f"chunked_token_logprobs: chunk_size={chunk_size} must be > 0")
    c = min(chunk_size, t)
    n = -(-t // c)
    pad = n * c - t
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, hidden.shape[-1]).swapaxes(0, 1)

    def chunks(x, fill=0):  # [B, T] -> [n, B, C]
        return jnp.pad(x, ((0, 0), (0, pad)), constant_values=fill).reshape(b, n, c).swapaxes(0, 1)

    y = chunks(targets)
    per_position = not isinstance(temperature, (int, float))
    temps = chunks(jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (b, t)), 1) if per_position else y

    @jax.checkpoint
    def one(args):
        hc, yc, tc = args
        temp = tc[..., None] if per_position else temperature
        logits = head(hc)
        lp = token_logprobs(logits, yc, temp)
        ent = entropy_from_logits(logits, temp) if return_entropy else jnp.zeros_like(lp)
        return lp, ent

    lp, ent = jax.lax.map(one, (h, y, temps))  # [n, B, C] each
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * c)[:, :t]
    return (unchunk(lp), unchunk(ent)) if return_entropy else unchunk(lp)
