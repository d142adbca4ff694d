"""KV cache with a write position per row, one buffer per layer.

Rows of a search-agent batch receive observations of different lengths at different times, so each row keeps its own
`lengths[b]`: the number of valid cache slots, which are always the contiguous prefix `[0, lengths[b])`. A chunk of T
tokens (a prompt, one decoded token, or a retrieved passage block) is written at `[lengths[b], lengths[b] + n_b)`
where `n_b` is the row's number of valid chunk tokens; the cache index of a token is also its RoPE position.
Writes past the capacity are dropped (never clamped onto valid slots); callers size the cache from their budgets.

Layout: a tuple of per-layer arrays, keys transposed (time last), values time-major:

    k[l]  [batch, kv_heads, head_dim, capacity]
    v[l]  [batch, kv_heads, capacity, head_dim]

Per-layer buffers: the decoder's layer scan picks layer l's buffer by `lax.switch` (see `decoder.forward_hidden`), so
attention reads it where it lies. A stacked [L, ...] cache is read through a dynamic slice, which XLA:CPU copies out
before every dot.
Transposed keys: a decode step's q·k then reduces over head_dim as a non-minor axis, which XLA:CPU vectorizes along
time. p·v reduces over time either way.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from searchr2_jax.models.config import DecoderConfig


class KVCache(NamedTuple):
    k: tuple[jax.Array, ...]  # per layer [B, K, hd, S]
    v: tuple[jax.Array, ...]  # per layer [B, K, S, hd]
    lengths: jax.Array  # [batch] int32: valid prefix of each row

    @property
    def capacity(self) -> int:
        return self.v[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.v[0].shape[0]


def init_cache(cfg: DecoderConfig, batch_size: int, capacity: int, dtype=None) -> KVCache:
    dtype = dtype or cfg.jnp_dtype
    k_shape = (batch_size, cfg.num_kv_heads, cfg.head_dim, capacity)
    v_shape = (batch_size, cfg.num_kv_heads, capacity, cfg.head_dim)
    layers = range(cfg.num_layers)
    return KVCache(tuple(jnp.zeros(k_shape, dtype) for _ in layers), tuple(jnp.zeros(v_shape, dtype) for _ in layers),
                   jnp.zeros((batch_size,), jnp.int32))


def take(cache: KVCache, rows: jax.Array | None, window: int) -> KVCache:
    """Rows `rows` [n] (None: all) of a cache, cut to its first `window` positions (a copy XLA fuses)."""
    if rows is None:
        return KVCache(tuple(k[..., :window] for k in cache.k), tuple(v[..., :window, :] for v in cache.v),
                       cache.lengths)
    return KVCache(tuple(k[rows, :, :, :window] for k in cache.k), tuple(v[rows, :, :window] for v in cache.v),
                   cache.lengths[rows])


def put(cache: KVCache, rows: jax.Array | None, sub: KVCache, start: jax.Array, span: int) -> KVCache:
    """Writes back what a call on a `take` added: each row's positions `[start[r], sub.lengths[r])`, at most `span`
    (static) of them, in place (donate the cache); row ids out of range are dropped. The rest of the window is
    unchanged: writing it back too would cost as much again as cutting it out."""
    if rows is None and sub.capacity == cache.capacity:
        return sub  # the call ran on the cache itself
    n = sub.lengths.shape[0]
    rows = jnp.arange(n) if rows is None else rows
    idx = start[:, None] + jnp.arange(span, dtype=jnp.int32)[None, :]  # [n, span]
    keep = (idx < sub.lengths[:, None]) & (idx < sub.capacity)
    src = jnp.minimum(idx, sub.capacity - 1)
    dst = jnp.where(keep, idx, cache.capacity)  # out of range: dropped
    r, i = rows[:, None], jnp.arange(n)[:, None]
    # Advanced indices split by slices put their dims first: both sides are laid out [n, span, K, hd].
    k = tuple(x.at[r, :, :, dst].set(s[i, :, :, src], mode="drop") for x, s in zip(cache.k, sub.k))
    v = tuple(x.at[r, :, dst].set(s[i, :, src], mode="drop") for x, s in zip(cache.v, sub.v))
    return KVCache(k, v, cache.lengths.at[rows].set(sub.lengths, mode="drop"))


def write_indices(lengths: jax.Array, valid: jax.Array, capacity: int) -> jax.Array:
    """Cache index of every chunk token; invalid tokens get `capacity` (out of range, so the scatter drops them)."""
    t = valid.shape[1]
    idx = lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    return jnp.where(valid, idx, capacity)


def write(cache: KVCache, k_new: jax.Array, v_new: jax.Array, idx: jax.Array, n_valid: jax.Array) -> KVCache:
    """Scatters every layer's chunk k/v [L, B, T, K, hd] into the cache at row-wise indices [B, T] (in place when the
    cache is donated); the rows' lengths grow by `n_valid` [B]."""
    b = jnp.arange(k_new.shape[1])[:, None]
    # Advanced indices split by slices put their dims first: both updates are laid out [B, T, K, hd].
    k = tuple(x.at[b, :, :, idx].set(new.astype(x.dtype), mode="drop") for x, new in zip(cache.k, k_new))
    v = tuple(x.at[b, :, idx].set(new.astype(x.dtype), mode="drop") for x, new in zip(cache.v, v_new))
    return KVCache(k, v, cache.lengths + n_valid)
