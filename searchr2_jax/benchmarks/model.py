"""Model benchmark: training MFU and decode bandwidth utilization of the SmolLM2-135M shape, in one process.

    python launch/benchmark.py --suite=model --json_out=/tmp/model.json

Every ratio divides by a peak measured in the same process a moment before (a large f32 matmul for FLOP/s, a large
array copy for bytes/s), so shared, noisy machines still give meaningful figures. Each timing is the median of
several calls after a warm-up, each call ended by `block_until_ready`.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from searchr2_jax.models import decoder, kv_cache
from searchr2_jax.models.config import DecoderConfig

# SmolLM2-135M (llama, tied embeddings) with random weights.
SMOLLM2_135M = DecoderConfig(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                             head_dim=64, intermediate_size=1536, rope_theta=100000.0, rms_norm_eps=1e-5,
                             tie_word_embeddings=True, max_position_embeddings=8192)
QUICK = SMOLLM2_135M.replace(num_layers=2, vocab_size=4096)


def _time(fn, *args, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn(*args)` (outputs blocked on), after `warmup` untimed calls (compilation)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _best(fn, *args, repeats: int) -> float:
    """Best (smallest) wall seconds: for peaks, where the machine's noise only ever slows a call down."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


# ------------------------------------------------------------------------------------------------ peaks


def matmul_peak_gflops(n: int, repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    return 2 * n**3 / _best(mm, a, b, repeats=repeats) / 1e9


def copy_bandwidth_gbs(nbytes: int, repeats: int) -> float:
    """Bytes read + written per second by a jitted elementwise pass over an array of `nbytes` (f32)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda x: x * 1.0001)  # x + 0 could be simplified away; a multiply cannot
    return 2 * x.nbytes / _best(f, x, repeats=repeats) / 1e9


def read_bandwidth_gbs(nbytes: int, repeats: int) -> float:
    """Bytes read per second by a jitted sum (no writes): a second, read-only view of the same memory system."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    return x.nbytes / _best(jax.jit(jnp.sum), x, repeats=repeats) / 1e9


# ------------------------------------------------------------------------------------------------ training


def train_flops(cfg: DecoderConfig, batch: int, seq: int) -> float:
    """Model FLOPs of one forward+backward (PaLM appendix B): 6·N·tokens + 12·L·H·hd·T·tokens.

    N counts every parameter (with tied embeddings the embedding is used once, as the LM head's matmul); the
    attention term counts QKᵀ and PV over the full T×T scores, forward (×1) and backward (×2).
    """
    tokens = batch * seq
    return 6 * cfg.num_params() * tokens + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq * tokens


def make_train_fn(cfg: DecoderConfig):
    def loss_fn(params, tokens):
        logits, _ = decoder.apply(cfg, params, tokens[:, :-1])
        # logsumexp - target logit: the same value as log_softmax + gather without a [tokens, V] log-prob array.
        target = jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
        return (jax.nn.logsumexp(logits, axis=-1) - target).mean()

    return jax.jit(jax.value_and_grad(loss_fn))


def bench_train(cfg: DecoderConfig, batch: int, seq: int, repeats: int, peak_fn) -> dict:
    """Median step time, and the median of per-repeat MFUs, each against a matmul peak measured just before it
    (other users of a shared machine come and go; pairing keeps numerator and denominator under the same load)."""
    params = decoder.init_params(cfg, jax.random.key(0))
    # seq + 1 tokens so the model sees exactly `seq` positions and predicts each next one.
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.vocab_size)
    step = make_train_fn(cfg)
    flops = train_flops(cfg, batch, seq)
    jax.block_until_ready(step(params, tokens))  # compile
    times, mfus, peaks = [], [], []
    for _ in range(repeats):
        peaks.append(peak_fn())
        dt = _time(step, params, tokens, repeats=1, warmup=0)
        times.append(dt)
        mfus.append(flops / dt / 1e9 / peaks[-1])
    dt = statistics.median(times)
    return {"train_step_s": dt, "train_tokens_per_s": batch * seq / dt, "train_model_gflops": flops / dt / 1e9,
            "train_mfu": statistics.median(mfus), "matmul_peak_gflops": max(peaks)}


# ------------------------------------------------------------------------------------------------ decoding


def decode_step_bytes(cfg: DecoderConfig, params, batch: int, context: int) -> int:
    """Bytes one cached decode step must read: every parameter once, plus K and V of `context` cached tokens."""
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    itemsize = jnp.dtype(cfg.jnp_dtype).itemsize
    cache_bytes = 2 * cfg.num_layers * batch * context * cfg.num_kv_heads * cfg.head_dim * itemsize
    return param_bytes + cache_bytes


def bench_decode(cfg: DecoderConfig, batch: int, context: int, steps: int, repeats: int) -> dict:
    params = decoder.init_params(cfg, jax.random.key(0))
    prompt = jax.random.randint(jax.random.key(2), (batch, context), 0, cfg.vocab_size)
    cap = context + steps * (repeats + 2)  # room for warm-up and every timed run

    prefill = jax.jit(functools.partial(decoder.prefill, cfg))
    _, cache0 = prefill(params, prompt, jnp.ones_like(prompt, bool), kv_cache.init_cache(cfg, batch, cap))

    @functools.partial(jax.jit, donate_argnums=1)
    def cached_steps(params, cache, token):
        # `steps` single-token steps in one jit (a decode segment), greedy, no host round trip.
        def body(carry, _):
            cache, token = carry
            logits, cache = decoder.apply(cfg, params, token[:, None], cache=cache)
            return (cache, jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)), None

        (cache, token), _ = jax.lax.scan(body, (cache, token), None, length=steps)
        return cache, token

    @jax.jit
    def recompute_step(params, tokens):
        # Without a cache: the full forward over the whole context for each new token.
        logits, _ = decoder.apply(cfg, params, tokens)
        return jnp.argmax(logits[:, -1], axis=-1)

    state = {"cache": cache0, "token": prompt[:, -1]}

    def run_cached():
        state["cache"], state["token"] = cached_steps(params, state["cache"], state["token"])
        return state["token"]

    step_bytes = decode_step_bytes(cfg, params, batch, context + steps)
    jax.block_until_ready(run_cached())  # compile
    # Bandwidths on arrays sized so the traffic equals the step's bytes (the same cache/DRAM regime: this machine's
    # L3 is large), each measured just before the decode segment it is compared with (shared, noisy machine).
    times, utils, strict, copies, reads = [], [], [], [], []
    for _ in range(repeats):
        copies.append(copy_bandwidth_gbs(step_bytes // 2, repeats=3))
        reads.append(read_bandwidth_gbs(step_bytes, repeats=3))
        # The segment's mean context (the cache grows by one token per step): the bytes its steps really must read.
        seg_bytes = decode_step_bytes(cfg, params, batch, int(state["cache"].lengths[0]) + steps // 2)
        dt = _time(run_cached, repeats=1, warmup=0) / steps
        times.append(dt)
        step_bytes = seg_bytes
        utils.append(step_bytes / dt / 1e9 / copies[-1])
        strict.append(step_bytes / dt / 1e9 / max(copies[-1], reads[-1]))
    cached_s = statistics.median(times)
    recompute_s = _time(recompute_step, params, prompt, repeats=max(2, repeats // 2))
    return {
        "decode_step_s": cached_s,
        "decode_tokens_per_s_cached": batch / cached_s,
        "decode_tokens_per_s_recompute": batch / recompute_s,
        "decode_speedup_vs_recompute": recompute_s / cached_s,
        "decode_step_gbytes": step_bytes / 1e9,
        "copy_bandwidth_gbs": max(copies),
        "read_bandwidth_gbs": max(reads),
        # Bytes the step must read per second / copy bandwidth (bytes read + written per second), as specified.
        "decode_bandwidth_utilization": statistics.median(utils),
        # Against the larger of the copy and the read-only bandwidth: the stricter figure.
        "decode_bandwidth_utilization_strict": statistics.median(strict),
    }


# ------------------------------------------------------------------------------------------------ suite


def run(quick: bool = False) -> dict:
    cfg = QUICK if quick else SMOLLM2_135M
    seq, batch = (128, 1) if quick else (512, 2)
    sizes = (512,) if quick else (2048, 3072)
    peak_fn = lambda: max(matmul_peak_gflops(n, repeats=3) for n in sizes)  # noqa: E731
    out = bench_train(cfg, batch, seq, repeats=2 if quick else 5, peak_fn=peak_fn)
    out.update(bench_decode(cfg, batch=8, context=64 if quick else 512, steps=4 if quick else 16,
                            repeats=2 if quick else 5))
    out["train_batch"], out["train_seq"] = batch, seq
    return {k: float(np.round(v, 5)) for k, v in out.items()}
