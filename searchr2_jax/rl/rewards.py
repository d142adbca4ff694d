"""Rewards (host): Search-R1's EM and F1, and the hybrid reward R = EM * (1 + useful / M) (paper Eq. 1)."""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Search-R1 / SQuAD normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, golden_answers: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized gold answer; None (no answer) scores 0."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golden_answers))


def f1_score(prediction: str | None, golden_answers: Sequence[str]) -> float:
    """Token-level F1 (SQuAD), the best over gold answers."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golden_answers:
        ref = normalize_answer(gold).split()
        common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
        if common == 0:
            continue
        p, r = common / len(pred), common / len(ref)
        best = max(best, 2 * p * r / (p + r))
    return best


def hybrid_reward(em: float, useful: float, num_searches: int, outcome_only: bool = False) -> float:
    """R = EM * (1 + useful / M). M = 0 or outcome_only gives R = EM; `useful` is clipped to [0, M]."""
    if outcome_only or num_searches <= 0:
        return float(em)
    density = min(max(float(useful), 0.0), float(num_searches)) / num_searches
    return float(em) * (1.0 + density)
