"""KV cache with a write position per row.

Rows of a search-agent batch receive observations of different lengths at different times, so each row keeps its own
`lengths[b]`: the number of valid cache slots, which are always the contiguous prefix `[0, lengths[b])`. A chunk of T
tokens (a prompt, one decoded token, or a retrieved passage block) is written at `[lengths[b], lengths[b] + n_b)`
where `n_b` is the row's number of valid chunk tokens; the cache index of a token is also its RoPE position.
Writes past the capacity are dropped (never clamped onto valid slots); callers size the cache from their budgets.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from searchr2_jax.models.config import DecoderConfig


class KVCache(NamedTuple):
    k: jax.Array  # [layers, batch, kv_heads, capacity, head_dim]: heads-first, as attention reads it
    v: jax.Array  # [layers, batch, kv_heads, capacity, head_dim]
    lengths: jax.Array  # [batch] int32: valid prefix of each row

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]


def init_cache(cfg: DecoderConfig, batch_size: int, capacity: int, dtype=None) -> KVCache:
    dtype = dtype or cfg.jnp_dtype
    shape = (cfg.num_layers, batch_size, cfg.num_kv_heads, capacity, cfg.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch_size,), jnp.int32))


def write_indices(lengths: jax.Array, valid: jax.Array, capacity: int) -> jax.Array:
    """Cache index of every chunk token; invalid tokens get `capacity` (out of range, so the scatter drops them)."""
    t = valid.shape[1]
    idx = lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    return jnp.where(valid, idx, capacity)


def write(cache_kv: jax.Array, new: jax.Array, idx: jax.Array) -> jax.Array:
    """Scatters every layer's chunk `new` [L, B, T, K, hd] into the cache [L, B, K, S, hd] at row-wise indices [B, T]
    in one update (in place when the cache is donated)."""
    b = jnp.arange(new.shape[1])[:, None]
    # Advanced indices split by a slice put their dims first: the update is laid out [B, T, L, K, hd].
    return cache_kv.at[:, b, :, idx].set(new.transpose(1, 2, 0, 3, 4).astype(cache_kv.dtype), mode="drop")


def reset_rows(cache: KVCache, rows: jax.Array, new_lengths: jax.Array | None = None) -> KVCache:
    """Truncates the rows where `rows` is True to `new_lengths` (default 0): their later slots become free.

    Used by the Meta-Refiner's cut: a row keeps its valid prefix and the Actor regenerates from there. The slots past
    the new length are simply overwritten by later writes, so nothing is cleared.
    """
    target = jnp.zeros_like(cache.lengths) if new_lengths is None else new_lengths.astype(jnp.int32)
    return cache._replace(lengths=jnp.where(rows, jnp.minimum(target, cache.lengths), cache.lengths))
