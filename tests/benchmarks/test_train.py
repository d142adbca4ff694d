"""The train suite's duplicate count (benchmarks/train.py): meta-action tokens that repeat their trajectory's row."""

import numpy as np

from searchr2_jax.benchmarks.train import meta_duplicate_tokens
from searchr2_jax.rollout import types as T


def meta(prompt_ids):
    return T.MetaAction(prompt_ids=list(prompt_ids), action_ids=[9], choice=0, logprob=-0.1, scores=[-0.1, -2.0])


def test_an_unrevised_rows_whole_conversation_and_a_revised_rows_kept_prefix_are_duplicates():
    job = T.Job([1, 2, 3])
    response = np.asarray([4, 5, 6, 7], np.int32)
    followup = [50, 51]
    traj = T.Trajectory(0, job, response, np.zeros(4, np.float32), np.ones(4, np.int8), [], T.ANSWERED)
    # Unrevised: the refiner read prompt + the whole response, then its follow-up.
    traj.meta_actions = [meta([1, 2, 3, 4, 5, 6, 7] + followup)]
    assert meta_duplicate_tokens(traj) == 7
    # Revised after turn [4, 5]: the draft's discarded suffix [8, 8] is new, the kept prefix is not.
    traj.meta_actions = [meta([1, 2, 3, 4, 5, 8, 8] + followup), meta([1, 2, 3, 4, 5, 6, 7] + followup)]
    assert meta_duplicate_tokens(traj) == 5 + 7
    # A standalone (table12-style) prompt shares nothing with the row.
    traj.meta_actions = [meta([90, 91, 92])]
    assert meta_duplicate_tokens(traj) == 0
