"""Intervals for evaluation figures: a question-resampling bootstrap, and the paired gain of two methods."""

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
