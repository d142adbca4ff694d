"""Intervals for evaluation figures: a question-resampling bootstrap, the paired gain of a method over a baseline,
and the difference of two arms trained over several seeds."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean by resampling questions; `values` is [questions] or [seeds, questions]
    (a question's seeds move together, so the interval covers question sampling, not seed noise)."""
    values = np.atleast_2d(np.asarray(values, np.float64))
    if values.shape[1] == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[1], size=(n, values.shape[1]))
    means = values.mean(axis=0)[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_gain(values, base, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(gain, lo, hi): a method's mean gain over a baseline on the same questions, with its 95% interval. `values`
    is [seeds, questions] or [questions] and `base` [questions]; resampling questions moves both together, which is
    far tighter than comparing two unpaired intervals."""
    diff = np.atleast_2d(np.asarray(values, np.float64)).mean(axis=0) - np.asarray(base, np.float64)
    lo, hi = bootstrap_ci(diff, n, seed)
    return float(diff.mean()), lo, hi


def arm_difference(a, b, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(diff, lo, hi): arm `a`'s mean EM minus arm `b`'s on the same questions, each [seeds, questions]. Each draw
    resamples the questions (shared by both arms) and, independently, each arm's seeds: the interval covers seed
    noise as far as the seeds show it, which a question-only interval hides when two seeds of one arm disagree."""
    a, b = (np.atleast_2d(np.asarray(x, np.float64)) for x in (a, b))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"arm_difference: the arms were scored on {a.shape[1]} and {b.shape[1]} questions")
    rng = np.random.default_rng(seed)
    q = rng.integers(0, a.shape[1], size=(n, a.shape[1]))
    draws = []
    for x in (a, b):
        s = rng.integers(0, x.shape[0], size=(n, x.shape[0]))
        per_q = x[s].mean(axis=1)  # [n, questions]: the resampled seeds' mean per question
        draws.append(np.take_along_axis(per_q, q, axis=1).mean(axis=1))
    d = draws[0] - draws[1]
    return float(a.mean() - b.mean()), float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))
