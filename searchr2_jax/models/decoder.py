"""One decoder family for Llama, Qwen2 and Qwen3, as pure functions over a parameter pytree.

Parameters (a plain dict; layers stacked on axis 0 and scanned):

    embed        [V, D]
    layers/attn_norm [L, D]        layers/mlp_norm [L, D]
    layers/wq    [L, D, H*hd]      layers/bq [L, H*hd]    (attention_bias: Qwen2, or Llama/Qwen3 configs)
    layers/wk    [L, D, K*hd]      layers/bk [L, K*hd]
    layers/wv    [L, D, K*hd]      layers/bv [L, K*hd]
    layers/wo    [L, H*hd, D]      layers/bo [L, D]       (cfg.out_bias: attention_bias outside Qwen2)
    layers/q_norm [L, hd]          layers/k_norm [L, hd]   (qk_norm: Qwen3)
    layers/w_gate [L, D, F]  layers/w_up [L, D, F]  layers/w_down [L, F, D]
    layers/b_gate [L, F]     layers/b_up [L, F]     layers/b_down [L, D]   (mlp_bias: Llama configs)
    final_norm   [D]
    lm_head      [D, V]            (untied embeddings only)
    value_head   {w: [D], b: []}   (critic only)

A bias is named after its weight (`wq` -> `bq`, `w_up` -> `b_up`) and exists only where the config asks for it, so
configs without biases keep the same pytree.

Generation may take the layers' matrices per layer instead (`per_layer_weights`, read through `Picked` like the KV
cache's per-layer buffers); every other use takes the stacked form.

RoPE keeps HF's rotate-half layout, so HF safetensors load with a transpose and no q/k permutation.
Every function takes the static `DecoderConfig` first; jit them with `static_argnums=0` (or close over the config).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from searchr2_jax.models import kv_cache as kvc
from searchr2_jax.models import sharding
from searchr2_jax.models.config import DecoderConfig

MAX_QUERY_BLOCKS = 16  # see causal_blocks
NEG_INF = -1e30  # finite, so fully masked (padding) rows give uniform attention instead of NaN


class Packing(NamedTuple):
    """Several sequences in one row, for a full (uncached) pass. Token q reads key k <= q iff both have the same
    segment id, or k lies in q's shared range [shared_start[q], shared_end[q]) of row indices: a branch that
    continues a prefix of another sequence in the row (a refiner follow-up after a discarded draft) reads that
    prefix in place instead of repeating it, at positions that continue the prefix's. With empty shared ranges this
    is plain sequence packing."""

    positions: jax.Array  # [B, T] int32
    segment_ids: jax.Array  # [B, T] int32
    shared_start: jax.Array  # [B, T] int32
    shared_end: jax.Array  # [B, T] int32


# ------------------------------------------------------------------------------------------------ init


def init_params(cfg: DecoderConfig, rng: jax.Array, std: float = 0.02) -> dict:
    d, f, hd, L = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_layers
    qd, kd = cfg.num_heads * hd, cfg.num_kv_heads * hd
    dt = cfg.jnp_param_dtype
    keys = iter(jax.random.split(rng, 16))

    def normal(shape):
        return (std * jax.random.normal(next(keys), shape, jnp.float32)).astype(dt)

    layers = {
        "attn_norm": jnp.ones((L, d), dt),
        "mlp_norm": jnp.ones((L, d), dt),
        "wq": normal((L, d, qd)),
        "wk": normal((L, d, kd)),
        "wv": normal((L, d, kd)),
        "wo": normal((L, qd, d)),
        "w_gate": normal((L, d, f)),
        "w_up": normal((L, d, f)),
        "w_down": normal((L, f, d)),
    }
    if cfg.attention_bias:
        layers.update(bq=normal((L, qd)), bk=normal((L, kd)), bv=normal((L, kd)))
    if cfg.out_bias:
        layers.update(bo=normal((L, d)))
    if cfg.mlp_bias:
        layers.update(b_gate=normal((L, f)), b_up=normal((L, f)), b_down=normal((L, d)))
    if cfg.qk_norm:
        layers.update(q_norm=jnp.ones((L, hd), dt), k_norm=jnp.ones((L, hd), dt))
    params = {"embed": normal((cfg.vocab_size, d)), "layers": layers, "final_norm": jnp.ones((d,), dt)}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = normal((d, cfg.vocab_size))
    if cfg.value_head:
        params["value_head"] = {"w": jnp.zeros((d,), dt), "b": jnp.zeros((), dt)}
    return params


# ------------------------------------------------------------------------------------------------ pieces


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    # As HF: normalize in f32, cast back, then scale.
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w.astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(cfg: DecoderConfig) -> np.ndarray:
    """Inverse frequencies (numpy, static), with llama3-style scaling when configured."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    s = cfg.rope_scaling_dict
    if s:
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """x: [B, T, heads, hd]; positions: [B, T]. HF rotate-half convention."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
    cos = jnp.cos(freqs)[:, :, None, :]
    sin = jnp.sin(freqs)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Picked(NamedTuple):
    """Layer `index`'s array of per-layer `buffers` (the KV cache's layout, see `kv_cache`), as an operand of
    `attention`: each product picks its buffer by `lax.switch`, so the buffer is read where it lies. A slice of a
    stacked [L, ...] buffer would be copied out by XLA:CPU before every dot."""

    buffers: tuple
    index: jax.Array

    @property
    def dtype(self):
        return self.buffers[0].dtype


def per_layer_weights(cfg: DecoderConfig, params: dict) -> dict:
    """`params` with each layer matrix [L, ...] split into a tuple of L arrays (in the compute dtype), for the cached
    path of `forward_hidden` (generation). XLA:CPU reads a scanned layer's slice of a stacked weight slower than a
    buffer of its own, which shows in every decode step. One copy of the weights, made once per rollout; the vectors
    (norms, biases) stay stacked."""
    layers = {k: tuple(w[i].astype(cfg.jnp_dtype) for i in range(w.shape[0])) if w.ndim == 3 else w
              for k, w in params["layers"].items()}
    return dict(params, layers=layers)


def _product(spec: str, x: jax.Array, y, **kw) -> jax.Array:
    """`jnp.einsum(spec, x, y)`, where `y` may be `Picked` (one switch branch per layer, each a single dot)."""
    if not isinstance(y, Picked):
        return jnp.einsum(spec, x, y, **kw)
    branches = [functools.partial(lambda a, x: jnp.einsum(spec, x, a, **kw), a) for a in y.buffers]
    return jax.lax.switch(y.index, branches, x)


def attention(q, blocks, cfg: DecoderConfig):
    """q [B,T,H,hd]; `blocks`: (k, v, mask [B,T|1,S] bool, transposed) -> [B,T,H*hd]. GQA without repeating k/v.

    Values are [B,K,S,hd]; keys too, or [B,K,hd,S] where `transposed` (the KV cache's layout, see `kv_cache`); either
    may be `Picked` from per-layer buffers.
    One softmax spans every block: the cached path passes the cache and the new chunk as two blocks, so the cache is
    read where it lies and never concatenated with the chunk (a copy of the whole cache per layer and token).
    Keys are heads-first and a kv head's g query heads are merged with time into one [g*T, hd] operand, so both
    products are plain batched matmuls over (B, K): on CPU this runs 1.6-1.8x faster (forward and backward) than
    contracting 5-D operands with time in the middle.
    """
    b, t, h, hd = q.shape
    kh = cfg.num_kv_heads
    g = h // kh
    q = q.reshape(b, t, kh, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, hd)
    scores = []
    for k, v, mask, transposed in blocks:
        spec = "bkqd,bkds->bkqs" if transposed else "bkqd,bksd->bkqs"
        s = _product(spec, q, k, preferred_element_type=jnp.float32) / math.sqrt(hd)
        scores.append(jnp.where(mask[:, None, None, :, :], s.reshape(b, kh, g, t, -1), NEG_INF))
    if len(scores) == 1:  # training and full passes: XLA:CPU differentiates its own softmax faster (train MFU 0.56 vs 0.52)
        probs = [jax.nn.softmax(scores[0], axis=-1)]
    else:
        top = functools.reduce(jnp.maximum, [s.max(axis=-1, keepdims=True) for s in scores])
        probs = [jnp.exp(s - top) for s in scores]
        denom = sum(p.sum(axis=-1, keepdims=True) for p in probs)
        probs = [p / denom for p in probs]
    out = sum(_product("bkqs,bksd->bkqd", p.astype(v.dtype).reshape(b, kh, g * t, -1), v)
              for p, (_, v, _, _) in zip(probs, blocks))  # [B, K, g*T, hd]
    return out.reshape(b, kh, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h * hd)


def causal_blocks(q, k, v, mask, cfg: DecoderConfig):
    """A full pass's attention (q [B,T,H,hd], heads-first k and v [B,K,T,hd], mask [B,T,T]) -> [B,T,H*hd], as
    `attention` over query blocks of `cfg.attention_block` positions, each scoring only the keys before its own end.
    Every key past a block's end is causally masked, so a row computes about half of its T x T scores, and the
    result is exact for every query that has a key to read. A query with none (padding) averages its block's keys
    instead of all of them; no valid token reads it. Long rows take blocks of a multiple of `attention_block`, at
    most MAX_QUERY_BLOCKS of them: each block is a program of its own to compile, and n blocks compute (n + 1) / 2n
    of the scores, 17/32 at 16 against a limit of one half."""
    blocks = query_blocks(q.shape[1], cfg.attention_block)
    if len(blocks) == 1:
        return attention(q, [(k, v, mask, False)], cfg)
    return jnp.concatenate([attention(q[:, i:j], [(k[:, :, :j], v[:, :, :j], mask[:, i:j, :j], False)], cfg)
                            for i, j in blocks], axis=1)


def query_blocks(t: int, block: int) -> list[tuple[int, int]]:
    """The [start, end) query blocks `causal_blocks` splits a row of `t` positions into (see there)."""
    if block > 0:
        block *= -(-t // (MAX_QUERY_BLOCKS * block))
    if block <= 0 or block >= t:
        return [(0, t)]
    return [(i, min(i + block, t)) for i in range(0, t, block)]


def heads_first(x: jax.Array) -> jax.Array:
    """[B, S, K, hd] -> [B, K, S, hd]: the layout of the KV cache and of `attention`'s keys and values."""
    return x.transpose(0, 2, 1, 3)


def _layer(cfg: DecoderConfig, inv_freq, h, p, positions, attend):
    """One pre-norm block; returns (h, (k, v)) with this chunk's keys and values [B, T, K, hd].
    `attend(q, k, v) -> [B, T, H*hd]` decides what the queries attend to (see `attention`)."""
    b, t, d = h.shape
    dt = cfg.jnp_dtype
    p = {k: w if isinstance(w, Picked) else w.astype(dt) for k, w in p.items()}  # Picked: cast by per_layer_weights

    def linear(x, w: str):  # HF's nn.Linear: weight `w...` and, where the config has one, its bias `b...`
        y = _product("nd,df->nf", x, p[w]) if isinstance(p[w], Picked) else x @ p[w]
        bias = "b" + w[1:]
        return y + p[bias] if bias in p else y

    # Projections on [B*T, D]: XLA:CPU's gradient of a 3-D activation times a 2-D weight is ~1.7x slower.
    x = rms_norm(h, p["attn_norm"], cfg.rms_norm_eps).reshape(b * t, d)
    q, k, v = linear(x, "wq"), linear(x, "wk"), linear(x, "wv")
    q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    h = h + linear(attend(q, k, v).reshape(b * t, -1), "wo").reshape(b, t, d)
    x = rms_norm(h, p["mlp_norm"], cfg.rms_norm_eps).reshape(b * t, d)
    h = h + linear(jax.nn.silu(linear(x, "w_gate")) * linear(x, "w_up"), "w_down").reshape(b, t, d)
    return h, (k, v)


# ------------------------------------------------------------------------------------------------ forward


def forward_hidden(
    cfg: DecoderConfig,
    params: dict,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    mask: jax.Array | None = None,
    cache: kvc.KVCache | None = None,
    packing: Packing | None = None,
    mesh: jax.sharding.Mesh | None = None,
):
    """Final hidden states [B, T, D] (after the final norm) and the updated cache.

    Without a cache: a full causal pass; `mask` [B, T] marks valid tokens (any padding side), `positions` default to
    the running count of valid tokens; `packing` gives them, and restricts attention to segments and shared prefixes.
    With `mesh`, each layer's hidden states keep the batch split over data x fsdp (`sharding.batch_spec`): left to
    itself, XLA follows the FSDP weights and splits them along the model dimension instead, so every device holds
    every row's activations and attention scores (a Qwen2.5-7B train step on 64 devices: 308 GB a device, 78 GB
    with this).
    With a cache: `tokens` is a chunk appended at each row's `cache.lengths`; `mask` must mark a prefix of the chunk
    (right padding); positions are the cache indices unless given.
    """
    b, t = tokens.shape
    mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
    inv_freq = rope_inv_freq(cfg)
    h = params["embed"].astype(cfg.jnp_dtype)[tokens]

    if cache is None:
        if any(isinstance(w, tuple) for w in params["layers"].values()):
            raise ValueError("per_layer_weights serve the cached path (generation); a full pass takes stacked layers")
        if packing is not None:
            positions = packing.positions
        elif positions is None:
            positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        idx = jnp.arange(t)
        attn_mask = (idx[None, :, None] >= idx[None, None, :]) & mask[:, None, :]
        if packing is not None:
            seg = packing.segment_ids
            key = idx[None, None, :]
            attn_mask &= ((seg[:, :, None] == seg[:, None, :])
                          | ((key >= packing.shared_start[:, :, None]) & (key < packing.shared_end[:, :, None])))

        keep_rows = lambda x: x  # noqa: E731
        if mesh is not None:
            keep_rows = lambda x: jax.lax.with_sharding_constraint(  # noqa: E731
                x, jax.sharding.NamedSharding(mesh, sharding.batch_spec(mesh, x.shape)))

        def body(h, p):
            attend = lambda q, k, v: causal_blocks(q, heads_first(k), heads_first(v), attn_mask, cfg)
            return keep_rows(_layer(cfg, inv_freq, keep_rows(h), p, positions, attend)[0]), None

        if cfg.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        h, _ = jax.lax.scan(body, h, params["layers"])
        return rms_norm(h, params["final_norm"], cfg.rms_norm_eps), None

    cap = cache.capacity
    widx = kvc.write_indices(cache.lengths, mask, cap)  # [B, T]
    n_valid = mask.sum(axis=1).astype(jnp.int32)
    if positions is None:
        positions = cache.lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    # Queries see the cache's valid prefix and, causally, the chunk's own valid tokens.
    cache_mask = jnp.arange(cap)[None, None, :] < cache.lengths[:, None, None]  # [B, 1, S]
    idx = jnp.arange(t)
    chunk_mask = (idx[None, :, None] >= idx[None, None, :]) & mask[:, None, :]  # [B, T, T]

    stacked = {k: w for k, w in params["layers"].items() if not isinstance(w, tuple)}
    split = {k: w for k, w in params["layers"].items() if isinstance(w, tuple)}  # see per_layer_weights

    def body(h, xs):
        p, layer = xs  # the scan carries no cache: layer l's buffers are picked in place, the chunk written after
        p = dict(p, **{k: Picked(w, layer) for k, w in split.items()})

        def attend(q, k, v):
            cached = (Picked(cache.k, layer), Picked(cache.v, layer), cache_mask, True)
            return attention(q, [cached, (heads_first(k), heads_first(v), chunk_mask, False)], cfg)

        return _layer(cfg, inv_freq, h, p, positions, attend)

    h, (k_new, v_new) = jax.lax.scan(body, h, (stacked, jnp.arange(cfg.num_layers)))
    new_cache = kvc.write(cache, k_new, v_new, widx, n_valid)
    return rms_norm(h, params["final_norm"], cfg.rms_norm_eps), new_cache


def lm_logits(cfg: DecoderConfig, params: dict, hidden: jax.Array) -> jax.Array:
    """fp32 logits over the full embedding rows (never resized to a tokenizer's vocabulary)."""
    w = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    # On [N, D] rows: XLA:CPU differentiates a 2-D matmul much faster than a 3-D one (see _layer).
    flat = hidden.reshape(-1, hidden.shape[-1]).astype(cfg.jnp_dtype)
    logits = jnp.dot(flat, w.astype(cfg.jnp_dtype), preferred_element_type=jnp.float32)
    return logits.reshape(*hidden.shape[:-1], w.shape[-1])


def values(cfg: DecoderConfig, params: dict, hidden: jax.Array) -> jax.Array:
    """Critic values [B, T] from the value head on the shared trunk."""
    vh = params["value_head"]
    return jnp.dot(hidden.astype(jnp.float32), vh["w"].astype(jnp.float32)) + vh["b"].astype(jnp.float32)


def apply(cfg: DecoderConfig, params: dict, tokens, positions=None, mask=None, cache=None, packing=None):
    """`(logits [B, T, V] fp32, cache)`: the whole model, as the issue's `apply(params, tokens, ...)` contract."""
    hidden, cache = forward_hidden(cfg, params, tokens, positions, mask, cache, packing)
    return lm_logits(cfg, params, hidden), cache


def align_left(tokens: jax.Array, mask: jax.Array):
    """Moves each row's valid tokens to the front (stable), so a left-padded batch can be written into the cache."""
    order = jnp.argsort(~mask.astype(bool), axis=1, stable=True)
    return jnp.take_along_axis(tokens, order, axis=1), jnp.take_along_axis(mask, order, axis=1)


def prefill(cfg: DecoderConfig, params: dict, tokens, mask, cache: kvc.KVCache):
    """Writes a left- or right-padded batch into the cache; returns (fp32 logits of each row's last token, cache)."""
    tokens, mask = align_left(tokens, mask)
    hidden, cache = forward_hidden(cfg, params, tokens, mask=mask, cache=cache)
    last = jnp.maximum(mask.sum(axis=1) - 1, 0)
    h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return lm_logits(cfg, params, h_last), cache
