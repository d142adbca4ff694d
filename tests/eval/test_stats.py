"""Bootstrap intervals: coverage on a known distribution, and the paired gain."""

import numpy as np
import pytest

from searchr2_jax.eval.stats import arm_difference, bootstrap_ci, paired_gain


def test_bootstrap_interval_has_its_nominal_coverage_and_width_on_a_known_distribution():
    rng = np.random.default_rng(0)
    p, n = 0.3, 400
    covered, widths = 0, []
    for trial in range(200):
        sample = (rng.random(n) < p).astype(float)
        lo, hi = bootstrap_ci(sample, 400, seed=trial)
        covered += lo <= p <= hi
        widths.append(hi - lo)
    assert 0.89 <= covered / 200 <= 0.99  # 95% nominal
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.1)  # the normal width


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_questions():
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.4
    big = rng.random(2000) < 0.4
    lo, hi = bootstrap_ci(small, 500)
    assert lo <= small.mean() <= hi
    blo, bhi = bootstrap_ci(big, 500)
    assert bhi - blo < (hi - lo) / 3
    # seeds of one question move together: two identical seeds give the one-seed interval
    assert bootstrap_ci(np.stack([small, small]), 500) == bootstrap_ci(small, 500)


def test_paired_gain_is_tighter_than_the_unpaired_intervals():
    rng = np.random.default_rng(1)
    base = (rng.random(400) < 0.3).astype(float)
    arm = base.copy()
    flip = rng.choice(np.flatnonzero(base == 0), 20, replace=False)
    arm[flip] = 1.0  # +0.05 on the same questions, nothing lost
    gain, lo, hi = paired_gain(arm[None], base, 500)
    assert gain == pytest.approx(0.05)
    assert 0 < lo <= gain <= hi
    alo, bhi = bootstrap_ci(arm, 500)[0], bootstrap_ci(base, 500)[1]
    assert alo < bhi  # the unpaired intervals overlap, the paired one excludes 0
    # the arm's seeds are averaged per question before the difference
    gain2, _, _ = paired_gain(np.stack([arm, base]), base, 500)
    assert gain2 == pytest.approx(0.025)


def test_arm_difference_widens_with_seed_noise_and_is_paired_over_questions():
    rng = np.random.default_rng(2)
    base = (rng.random(400) < 0.3).astype(float)
    better = base.copy()
    better[rng.choice(np.flatnonzero(base == 0), 40, replace=False)] = 1.0  # +0.10 on the same questions
    # seeds that agree: the question-paired interval, tight and above 0
    diff, lo, hi = arm_difference(np.stack([better, better]), np.stack([base, base]), 500)
    assert diff == pytest.approx(0.10)
    assert 0 < lo <= diff <= hi and hi - lo < 0.06
    # the same mean gain carried by one seed (+0.20) while the other has none: the seeds widen the interval
    best = base.copy()
    best[rng.choice(np.flatnonzero(base == 0), 80, replace=False)] = 1.0
    noisy = np.stack([best, base])
    d2, lo2, hi2 = arm_difference(noisy, np.stack([base, base]), 500)
    assert d2 == pytest.approx(0.10)
    assert lo2 <= 0.0 < hi2  # with two seeds, one draw in four picks seed 1 twice: no gain
    with pytest.raises(ValueError, match="400 and 399"):
        arm_difference(better, base[:-1])
