"""Rewards (host, numpy/python): Search-R1's EM and F1, and Search-R2's hybrid reward (paper Eq. 1).

    R(y) = EM(y) * (1 + useful / M)        M = number of search collections in y, useful in [0, M]

The answer string is extracted from the response elsewhere (`searchr2_jax.text.protocol.extract_answer`); every
function here takes that string, or None when the response has no answer, which scores 0.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, NamedTuple, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Search-R1 / SQuAD normalization, in their order: lowercase, drop ASCII punctuation, replace the articles
    a/an/the (whole words) by a space, collapse whitespace. `"The  U.S.A!"` -> `"usa"`."""
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer: expected str, got {type(text).__name__} ({text!r})")
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golden_answers: str | Iterable[str]) -> list[str]:
    """Gold answers as a list of str: a bare string is one answer (Search-R1's em_check does the same); parquet
    rows hand numpy arrays of str."""
    if isinstance(golden_answers, str):
        return [golden_answers]
    golds = list(golden_answers)
    for g in golds:
        if not isinstance(g, str):
            raise TypeError(f"golden_answers: every answer must be a str, got {type(g).__name__} ({g!r})")
    return golds


def exact_match(prediction: str | None, golden_answers: str | Iterable[str]) -> float:
    """1.0 iff the normalized prediction equals any normalized gold answer; None (no answer) scores 0."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golden_answers)))


def substring_match(prediction: str | None, golden_answers: str | Iterable[str]) -> float:
    """Search-R1's `subem`: 1.0 iff some normalized gold answer occurs inside the normalized prediction (as text,
    not restricted to word boundaries, as the original). Evaluation only; the training reward is EM."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) in pred for g in _golds(golden_answers)))


def f1_score(prediction: str | None, golden_answers: str | Iterable[str]) -> float:
    """SQuAD token-level F1 on normalized, whitespace-split tokens; the best over the gold answers.

    Token overlap counts multiplicity (multiset intersection). No overlap, or an answer that normalizes to
    nothing (e.g. "the"), scores 0.
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in _golds(golden_answers):
        ref = normalize_answer(gold).split()
        common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred), common / len(ref)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def hybrid_reward(em: float, useful: float, num_searches: int, outcome_only: bool = False) -> float:
    """R = EM * (1 + useful / M) for one trajectory.

    M = `num_searches` collections. M = 0 (no search) or `outcome_only` gives R = EM (the paper leaves M = 0
    unspecified; its best reading is r_process = 0). `useful` is clipped to [0, M], so R is in {0} U [1, 2] for a
    binary EM: the multiplicative gate pays no process reward to a wrong answer.
    """
    em = float(em)
    if not np.isfinite(em) or not np.isfinite(float(useful)):
        raise ValueError(f"hybrid_reward: non-finite input em={em!r}, useful={useful!r}")
    if num_searches < 0:
        raise ValueError(f"hybrid_reward: num_searches={num_searches} < 0")
    if outcome_only or num_searches == 0:
        return em
    density = min(max(float(useful), 0.0), float(num_searches)) / num_searches
    return em * (1.0 + density)


class RewardTerms(NamedTuple):
    """A batch's reward term by term, [N] each, as the trainer computed it (kept for the trajectory dumps):
    EM, the judge's count of useful searches (None where no judge counted, e.g. evaluation) and R (None where no
    reward was computed). M, the number of searches, is each trajectory's own."""

    em: Sequence[float]
    useful: Sequence[float] | None = None
    total: Sequence[float] | None = None


def hybrid_rewards(em: Sequence[float], useful: Sequence[float], num_searches: Sequence[int],
                   outcome_only: bool = False) -> np.ndarray:
    """`hybrid_reward` over a batch: three equal-length [N] sequences -> [N] float32."""
    em, useful, m = (np.asarray(x, np.float64) for x in (em, useful, num_searches))
    if not em.shape == useful.shape == m.shape or em.ndim != 1:
        raise ValueError(f"hybrid_rewards: shapes em {em.shape}, useful {useful.shape}, num_searches {m.shape} "
                         "must be equal and 1-D")
    return np.asarray([hybrid_reward(e, u, int(k), outcome_only) for e, u, k in zip(em, useful, m)], np.float32)


def score_answers(predictions: Sequence[str | None], golden_answers: Sequence[str | Iterable[str]]):
    """(EM [N], F1 [N]) float32 for a batch of extracted answers against their gold lists."""
    if len(predictions) != len(golden_answers):
        raise ValueError(f"score_answers: {len(predictions)} predictions vs {len(golden_answers)} gold lists")
    em = np.asarray([exact_match(p, g) for p, g in zip(predictions, golden_answers)], np.float32)
    f1 = np.asarray([f1_score(p, g) for p, g in zip(predictions, golden_answers)], np.float32)
    return em, f1
