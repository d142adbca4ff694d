"""The train suite's counts (benchmarks/train.py): meta-action tokens the step batch holds twice, and the attention
pairs its rows compute against those their masks allow."""

import numpy as np

from searchr2_jax.benchmarks.train import attention_pairs, meta_new_tokens, meta_tokens
from searchr2_jax.models import decoder
from searchr2_jax.rl.train_step import MetaRows, StepBatch
from searchr2_jax.rollout import types as T


def meta(prompt_ids):
    return T.MetaAction(prompt_ids=list(prompt_ids), action_ids=[9], choice=0, logprob=-0.1, scores=[-0.1, -2.0])


def step_batch(b: T.TrajectoryBatch) -> StepBatch:
    """The fields `meta_tokens` reads; the rest are zeros of the right shape."""
    zeros = np.zeros(b.tokens.shape, np.float32)
    valid = np.arange(b.tokens.shape[1])[None] < b.lengths[:, None]
    rows = None
    if b.meta_rows is not None:
        r = b.meta_rows
        rows = MetaRows(r.tokens, np.arange(r.tokens.shape[1])[None] < r.lengths[:, None], r.mask, r.logprobs,
                        r.logprobs)
    packing = decoder.Packing(b.positions, b.segment_ids, b.shared_start, b.shared_end)
    return StepBatch(b.tokens, valid, packing, zeros, zeros, zeros, zeros, zeros, zeros, rows)


def test_meta_actions_need_only_what_their_row_lacks_and_packing_holds_nothing_more():
    job = T.Job([1, 2, 3])
    response = np.asarray([4, 5, 6, 7], np.int32)
    followup = [50, 51]
    traj = T.Trajectory(0, job, response, np.zeros(4, np.float32), np.ones(4, np.int8), [], T.ANSWERED)
    # Unrevised: the refiner read prompt + the whole response, then its follow-up and integer: 3 new tokens.
    # Revised after turn [4, 5]: the draft's discarded suffix [8, 8] is new too.
    # A standalone (table12-style) prompt shares nothing with the row: all of it is new.
    for metas, new, standalone in (([meta([1, 2, 3, 4, 5, 6, 7] + followup)], 3, 10),
                                   ([meta([1, 2, 3, 4, 5, 8, 8] + followup), meta([1, 2, 3, 4, 5, 6, 7] + followup)],
                                    5 + 3, 10 + 10),
                                   ([meta([90, 91, 92])], 4, 4)):
        traj.meta_actions = metas
        assert meta_new_tokens(traj) == new
        assert meta_tokens(step_batch(T.to_batch([traj], pack_meta=True)), [traj]) == new  # no duplicate
        assert meta_tokens(step_batch(T.to_batch([traj])), [traj]) == standalone  # the rows repeat the shared prefixes


def test_meta_tokens_count_the_same_once_trajectories_share_rows():
    from searchr2_jax.rl import packing

    trajs = []
    for i, metas in enumerate(([meta([1, 2, 3, 4, 5, 6, 7, 50, 51])], [meta([1, 2, 3, 4, 5, 8, 8, 50, 51])])):
        t = T.Trajectory(i, T.Job([1, 2, 3]), np.asarray([4, 5, 6, 7], np.int32), np.zeros(4, np.float32),
                         np.ones(4, np.int8), [], T.ANSWERED, meta_actions=metas)
        trajs.append(t)
    sb = step_batch(T.to_batch(trajs, seq_len=32, pack_meta=True))
    shared = packing.pack_rows(sb, packing.plan_rows(sb, 1))
    assert np.asarray(shared.valid).sum(axis=1).tolist() == [10 + 12]  # both trajectories in one row
    assert meta_tokens(shared, trajs) == meta_tokens(sb, trajs) == 3 + 5 == sum(map(meta_new_tokens, trajs))


def test_attention_pairs_count_blocks_and_what_the_masks_allow():
    """A 7-token trajectory and a revised draft's branch of 5 new tokens (discarded suffix, follow-up, integer)
    reading the first 5 in place, in a row of 16: the trajectory's tokens read 1 + ... + 7 = 28 keys, the branch's
    5 + 1 ... 5 + 5 = 40. Blocks of 4 compute 4 x (4 + 8 + 12 + 16) pairs; one dense block 16 x 16."""
    traj = T.Trajectory(0, T.Job([1, 2, 3]), np.asarray([4, 5, 6, 7], np.int32), np.zeros(4, np.float32),
                        np.ones(4, np.int8), [], T.ANSWERED, meta_actions=[meta([1, 2, 3, 4, 5, 8, 8, 50, 51])])
    sb = step_batch(T.to_batch([traj], seq_len=16, pack_meta=True))
    assert attention_pairs(sb, 4) == (160.0, 68.0)
    assert attention_pairs(sb, 0) == (256.0, 68.0)
