"""EM (Search-R1 normalization), F1 (SQuAD) and the hybrid reward R = EM * (1 + useful / M), against hand values."""

import numpy as np
import pytest

from searchr2_jax.rl import rewards


@pytest.mark.parametrize("text,expected", [
    ("The Eiffel Tower", "eiffel tower"),  # case + leading article
    ("  A  cat,  the DOG!! ", "cat dog"),  # articles anywhere, punctuation, runs of spaces
    ("an", ""),  # a lone article vanishes
    ("theater and another", "theater and another"),  # articles only as whole words
    ("U.S.A.", "usa"),  # punctuation is deleted, not replaced by a space (Search-R1 / SQuAD)
    ("rock-n-roll", "rocknroll"),
    ("Hello\tworld\n\n", "hello world"),  # all whitespace collapses
    ("the_end", "theend"),  # '_' is in string.punctuation: removed before the article rule runs
    ("«Paris»", "«paris»"),  # non-ASCII punctuation is kept, as in the original
    ("1,000", "1000"),
])
def test_normalize_answer(text, expected):
    assert rewards.normalize_answer(text) == expected


def test_normalize_rejects_non_strings():
    with pytest.raises(TypeError, match="expected str"):
        rewards.normalize_answer(3)


@pytest.mark.parametrize("pred,golds,em", [
    ("The Eiffel Tower", ["eiffel tower"], 1.0),
    ("  paris. ", ["Paris"], 1.0),
    ("a  cat!", ["the cat"], 1.0),
    ("Paris France", ["Paris"], 0.0),  # EM is whole-answer equality, not containment
    ("an apple", ["pear", "Apple"], 1.0),  # any gold answer counts
    ("Apple", "apple", 1.0),  # a bare string is one gold answer
    ("Apple", np.asarray(["pear", "the apple"]), 1.0),  # parquet rows carry numpy arrays
    ("apple", [], 0.0),
    (None, ["x"], 0.0),  # no extracted answer
])
def test_exact_match(pred, golds, em):
    assert rewards.exact_match(pred, golds) == em


def test_exact_match_rejects_bad_gold():
    with pytest.raises(TypeError, match="golden_answers"):
        rewards.exact_match("a", ["ok", 5])


def test_substring_match():
    assert rewards.substring_match("Paris, France", ["paris"]) == 1.0
    assert rewards.substring_match("Lyon", ["paris"]) == 0.0
    assert rewards.substring_match(None, ["paris"]) == 0.0


@pytest.mark.parametrize("pred,golds,f1", [
    ("Paris France", ["Paris"], 2 / 3),  # P = 1/2, R = 1
    ("the cat sat", ["cat sat on mat"], 2 / 3),  # P = 1, R = 1/2 (articles dropped first)
    ("new new york", ["new york"], 0.8),  # multiset overlap 2: P = 2/3, R = 1
    ("new york", ["london", "new york city"], 0.8),  # best gold: P = 1, R = 2/3
    ("London", ["Paris"], 0.0),
    ("the", ["the"], 0.0),  # normalizes to no tokens: no overlap
    ("Paris", ["paris!"], 1.0),
    (None, ["x"], 0.0),
])
def test_f1(pred, golds, f1):
    assert rewards.f1_score(pred, golds) == pytest.approx(f1)


@pytest.mark.parametrize("em,useful,m,outcome_only,expected", [
    (0.0, 3, 3, False, 0.0),  # wrong answer: no process reward whatever the density
    (0.0, 0, 0, False, 0.0),
    (1.0, 0, 0, False, 1.0),  # no searches: R = EM
    (1.0, 0, 2, False, 1.0),
    (1.0, 1, 2, False, 1.5),
    (1.0, 1, 3, False, 4 / 3),
    (1.0, 2, 2, False, 2.0),
    (1.0, 5, 2, False, 2.0),  # judge count clipped to M
    (1.0, -1, 2, False, 1.0),  # and to 0
    (1.0, 2, 2, True, 1.0),  # outcome-only ablation
    (0.0, 2, 2, True, 0.0),
])
def test_hybrid_reward_table(em, useful, m, outcome_only, expected):
    assert rewards.hybrid_reward(em, useful, m, outcome_only) == pytest.approx(expected)


def test_hybrid_reward_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        rewards.hybrid_reward(float("nan"), 1, 2)
    with pytest.raises(ValueError, match="num_searches"):
        rewards.hybrid_reward(1.0, 1, -1)


def test_hybrid_rewards_batch_and_score_answers():
    r = rewards.hybrid_rewards([1, 0, 1, 1], [1, 2, 0, 9], [2, 2, 0, 3])
    np.testing.assert_allclose(r, [1.5, 0.0, 1.0, 2.0])
    assert r.dtype == np.float32
    with pytest.raises(ValueError, match="shapes"):
        rewards.hybrid_rewards([1, 0], [1], [2, 2])
    em, f1 = rewards.score_answers(["Paris", None, "Paris France"], [["paris"], ["x"], "Paris"])
    np.testing.assert_allclose(em, [1, 0, 0])
    np.testing.assert_allclose(f1, [1, 0, 2 / 3], rtol=1e-6)
    with pytest.raises(ValueError, match="2 predictions vs 1"):
        rewards.score_answers(["a", "b"], [["a"]])
