"""RL math against hand-computed values: advantages, KL estimators, PPO loss, value loss, rewards, judges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searchr2_jax.config import default_loss_config
from searchr2_jax.retrieval.types import Passage
from searchr2_jax.rl import advantages, judges, losses, rewards
from searchr2_jax.rl.logprobs import entropy_from_logits, token_logprobs


def test_grpo_non_contiguous_groups_and_constant_groups():
    g = jnp.asarray([2, 0, 1, 2, 1, 0])  # interleaved, unsorted groups: 2 -> rows 0, 3; 0 -> rows 1, 5; 1 -> 2, 4
    r = jnp.asarray([1.0, 0.0, 5.0, 0.0, 5.0, 0.0])
    adv = np.asarray(advantages.grpo_advantages(r, g))
    # group 2 = rows 0, 3 -> rewards 1, 0: mean 0.5, unbiased std 0.7071 -> +-0.7071
    np.testing.assert_allclose(adv[[0, 3]], [0.5 / (np.sqrt(0.5) + 1e-6), -0.5 / (np.sqrt(0.5) + 1e-6)], rtol=1e-5)
    np.testing.assert_array_equal(adv[[1, 5]], [0.0, 0.0])  # identical rewards: zero, not NaN
    np.testing.assert_array_equal(adv[[2, 4]], [0.0, 0.0])
    np.testing.assert_allclose(np.asarray(advantages.grpo_advantages(r, g, normalize_std=False))[[0, 3]], [0.5, -0.5])


def _gae_loop(r, v, m, gamma, lam):
    adv = np.zeros_like(r)
    for b in range(r.shape[0]):
        last, nxt = 0.0, 0.0
        for t in reversed(range(r.shape[1])):
            if not m[b, t]:
                continue
            delta = r[b, t] + gamma * nxt - v[b, t]
            last = delta + gamma * lam * last
            adv[b, t], nxt = last, v[b, t]
    return adv


def test_gae_bridges_masked_spans_like_a_python_loop():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(3, 9)).astype(np.float32)
    v = rng.normal(size=(3, 9)).astype(np.float32)
    m = np.ones((3, 9), np.float32)
    m[:, 3:6] = 0  # a retrieved block inside the response
    m[2, 0:2] = 0  # prompt
    for gamma, lam in ((1.0, 1.0), (0.99, 0.95)):
        adv, ret = advantages.gae_advantages(jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), gamma, lam)
        expected = _gae_loop(r, v, m, gamma, lam)
        np.testing.assert_allclose(np.asarray(adv), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(ret), (expected + v) * m, rtol=1e-5, atol=1e-6)
    # Hand check of the bridge: rewards only at the end, gamma = lam = 1 -> every generated token gets R - v.
    r2 = np.zeros((1, 5), np.float32)
    r2[0, 4] = 1.0
    m2 = np.asarray([[1, 0, 0, 1, 1]], np.float32)
    adv, _ = advantages.gae_advantages(jnp.asarray(r2), jnp.zeros((1, 5)), jnp.asarray(m2))
    np.testing.assert_allclose(np.asarray(adv), [[1, 0, 0, 1, 1]])


def test_kl_estimators_by_hand():
    logp, ref = jnp.asarray([-1.0, -2.0]), jnp.asarray([-1.5, -1.0])
    d = np.asarray([0.5, -1.0])
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "kl"), d)
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "abs"), np.abs(d))
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "mse"), 0.5 * d**2)
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "low_var_kl"), np.exp(-d) + d - 1, rtol=1e-6)
    huge = losses.kl_penalty(jnp.asarray([-100.0]), jnp.asarray([0.0]), "low_var_kl")
    assert float(huge[0]) == 10.0  # clamped, finite
    with pytest.raises(ValueError, match="kl_estimator"):
        losses.kl_penalty(logp, ref, "nope")


def test_ppo_clip_and_dual_clip_by_hand():
    cfg = default_loss_config()
    cfg.kl_coef = 0.0
    old = jnp.zeros((1, 4))
    logp = jnp.log(jnp.asarray([[1.5, 0.5, 1.1, 10.0]]))  # ratios 1.5, 0.5, 1.1, 10
    adv = jnp.asarray([[1.0, 1.0, -2.0, -1.0]])
    mask = jnp.ones((1, 4))
    total, denom, m = losses.policy_loss(logp, old, None, adv, mask, cfg)
    # tok0: A>0, ratio 1.5 clipped to 1.2 -> -1.2 ; tok1: ratio 0.5 (unclipped min) -> -0.5
    # tok2: A<0, ratio 1.1 -> 2.2 ; tok3: A<0, ratio 10 -> max(10, 1.2) = 10, dual clip caps at 3
    np.testing.assert_allclose(float(total), -1.2 - 0.5 + 2.2 + 3.0, rtol=1e-6)
    assert float(denom) == 4
    np.testing.assert_allclose(float(m["clip_frac"]), 1 / 4)  # only tok0 took the clipped branch
    cfg.clip_ratio_c = 0.0
    total, _, _ = losses.policy_loss(logp, old, None, adv, mask, cfg)
    np.testing.assert_allclose(float(total), -1.2 - 0.5 + 2.2 + 10.0, rtol=1e-6)


def test_kl_term_and_masked_tokens_get_zero_gradient():
    cfg = default_loss_config()
    mask = jnp.asarray([[1.0, 0.0, 1.0]])
    adv = jnp.asarray([[1.0, 1.0, -1.0]])
    ref = jnp.asarray([[-1.0, -1.0, -1.0]])
    logp = jnp.asarray([[-0.5, -0.7, -2.0]])
    total, _, m = losses.policy_loss(logp, logp, ref, adv, mask, cfg)
    kl = np.exp([-0.5, 1.0]) - np.asarray([-0.5, 1.0]) - 1  # k3 at tokens 0 and 2 (ref - logp = -0.5, 1.0)
    np.testing.assert_allclose(float(total), -1.0 + 1.0 + 0.001 * kl.sum(), atol=1e-7)  # f32 cancellation
    grad = jax.grad(lambda lp: losses.policy_loss(lp, jax.lax.stop_gradient(lp), ref, adv, mask, cfg)[0])(logp)
    assert float(grad[0, 1]) == 0.0 and float(grad[0, 0]) != 0.0


@pytest.mark.slow
def test_micro_batched_sums_equal_the_global_mean():
    cfg = default_loss_config()
    rng = np.random.default_rng(1)
    logp, old, ref, adv = (jnp.asarray(rng.normal(size=(8, 5)) * 0.3 - 1) for _ in range(4))
    mask = jnp.asarray(rng.integers(0, 2, size=(8, 5)).astype(np.float32))
    total, denom, _ = losses.policy_loss(logp, old, ref, adv, mask, cfg)
    for k in (2, 4):
        parts = [losses.policy_loss(*(x[i::k] for x in (logp, old, ref, adv, mask)), cfg) for i in range(k)]
        np.testing.assert_allclose(sum(float(p[0]) for p in parts) / sum(float(p[1]) for p in parts),
                                   float(total) / float(denom), rtol=1e-5)


def test_value_loss_by_hand():
    cfg = default_loss_config()
    v, old, ret = jnp.asarray([[1.0, 0.0]]), jnp.asarray([[0.5, 0.0]]), jnp.asarray([[0.0, 1.0]])
    total, denom, _ = losses.value_loss(v, old, ret, jnp.ones((1, 2)), cfg)
    # tok0: v=1 -> 1.0; clipped 0.7 -> 0.49; max -> 1.0, x0.5 = 0.5 ; tok1: 0.5 * 1 = 0.5
    np.testing.assert_allclose(float(total), 1.0)


def test_token_logprobs_and_entropy():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.25]]))
    np.testing.assert_allclose(token_logprobs(logits, jnp.asarray([1])), [np.log(0.25)], rtol=1e-6)
    np.testing.assert_allclose(entropy_from_logits(logits), [-(0.5 * np.log(0.5) + 0.5 * np.log(0.25))], rtol=1e-6)
    np.testing.assert_allclose(token_logprobs(2 * logits, jnp.asarray([0]), temperature=2.0), [np.log(0.5)],
                               rtol=1e-6)


@pytest.mark.parametrize("pred,gold,em", [
    ("The Eiffel Tower", ["eiffel tower"], 1.0), ("  paris. ", ["Paris"], 1.0), ("a  cat!", ["the cat"], 1.0),
    ("Paris France", ["Paris"], 0.0), (None, ["x"], 0.0), ("an apple", ["Apple", "pear"], 1.0)])
def test_exact_match(pred, gold, em):
    assert rewards.exact_match(pred, gold) == em


def test_f1_and_hybrid_reward():
    assert rewards.f1_score("Paris France", ["Paris"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert rewards.f1_score("london", ["Paris"]) == 0.0
    assert rewards.hybrid_reward(0.0, 3, 3) == 0.0  # wrong answer: no process credit
    assert rewards.hybrid_reward(1.0, 1, 2) == 1.5
    assert rewards.hybrid_reward(1.0, 0, 0) == 1.0  # no searches: R = EM
    assert rewards.hybrid_reward(1.0, 5, 2) == 2.0  # judge count clipped to M
    assert rewards.hybrid_reward(1.0, 2, 2, outcome_only=True) == 1.0


def _p(pid, text="x", title="T"):
    return Passage(pid, title, text)


def test_oracle_and_lexical_judges():
    colls = [[_p("1"), _p("2")], [_p("1"), _p("9")], [_p("3")], [_p("3")]]
    assert judges.make_judge("oracle").count_useful("q", ["a"], colls, gold_ids=["1", "3"]) == 2
    with pytest.raises(ValueError, match="gold passage ids"):
        judges.make_judge("oracle").count_useful("q", ["a"], colls)
    lex = [[_p("1", "born in Zorvath city")], [_p("1", "born in Zorvath city")], [_p("2", "nothing")],
           [_p("4", "The zorvath river")]]
    assert judges.make_judge("lexical").count_useful("q", ["Zorvath"], lex) == 2  # dup and irrelevant excluded


@pytest.mark.parametrize("reply,count", [
    ("<think>hmm 7</think>\nFinal Answer: 2", 2), ("final answer: **1**", 1), ("Final Answer: 9", 3),
    ("Final Answer: -2", 0), ("I cannot tell", 0), ("Final Answer: 1\nFinal Answer: 3", 3)])
def test_llm_judge_parses_and_clips(reply, count):
    prompts = []
    judge = judges.make_judge("llm", generate=lambda ps: (prompts.extend(ps), [reply] * len(ps))[1])
    colls = [[_p("1", "a")], [_p("2", "b")], [_p("3", "c")]]
    assert judge.count_useful("Who?", ["Zed"], colls) == count
    assert "<collection_3>" in prompts[0] and "Answer: Zed" in prompts[0] and "Final Answer: number" in prompts[0]
    assert judge.parse_failures == (1 if count == 0 and "Final" not in reply else 0)
