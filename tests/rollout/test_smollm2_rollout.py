"""End to end with the real SmolLM2-135M-Instruct: chat-template prompts, BM25 over a tiny synthetic world, the
Meta-Refiner on (forced to cut, so the cut-and-regenerate path runs with a real BPE tokenizer). Structure only:
a 135M model is not expected to answer these questions."""

import jax
import numpy as np
import pytest

from searchr2_jax.benchmarks.engines import ForcedRefiner
from searchr2_jax.data import synthetic
from searchr2_jax.eval.evaluate import make_jobs
from searchr2_jax.retrieval.retriever import build_retriever
from searchr2_jax.config import default_retrieval_config
from searchr2_jax.rollout import refiner as refiner_lib
from searchr2_jax.rollout import rollout as rollout_lib
from searchr2_jax.rollout import types as T
from searchr2_jax.rollout.render import render_trajectory
from searchr2_jax.config import default_rollout_config, default_refiner_config

from ..models import smollm2

pytestmark = pytest.mark.slow  # ~25 s on 2 CPU cores: load, compile and decode a 135M model


@pytest.fixture(scope="module")
def rollout():
    _, cfg, params, tok = smollm2.load()
    world = synthetic.generate_world(synthetic.WorldConfig.tiny(num_questions=60))
    rcfg = default_retrieval_config()
    rcfg.backend = "bm25"
    retriever = build_retriever(rcfg, corpus=world.corpus())
    config = default_rollout_config()
    config.update(dict(slots=4, max_turns=3, topk=2, max_prompt_tokens=256, max_response_tokens=64,
                       max_obs_tokens=32, segment_steps=32, temperature=1.0))
    rc = default_refiner_config()
    rc.update(dict(chat=True, max_revisions=1))
    refiner = ForcedRefiner(refiner_lib.MetaRefiner(cfg, tok, rc, max_turns=config.max_turns), rate=1.0)
    engine = rollout_lib.RolloutEngine(cfg, tok, retriever, config, refiner)
    examples = world.splits["dev"][:3]
    jobs = make_jobs(examples, tok, chat=True)
    out = engine.run(params, jobs, jax.random.key(0), use_refiner=True)
    return tok, world, examples, out


def test_statuses_turns_and_masks_are_consistent(rollout):
    tok, world, examples, out = rollout
    corpus_ids = {str(d["id"]) for d in world.corpus()}
    assert [t.job.question for t in out.trajectories] == [ex.question for ex in examples]
    for t in out.trajectories:
        assert t.job.prompt_ids[:3] == [1, 9690, 198]  # <|im_start|>system\n: the chat template was applied
        assert t.status in T.STATUSES and t.status not in (T.PROMPT_TOO_LONG, T.RETRIEVAL_ERROR), t.status
        assert 1 <= len(t.turns) <= 3 and 0 < len(t.response_ids) <= 64
        # turns tile the response: [start, end) generated, then [end, obs_end) from tools
        pos = 0
        mask = np.zeros(len(t.response_ids), np.int8)
        for turn in t.turns:
            assert turn.start == pos and turn.start < turn.end <= turn.obs_end
            mask[turn.start:turn.end] = 1
            pos = turn.obs_end
            if turn.action == "search":
                assert turn.query is not None and {p.id for p in turn.passages} <= corpus_ids
                if turn.obs_end > turn.end:
                    obs = tok.decode(list(t.response_ids[turn.end:turn.obs_end]), skip_special_tokens=False)
                    assert obs.startswith("\n\n<information>")
        assert pos == len(t.response_ids)
        np.testing.assert_array_equal(t.loss_mask, mask)  # the loss mask covers exactly the generated tokens
        assert np.all(t.logprobs[mask == 1] <= 0) and np.all(np.isfinite(t.logprobs))
        assert np.all(t.logprobs[mask == 0] == 0)
        if t.status == T.ANSWERED:
            assert t.turns[-1].action == "answer" and t.answer is not None


def test_the_refiner_judged_and_cut_every_trajectory(rollout):
    _, _, _, out = rollout
    for t in out.trajectories:
        assert len(t.meta_actions) == 1 and t.cut_steps == [t.meta_actions[0].choice]
        meta = t.meta_actions[0]
        assert meta.forced and 1 <= meta.choice < len(meta.scores)  # scores of "0".."T", T turns judged
        assert all(np.isfinite(s) and s <= 0 for s in meta.scores)  # real log-probs of "0".."T"
        assert len(t.kept_tokens) == 1 and 0 <= t.kept_tokens[0] <= len(t.response_ids)
        if t.kept_tokens[0] > 0:  # the kept prefix ends where a kept turn's tool output ends
            assert t.kept_tokens[0] in {turn.obs_end for turn in t.turns}
    assert out.metrics["rollout/revision_rate"] == 1.0
    assert out.metrics["rollout/trajectories"] == 3 and out.metrics["rollout/tokens_generated"] > 0


def test_rendering_is_readable(rollout):
    tok, _, examples, out = rollout
    for t, ex in zip(out.trajectories, examples):
        text = render_trajectory(t, tok)
        print(text)
        assert f"Q: {ex.question}" in text and f"status {t.status}" in text
        assert "-- step 1 [" in text and "-- refiner #1: revise from step" in text
        assert text.splitlines()[-1].startswith(f"-- {len(t.response_ids)} response tokens")
