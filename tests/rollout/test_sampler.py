"""The sampler against full forwards: greedy decoding, chunk appends, stops, and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searchr2_jax.models import decoder
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.rollout import sampler

CFG = DecoderConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                    intermediate_size=48, rope_theta=10000.0)
PARAMS = decoder.init_params(CFG, jax.random.key(3), std=0.3)  # peaked logits: a clear argmax
NEVER = sampler.make_stop_table([([CFG.vocab_size + 5], 0)])  # an id no model emits
GREEDY = sampler.sampling_params(0.0)


def _argmax_continuation(seq, n):
    seq = list(seq)
    for _ in range(n):
        logits, _ = decoder.apply(CFG, PARAMS, jnp.asarray([seq]))
        seq.append(int(jnp.argmax(logits[0, -1])))
    return seq


def _decode(state, stops, sp, max_steps, rng, window=None, rows=None, exit_stops=None):
    sampling = sampler.Sampling(params=sp, stops=stops, rng=rng)
    shape = sampler.SegmentShape(max_steps=max_steps, window=window)
    return sampler.decode_segment(CFG, PARAMS, state, sampling, shape, rows, exit_stops)


def _append(state, chunk, valid, observation: bool, window=None):
    """Appends chunk/valid [n, C] to slots 0..n-1: a prompt (a new job), or an observation (into the response)."""
    n = chunk.shape[0]
    t, f = np.ones(n, bool), np.zeros(n, bool)
    batch = sampler.AppendBatch(rows=np.arange(n, dtype=np.int32), chunk=chunk, valid=valid,
                                reset_cache=f if observation else t, clear_response=f if observation else t,
                                generated=t if observation else f, run=t)
    return sampler.append_rows(CFG, PARAMS, state, batch, window=window)


def _start(prompts, R=16, cap=48):
    state = sampler.init_slots(CFG, len(prompts), cap, R)
    C = max(map(len, prompts))
    chunk = np.zeros((len(prompts), C), np.int32)
    valid = np.zeros((len(prompts), C), bool)
    for i, p in enumerate(prompts):
        chunk[i, :len(p)], valid[i, :len(p)] = p, True
    return _append(state, chunk, valid, observation=False)


@pytest.mark.slow
def test_greedy_equals_stepwise_argmax_of_full_forwards():
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]  # rows at different positions
    state = _start(prompts)
    state, steps = _decode(state, NEVER, GREEDY, 6, jax.random.key(0))
    assert int(steps) == 6
    for b, p in enumerate(prompts):
        assert list(np.asarray(state.tokens[b, :6])) == _argmax_continuation(p, 6)[len(p):]
    # Segments compose: 6 more steps continue exactly where the first segment stopped.
    state, _ = _decode(state, NEVER, GREEDY, 6, jax.random.key(1))
    for b, p in enumerate(prompts):
        assert list(np.asarray(state.tokens[b, :12])) == _argmax_continuation(p, 12)[len(p):]
    np.testing.assert_array_equal(np.asarray(state.loss_mask[:, :12]), 1)


@pytest.mark.slow
def test_observation_chunk_then_decoding_equals_full_forward():
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    state = _start(prompts, R=24)
    state, _ = _decode(state, NEVER, GREEDY, 3, jax.random.key(0))
    obs = [[11, 12, 13, 14, 15], [16, 17]]  # uneven observation lengths, appended as one padded chunk
    chunk = np.zeros((2, 5), np.int32)
    valid = np.zeros((2, 5), bool)
    for i, o in enumerate(obs):
        chunk[i, :len(o)], valid[i, :len(o)] = o, True
    state = _append(state, chunk, valid, observation=True)
    state, _ = _decode(state, NEVER, GREEDY, 4, jax.random.key(0))
    for b, p in enumerate(prompts):
        first = _argmax_continuation(p, 3)[len(p):]
        full = _argmax_continuation(p + first + obs[b], 4)
        n = 3 + len(obs[b]) + 4
        assert list(np.asarray(state.tokens[b, :n])) == full[len(p):]
        # loss mask: generated tokens only, never the observation
        expected = [1] * 3 + [0] * len(obs[b]) + [1] * 4
        assert list(np.asarray(state.loss_mask[b, :n])) == expected
        assert int(state.length[b]) == n


@pytest.mark.slow
def test_stop_sequences_end_rows_with_no_token_after():
    prompt = [1, 2, 3]
    cont = _argmax_continuation(prompt, 8)[3:]
    stop = cont[3:5]  # a two-token stop that greedy decoding reaches after 5 tokens
    stops = sampler.make_stop_table([(stop, 7), ([CFG.vocab_size + 1], 2)])
    state = _start([prompt, [9, 9, 9]])
    state, _ = _decode(state, stops, GREEDY, 20, jax.random.key(0))
    first_hit = next(i for i in range(2, 9) if cont[i - 2:i] == stop)
    assert int(state.length[0]) == first_hit
    assert int(state.status[0]) == sampler.STOP_SEQUENCE and int(state.stop_kind[0]) == 7
    # the other row runs to the response budget
    assert int(state.status[1]) == sampler.STOP_BUDGET and int(state.length[1]) == 16


def test_match_stops_ignores_tokens_before_the_response():
    stops = sampler.make_stop_table([([5, 6], 1)])
    tokens = jnp.asarray([[6, 0, 0], [5, 6, 0]])
    np.testing.assert_array_equal(np.asarray(sampler.match_stops(tokens, jnp.asarray([1, 2]), stops)), [-1, 1])


@pytest.mark.slow
def test_sampling_logprobs_are_full_distribution_and_top_p_narrows():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    sp = sampler.sampling_params(1.0, 0.6)
    draws = [int(sampler.sample_token(logits, jax.random.key(i), sp)[0][0]) for i in range(200)]
    assert set(draws) <= {0, 1}  # 0.5 < 0.6 <= 0.8: the top two
    tok, lp = sampler.sample_token(logits, jax.random.key(0), sampler.sampling_params(1.0, 1.0))
    np.testing.assert_allclose(float(lp[0]), np.log([0.5, 0.3, 0.15, 0.05])[int(tok[0])], rtol=1e-5)
    tok, _ = sampler.sample_token(logits, jax.random.key(0), sampler.sampling_params(0.0, 1.0))
    assert int(tok[0]) == 0


def test_draws_are_jax_random_categorical_and_argmax_first_breaks_ties_like_argmax():
    logits = jax.random.normal(jax.random.key(1), (6, 50)) * 3
    keys = jax.random.split(jax.random.key(2), 6)
    tok, _ = sampler.sample_token(logits, keys, sampler.sampling_params(1.0, 1.0))
    want = jax.vmap(jax.random.categorical)(keys, jax.nn.log_softmax(logits))
    np.testing.assert_array_equal(np.asarray(tok), np.asarray(want))
    ties = jnp.asarray([[0.0, 2.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0], [-jnp.inf, -1.0, -jnp.inf, -1.0]])
    np.testing.assert_array_equal(np.asarray(sampler.argmax_first(ties)), np.asarray(jnp.argmax(ties, axis=-1)))


@pytest.mark.slow
def test_decoding_a_subset_of_slots_equals_decoding_all_and_leaves_the_rest_untouched():
    prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    sp = sampler.sampling_params(1.0)  # sampled, so the per-slot keys are what makes the rows agree
    key = jax.random.key(5)
    full, _ = _decode(_start(prompts), NEVER, sp, 5, key)
    before = jax.device_get(_start(prompts))
    rows = np.asarray([3, 1, 4, 4], np.int32)  # slots 3 and 1, in any order, and two pads (ids >= B)
    sub, _ = _decode(_start(prompts), NEVER, sp, 5, key, 128, rows)
    full, sub = jax.device_get((full, sub))
    for b in (1, 3):
        np.testing.assert_array_equal(sub.tokens[b], full.tokens[b])
        np.testing.assert_allclose(sub.logprobs[b], full.logprobs[b], rtol=1e-5)
        assert sub.cache.lengths[b] == full.cache.lengths[b] and sub.status[b] == full.status[b]
        n = int(full.cache.lengths[b])
        np.testing.assert_allclose(np.stack(sub.cache.k)[:, b, ..., :n], np.stack(full.cache.k)[:, b, ..., :n],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.stack(sub.cache.v)[:, b, :, :n], np.stack(full.cache.v)[:, b, :, :n],
                                   rtol=1e-5, atol=1e-6)
    for b in (0, 2):  # not decoded: exactly as they were
        for name in ("tokens", "length", "status", "next_logits"):
            np.testing.assert_array_equal(getattr(sub, name)[b], getattr(before, name)[b])
        np.testing.assert_array_equal(np.stack(sub.cache.k)[:, b], np.stack(before.cache.k)[:, b])
        np.testing.assert_array_equal(np.stack(sub.cache.v)[:, b], np.stack(before.cache.v)[:, b])
        assert sub.cache.lengths[b] == before.cache.lengths[b]


@pytest.mark.slow
def test_segment_ends_once_enough_rows_have_stopped():
    prompt = [1, 2, 3]
    cont = _argmax_continuation(prompt, 4)[3:]
    stops = sampler.make_stop_table([(cont[1:2], 1), ([CFG.vocab_size + 1], 2)])  # row 0 stops after 2 tokens
    state = _start([prompt, [9, 9, 9]])
    state, steps = _decode(state, stops, GREEDY, 10, jax.random.key(0), exit_stops=np.int32(1))
    assert int(steps) == cont.index(cont[1]) + 1 == int(state.length[0])
    assert int(state.status[0]) == sampler.STOP_SEQUENCE and int(state.status[1]) == sampler.RUNNING
    state, steps = _decode(state, stops, GREEDY, 10, jax.random.key(0))
    assert int(steps) == 10 and int(state.length[1]) == 12  # without exit_stops: the full segment


@pytest.mark.slow
def test_windowed_append_equals_an_append_over_the_whole_cache():
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    obs = np.asarray([[11, 12, 13], [16, 17, 0]], np.int32)
    valid = obs > 0
    whole = _append(_start(prompts, cap=300), obs, valid, observation=True)
    windowed = _append(_start(prompts, cap=300), obs, valid, observation=True, window=128)
    whole, windowed = jax.device_get((whole, windowed))
    np.testing.assert_allclose(windowed.next_logits, whole.next_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(windowed.cache.lengths, whole.cache.lengths)
    np.testing.assert_allclose(np.stack(windowed.cache.k), np.stack(whole.cache.k), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack(windowed.cache.v), np.stack(whole.cache.v), rtol=1e-5, atol=1e-6)
