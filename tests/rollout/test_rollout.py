"""Multi-turn rollouts on the scripted machine: turns, stops, masks, faults, refiner cuts, and no recompiles."""

import time

import jax
import numpy as np
import pytest

from searchr2_jax.benchmarks.engines import ForcedRefiner
from searchr2_jax.retrieval.types import Passage
from searchr2_jax.rollout import cost_model
from searchr2_jax.rollout import refiner as refiner_lib
from searchr2_jax.rollout import rollout as rollout_lib
from searchr2_jax.rollout import sampler
from searchr2_jax.rollout import types as T
from searchr2_jax.text import protocol
from searchr2_jax.config import default_rollout_config, default_refiner_config

from . import scripted

TOK = scripted.tokenizer()


class FakeRetriever:
    def __init__(self, fail_on=(), sleep_on=(), sleep_s=5.0):
        self.calls = []
        self.fail_on, self.sleep_on, self.sleep_s = set(fail_on), set(sleep_on), sleep_s

    def search(self, queries, k):
        self.calls.append(list(queries))
        if self.fail_on & set(queries):
            raise ConnectionError("retrieval server is down")
        if self.sleep_on & set(queries):
            time.sleep(self.sleep_s)
        return [[Passage(f"{q}-{i}", f"T{i}", " ".join(["gamma"] * (1 + i + len(q) % 3))) for i in range(k)]
                for q in queries]


def engine(retriever=None, refiner_choice=None, refiner=False, max_revisions=1, script=None, prompt="followup",
           noise=0.0, **overrides):
    """The scripted machine's engine: 4 slots and small budgets; `overrides` update the rollout config."""
    cfg, params = scripted.machine(TOK, script=script, refiner_choice=refiner_choice, noise=noise)
    config = default_rollout_config()
    config.update(dict(slots=4, max_prompt_tokens=16, max_response_tokens=96, max_obs_tokens=32, topk=2,
                       segment_steps=8, retrieval_timeout_s=1.0))
    config.update(overrides)
    ref = None
    if refiner:
        rc = default_refiner_config()
        rc.max_revisions = max_revisions
        rc.prompt = prompt
        ref = refiner_lib.MetaRefiner(cfg, TOK, rc, max_turns=config.max_turns)
    return rollout_lib.RolloutEngine(cfg, TOK, retriever or FakeRetriever(), config, ref), params


def jobs(*prompts, group=0):
    return [T.Job(scripted.ids(TOK, p), question=p, golden_answers=("beta",), group_id=group) for p in prompts]


def text(traj, a=None, b=None):
    return TOK.decode(list(traj.response_ids[a:b]), skip_special_tokens=False)


def test_search_then_answer_with_exact_masks_and_no_token_after_stops():
    eng, params = engine()
    out = eng.run(params, jobs("go", "go", "go"), jax.random.key(0))
    for t in out.trajectories:
        assert t.status == T.ANSWERED and t.answer == "beta"
        assert [turn.action for turn in t.turns] == ["search", "answer"]
        s, a = t.turns
        assert text(t, s.start, s.end) == "<search> alpha </search>"  # ends exactly at the stop
        assert text(t, a.start, a.end) == "<answer> beta </answer>"
        assert s.query == "alpha" and [p.id for p in s.passages] == ["alpha-0", "alpha-1"]
        obs = text(t, s.end, s.obs_end)
        assert obs.startswith("<information>") and obs.endswith("</information>")
        # loss mask: 1 exactly on generated tokens, 0 on the retrieved block
        mask = np.zeros(len(t.response_ids), np.int8)
        mask[s.start:s.end] = 1
        mask[a.start:a.end] = 1
        np.testing.assert_array_equal(t.loss_mask, mask)
        assert len(t.response_ids) == a.end  # not one token after </answer>
        assert np.all(t.logprobs[t.loss_mask == 1] <= 0) and np.all(t.logprobs[t.loss_mask == 0] == 0)
    assert out.metrics["rollout/searches_per_trajectory"] == 1.0
    assert out.metrics["rollout/status/answered"] == 1.0


def test_one_retrieval_call_per_segment_for_all_searching_rows():
    ret = FakeRetriever()
    eng, params = engine(retriever=ret)
    eng.run(params, jobs("go", "go", "go", "go"), jax.random.key(0))
    assert ret.calls == [["alpha"] * 4]


@pytest.mark.slow
def test_invalid_action_gets_the_message_then_continues():
    eng, params = engine()
    (t,) = eng.run(params, jobs("bad"), jax.random.key(0)).trajectories
    assert [turn.action for turn in t.turns] == ["invalid", "answer"]
    assert protocol.INVALID_ACTION_MESSAGE.split()[0] in text(t, t.turns[0].end, t.turns[0].obs_end) or \
        "[UNK]" in text(t, t.turns[0].end, t.turns[0].obs_end)
    assert t.status == T.ANSWERED


@pytest.mark.slow
def test_budget_and_turn_limits_and_long_prompts():
    # After an information block this script searches again, forever: the turn limit ends it.
    eng, params = engine(max_turns=2, script={**scripted.SCRIPT, "</information>": "<search>"})
    loop, stall, long = eng.run(params, jobs("loop", "go", " ".join(["go"] * 20)), jax.random.key(0)).trajectories
    assert loop.status == T.OUT_OF_BUDGET and len(loop.response_ids) == 96
    assert stall.status == T.OUT_OF_TURNS and [t.action for t in stall.turns] == ["search", "search"]
    assert stall.turns[-1].obs_end == stall.turns[-1].end  # the last search is not answered
    assert long.status == T.PROMPT_TOO_LONG and len(long.response_ids) == 0


def test_retrieval_faults_mark_only_their_rows():
    ret = FakeRetriever(fail_on={"alpha"})
    eng, params = engine(retriever=ret)
    out = eng.run(params, jobs("go", "loop"), jax.random.key(0))
    assert out.trajectories[0].status == T.RETRIEVAL_ERROR
    assert "down" in out.trajectories[0].turns[-1].error
    assert out.trajectories[1].status == T.OUT_OF_BUDGET  # the other row finished normally


def test_retrieval_timeout_never_hangs():
    ret = FakeRetriever(sleep_on={"alpha"}, sleep_s=3.0)
    eng, params = engine(retriever=ret, retrieval_timeout_s=0.3)
    t0 = time.time()
    (t,) = eng.run(params, jobs("go"), jax.random.key(0)).trajectories
    assert t.status == T.RETRIEVAL_ERROR and "within" in t.turns[-1].error
    assert time.time() - t0 < 3.0


@pytest.mark.slow
def test_more_jobs_than_slots_all_finish_in_order():
    eng, params = engine(slots=2)
    prompts = ["go", "loop", "bad", "go", "go"]
    out = eng.run(params, jobs(*prompts), jax.random.key(0))
    assert [t.job.question for t in out.trajectories] == prompts
    assert [t.status for t in out.trajectories] == [T.ANSWERED, T.OUT_OF_BUDGET, T.ANSWERED, T.ANSWERED,
                                                    T.ANSWERED]


@pytest.mark.parametrize("prompt", ["followup", "table12"])
@pytest.mark.slow
def test_refiner_cut_keeps_turns_before_the_flagged_step(prompt):
    # The refiner prompt ends with "issue):", which the script follows with "2": cut at step 2.
    eng, params = engine(refiner=True, refiner_choice="2", prompt=prompt)
    base_eng, _ = engine()
    (base,) = base_eng.run(params, jobs("go"), jax.random.key(0)).trajectories
    (t,) = eng.run(params, jobs("go"), jax.random.key(0)).trajectories
    assert t.cut_steps == [2] and len(t.meta_actions) == 1
    meta = t.meta_actions[0]
    assert meta.choice == 2 and TOK.decode(meta.action_ids).strip() == "2"
    assert meta.scores[2] == max(meta.scores) and meta.logprob == meta.scores[2]
    # kept prefix = turn 1 and its information block; the regenerated turn answers again
    assert t.kept_tokens == [base.turns[1].start]
    np.testing.assert_array_equal(t.response_ids[:base.turns[1].start], base.response_ids[:base.turns[1].start])
    assert [turn.action for turn in t.turns] == ["search", "answer"] and t.answer == "beta"
    np.testing.assert_array_equal(t.loss_mask, base.loss_mask)
    assert t.turns[0].passages == base.turns[0].passages  # information of kept turns is kept, not re-fetched


@pytest.mark.parametrize("prompt", ["followup", "table12"])
def test_refiner_cut_at_step_one_regenerates_from_the_prompt(prompt):
    ret = FakeRetriever()
    eng, params = engine(retriever=ret, refiner=True, refiner_choice="1", prompt=prompt)
    (t,) = eng.run(params, jobs("go"), jax.random.key(0)).trajectories
    assert t.cut_steps == [1] and t.kept_tokens == [0]
    assert [turn.action for turn in t.turns] == ["search", "answer"]
    assert len(ret.calls) == 2  # the regenerated first turn searches again


@pytest.mark.parametrize("prompt", ["followup", "table12"])
@pytest.mark.slow
def test_refiner_that_accepts_equals_actor_only_and_n_max_bounds_revisions(prompt):
    eng0, params = engine(refiner=True, refiner_choice="0", prompt=prompt)
    base_eng, _ = engine()
    key = jax.random.key(7)
    a = eng0.run(params, jobs("go", "bad", "loop"), key).trajectories
    b = base_eng.run(params, jobs("go", "bad", "loop"), key).trajectories
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.response_ids, y.response_ids)
        np.testing.assert_array_equal(x.logprobs, y.logprobs)
        assert x.status == y.status and x.cut_steps == [] and x.meta_actions[0].choice == 0
    for n_max in (0, 1, 3):
        eng, params = engine(refiner=True, refiner_choice="1", max_revisions=n_max, prompt=prompt)
        (t,) = eng.run(params, jobs("go"), key).trajectories
        assert len(t.cut_steps) == n_max and len(t.meta_actions) == n_max


def test_followup_scored_in_the_slot_equals_a_full_pass_over_the_recorded_prompt():
    # Layer noise puts attention over the cached trajectory into play: reading the follow-up's logits from the slot
    # must give the scores a fresh forward over (prompt + response + follow-up) gives, as the trainer recomputes.
    eng, params = engine(refiner=True, refiner_choice="2", noise=0.1)
    out = eng.run(params, jobs("go", "go go", "bad"), jax.random.key(3))
    metas = [m for t in out.trajectories for m in t.meta_actions]
    assert metas
    for t in out.trajectories:
        for m in t.meta_actions:
            assert m.prompt_ids[:len(t.job.prompt_ids)] == list(t.job.prompt_ids)
            assert m.prompt_ids[-len(eng.refiner.followup_ids(len(m.scores) - 1)):] == \
                eng.refiner.followup_ids(len(m.scores) - 1)
    full = eng.refiner.score(params, [m.prompt_ids for m in metas], [len(m.scores) - 1 for m in metas])
    for m, row in zip(metas, full):
        np.testing.assert_allclose(m.scores, row[:len(m.scores)], rtol=1e-4, atol=1e-4)


def test_decision_rule():
    s = np.log(np.array([0.4, 0.1, 0.3, 0.2]))
    assert refiner_lib.decide(s, 3, margin=0.0) == 0  # best j>=1 (0.3) < p(0)
    s = np.log(np.array([0.2, 0.1, 0.4, 0.3]))
    assert refiner_lib.decide(s, 3, margin=0.0) == 2
    assert refiner_lib.decide(s, 3, margin=1.0) == 0  # log(0.4/0.2) = 0.69 < 1
    assert refiner_lib.decide(s, 1, margin=0.0) == 0  # only step 1 exists, p(1) < p(0)
    assert refiner_lib.decide(np.log(np.array([0.5, 0.5])), 1, margin=0.0) == 1  # a tie revises (margin >= 0)


@pytest.mark.slow
def test_a_jobs_samples_depend_neither_on_the_slot_count_nor_on_what_else_runs():
    # At temperature 10 the script's successor has about 0.3 of the mass: every trajectory is its own random walk.
    prompts = ["go", "go", "ask", "go", "bad", "go"]
    runs = []
    for slots in (1, 3, 8):
        eng, params = engine(slots=slots, temperature=10.0)
        runs.append(eng.run(params, jobs(*prompts), jax.random.key(4)).trajectories)
    assert len({tuple(t.response_ids) for t in runs[0]}) == len(prompts)  # the draws differ across jobs
    for other in runs[1:]:
        for x, y in zip(runs[0], other):
            np.testing.assert_array_equal(x.response_ids, y.response_ids)
            np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_refined_rollout_differs_from_a_plain_one_only_where_it_revised():
    prompts = ["go", "ask", "go", "go", "go", "bad", "go", "go"]
    plain_eng, params = engine(temperature=10.0)
    plain = plain_eng.run(params, jobs(*prompts), jax.random.key(2)).trajectories
    eng, _ = engine(refiner=True, refiner_choice="0", temperature=10.0)
    eng.refiner = ForcedRefiner(eng.refiner, rate=0.5)
    refined = eng.run(params, jobs(*prompts), jax.random.key(2)).trajectories
    revised = [t for t in refined if t.cut_steps]
    assert 0 < len(revised) < len(prompts)
    for x, y in zip(refined, plain):
        if not x.cut_steps:
            np.testing.assert_array_equal(x.response_ids, y.response_ids)
            continue
        keep = x.kept_tokens[0]
        np.testing.assert_array_equal(x.response_ids[:keep], y.response_ids[:keep])
    # a revision draws afresh: the regenerated suffixes are not replays of the plain rollout's
    assert any(not np.array_equal(x.response_ids, y.response_ids) for x, y in zip(refined, plain) if x.cut_steps)


@pytest.mark.slow
def test_long_and_short_conversations_decode_in_calls_of_their_own_and_generate_the_same(monkeypatch):
    # "loop" runs to a 300-token budget while the others stop early: their attention windows part ways.
    prompts = ["loop", "go", "ask", "go", "bad", "go"]
    runs = []
    for call_cost in (10**9, 0):  # one call for all running slots; calls as small as the cost model allows
        monkeypatch.setattr(cost_model, "DECODE_CALL_POSITIONS", call_cost)
        eng, params = engine(slots=4, temperature=2.0, max_response_tokens=300)
        runs.append(eng.run(params, jobs(*prompts), jax.random.key(3)))
    one, split = runs
    assert one.metrics["rollout/decode_calls"] == one.metrics["rollout/segments"]
    assert split.metrics["rollout/decode_calls"] > split.metrics["rollout/segments"]
    assert len(one.trajectories[0].response_ids) > 200 and min(len(t.response_ids) for t in one.trajectories) < 64
    for x, y in zip(one.trajectories, split.trajectories):
        np.testing.assert_array_equal(x.response_ids, y.response_ids)
        np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=1e-5, atol=1e-6)


def test_work_counters_count_what_the_device_decoded_and_appended():
    # One slot: each decode step is the one running row's token. The prompts are too short to share a prefix, so
    # every prompt token is appended, as is every information block and invalid-action message (loss mask 0).
    eng, params = engine(slots=1)
    out = eng.run(params, jobs("go", "ask", "bad"), jax.random.key(0))
    m = out.metrics
    assert m["rollout/decode_row_steps"] == m["rollout/tokens_generated"] > 0
    prompts = sum(len(t.job.prompt_ids) for t in out.trajectories)
    observations = sum(int((t.loss_mask == 0).sum()) for t in out.trajectories)
    assert m["rollout/append_valid_tokens"] == prompts + observations
    assert m["rollout/append_tokens"] >= m["rollout/append_valid_tokens"]
    # Four slots, a refiner that accepts: decode may pad rows to buckets; each judged trajectory adds its follow-up.
    eng, params = engine(slots=4, refiner=True, refiner_choice="0")
    out = eng.run(params, jobs("go", "ask", "bad", "go", "go"), jax.random.key(0))
    m = out.metrics
    assert m["rollout/decode_row_steps"] >= m["rollout/tokens_generated"]
    followups = sum(len(eng.refiner.followup_ids(len(t.turns))) for t in out.trajectories if t.meta_actions)
    assert followups > 0
    assert m["rollout/append_valid_tokens"] == sum(len(t.job.prompt_ids) + int((t.loss_mask == 0).sum())
                                                   for t in out.trajectories) + followups


def test_decode_groups_cover_the_rows_in_order_at_the_least_modelled_cost():
    call, row = cost_model.DECODE_CALL_POSITIONS, cost_model.DECODE_ROW_POSITIONS
    cost = lambda w, groups: sum(call + T.bucket(j - i, minimum=1) * (row + w[j - 1]) for i, j in groups)

    def brute(w):  # every split into consecutive calls
        return min((call + T.bucket(j, minimum=1) * (row + w[j - 1]) + brute(w[j:]) for j in range(1, len(w) + 1)),
                   default=0)

    rng = np.random.default_rng(0)
    for _ in range(30):
        w = sorted(rng.choice([128, 192, 256, 384, 512, 768, 1024], size=rng.integers(1, 9)).tolist())
        groups = cost_model.decode_groups(w)
        assert [i for i, _ in groups] == [0] + [j for _, j in groups[:-1]] and groups[-1][1] == len(w)
        assert cost(w, groups) == brute(w)
    assert cost_model.decode_groups([256] * 31 + [1024]) == [(0, 31), (31, 32)]
    assert cost_model.decode_groups([256, 384]) == [(0, 2)]  # a second call costs more than the longer window
    assert sorted(j - i for i, j in cost_model.decode_groups([1024] * 17)) == [1, 16]  # not 15 rows of padding
    assert cost_model.decode_groups([]) == []


def test_n_max_out_of_range_is_refused():
    rc = default_refiner_config()
    rc.max_revisions = refiner_lib.MAX_REVISIONS + 1
    with pytest.raises(ValueError, match="max_revisions"):
        refiner_lib.MetaRefiner(scripted.machine(TOK)[0], TOK, rc)


@pytest.mark.parametrize("head", ["", "gamma delta "], ids=["own_prompts", "shared_prefix"])
def test_no_recompilation_after_warmup(head):
    eng, params = engine(refiner=True, refiner_choice="2", min_shared_prefix=2)
    fns = [sampler.decode_segment, sampler.append_rows, sampler.truncate_rows, sampler.next_token_logprobs,
           sampler.seed_rows, sampler.encode_prefix]
    run = lambda batch, seed: eng.run(params, jobs(*[head + p for p in batch]), jax.random.key(seed))
    batches = [("go", "bad", "loop", "go go"), ("go go go", "go", "bad bad", "go"), ("go", "go", "go", "bad")]
    for b in batches:  # warm-up: every bucket these shapes reach
        run(b, 0)
    sizes = [f._cache_size() for f in fns]
    for i, b in enumerate([("go go", "bad", "go", "loop"), ("bad", "go go go", "go", "go"),
                           ("go", "go", "bad", "go go")]):
        run(b, i + 10)
    assert [f._cache_size() for f in fns] == sizes


def test_trajectory_batch_layout():
    eng, params = engine(refiner=True, refiner_choice="2")
    out = eng.run(params, jobs("go", "bad"), jax.random.key(0))
    batch = T.to_batch(out.trajectories)
    t = out.trajectories[0]
    p = len(t.job.prompt_ids)
    n = p + len(t.response_ids)
    assert batch.tokens.shape[1] == T.bucket(max(batch.lengths))
    np.testing.assert_array_equal(batch.tokens[0, :n], list(t.job.prompt_ids) + list(t.response_ids))
    assert batch.loss_mask[0, :p].sum() == 0 and batch.loss_mask[0, n:].sum() == 0
    np.testing.assert_array_equal(batch.loss_mask[0, p:n], t.loss_mask)
    assert batch.meta_rows.index[0] == 0 and batch.meta_rows.mask[0].sum() == 1
    m = t.meta_actions[0]
    assert batch.meta_rows.tokens[0, len(m.prompt_ids)] == m.action_ids[0]


def test_packed_meta_actions_rebuild_each_refiner_sequence_from_the_row():
    """A packed meta-action's branch, read after its shared prefix of the row, is exactly its refiner prompt and
    integer, at the positions the standalone sequence gives them; the row holds no other copy of them."""
    eng, params = engine(refiner=True, refiner_choice="2", max_revisions=2)
    out = eng.run(params, jobs("go", "bad", "go go"), jax.random.key(0))
    trajs = out.trajectories
    assert any(t.cut_steps for t in trajs) and sum(len(t.meta_actions) for t in trajs) > len(trajs)
    b = T.to_batch(trajs, pack_meta=True)
    assert b.meta_rows is None
    for i, t in enumerate(trajs):
        n = b.traj_lengths[i]
        np.testing.assert_array_equal(b.tokens[i, :n], list(t.job.prompt_ids) + list(t.response_ids))
        assert not b.segment_ids[i, :n].any() and not b.meta_mask[i, :n].any()
        extra = 0
        for k, m in enumerate(t.meta_actions, start=1):
            at = np.flatnonzero(b.segment_ids[i, :b.lengths[i]] == k)
            shared = int(b.shared_end[i, at[0]])
            assert not b.shared_start[i, at].any()
            seq = np.concatenate([b.tokens[i, :shared], b.tokens[i, at]])
            np.testing.assert_array_equal(seq, list(m.prompt_ids) + list(m.action_ids))
            np.testing.assert_array_equal(b.positions[i, at], shared + np.arange(len(at)))
            a = len(m.action_ids)
            np.testing.assert_array_equal(b.meta_mask[i, at], [0] * (len(at) - a) + [1] * a)
            extra += len(at)
        assert b.lengths[i] == n + extra
        if t.cut_steps:  # the revised draft's discarded suffix rides in its branch, not re-encoded with the prefix
            assert extra < sum(len(m.prompt_ids) for m in t.meta_actions)


def test_a_revised_draft_becomes_a_trajectory_of_its_group_with_its_own_tokens_and_log_probs():
    """`refiner.train_drafts`: the draft keeps the log-probs and loss mask it was sampled with; before the cut they
    are the final trajectory's, and as a trajectory it shares the job (the GRPO group) but no meta-action."""
    eng, params = engine(refiner=True, refiner_choice="2", max_revisions=2)
    trajs = eng.run(params, jobs("go", "bad", "go go"), jax.random.key(0)).trajectories
    drafts = T.draft_trajectories(trajs)
    assert len(drafts) == sum(len(t.drafts) for t in trajs) > 0
    pairs = [(t, d, keep) for t in trajs for d, keep in zip(t.drafts, t.kept_tokens)]
    for (t, d, keep), x in zip(pairs, drafts):
        assert x.job is t.job and x.job_index == t.job_index and not x.meta_actions and not x.drafts
        np.testing.assert_array_equal(x.response_ids, d.response_ids)
        assert len(x.logprobs) == len(x.loss_mask) == len(x.response_ids)
        assert x.status == d.status and x.answer == d.answer
        if len(t.drafts) == 1:  # the kept prefix is the final trajectory's, token for token
            np.testing.assert_array_equal(x.response_ids[:keep], t.response_ids[:keep])
            np.testing.assert_array_equal(x.logprobs[:keep], t.logprobs[:keep])
            np.testing.assert_array_equal(x.loss_mask[:keep], t.loss_mask[:keep])
        # the scripted model generates some tokens; tool output carries no log-prob
        assert x.loss_mask.any() and (x.logprobs[x.loss_mask == 0] == 0).all() and (x.logprobs <= 0).all()
    t = next(t for t in trajs if t.drafts)
    t.drafts[0].logprobs = None
    with pytest.raises(ValueError, match="draft 0 kept no log-probs"):
        T.draft_trajectories([t])


def test_render_shows_turns_queries_passages_and_refiner_decision():
    from searchr2_jax.rollout.render import render_trajectory

    eng, params = engine(refiner=True, refiner_choice="2")
    (t,) = eng.run(params, jobs("go"), jax.random.key(0)).trajectories
    text = render_trajectory(t, TOK)
    assert "status answered" in text and "query: 'alpha'" in text and "[alpha-0] T0" in text
    assert "revise from step 2" in text and f"kept {t.kept_tokens[0]} tokens" in text


def test_fine_buckets_add_one_and_a_half_powers_of_two():
    assert [T.bucket(n, minimum=1) for n in (1, 3, 5, 129, 200)] == [1, 4, 8, 256, 256]
    assert [T.bucket(n, minimum=1, fine=True) for n in (1, 3, 5, 7, 129, 192, 193, 260)] == \
        [1, 3, 6, 8, 192, 192, 256, 384]
    assert T.bucket(100, minimum=128, fine=True) == 128


@pytest.mark.slow
def test_shared_prompt_prefix_is_encoded_once_and_changes_nothing():
    # 18 shared words, then each job's own: the prefix is encoded once and copied into every new slot. With this much
    # noise in the layers the log-probs depend on the prompt's keys and values: a copy scaled by 0.5 changes the text.
    head = " ".join(["gamma", "delta"] * 9)
    prompts = [f"{head} go", f"{head} bad", f"{head} alpha go", f"{head} go", f"{head} delta bad"]
    outs = {}
    for shared in (16, 0):
        eng, params = engine(slots=2, noise=0.3, max_prompt_tokens=24, min_shared_prefix=shared)
        assert (eng._shared_prefix(params, jobs(*prompts)) is not None) == bool(shared)
        outs[shared] = eng.run(params, jobs(*prompts), jax.random.key(0)).trajectories
    for a, b in zip(outs[16], outs[0]):
        assert a.status == b.status and text(a) == text(b)
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-6)
    eng, params = engine(slots=2, noise=0.3, max_prompt_tokens=24)
    length, cache = eng._shared_prefix(params, jobs(*prompts))
    assert length == 18 and int(cache.lengths[0]) == 18
    assert eng._shared_prefix(params, jobs(f"{head} go", "go")) is None  # shorter than min_shared_prefix


def test_append_groups_cover_the_chunks_in_order_at_the_least_padded_cost():
    cost = lambda sizes, groups: sum(cost_model.APPEND_CALL_TOKENS + n * T.bucket(sizes[i], minimum=1, fine=True)
                                     for i, _, n in groups)

    def brute(sizes):  # every split into consecutive calls
        if not sizes:
            return 0
        C = T.bucket(sizes[0], minimum=1, fine=True)
        return min(cost_model.APPEND_CALL_TOKENS + T.bucket(j, minimum=1) * C + brute(sizes[j:])
                   for j in range(1, len(sizes) + 1))

    rng = np.random.default_rng(0)
    for _ in range(30):
        sizes = sorted(rng.integers(1, 300, size=rng.integers(1, 9)).tolist(), reverse=True)
        groups = cost_model.append_groups(sizes)
        assert [i for i, _, _ in groups] == [0] + [j for _, j, _ in groups[:-1]] and groups[-1][1] == len(sizes)
        assert all(n >= j - i and n & (n - 1) == 0 for i, j, n in groups)
        assert cost(sizes, groups) == brute(sizes)
    # One long observation among short ones gets a call of its own instead of padding the others to its length.
    assert cost_model.append_groups([256, 20, 20, 20]) == [(0, 1, 1), (1, 4, 4)]
