"""Refiner diagnostics: Prop. 4.1's identity, hand-computed decompositions of a scripted world, and one online run."""

import math

import jax
import numpy as np
import pytest

from searchr2_jax.rl import diagnostics as D
from searchr2_jax.rl import judges
from searchr2_jax.rollout import types as T

from ..rollout.test_rollout import engine as scripted_engine
from ..rollout.test_rollout import jobs as scripted_jobs


def test_prop_4_1_identity_holds_exactly_on_random_samples():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 50))
        steps = rng.integers(1, 5, n)
        R, R_cut, R_uni = (rng.choice([0.0, 1.0, 1.5, 2.0], n) for _ in range(3))
        alpha = rng.integers(0, 2, n) if rng.random() < 0.7 else rng.random(n)  # also a stochastic acceptance
        cut, uni = (1 + (rng.random(n) * steps).astype(int) for _ in range(2))
        d = D.decomposition(R, alpha, R_cut, cut, uni, R_uni, steps)
        a_prec = np.cov(alpha, R - R_cut, bias=True)[0, 1]
        assert d["A_prec"] == pytest.approx(a_prec, abs=1e-12)
        assert d["dJ_measured"] == pytest.approx(d["A_prec"] + d["V_inter"] * (d["J_trim"] - d["J_base"]), abs=1e-12)
        assert d["dJ_decomposed"] == pytest.approx(d["dJ_measured"], abs=1e-12)
        assert d["S_trim"] + d["G_bar"] == pytest.approx(d["dJ_trim"], abs=1e-12)
        assert d["G_uniform"] == pytest.approx(np.mean(R_uni - R)) and d["n"] == n


def test_empty_and_invalid_inputs():
    d = D.decomposition([], [], [], [], [], [], [])
    assert d["n"] == 0 and all(math.isnan(d[k]) for k in D.KEYS)
    with pytest.raises(ValueError, match="cut"):
        D.decomposition([1.0], [1], [0.0], [3], [1], [0.0], [2])  # k* beyond T
    with pytest.raises(ValueError, match="same length"):
        D.decomposition([1.0, 0.0], [1], [0.0], [1], [1], [0.0], [2])


# A scripted world: a draft of T = 3 steps has its first flawed step f (0 = sound); R = 1 iff sound. Regenerating
# from cut k keeps steps 1..k-1, so it recovers reward 1 iff the kept prefix is sound (k <= f), always when f = 0.
STEPS = 3
FLAWS = [0, 0, 0, 0, 1, 1, 2, 3]  # P(f = 0) = 1/2, P(f = 1) = 1/4, P(f = 2) = P(f = 3) = 1/8


def regen(f, k):
    return float(f == 0 or k <= f)


def world(alpha_of, cuts_of):
    """Every draft once per (refiner cut, uniform cut) pair: exact expectations over the uniform draws."""
    rows = [(f, alpha_of(f), k, u) for f in FLAWS for k in cuts_of(f) for u in range(1, STEPS + 1)]
    f, alpha, k, u = (np.asarray(c) for c in zip(*rows))
    R = (f == 0).astype(float)
    return D.decomposition(R, alpha, [regen(*x) for x in zip(f, k)], k, u, [regen(*x) for x in zip(f, u)],
                           np.full(len(f), STEPS))


def test_a_refiner_that_cuts_at_the_flawed_step_has_the_hand_computed_precision_and_skill():
    d = world(alpha_of=lambda f: int(f == 0), cuts_of=lambda f: [max(f, 1)])  # sound drafts: k* = 1 (never used)
    # J_base = P(f = 0) = 1/2; every cut at k* <= f recovers, so J_trim = J_meta = 1.
    assert (d["J_base"], d["J_trim"], d["J_meta"], d["Z_acc"]) == pytest.approx((0.5, 1.0, 1.0, 0.5))
    # R − R_cut = −1 exactly on the rejected (flawed) drafts: A_prec = Cov(1[f=0], −1[f>0]) = 1/2 · 1/2.
    assert d["A_prec"] == pytest.approx(0.25)
    # E[G_k] = P(f >= k) = 1/2, 1/4, 1/8; P(k* = k) = 6/8, 1/8, 1/8: G_bar = 27/64; S_trim = ΔJ_trim − G_bar = 5/64.
    assert d["G_bar"] == pytest.approx(27 / 64) and d["S_trim"] == pytest.approx(5 / 64)
    assert d["G_uniform"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 8) / 3)
    assert d["dJ_measured"] == pytest.approx(0.5) == d["dJ_decomposed"]


def test_a_uniform_cutter_has_no_trimming_skill_and_a_reject_all_refiner_full_volume():
    d = world(alpha_of=lambda f: 0, cuts_of=lambda f: range(1, STEPS + 1))  # k* ~ U{1..3}, independent of the draft
    assert d["S_trim"] == pytest.approx(0.0, abs=1e-12)
    assert d["G_bar"] == pytest.approx(d["G_uniform"]) == pytest.approx(d["dJ_trim"])
    assert d["V_inter"] == 1.0 and d["A_prec"] == pytest.approx(0.0, abs=1e-12)
    # Rejecting everything with the oracle's cuts: ΔJ = ΔJ_trim = S_trim + G_bar, no selection term.
    d = world(alpha_of=lambda f: 0, cuts_of=lambda f: [max(f, 1)])
    assert d["V_inter"] == 1.0 and d["A_prec"] == pytest.approx(0.0, abs=1e-12)
    assert d["S_trim"] == pytest.approx(5 / 64) and d["dJ_measured"] == pytest.approx(0.5)
    # Accepting exactly the flawed drafts: negative precision, Cov(1[f>0], −1[f>0]) = −1/4.
    d = world(alpha_of=lambda f: int(f > 0), cuts_of=lambda f: [max(f, 1)])
    # ... and no ΔJ here: a rejected sound draft always regenerates to 1, so J_meta = J_base.
    assert d["A_prec"] == pytest.approx(-0.25) and d["dJ_measured"] == pytest.approx(0.0, abs=1e-12)


def test_uniform_gains_weight_drafts_by_their_length():
    # One-step drafts gain 1 at k = 1, two-step drafts gain 0 anywhere; as many of each. A two-step draft draws
    # u = 1 half the time, so u == 1 holds twice as many one-step drafts: the plain mean would say 2/3.
    steps = np.asarray([1, 1, 2, 2])
    u, gain = np.asarray([1, 1, 1, 2]), np.asarray([1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(D.uniform_gains(u, gain, steps), [0.5, 0.0])
    # a cut never drawn uniformly gets the overall mean gain
    np.testing.assert_allclose(D.uniform_gains(np.asarray([1, 1]), np.asarray([1.0, 0.0]), np.asarray([3, 3])),
                               [0.5, 0.5, 0.5])


def _turn(start, end, action, passages=("p",)):
    return T.Turn(start, end, end + 2 if action == "search" else end, action, passages=list(passages))


def test_continued_regeneration_keeps_the_prefix_searches_and_the_rollouts_limits():
    job = T.Job([1, 2], question="q", golden_answers=("a",), metadata={"m": 1})
    draft = T.Trajectory(0, job, np.arange(30), np.zeros(30), np.ones(30), [
        _turn(0, 5, "search", ["d1"]), _turn(7, 12, "search", ["d2"]), _turn(14, 20, "answer", ())], T.ANSWERED, "x")
    assert D.regen_job(draft, 2).prompt_ids == [1, 2] + list(range(7)) and D.regen_job(draft, 1).prompt_ids == [1, 2]
    new = lambda *turns, answer="a": T.Trajectory(0, job, np.zeros(40), np.zeros(40), np.ones(40), list(turns),
                                                  T.ANSWERED, answer)
    # cut at 2: kept search d1 counts, then the regeneration's search and answer
    x = D.continued_input(draft, 2, new(_turn(0, 4, "search", ["n1"]), _turn(6, 9, "answer", ())), 4, 100)
    assert x.answer == "a" and x.collections == [["d1"], ["n1"]] and x.metadata == {"m": 1}
    # 4 turns at most: kept 2 + a search at the limit (not run: no passages) -> unanswered
    x = D.continued_input(draft, 3, new(_turn(0, 4, "search", ["n1"]), _turn(6, 9, "search", ["n2"]),
                                        _turn(11, 14, "answer", ())), 4, 100)
    assert x.answer is None and x.collections == [["d1"], ["d2"], ["n1"], []]
    # an answer at the limit still counts
    x = D.continued_input(draft, 3, new(_turn(0, 4, "search", ["n1"]), _turn(6, 9, "answer", ())), 4, 100)
    assert x.answer == "a"
    # response budget: 14 kept tokens + an answer ending at 7 > 20 - 14 would have been cut by the budget
    assert D.continued_input(draft, 3, new(_turn(0, 7, "answer", ())), 4, 20).answer is None
    assert D.continued_input(draft, 3, new(_turn(0, 6, "answer", ())), 4, 20).answer == "a"


# One engine whose prompts fit prompt + a whole response (as `make_regen_engine` builds), so that drafts and
# regenerations share its compiled programs: each engine shape costs seconds of compilation on 2 cores.
PROMPT, RESPONSE = 16, 96


@pytest.fixture(scope="module")
def machine():
    """(regeneration-sized engine, the small engine it was made from, params); the small one is never run."""
    small, params = scripted_engine(refiner=True, refiner_choice="2", slots=4, max_prompt_tokens=PROMPT,
                                    max_response_tokens=RESPONSE)
    return D.make_regen_engine(small), small, params


def test_make_regen_engine_fits_prompt_plus_response(machine):
    big, small, _ = machine
    assert big.config.max_prompt_tokens == PROMPT + RESPONSE and big.config.max_response_tokens == RESPONSE
    assert big.refiner is None and big.cfg is small.cfg and big.retriever is small.retriever
    assert small.config.max_prompt_tokens == PROMPT  # the original's config is not touched
    assert D.make_regen_engine(small, slots=8).config.slots == 8 and big.config.slots == small.config.slots == 4


@pytest.mark.slow
def test_online_diagnostics_on_the_scripted_machine(machine):
    # The scripted refiner's prompt ends on a token the script follows with "2": k* = 2 for two-step drafts.
    eng, small, params = machine
    refiner = small.refiner
    prompts = ["go", "bad", "loop", "ask", " ".join(["go"] * 130)]  # the last prompt is too long: skipped
    jobs = scripted_jobs(*prompts)
    reward_fn = D.hybrid_reward_fn(judges.make_judge("lexical"))
    metrics, records = D.refiner_diagnostics(eng, refiner, params, jobs, jax.random.key(0), reward_fn)
    for k in D.KEYS:
        assert np.isfinite(metrics[k]), k
    assert metrics["n"] == 4 and metrics["drafts"] == 5 and metrics[f"skipped/{T.PROMPT_TOO_LONG}"] == 1
    assert metrics["skipped/regen_prompt_too_long"] == 0
    assert metrics["dJ_measured"] == pytest.approx(metrics["dJ_decomposed"], abs=1e-9)
    cut_deep = 0
    for r in records:
        assert r.used and len(r.scores) == r.num_steps + 1 and r.alpha in (0, 1)
        for k, regen in ((r.cut, r.regen_cut), (r.uniform_cut, r.regen_uniform)):
            keep = r.draft.turns[k - 1].start
            assert regen.job.prompt_ids == list(r.draft.job.prompt_ids) + list(r.draft.response_ids[:keep])
            assert regen.job.question == r.draft.job.question and regen.job.golden_answers == ("beta",)
        if r.num_steps == 2:
            assert (r.alpha, r.cut) == (0, 2)
            cut_deep += len(r.regen_cut.job.prompt_ids) > PROMPT
    assert cut_deep >= 2  # "go" and "ask" keep their search turn and its information block
    # The kept prefix's search counts in the regenerated trajectory's reward: the suffix answers without searching.
    go = next(r for r in records if r.draft.job.question == "go")
    x = D.continued_input(go.draft, 2, go.regen_cut, eng.config.max_turns, eng.config.max_response_tokens)
    assert go.regen_cut.searches == [] and x.collections == [go.draft.turns[0].passages] and x.answer == "beta"
    assert go.reward == go.reward_cut == 1.0


def test_regenerations_whose_prompt_does_not_fit_are_left_out_and_counted(machine):
    eng, small, params = machine
    refiner = small.refiner

    class Tight:  # the engine as if its max_prompt_tokens were PROMPT (an empty prompt is refused unrun)
        config = eng.config

        def run(self, params, jobs, rng, use_refiner=True):
            fit = [j if len(j.prompt_ids) <= PROMPT else T.Job([], j.question, j.golden_answers) for j in jobs]
            return eng.run(params, fit, rng, use_refiner=use_refiner)

    jobs = scripted_jobs("go", "loop", "ask")
    metrics, records = D.refiner_diagnostics(eng, refiner, params, jobs, jax.random.key(0), D.hybrid_reward_fn(),
                                             regen_engine=Tight())
    loop = next(r for r in records if r.draft.job.question == "loop")
    assert loop.used and loop.cut == 1  # a one-step draft regenerates from its prompt: it fits
    assert metrics["skipped/regen_prompt_too_long"] == 2 and metrics["n"] == 1
    assert all(math.isnan(r.reward_cut) for r in records if not r.used)


@pytest.mark.slow
def test_uniform_cuts_come_from_the_key_and_stay_within_the_draft(machine):
    eng, small, params = machine
    refiner = small.refiner
    jobs = scripted_jobs("go", "ask", "bad", "go")  # two steps each
    run = lambda seed: D.refiner_diagnostics(eng, refiner, params, jobs, jax.random.key(seed), D.hybrid_reward_fn())
    cuts = lambda records: [r.uniform_cut for r in records]
    runs = [run(seed) for seed in range(4)]
    assert cuts(run(0)[1]) == cuts(runs[0][1])
    drawn = [c for _, records in runs for c in cuts(records)]
    assert len(drawn) == 16 and set(drawn) == {1, 2}
    assert len({tuple(cuts(records)) for _, records in runs}) > 1
