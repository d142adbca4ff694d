"""Per-token log-probabilities and entropy in fp32: the one definition the sampler and the trainer share."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log softmax(logits / T)[target], fp32. logits [..., V], targets [...] -> [...].

    Written as target logit minus logsumexp, so no [..., V] log-softmax is materialized.
    """
    z = logits.astype(jnp.float32) / temperature
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(z, axis=-1)


def entropy_from_logits(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Entropy of softmax(logits / T) per position, fp32. [..., V] -> [...]."""
    z = logits.astype(jnp.float32) / temperature
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
