"""GRPO group normalization and masked-span GAE against hand-computed values and a plain python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searchr2_jax.rl import advantages as A

EPS = 1e-6


def test_grpo_by_hand_with_unsorted_non_contiguous_ids():
    ids = jnp.asarray([10, 3, 10, 7, 3, 10, 7])
    r = jnp.asarray([1.0, 2.0, 0.0, 0.0, 2.0, 2.0, 1.0])
    # group 10 = rows 0, 2, 5: rewards 1, 0, 2 -> mean 1, unbiased var (0 + 1 + 1) / 2 = 1
    # group 3 = rows 1, 4: rewards 2, 2 -> identical, 0
    # group 7 = rows 3, 6: rewards 0, 1 -> mean 0.5, unbiased var (0.25 + 0.25) / 1 = 0.5
    s7 = 0.7071067811865476
    expected = [0.0, 0.0, -1 / (1 + EPS), -0.5 / (s7 + EPS), 0.0, 1 / (1 + EPS), 0.5 / (s7 + EPS)]
    adv = jax.jit(A.grpo_advantages)(r, ids)
    np.testing.assert_allclose(np.asarray(adv), expected, rtol=1e-6, atol=1e-7)
    # Dr.GRPO: mean-centering only.
    dr = A.grpo_advantages(r, ids, normalize_std=False)
    np.testing.assert_allclose(np.asarray(dr), [0, 0, -1, -0.5, 0, 1, 0.5], atol=1e-7)


def test_grpo_identical_rewards_give_exact_zero_not_nan():
    r = jnp.full((6,), 1.7)
    ids = jnp.asarray([0, 1, 0, 1, 0, 1])
    for norm in (True, False):
        adv = np.asarray(A.grpo_advantages(r, ids, normalize_std=norm))
        assert np.all(np.isfinite(adv)) and np.all(adv == 0.0)


def test_grpo_negative_and_huge_ids_and_permutation_invariance():
    ids = np.asarray([-4, 1_000_000, -4, 1_000_000, 5, 5])
    r = np.asarray([1.0, 0.0, 0.0, 3.0, 2.0, 4.0], np.float32)
    adv = np.asarray(A.grpo_advantages(jnp.asarray(r), jnp.asarray(ids)))
    # two members per group, rewards {x, y}: +-(|x - y| / 2) / (|x - y| / sqrt(2) + eps) = +-1/sqrt(2) (eps: < 2e-6)
    h = 1 / np.sqrt(2)
    np.testing.assert_allclose(adv, [h, -h, -h, h, -h, h], rtol=3e-6)
    perm = np.random.default_rng(0).permutation(6)
    adv_p = np.asarray(A.grpo_advantages(jnp.asarray(r[perm]), jnp.asarray(ids[perm])))
    np.testing.assert_allclose(adv_p, adv[perm], rtol=1e-6)


def _grpo_loop(r, ids, valid, normalize_std):
    """Reference: a dict of groups, like verl's compute_grpo_outcome_advantage."""
    out = np.zeros_like(r)
    groups = {}
    for i, g in enumerate(ids):
        if valid[i]:
            groups.setdefault(g, []).append(i)
    for rows in groups.values():
        x = r[rows]
        mean, std = (0.0, 1.0) if len(rows) == 1 else (x.mean(), x.std(ddof=1))
        out[rows] = (x - mean) / (std + EPS) if normalize_std else x - mean
    return out


@pytest.mark.parametrize("normalize_std", [True, False])
def test_grpo_matches_a_loop_on_random_batches(normalize_std):
    rng = np.random.default_rng(3)
    fn = jax.jit(A.grpo_advantages, static_argnames="normalize_std")
    for _ in range(5):
        n = 24
        ids = rng.integers(0, 7, size=n) * 13 - 20
        r = rng.integers(0, 3, size=n).astype(np.float32) * rng.choice([1.0, 1.5], size=n).astype(np.float32)
        valid = rng.random(n) > 0.2
        adv = np.asarray(fn(jnp.asarray(r), jnp.asarray(ids), normalize_std=normalize_std, valid=jnp.asarray(valid)))
        np.testing.assert_allclose(adv, _grpo_loop(r, ids, valid, normalize_std), rtol=1e-5, atol=1e-6)


def test_grpo_singleton_and_padding_rows():
    # verl's singleton rule: mean 0, std 1, i.e. the raw reward.
    adv = A.grpo_advantages(jnp.asarray([1.0, 0.0, 0.7]), jnp.asarray([5, 5, 9]))
    np.testing.assert_allclose(np.asarray(adv)[2], 0.7 / (1 + EPS), rtol=1e-6)
    # Padding rows (valid False) stay out of the statistics and get 0.
    adv = A.grpo_advantages(jnp.asarray([1.0, 0.0, 100.0]), jnp.asarray([1, 1, 1]),
                            valid=jnp.asarray([True, True, False]))
    s = 0.7071067811865476
    np.testing.assert_allclose(np.asarray(adv), [0.5 / (s + EPS), -0.5 / (s + EPS), 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="must be"):
        A.grpo_advantages(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))


@pytest.mark.parametrize("normalize_std", [True, False])
def test_faulty_rows_get_no_advantage_and_leave_the_group_statistics_unchanged(normalize_std):
    """A retrieval fault is no wrong answer: the other rows' advantages are those of the batch without it."""
    ids = np.asarray([4, 4, 4, 9, 9, 9, 9])
    r = np.asarray([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0], np.float32)
    keep = np.asarray([True, True, False, True, True, False, True])
    adv = np.asarray(A.sequence_advantages(jnp.asarray(r), jnp.asarray(ids), jnp.asarray(keep), normalize_std))
    without = np.asarray(A.sequence_advantages(jnp.asarray(r[keep]), jnp.asarray(ids[keep]),
                                               normalize_std=normalize_std))
    np.testing.assert_allclose(adv[keep], without, rtol=1e-6)
    assert np.all(adv[~keep] == 0.0)
    rs = np.asarray(A.sequence_advantages(jnp.asarray(r), jnp.asarray(ids), jnp.asarray(keep),
                                          rejection_sampling=True))
    np.testing.assert_array_equal(rs, [1, 0, 0, 1, 1, 0, 0])


def test_drop_rows_zeroes_faulty_rows_and_their_meta_actions():
    loss_mask = np.asarray([[0, 1, 1], [0, 1, 0], [1, 1, 1]], np.int8)
    meta_mask = np.asarray([[0, 1], [0, 1], [0, 1], [0, 0]], np.int8)
    meta_index = np.asarray([1, 0, 1, -1])  # the last meta row is padding
    keep = np.asarray([True, False, True])
    lm, mm = A.drop_rows(keep, loss_mask), A.drop_rows(keep, meta_mask, meta_index)
    np.testing.assert_array_equal(np.asarray(lm), [[0, 1, 1], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(mm), [[0, 0], [0, 1], [0, 0], [0, 0]])
    assert lm.dtype == mm.dtype == jnp.float32


def test_gae_by_hand_bridges_a_masked_span():
    # gamma = lam = 0.5; tokens 2, 3 are a retrieved span (their rewards 7 and values 9 must be ignored).
    r = jnp.asarray([[0.0, 0.0, 7.0, 7.0, 1.0]])
    v = jnp.asarray([[0.5, 1.0, 9.0, 9.0, 2.0]])
    m = jnp.asarray([[1.0, 1.0, 0.0, 0.0, 1.0]])
    # t=4: delta = 1 + 0 - 2 = -1, A = -1
    # t=1: delta = 0 + 0.5 * 2 - 1 = 0 (next value is token 4's), A = 0 + 0.25 * (-1) = -0.25
    # t=0: delta = 0 + 0.5 * 1 - 0.5 = 0, A = 0.25 * (-0.25) = -0.0625
    adv, ret = A.gae_advantages(r, v, m, gamma=0.5, lam=0.5)
    np.testing.assert_allclose(np.asarray(adv), [[-0.0625, -0.25, 0, 0, -1]])
    np.testing.assert_allclose(np.asarray(ret), [[0.4375, 0.75, 0, 0, 1.0]])
    # gamma = lam = 1 with a terminal reward only: every loss token gets R - V_t.
    adv, _ = A.gae_advantages(jnp.asarray([[0, 0, 0, 1.0]]), jnp.asarray([[0.25, 3.0, 0.5, 0.75]]),
                              jnp.asarray([[1, 0, 1, 1]]))
    np.testing.assert_allclose(np.asarray(adv), [[0.75, 0, 0.5, 0.25]])


def _gae_loop(r, v, m, gamma, lam):
    """Reference: verl's multi-turn loop, written with an explicit skip."""
    adv = np.zeros_like(r)
    for b in range(r.shape[0]):
        last, nxt = 0.0, 0.0
        for t in reversed(range(r.shape[1])):
            if m[b, t] == 0:
                continue  # retrieved / prompt / padding token: carry `last` and `nxt` through
            last = r[b, t] + gamma * nxt - v[b, t] + gamma * lam * last
            nxt = v[b, t]
            adv[b, t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_equals_a_python_loop(gamma, lam):
    rng = np.random.default_rng(1)
    r = rng.normal(size=(4, 17)).astype(np.float32)
    v = rng.normal(size=(4, 17)).astype(np.float32)
    m = np.ones((4, 17), np.float32)
    m[:, 0:3] = 0  # prompt
    m[0, 6:10] = 0  # one retrieved block
    m[1, 5:7] = m[1, 9:12] = 0  # two blocks
    m[2, 14:] = 0  # padding at the end
    m[3] = 0  # a row without loss tokens
    adv, ret = jax.jit(A.gae_advantages, static_argnames=("gamma", "lam"))(
        jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), gamma=gamma, lam=lam)
    expected = _gae_loop(r, v, m, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), np.where(m > 0, expected + v, 0), rtol=1e-5, atol=1e-5)


def test_terminal_rewards():
    m = jnp.asarray([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 1, 1]])
    out = A.terminal_rewards(jnp.asarray([2.0, 3.0, 4.0, -1.0]), m)
    np.testing.assert_array_equal(np.asarray(out), [[0, 0, 0, 2, 0], [0, 0, 0, 0, 0], [4, 0, 0, 0, 0],
                                                    [0, 0, 0, 0, -1]])


def test_masked_whiten():
    x = jnp.asarray([[1.0, 2.0], [3.0, 100.0]])
    m = jnp.asarray([[1, 1], [1, 0]])
    # over 1, 2, 3: mean 2, unbiased var (1 + 0 + 1) / 2 = 1
    np.testing.assert_allclose(np.asarray(A.masked_whiten(x, m)), [[-1, 0], [1, 0]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(A.masked_whiten(x, m, shift_mean=False)), [[1, 2], [3, 0]], atol=1e-6)
    # masked entries may be inf/NaN without leaking
    bad = x.at[1, 1].set(jnp.nan)
    np.testing.assert_allclose(np.asarray(A.masked_whiten(bad, m)), [[-1, 0], [1, 0]], atol=1e-6)
    one = A.masked_whiten(x, jnp.asarray([[0, 1], [0, 0]]))
    assert np.all(np.isfinite(np.asarray(one))) and float(one[0, 1]) == 0.0
