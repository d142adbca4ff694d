"""The Meta-Refiner's scoring: candidates split into several tokens are scored, recorded and trained per token."""

import jax
import numpy as np
import pytest

from searchr2_jax.models import decoder
from searchr2_jax.models.config import DecoderConfig
from searchr2_jax.rollout import refiner as refiner_lib
from searchr2_jax.rollout import types as T
from searchr2_jax.config import default_refiner_config

from . import scripted

TOK = scripted.tokenizer()


@pytest.mark.slow
def test_multi_token_candidates_are_scored_token_by_token_and_batched_that_way():
    cfg = DecoderConfig(vocab_size=len(TOK), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                        head_dim=16, intermediate_size=64, tie_word_embeddings=True)
    params = decoder.init_params(cfg, jax.random.key(0), std=0.5)
    rc = default_refiner_config()
    ref = refiner_lib.MetaRefiner(cfg, TOK, rc, max_turns=3)
    # A tokenizer that splits every integer in two: "j" -> [id(j), 7].
    ref.candidate_ids = [[c[0], 7] for c in ref.candidate_ids]
    ref.max_candidate_len = 2
    prompts, steps = [[3, 4, 5, 6], [5, 6]], [3, 2]
    scores, tok = ref.score(params, prompts, steps, per_token=True)
    assert tok.shape == (2, 4, 2)
    for i, (p, t) in enumerate(zip(prompts, steps)):
        for j in range(t + 1):
            seq = np.asarray([p + ref.candidate_ids[j]], np.int32)
            logp = np.asarray(jax.nn.log_softmax(decoder.apply(cfg, params, seq)[0], -1))[0]
            want = [logp[len(p) - 1 + k, ref.candidate_ids[j][k]] for k in range(2)]
            np.testing.assert_allclose(tok[i, j], want, atol=1e-5)
            # A sum of two float32 log-probs near -9: XLA:CPU's threads may add them in another order.
            np.testing.assert_allclose(scores[i, j], sum(want), rtol=1e-5, atol=1e-5)
        assert np.all(np.isneginf(scores[i, t + 1:]))
    np.testing.assert_allclose(ref.score(params, prompts, steps), scores)  # the sums alone, as before
    rng = [np.random.default_rng(0)] * 2
    metas = [d.meta for d in ref.decisions(prompts, steps, scores, rng, tok)]
    for i, m in enumerate(metas):
        np.testing.assert_allclose(m.action_logprobs, tok[i, m.choice], atol=0)
    trajs = [T.Trajectory(i, T.Job(prompt_ids=[1, 2]), np.asarray([3], np.int32), np.zeros(1, np.float32),
                          np.ones(1, np.int8), [], T.ANSWERED,
                          meta_actions=[m]) for i, m in enumerate(metas)]
    b = T.to_batch(trajs)
    for j, m in enumerate(metas):
        p = len(m.prompt_ids)
        np.testing.assert_array_equal(b.meta_rows.mask[j, p:p + 2], [1, 1])
        np.testing.assert_allclose(b.meta_rows.logprobs[j, p:p + 2], m.action_logprobs)
    packed = T.to_batch(trajs, pack_meta=True)
    for i, m in enumerate(metas):
        np.testing.assert_array_equal(np.flatnonzero(packed.meta_mask[i]), packed.lengths[i] - 2 + np.arange(2))
        np.testing.assert_allclose(packed.logprobs[i, packed.lengths[i] - 2:packed.lengths[i]], m.action_logprobs)
